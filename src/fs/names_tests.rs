//! Encrypted names through the core: nothing readable in the backing tree, every namespace
//! operation, long names, and what tampering does.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::fs::EncFs;
use crate::fs::inode::ROOT_INO;
use crate::fs::testing;
use crate::keys::Caller;

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// Every name and symlink target under `dir`, recursively, as raw bytes.
fn backing_names(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().as_bytes().to_vec());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.push(
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_vec(),
            );
        } else if ft.is_dir() {
            backing_names(&e.path(), out);
        }
    }
}

fn data(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("vol/data")
}

fn names_of(fs: &EncFs, ino: u64) -> Vec<OsString> {
    let fh = fs.opendir(ino).unwrap();
    let mut v: Vec<OsString> = fs
        .readdir(ino, fh, 0)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.name)
        .filter(|n| n != "." && n != "..")
        .collect();
    fs.releasedir(fh);
    v.sort();
    v
}

fn touch(fs: &EncFs, parent: u64, name: &OsStr, caller: &Caller) -> u64 {
    let (a, fh) = fs
        .create(parent, name, libc::S_IFREG | 0o644, libc::O_RDWR, caller)
        .unwrap();
    fs.write(fh, 0, name.as_bytes(), caller).unwrap();
    fs.release(fh).unwrap();
    a.ino
}

fn errno<T: std::fmt::Debug>(r: crate::fs::FsResult<T>) -> i32 {
    r.unwrap_err().errno()
}

/// Names of 1, 100 and 255 bytes with non-ASCII bytes, a directory, a symlink and an xattr
/// name: none of them appears in the backing tree, every one reads back.
#[test]
fn no_name_or_target_reaches_the_backing_tree() {
    let (fs, tmp, caller) = testing::fresh();
    let mk = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| [b'q', 0xc3, 0xa9, b'Z', 0xff, b'7'][(i + seed as usize) % 6])
            .collect()
    };
    let names = [
        mk(1, 0),
        mk(100, 1),
        mk(255, 2),
        b"tax-return-2026.pdf".to_vec(),
    ];
    let dir = fs
        .mkdir(ROOT_INO, OsStr::new("secret-plans"), 0o755, &caller)
        .unwrap();
    for n in &names {
        touch(&fs, ROOT_INO, &os(n), &caller);
        touch(&fs, dir.ino, &os(n), &caller);
    }
    fs.symlink(
        dir.ino,
        OsStr::new("link"),
        OsStr::new("../hidden-target-name"),
        &caller,
    )
    .unwrap();
    let f = fs
        .lookup(ROOT_INO, OsStr::new("tax-return-2026.pdf"))
        .unwrap();
    fs.setxattr(f.ino, OsStr::new("user.origin-secret"), b"v", 0, &caller)
        .unwrap();
    let mut all = Vec::new();
    backing_names(&data(&tmp), &mut all);
    for e in walk_xattr_names(&data(&tmp)) {
        all.push(e);
    }
    let needles: Vec<&[u8]> = vec![
        b"tax-return",
        b"secret-plans",
        b"hidden-target",
        b"origin-secret",
        &names[1][..20],
        &names[2][..20],
    ];
    for hay in &all {
        for n in &needles {
            assert!(
                !hay.windows(n.len()).any(|w| w == *n),
                "{:?} found in backing name {:?}",
                OsStr::from_bytes(n),
                OsStr::from_bytes(hay)
            );
        }
    }
    let mut want: Vec<OsString> = names.iter().map(|n| os(n)).collect();
    want.push("secret-plans".into());
    want.sort();
    assert_eq!(names_of(&fs, ROOT_INO), want);
    for n in &names {
        let a = fs.lookup(dir.ino, &os(n)).unwrap();
        assert_eq!(a.size, n.len() as u64);
    }
    let l = fs.lookup(dir.ino, OsStr::new("link")).unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), b"../hidden-target-name");
    assert_eq!(
        l.size,
        b"../hidden-target-name".len() as u64,
        "st_size is the target's length"
    );
    assert_eq!(
        fs.listxattr(f.ino).unwrap(),
        b"user.origin-secret\0".to_vec()
    );
    assert_eq!(
        fs.getxattr(f.ino, OsStr::new("user.origin-secret"), &caller)
            .unwrap(),
        b"v"
    );
}

fn walk_xattr_names(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_symlink() {
            continue;
        }
        let f = std::fs::File::open(e.path()).unwrap();
        let list = crate::store::sys::flistxattr(&f).unwrap();
        out.extend(list.split(|b| *b == 0).map(<[u8]>::to_vec));
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_xattr_names(&e.path()));
        }
    }
    out
}

/// Long names (over 160 bytes) live as `long.<hash>` with a sidecar; rename, link, unlink
/// and rmdir keep exactly one sidecar per long entry.
#[test]
fn long_names_keep_one_sidecar_per_entry_across_every_operation() {
    let (fs, tmp, caller) = testing::fresh();
    let long_a = os(&[b'a'; 255]);
    let long_b = os(&[b'b'; 200]);
    let d1 = fs
        .mkdir(ROOT_INO, OsStr::new("d1"), 0o755, &caller)
        .unwrap();
    let d2 = fs.mkdir(ROOT_INO, &long_b, 0o755, &caller).unwrap();
    let ino = touch(&fs, d1.ino, &long_a, &caller);
    let count = |dir: &Path| {
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let longs = names.iter().filter(|n| n.starts_with("long.")).count();
        let sidecars = names.iter().filter(|n| n.starts_with(".name.")).count();
        (longs, sidecars)
    };
    let b1 = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("d1")).unwrap().entry);
    let b2 = data(&tmp).join(fs.place(ROOT_INO, &long_b).unwrap().entry);
    assert_eq!(count(&data(&tmp)), (1, 1), "the long directory name");
    assert_eq!(count(&b1), (1, 1));
    // Hard link under another long name in the other directory.
    fs.link(ino, d2.ino, &long_b).unwrap();
    assert_eq!(count(&b2), (1, 1));
    // Rename the first name to a short one: its sidecar goes.
    fs.rename(d1.ino, &long_a, d1.ino, OsStr::new("short"), 0)
        .unwrap();
    assert_eq!(count(&b1), (0, 0));
    // Rename over the long link in d2 (same inode: a no-op that keeps both names).
    fs.rename(d1.ino, OsStr::new("short"), d2.ino, &long_b, 0)
        .unwrap();
    assert_eq!(count(&b2), (1, 1));
    assert_eq!(names_of(&fs, d1.ino), vec![OsString::from("short")]);
    // Move it back under a long name: d1 gets a sidecar again, d2 loses its own.
    fs.unlink(d1.ino, OsStr::new("short")).unwrap();
    fs.rename(d2.ino, &long_b, d1.ino, &long_a, 0).unwrap();
    assert_eq!((count(&b1), count(&b2)), ((1, 1), (0, 0)));
    let fh = fs
        .open(
            fs.lookup(d1.ino, &long_a).unwrap().ino,
            libc::O_RDONLY,
            &caller,
        )
        .unwrap();
    assert_eq!(fs.read(fh, 0, 1000).unwrap(), long_a.as_bytes());
    fs.release(fh).unwrap();
    // A failed create under a long name leaves no sidecar behind.
    assert_eq!(
        errno(fs.mkdir(d1.ino, &long_a, 0o755, &caller)),
        libc::EEXIST
    );
    assert_eq!(count(&b1), (1, 1));
    fs.unlink(d1.ino, &long_a).unwrap();
    assert_eq!(count(&b1), (0, 0));
    fs.rmdir(ROOT_INO, &long_b).unwrap();
    assert_eq!(count(&data(&tmp)), (0, 0));
    assert_eq!(names_of(&fs, ROOT_INO), vec![OsString::from("d1")]);
}

/// RENAME_EXCHANGE and RENAME_NOREPLACE across directories; a moved directory keeps its
/// children's names.
#[test]
fn rename_flags_across_directories() {
    let (fs, _tmp, caller) = testing::fresh();
    let a = fs.mkdir(ROOT_INO, OsStr::new("a"), 0o755, &caller).unwrap();
    let b = fs.mkdir(ROOT_INO, OsStr::new("b"), 0o755, &caller).unwrap();
    let x = touch(&fs, a.ino, OsStr::new("x"), &caller);
    let long = os(&[b'y'; 230]);
    let y = touch(&fs, b.ino, &long, &caller);
    assert_eq!(
        errno(fs.rename(a.ino, OsStr::new("x"), b.ino, &long, libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    fs.rename(a.ino, OsStr::new("x"), b.ino, &long, libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs.lookup(a.ino, OsStr::new("x")).unwrap().ino, y);
    assert_eq!(fs.lookup(b.ino, &long).unwrap().ino, x);
    let sub = fs.mkdir(a.ino, OsStr::new("sub"), 0o755, &caller).unwrap();
    touch(&fs, sub.ino, OsStr::new("inner"), &caller);
    fs.rename(a.ino, OsStr::new("sub"), b.ino, OsStr::new("moved"), 0)
        .unwrap();
    let moved = fs.lookup(b.ino, OsStr::new("moved")).unwrap();
    assert_eq!(moved.ino, sub.ino);
    assert_eq!(names_of(&fs, moved.ino), vec![OsString::from("inner")]);
    assert_eq!(errno(fs.lookup(a.ino, OsStr::new("sub"))), libc::ENOENT);
}

/// rmdir: ENOTEMPTY with any entry, works with only metadata (orphan sidecars included).
#[test]
fn rmdir_sees_through_metadata_only() {
    let (fs, tmp, caller) = testing::fresh();
    let d = fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, &caller).unwrap();
    touch(&fs, d.ino, OsStr::new("f"), &caller);
    assert_eq!(errno(fs.rmdir(ROOT_INO, OsStr::new("d"))), libc::ENOTEMPTY);
    fs.unlink(d.ino, OsStr::new("f")).unwrap();
    let bd = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("d")).unwrap().entry);
    std::os::unix::fs::symlink("orphan", bd.join(".name.orphan")).unwrap();
    fs.rmdir(ROOT_INO, OsStr::new("d")).unwrap();
    assert!(!bd.exists());
    assert_eq!(errno(fs.rmdir(ROOT_INO, OsStr::new("d"))), libc::ENOENT);
    touch(&fs, ROOT_INO, OsStr::new("file"), &caller);
    assert_eq!(errno(fs.rmdir(ROOT_INO, OsStr::new("file"))), libc::ENOTDIR);
}

/// An entry moved in from another directory, a tampered name, a tampered sidecar or link
/// target: hidden from listings (or EIO), never a wrong name.
#[test]
fn tampered_or_moved_names_never_show_a_wrong_name() {
    let (fs, tmp, caller) = testing::fresh();
    let a = fs.mkdir(ROOT_INO, OsStr::new("a"), 0o755, &caller).unwrap();
    let b = fs.mkdir(ROOT_INO, OsStr::new("b"), 0o755, &caller).unwrap();
    touch(&fs, a.ino, OsStr::new("one"), &caller);
    touch(&fs, a.ino, OsStr::new("two"), &caller);
    let long = os(&[b'L'; 240]);
    touch(&fs, a.ino, &long, &caller);
    fs.symlink(a.ino, OsStr::new("ln"), OsStr::new("target"), &caller)
        .unwrap();
    let ba = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("a")).unwrap().entry);
    let bb = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("b")).unwrap().entry);
    // Move "one" into b behind the mount's back.
    let one = fs.place(a.ino, OsStr::new("one")).unwrap().entry;
    std::fs::rename(ba.join(&one), bb.join(&one)).unwrap();
    assert!(names_of(&fs, b.ino).is_empty(), "a moved entry is hidden");
    // Flip a character of "two"'s backing name.
    let two = fs
        .place(a.ino, OsStr::new("two"))
        .unwrap()
        .entry
        .into_string()
        .unwrap();
    let mut t = two.clone().into_bytes();
    t[5] = if t[5] == b'A' { b'B' } else { b'A' };
    std::fs::rename(ba.join(&two), ba.join(String::from_utf8(t).unwrap())).unwrap();
    // Point the long entry's sidecar at another name's encoding.
    let placed = fs.place(a.ino, &long).unwrap();
    let hash = placed
        .entry
        .to_str()
        .unwrap()
        .strip_prefix("long.")
        .unwrap()
        .to_owned();
    let sidecar = ba.join(format!(".name.{hash}"));
    std::fs::remove_file(&sidecar).unwrap();
    std::os::unix::fs::symlink(&two, &sidecar).unwrap();
    assert_eq!(
        names_of(&fs, a.ino),
        vec![OsString::from("ln")],
        "only the intact entry is listed"
    );
    // The link target, tampered: EIO.
    let ln = fs.lookup(a.ino, OsStr::new("ln")).unwrap();
    let bln = ba.join(fs.place(a.ino, OsStr::new("ln")).unwrap().entry);
    let stored = std::fs::read_link(&bln)
        .unwrap()
        .into_os_string()
        .into_vec();
    let mut bad = stored.clone();
    bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
    std::fs::remove_file(&bln).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(&bad), &bln).unwrap();
    let ln2 = fs.lookup(a.ino, OsStr::new("ln")).unwrap();
    assert_eq!(errno(fs.readlink(ln2.ino)), libc::EIO);
    let _ = ln;
}

/// A directory whose `.dirid` is gone: empty, it gets a new one (the crash between mkdir
/// and its id); with entries, EIO (names cannot be read) rather than wrong names.
#[test]
fn a_missing_directory_id() {
    let (fs, tmp, caller, kms) = testing::fresh_with_kms();
    fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, &caller).unwrap();
    let e = fs.mkdir(ROOT_INO, OsStr::new("e"), 0o755, &caller).unwrap();
    touch(&fs, e.ino, OsStr::new("f"), &caller);
    let bd = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("d")).unwrap().entry);
    let be = data(&tmp).join(fs.place(ROOT_INO, OsStr::new("e")).unwrap().entry);
    std::fs::remove_file(bd.join(".dirid")).unwrap();
    std::fs::remove_file(be.join(".dirid")).unwrap();
    // A fresh core has no cached ids.
    drop(fs);
    let fs = testing::reopen(&tmp, kms);
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).unwrap();
    touch(&fs, d.ino, OsStr::new("new"), &caller);
    assert!(bd.join(".dirid").symlink_metadata().is_ok(), "healed");
    assert_eq!(names_of(&fs, d.ino), vec![OsString::from("new")]);
    let e = fs.lookup(ROOT_INO, OsStr::new("e")).unwrap();
    assert_eq!(errno(fs.lookup(e.ino, OsStr::new("f"))), libc::EIO);
    assert_eq!(errno(fs.opendir(e.ino)), libc::EIO);
}

/// Names the core refuses or cannot store, with the errno the kernel expects.
#[test]
fn name_limits() {
    let (fs, _tmp, caller) = testing::fresh();
    assert_eq!(
        errno(fs.mkdir(ROOT_INO, &os(&[b'n'; 256]), 0o755, &caller)),
        libc::ENAMETOOLONG
    );
    let long_target = os(&vec![b't'; crate::format::names::MAX_TARGET + 1]);
    assert_eq!(
        errno(fs.symlink(ROOT_INO, OsStr::new("l"), &long_target, &caller)),
        libc::ENAMETOOLONG
    );
    let ok_target = os(&vec![b't'; crate::format::names::MAX_TARGET]);
    let l = fs
        .symlink(ROOT_INO, OsStr::new("l"), &ok_target, &caller)
        .unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), ok_target.as_bytes());
    let f = touch(&fs, ROOT_INO, OsStr::new("f"), &caller);
    let long_x = os(&[b"user.".as_slice(), &[b'x'; 200]].concat());
    assert_eq!(
        errno(fs.setxattr(f, &long_x, b"v", 0, &caller)),
        libc::ERANGE
    );
}
