//! Mount tests of encrypted names (docs/FORMAT.md §10): nothing of a tree's names, link
//! targets or xattr names reaches BACKING; long names, renames across directories and
//! remounts keep every name; a name tampered with in BACKING is hidden, never shown wrong.
//!
//! With `ENVELOPEFS_TEST_PLAINTEXT_NAMES=1` (every mount test then runs on volumes made with
//! `--plaintext-names`) the same searches must find the names: the searches are not vacuous.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use common::sys::{list_xattr, renameat2, set_xattr};
use common::{Mounted, contains};

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// Every name, symlink target and xattr name under `dir`, and every regular file's bytes.
fn backing_bytes(dir: &Path, names: &mut Vec<Vec<u8>>, contents: &mut Vec<Vec<u8>>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        names.push(e.file_name().as_bytes().to_vec());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            names.push(fs::read_link(e.path()).unwrap().into_os_string().into_vec());
            continue;
        }
        for n in list_xattr(&e.path()).unwrap() {
            names.push(n.into_bytes());
        }
        if ft.is_dir() {
            backing_bytes(&e.path(), names, contents);
        } else if ft.is_file() {
            contents.push(fs::read(e.path()).unwrap());
        }
    }
}

fn listing(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// The check: a tree with names of 1, 100 and 255 bytes (non-ASCII bytes included),
/// a long directory name, symlinks, a hard link and an xattr; a byte search of everything in
/// BACKING (names, link targets, xattr names, and the contents of every file: headers,
/// keystore, audit trail) finds none of them; the mount shows them all, after a remount too.
#[test]
fn a_tree_leaves_no_name_or_link_target_in_backing() {
    let Some(mut m) = Mounted::new() else { return };
    let one = vec![0xe9u8]; // a single Latin-1 byte: no base64 name can contain it
    let hundred: Vec<u8> = (0..100)
        .map(|i| b"budget-\xc3\xa9\xc3\xa8-Q4-"[i % 15])
        .collect();
    let full: Vec<u8> = (0..255)
        .map(|i| b"passport-scan-\xe2\x82\xac-"[i % 18])
        .collect();
    let dir_name = [b"medical-records-".as_slice(), &[b'd'; 180]].concat();
    let target = b"../secret-link-target-Xq7/diagnosis.txt".to_vec();
    let dir = m.path("").join(os(&dir_name));
    fs::create_dir(&dir).unwrap();
    for n in [&one, &hundred, &full] {
        fs::write(m.mnt().join(os(n)), n).unwrap();
        fs::write(dir.join(os(n)), n).unwrap();
    }
    std::os::unix::fs::symlink(os(&target), dir.join("link-name-Wq9")).unwrap();
    fs::hard_link(m.mnt().join(os(&full)), dir.join("hardlink-name-Pz4")).unwrap();
    set_xattr(&m.mnt().join(os(&hundred)), "user.xattr-name-Kv2", b"v", 0).unwrap();
    let before = listing(m.mnt());
    let before_dir = listing(&dir);
    let status = m.unmount();
    assert!(status.is_some_and(|s| s.success()), "{}", m.diagnostics());

    let (mut names, mut contents) = (Vec::new(), Vec::new());
    backing_bytes(m.backing(), &mut names, &mut contents);
    assert!(contents.len() >= 8, "the files are down there");
    let needles: Vec<(&str, &[u8])> = vec![
        ("1-byte name", &one),
        ("100-byte name", &hundred[..40]),
        ("255-byte name", &full[..40]),
        ("directory name", b"medical-records"),
        ("link target", b"secret-link-target"),
        ("link name", b"link-name-Wq9"),
        ("hard link name", b"hardlink-name-Pz4"),
        ("xattr name", b"xattr-name-Kv2"),
    ];
    for (what, needle) in &needles {
        let in_names = names.iter().any(|n| contains(n, needle));
        let in_contents = needle.len() > 1 && contents.iter().any(|c| contains(c, needle));
        if m.plaintext_names() {
            assert!(
                in_names,
                "{what}: plaintext names must be found (the search works)"
            );
        } else {
            assert!(!in_names, "{what} found in a backing name or link target");
            assert!(!in_contents, "{what} found in a backing file");
        }
    }

    m.mount();
    assert_eq!(listing(m.mnt()), before);
    assert_eq!(listing(&dir), before_dir);
    for n in [&one, &hundred, &full] {
        assert_eq!(fs::read(dir.join(os(n))).unwrap(), *n);
    }
    assert_eq!(
        fs::read_link(dir.join("link-name-Wq9"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        target
    );
    assert_eq!(
        fs::symlink_metadata(dir.join("link-name-Wq9"))
            .unwrap()
            .len(),
        target.len() as u64,
        "lstat size is the target's length"
    );
    assert_eq!(fs::read(dir.join("hardlink-name-Pz4")).unwrap(), full);
    assert!(
        list_xattr(&m.mnt().join(os(&hundred)))
            .unwrap()
            .contains(&"user.xattr-name-Kv2".to_string())
    );
}

/// Renames between directories with long names on both sides, RENAME_EXCHANGE and
/// RENAME_NOREPLACE, then a remount: every name where it was put.
#[test]
fn renames_of_long_names_across_directories_survive_a_remount() {
    let Some(mut m) = Mounted::new() else { return };
    let long_a = os(&[b'a'; 250]);
    let long_b = os(&[b'b'; 170]);
    fs::create_dir_all(m.path("x/deep")).unwrap();
    fs::create_dir(m.mnt().join(&long_b)).unwrap();
    fs::write(m.path("x").join(&long_a), b"A").unwrap();
    fs::write(m.mnt().join(&long_b).join("short"), b"S").unwrap();
    let from = m.path("x").join(&long_a);
    let to = m.mnt().join(&long_b).join(&long_a);
    fs::rename(&from, &to).unwrap();
    fs::write(&from, b"A2").unwrap();
    assert_eq!(
        common::sys::errno(&renameat2(&from, &to, libc::RENAME_NOREPLACE).unwrap_err()),
        libc::EEXIST
    );
    renameat2(
        &from,
        &m.mnt().join(&long_b).join("short"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    fs::rename(m.path("x"), m.mnt().join(&long_b).join("x-moved")).unwrap();
    m.remount();
    let d = m.mnt().join(&long_b);
    assert_eq!(
        listing(&d),
        vec![
            long_a.clone(),
            OsString::from("short"),
            OsString::from("x-moved")
        ]
    );
    assert_eq!(fs::read(d.join(&long_a)).unwrap(), b"A");
    assert_eq!(fs::read(d.join("short")).unwrap(), b"A2");
    assert_eq!(fs::read(d.join("x-moved").join(&long_a)).unwrap(), b"S");
    assert!(d.join("x-moved/deep").is_dir());
    assert_eq!(listing(m.mnt()), vec![long_b.clone()]);
    fs::remove_file(d.join("x-moved").join(&long_a)).unwrap();
    fs::remove_dir(d.join("x-moved/deep")).unwrap();
    fs::remove_dir(d.join("x-moved")).unwrap();
    fs::remove_file(d.join(&long_a)).unwrap();
    fs::remove_file(d.join("short")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert!(listing(m.mnt()).is_empty());
    m.unmount();
    // Nothing left behind: no entry, no sidecar, only the root's id.
    let left: Vec<PathBuf> = fs::read_dir(m.data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let want: Vec<PathBuf> = if m.plaintext_names() {
        vec![]
    } else {
        vec![m.data().join(".dirid")]
    };
    assert_eq!(left, want);
}

/// An entry moved in BACKING to another directory, and one renamed by hand: hidden from the
/// listing with a log line, unreachable by any name; the rest of the directory reads fine.
#[test]
fn a_name_tampered_with_in_backing_is_hidden_not_shown_wrong() {
    let Some(mut m) = Mounted::new() else { return };
    if m.plaintext_names() {
        eprintln!("skipping: names are not encrypted on this volume");
        return;
    }
    fs::create_dir(m.path("a")).unwrap();
    fs::create_dir(m.path("b")).unwrap();
    for n in ["one", "two", "three"] {
        fs::write(m.path(&format!("a/{n}")), n).unwrap();
    }
    let one = m.backing_path("a/one");
    let two = m.backing_path("a/two");
    let b = m.backing_path("b");
    m.unmount();
    fs::rename(&one, b.join(one.file_name().unwrap())).unwrap();
    let mut t = two.file_name().unwrap().as_bytes().to_vec();
    t[3] = if t[3] == b'A' { b'B' } else { b'A' };
    fs::rename(&two, two.with_file_name(OsStr::from_bytes(&t))).unwrap();
    m.mount();
    assert_eq!(listing(&m.path("a")), vec![OsString::from("three")]);
    assert!(listing(&m.path("b")).is_empty());
    assert!(fs::metadata(m.path("b/one")).is_err());
    assert!(fs::metadata(m.path("a/two")).is_err());
    assert_eq!(fs::read(m.path("a/three")).unwrap(), b"three");
    assert!(
        m.log_lines_with(&["hiding backing entry"]) >= 2,
        "each hidden entry is logged:\n{}",
        m.log_text()
    );
}
