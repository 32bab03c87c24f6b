//! Mount tests: a real envelopefs mount driven with std::fs, libc calls and real tools (tar,
//! cp, git), compared against plain reference files; persistence across remounts; the
//! plaintext size derivable from the backing size; tampered ciphertext reads as EIO.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BLOCK, Mounted, Rng, backing_len, block_offset, check, read_errno, sh, tool};

// ---------------------------------------------------------------------------------------------
// Small libc wrappers (each unsafe block is one plain syscall on valid C strings / buffers).

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both C strings are valid and outlive the call.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};
const NOW: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_NOW,
};

fn utimens(p: &Path, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
    let c = cpath(p);
    let t = [atime, mtime];
    // SAFETY: `c` is a valid C string and `t` a two-element array, both outliving the call.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn mkfifo(p: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: valid C string for the duration of the call.
    cvt(unsafe { libc::mkfifo(c.as_ptr(), mode) })
}

fn set_xattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings; `value` is readable for its length.
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// The size-query protocol first (size 0), then the value.
fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: a null buffer with size 0 only asks for the size.
    let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: `buf` is writable for its length.
    let got =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

fn list_xattr(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn remove_xattr(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is writable memory of the right size; the kernel fills it on success.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(
        r,
        0,
        "statvfs {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    // SAFETY: initialised by the successful call above.
    unsafe { st.assume_init() }
}

fn fallocate(f: &File, mode: libc::c_int, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

/// A shared read-write mapping of a whole file, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &File, len: usize) -> io::Result<Map> {
        // SAFETY: a fresh shared mapping of an open fd; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` readable and writable bytes until drop; `&mut self` makes
        // this the only slice over it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn sync(&self) -> io::Result<()> {
        // SAFETY: msync of exactly the mapping we own.
        cvt(unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Basic file I/O

#[test]
fn create_read_write_append() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("a.txt");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello");
    fs::write(&p, b"a longer replacement").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"a longer replacement");
    fs::write(&p, b"short").unwrap();
    assert_eq!(
        fs::read(&p).unwrap(),
        b"short",
        "O_TRUNC must drop the old tail"
    );

    for part in [&b" world"[..], b"!", b""] {
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(part)
            .unwrap();
    }
    assert_eq!(fs::read(&p).unwrap(), b"short world!");

    // Appends across block boundaries, through O_APPEND handles that also seek (O_APPEND wins).
    let mut expect = fs::read(&p).unwrap();
    let mut rng = Rng::new(7);
    for len in [4000usize, 200, 5000, 1, 8192, 3] {
        let chunk = rng.bytes(len);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&chunk).unwrap();
        expect.extend_from_slice(&chunk);
    }
    assert_eq!(fs::read(&p).unwrap(), expect);
    assert_eq!(fs::metadata(&p).unwrap().len(), expect.len() as u64);

    // create_new on an existing file, then remove.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    fs::remove_file(&p).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // Directories.
    fs::create_dir_all(m.path("d1/d2/d3")).unwrap();
    fs::write(m.path("d1/d2/d3/f"), b"deep").unwrap();
    let names: Vec<_> = fs::read_dir(m.path("d1/d2"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["d3"]);
    assert_eq!(
        errno(&fs::remove_dir(m.path("d1/d2/d3")).unwrap_err()),
        libc::ENOTEMPTY
    );
    fs::remove_dir_all(m.path("d1")).unwrap();
    assert!(!m.path("d1").exists());
}

/// Partial-block overwrites, writes past EOF (holes), truncates up and down, checked step by
/// step against a plain file in a temp dir receiving the same operations.
#[test]
fn ops_match_reference_file() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("big.bin");
    let r = m.scratch().join("big.bin");
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap()
    };
    let (fm, fr) = (open(&p), open(&r));
    let compare = |step: &str| {
        let (a, b) = (fs::read(&p).unwrap(), fs::read(&r).unwrap());
        assert_eq!(a.len(), b.len(), "{step}: size differs");
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!(
                "{step}: first difference at byte {i} (block {})",
                i as u64 / BLOCK
            );
        }
        assert_eq!(
            fm.metadata().unwrap().len(),
            b.len() as u64,
            "{step}: fstat size"
        );
    };
    let write = |off: u64, data: &[u8], step: &str| {
        fm.write_all_at(data, off).unwrap();
        fr.write_all_at(data, off).unwrap();
        compare(step);
    };
    let truncate = |len: u64, step: &str| {
        fm.set_len(len).unwrap();
        fr.set_len(len).unwrap();
        compare(step);
    };

    let mut rng = Rng::new(common::seed("ops_match_reference_file"));
    write(
        0,
        &rng.bytes(10 * BLOCK as usize + 123),
        "initial 10 blocks + 123",
    );
    write(
        5 * BLOCK - 50,
        &rng.bytes(100),
        "overwrite across the block 4/5 boundary",
    );
    write(
        3 * BLOCK + 1000,
        &rng.bytes(7),
        "small overwrite inside block 3",
    );
    write(6 * BLOCK, &rng.bytes(BLOCK as usize), "exactly block 6");
    write(
        10 * BLOCK + 100,
        &rng.bytes(10),
        "overwrite touching the tail",
    );
    let size = fm.metadata().unwrap().len();
    write(
        size + 3 * BLOCK + 7,
        b"after the hole",
        "write past EOF leaving a hole",
    );
    let data = fs::read(&p).unwrap();
    assert!(
        data[size as usize..(size + 3 * BLOCK + 7) as usize]
            .iter()
            .all(|&b| b == 0),
        "the hole reads as zeros"
    );
    truncate(3 * BLOCK + 1, "truncate down to a block and a byte");
    truncate(8 * BLOCK - 5, "truncate up (zero fill)");
    truncate(2 * BLOCK, "truncate down to a block boundary");
    truncate(2 * BLOCK + 10, "truncate up by 10");
    truncate(0, "truncate to 0");
    write(
        BLOCK / 2,
        b"into an empty file at an offset",
        "write at an offset into an empty file",
    );
    truncate(BLOCK * 4, "grow again");

    // Random operations.
    for i in 0..120 {
        let size = fm.metadata().unwrap().len();
        match rng.below(10) {
            0..=5 => {
                let off = rng.below(size + 2 * BLOCK + 1);
                let len = 1 + rng.below(3 * BLOCK) as usize;
                write(
                    off,
                    &rng.bytes(len),
                    &format!("random op {i}: write {len} at {off}"),
                );
            }
            6 | 7 => {
                let len = rng.below(size + 2 * BLOCK + 1);
                truncate(len, &format!("random op {i}: truncate to {len}"));
            }
            _ => {
                let len = 1 + rng.below(2 * BLOCK) as usize;
                write(
                    size,
                    &rng.bytes(len),
                    &format!("random op {i}: append {len}"),
                );
            }
        }
    }
    drop((fm, fr));
    let expect = fs::read(&r).unwrap();
    m.remount();
    assert_eq!(fs::read(&p).unwrap(), expect, "content after remount");
}

/// Several handles on one inode see each other's writes and truncates at once.
#[test]
fn several_handles_on_one_file() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("shared");
    File::create(&p).unwrap();
    // A reader opened while the file is still empty (no header yet).
    let reader = File::open(&p).unwrap();
    let w1 = OpenOptions::new().write(true).open(&p).unwrap();
    let w2 = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let read_all = |f: &File| {
        let mut v = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    };
    let mut expect = vec![b'a'; BLOCK as usize + 10];
    w1.write_all_at(&expect, 0).unwrap();
    assert_eq!(read_all(&reader), expect);
    w2.write_all_at(&[b'b'; 100], BLOCK - 50).unwrap();
    expect[BLOCK as usize - 50..BLOCK as usize + 10].fill(b'b');
    expect.extend_from_slice(&[b'b'; 40]);
    assert_eq!(read_all(&reader), expect);
    assert_eq!(read_all(&w2), expect);
    w2.set_len(100).unwrap();
    expect.truncate(100);
    assert_eq!(read_all(&reader), expect);
    w1.write_all_at(b"xyz", 2 * BLOCK).unwrap();
    expect.resize(2 * BLOCK as usize, 0);
    expect.extend_from_slice(b"xyz");
    assert_eq!(read_all(&reader), expect);
    drop(w1);
    w2.write_all_at(b"after close", 0).unwrap();
    expect[..11].copy_from_slice(b"after close");
    assert_eq!(read_all(&reader), expect);
    drop((w2, reader));
    assert_eq!(fs::read(&p).unwrap(), expect);
    // A truncate by path (no handle) while a handle is open.
    let h = File::open(&p).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(read_all(&h), &expect[..5]);
    check(tool("truncate").arg("-s").arg("3").arg(&p));
    assert_eq!(read_all(&h), &expect[..3]);
}

#[test]
fn mmap_read_and_write() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("mapped");
    let mut expect = Rng::new(3).bytes(3 * BLOCK as usize + 100);
    fs::write(&p, &expect).unwrap();
    {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut map = Map::new(&f, expect.len()).unwrap();
        assert_eq!(map.bytes(), &expect[..], "mmap read");
        for (off, len) in [
            (10usize, 5usize),
            (BLOCK as usize - 3, 9),
            (2 * BLOCK as usize + 17, 200),
            (expect.len() - 1, 1),
        ] {
            for b in &mut map.bytes()[off..off + len] {
                *b = !*b;
            }
            for b in &mut expect[off..off + len] {
                *b = !*b;
            }
        }
        map.sync().unwrap();
    }
    assert_eq!(fs::read(&p).unwrap(), expect, "read after msync + munmap");
    m.remount();
    assert_eq!(fs::read(&p).unwrap(), expect, "after remount");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut map = Map::new(&f, expect.len()).unwrap();
    assert_eq!(map.bytes(), &expect[..], "mmap read after remount");
}

// ---------------------------------------------------------------------------------------------
// Namespace operations

#[test]
fn renames() {
    let Some(mut m) = Mounted::new() else { return };
    let w = |n: &str, d: &[u8]| fs::write(m.path(n), d).unwrap();
    let r = |n: &str| fs::read(m.path(n)).unwrap();
    w("a", b"content a");
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert!(!m.path("a").exists());
    assert_eq!(r("b"), b"content a");

    // Over an existing file.
    w("c", &vec![b'c'; 5000]);
    let ino_c = fs::metadata(m.path("c")).unwrap().ino();
    fs::rename(m.path("c"), m.path("b")).unwrap();
    assert_eq!(r("b"), vec![b'c'; 5000]);
    assert_eq!(fs::metadata(m.path("b")).unwrap().ino(), ino_c);
    assert!(!m.path("c").exists());

    // Directories, with contents, and across directories.
    fs::create_dir_all(m.path("d1/sub")).unwrap();
    w("d1/sub/f", b"in d1");
    fs::rename(m.path("d1"), m.path("d2")).unwrap();
    assert_eq!(r("d2/sub/f"), b"in d1");
    fs::create_dir(m.path("other")).unwrap();
    fs::rename(m.path("d2/sub"), m.path("other/moved")).unwrap();
    assert_eq!(r("other/moved/f"), b"in d1");
    fs::rename(m.path("b"), m.path("other/moved/b")).unwrap();
    assert_eq!(r("other/moved/b"), vec![b'c'; 5000]);

    // RENAME_NOREPLACE.
    w("x", b"xxx");
    w("y", b"yyy");
    let e = renameat2(&m.path("x"), &m.path("y"), libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    assert_eq!((r("x"), r("y")), (b"xxx".to_vec(), b"yyy".to_vec()));
    renameat2(&m.path("x"), &m.path("z"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(r("z"), b"xxx");

    // RENAME_EXCHANGE: two files, then a file and a directory.
    renameat2(&m.path("y"), &m.path("z"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!((r("y"), r("z")), (b"xxx".to_vec(), b"yyy".to_vec()));
    renameat2(&m.path("y"), &m.path("other"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(r("other"), b"xxx");
    assert_eq!(r("y/moved/f"), b"in d1");
    let e = renameat2(&m.path("nonexistent"), &m.path("z"), libc::RENAME_EXCHANGE).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);

    m.remount();
    let r = |n: &str| fs::read(m.path(n)).unwrap();
    assert_eq!(r("other"), b"xxx");
    assert_eq!(r("z"), b"yyy");
    assert_eq!(r("y/moved/f"), b"in d1");
    assert_eq!(r("y/moved/b"), vec![b'c'; 5000]);
}

#[test]
fn hard_links_share_content() {
    let Some(mut m) = Mounted::new() else { return };
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("orig"), vec![b'o'; 6000]).unwrap();
    fs::hard_link(m.path("orig"), m.path("dir/link")).unwrap();
    let (a, b) = (
        fs::metadata(m.path("orig")).unwrap(),
        fs::metadata(m.path("dir/link")).unwrap(),
    );
    assert_eq!((a.nlink(), b.nlink()), (2, 2));
    assert_eq!(a.ino(), b.ino());
    assert_eq!(fs::metadata(m.backing_path("orig")).unwrap().nlink(), 2);
    // Written through one name, read through the other (also while both are open).
    let via_link = OpenOptions::new()
        .write(true)
        .open(m.path("dir/link"))
        .unwrap();
    let via_orig = File::open(m.path("orig")).unwrap();
    via_link.write_all_at(b"LINKED", 4090).unwrap();
    let mut expect = vec![b'o'; 6000];
    expect[4090..4096].copy_from_slice(b"LINKED");
    let mut got = vec![0u8; 6000];
    via_orig.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, expect);
    drop((via_link, via_orig));
    m.remount();
    assert_eq!(fs::read(m.path("orig")).unwrap(), expect);
    assert_eq!(fs::read(m.path("dir/link")).unwrap(), expect);
    fs::remove_file(m.path("orig")).unwrap();
    assert_eq!(fs::metadata(m.path("dir/link")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.path("dir/link")).unwrap(), expect);
}

#[test]
fn symlinks_and_fifos() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("target.txt"), b"through the link").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    std::os::unix::fs::symlink("target.txt", m.path("rel")).unwrap();
    std::os::unix::fs::symlink("../target.txt", m.path("dir/up")).unwrap();
    std::os::unix::fs::symlink("dir", m.path("dirlink")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", m.path("dangling")).unwrap();
    assert_eq!(
        fs::read_link(m.path("rel")).unwrap(),
        Path::new("target.txt")
    );
    assert!(
        fs::symlink_metadata(m.path("rel"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::symlink_metadata(m.path("rel")).unwrap().len(),
        "target.txt".len() as u64
    );
    assert_eq!(fs::read(m.path("rel")).unwrap(), b"through the link");
    assert_eq!(fs::read(m.path("dir/up")).unwrap(), b"through the link");
    assert_eq!(fs::read(m.path("dirlink/up")).unwrap(), b"through the link");
    assert_eq!(
        fs::metadata(m.path("dangling")).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    // mkfifo goes through FUSE mknod; the pipe itself is the kernel's.
    mkfifo(&m.path("fifo"), 0o640).unwrap();
    let md = fs::symlink_metadata(m.path("fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert!(
        fs::symlink_metadata(m.backing_path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let mut rd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(m.path("fifo"))
        .unwrap();
    let mut wr = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(m.path("fifo"))
        .unwrap();
    wr.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    rd.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop((rd, wr));

    m.remount();
    assert_eq!(
        fs::read_link(m.path("dir/up")).unwrap(),
        Path::new("../target.txt")
    );
    assert_eq!(fs::read(m.path("rel")).unwrap(), b"through the link");
    assert!(
        fs::symlink_metadata(m.path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    fs::remove_file(m.path("rel")).unwrap();
    fs::remove_file(m.path("fifo")).unwrap();
    assert_eq!(fs::read(m.path("target.txt")).unwrap(), b"through the link");
}

// ---------------------------------------------------------------------------------------------
// Attributes

#[test]
fn chmod_and_chown() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("f");
    fs::write(&p, b"mode test").unwrap();
    for mode in [0o640, 0o600, 0o755, 0o444, 0o1777] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().mode() & 0o7777,
            mode,
            "mode through the mount"
        );
        assert_eq!(
            fs::metadata(m.backing_path("f")).unwrap().mode() & 0o7777,
            mode,
            "mode in the backing store"
        );
    }
    fs::write(m.path("suid"), b"x").unwrap();
    fs::set_permissions(m.path("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        fs::metadata(m.path("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    fs::create_dir(m.path("d")).unwrap();
    fs::set_permissions(m.path("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().mode() & 0o7777, 0o700);

    std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    let bmd = fs::metadata(m.backing_path("f")).unwrap();
    assert_eq!((bmd.uid(), bmd.gid()), (1000, 1000));
    std::os::unix::fs::chown(&p, None, Some(0)).unwrap();
    assert_eq!(
        (
            fs::metadata(&p).unwrap().uid(),
            fs::metadata(&p).unwrap().gid()
        ),
        (1000, 0)
    );
    std::os::unix::fs::lchown(m.path("d"), Some(1000), None).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().uid(), 1000);
    // A file created by root belongs to root.
    fs::write(m.path("mine"), b"").unwrap();
    assert_eq!(fs::metadata(m.path("mine")).unwrap().uid(), 0);
    // The creator's umask applies (the kernel applies it; the daemon must not add its own).
    sh(
        "umask 077 && touch u1 && mkdir u2 && umask 002 && touch u3 && mkdir -m 1777 u4",
        m.mnt(),
    );
    for (n, mode) in [("u1", 0o600), ("u2", 0o700), ("u3", 0o664), ("u4", 0o1777)] {
        assert_eq!(
            fs::metadata(m.path(n)).unwrap().mode() & 0o7777,
            mode,
            "{n}"
        );
    }

    m.remount();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 0, 0o1777));
    assert_eq!(fs::read(&p).unwrap(), b"mode test");
}

/// utimensat with one time omitted must leave the other alone (GNU tar sets them separately).
#[test]
fn utimensat_one_time_at_a_time() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("t");
    fs::write(&p, b"times").unwrap();
    let times = |p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
    };
    utimens(
        &p,
        ts(1_000_000_000, 500_000_000),
        ts(1_100_000_000, 250_000_000),
    )
    .unwrap();
    assert_eq!(
        times(&p),
        ((1_000_000_000, 500_000_000), (1_100_000_000, 250_000_000))
    );

    utimens(&p, OMIT, ts(1_200_000_000, 7)).unwrap();
    assert_eq!(
        times(&p),
        ((1_000_000_000, 500_000_000), (1_200_000_000, 7)),
        "mtime only: atime must stay"
    );
    assert_eq!(times(&m.backing_path("t")), times(&p), "backing times");

    utimens(&p, ts(1_300_000_000, 9), OMIT).unwrap();
    assert_eq!(
        times(&p),
        ((1_300_000_000, 9), (1_200_000_000, 7)),
        "atime only: mtime must stay"
    );

    utimens(&p, OMIT, NOW).unwrap();
    let ((a, an), (mt, _)) = times(&p);
    assert_eq!((a, an), (1_300_000_000, 9), "mtime=now: atime must stay");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((mt - now).abs() < 60, "mtime=now gave {mt}, now is {now}");

    // Writing (through write and through truncate) moves mtime to now.
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "write updates mtime");
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(2)
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "ftruncate updates mtime");
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "O_TRUNC updates mtime");
    fs::write(&p, b"times").unwrap();
    let mt = times(&p).1.0;

    // Pre-epoch times and a symlink's own times (lutimes).
    utimens(&p, ts(-86_400, 0), OMIT).unwrap();
    assert_eq!(times(&p).0, (-86_400, 0));
    std::os::unix::fs::symlink("t", m.path("l")).unwrap();
    utimens(&m.path("l"), ts(1_000_000_001, 0), ts(1_000_000_002, 0)).unwrap();
    assert_eq!(
        times(&m.path("l")),
        ((1_000_000_001, 0), (1_000_000_002, 0))
    );
    assert_eq!(times(&p).1.0, mt, "the link target is untouched");
}

/// `--no-xattr`: every xattr call fails with EOPNOTSUPP (and the kernel stops asking), files
/// work as usual, and attributes stored before are still there when mounted normally again.
#[test]
fn no_xattr_mount_refuses_xattrs_and_keeps_stored_ones() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("f"), b"contents").unwrap();
    set_xattr(&m.path("f"), "user.k", b"v", 0).unwrap();
    m.unmount();
    m.options_mut().xattrs = false;
    m.mount();
    for _ in 0..2 {
        for e in [
            get_xattr(&m.path("f"), "user.k").unwrap_err(),
            set_xattr(&m.path("f"), "user.new", b"x", 0).unwrap_err(),
            remove_xattr(&m.path("f"), "user.k").unwrap_err(),
        ] {
            assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        }
    }
    assert_eq!(fs::read(m.path("f")).unwrap(), b"contents");
    fs::write(m.path("g"), b"new file").unwrap();
    let listing = check(tool("ls").arg("-l").arg(m.mnt()));
    assert!(
        listing.contains(" f\n") && listing.contains(" g\n"),
        "{listing}"
    );
    m.unmount();
    m.options_mut().xattrs = true;
    m.mount();
    assert_eq!(get_xattr(&m.path("f"), "user.k").unwrap(), b"v");
    assert_eq!(fs::read(m.path("g")).unwrap(), b"new file");
}

#[test]
fn xattrs_round_trip_encrypted() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("f");
    fs::write(&p, b"has xattrs").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let plain = b"xattr-plaintext-value-Zq8WmT3vR1".to_vec();
    // (ext4 keeps all of an inode's xattrs in one 4 KiB block: stay well below that.)
    let binary: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    // The daemon remembers that an inode has no xattrs at all; the first set must end that.
    assert_eq!(
        errno(&get_xattr(&p, "user.test").unwrap_err()),
        libc::ENODATA
    );
    assert_eq!(list_xattr(&p).unwrap(), Vec::<String>::new());
    set_xattr(&p, "user.test", &plain, 0).unwrap();
    set_xattr(&p, "user.binary", &binary, 0).unwrap();
    set_xattr(&p, "user.empty", b"", 0).unwrap();
    set_xattr(&m.path("d"), "user.ondir", b"dir value", 0).unwrap();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), plain);
    assert_eq!(get_xattr(&p, "user.binary").unwrap(), binary);
    assert_eq!(get_xattr(&p, "user.empty").unwrap(), b"");
    assert_eq!(get_xattr(&m.path("d"), "user.ondir").unwrap(), b"dir value");
    let mut names = list_xattr(&p).unwrap();
    names.retain(|n| n.starts_with("user."));
    names.sort();
    assert_eq!(names, ["user.binary", "user.empty", "user.test"]);

    // The backing value is ciphertext: different, without the plaintext, 28 bytes longer.
    let raw = get_xattr(&m.backing_path("f"), "user.test").unwrap();
    assert_ne!(raw, plain);
    assert!(
        !common::contains(&raw, &plain[..16]),
        "the raw xattr holds the plaintext"
    );
    assert_eq!(raw.len(), plain.len() + 28);

    // Flags, replace, remove.
    assert_eq!(
        errno(&set_xattr(&p, "user.test", b"x", libc::XATTR_CREATE).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno(&set_xattr(&p, "user.nope", b"x", libc::XATTR_REPLACE).unwrap_err()),
        libc::ENODATA
    );
    set_xattr(&p, "user.test", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), b"replaced");
    remove_xattr(&p, "user.empty").unwrap();
    assert_eq!(
        errno(&get_xattr(&p, "user.empty").unwrap_err()),
        libc::ENODATA
    );
    assert_eq!(
        errno(&remove_xattr(&p, "user.empty").unwrap_err()),
        libc::ENODATA
    );

    // A value moved to another name, or flipped, fails authentication: EIO.
    let raw_bin = get_xattr(&m.backing_path("f"), "user.test").unwrap();
    set_xattr(&m.backing_path("f"), "user.moved", &raw_bin, 0).unwrap();
    assert_eq!(errno(&get_xattr(&p, "user.moved").unwrap_err()), libc::EIO);
    let mut flipped = raw_bin.clone();
    flipped[20] ^= 1;
    set_xattr(&m.backing_path("f"), "user.flipped", &flipped, 0).unwrap();
    assert_eq!(
        errno(&get_xattr(&p, "user.flipped").unwrap_err()),
        libc::EIO
    );

    m.remount();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), b"replaced");
    assert_eq!(get_xattr(&p, "user.binary").unwrap(), binary);
    assert_eq!(get_xattr(&m.path("d"), "user.ondir").unwrap(), b"dir value");
    assert_eq!(fs::read(&p).unwrap(), b"has xattrs");
}

/// A name that does not exist is remembered by the kernel (a negative entry), so asking
/// again costs no request, and creating, linking or renaming to that name through the mount
/// makes it appear at once all the same.
#[test]
fn missing_names_are_cached_and_creation_still_shows() {
    let Some(m) = Mounted::with_options(common::Options {
        verbose: 2,
        ..Default::default()
    }) else {
        return;
    };
    let lookups = |name: &str| m.log_lines_with(&[" LOOKUP ", &format!("name \"{name}\"")]);
    for name in ["a", "b", "c", "d"] {
        for _ in 0..3 {
            let e = fs::symlink_metadata(m.path(name)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name}: {e}");
        }
    }
    assert_eq!(lookups("a"), 1, "three stats of a missing name, one LOOKUP");
    fs::write(m.path("a"), b"now here").unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"now here");
    fs::create_dir(m.path("b")).unwrap();
    assert!(m.path("b").is_dir());
    fs::hard_link(m.path("a"), m.path("c")).unwrap();
    assert_eq!(fs::read(m.path("c")).unwrap(), b"now here");
    fs::write(m.path("src"), b"renamed").unwrap();
    fs::rename(m.path("src"), m.path("d")).unwrap();
    assert_eq!(fs::read(m.path("d")).unwrap(), b"renamed");
    assert!(fs::symlink_metadata(m.path("src")).is_err());
    fs::remove_file(m.path("a")).unwrap();
    assert!(fs::symlink_metadata(m.path("a")).is_err());
    assert_eq!(fs::read(m.path("c")).unwrap(), b"now here");
}

/// Drops the kernel's clean cached pages of `path` (through a write-only open, which does not
/// prefetch).
fn drop_cached_pages(path: &Path) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Prefetch on open: a small file opened read-only with no other handle on it is put in the
/// kernel's page cache before the open is answered, so reading it makes no READ request. A
/// file over the limit is read with READ as before, and so is one whose contents the kernel
/// was already given (until it forgets the inode).
#[test]
fn small_files_are_prefetched_on_open() {
    let Some(m) = Mounted::with_options(common::Options {
        verbose: 2,
        ..Default::default()
    }) else {
        return;
    };
    let reads = |path: &Path| {
        m.log_lines_with(&[&format!(
            "ino {:#018x} READ ",
            fs::metadata(path).unwrap().ino()
        )])
    };
    let mut rng = Rng::new(7);
    let small = m.path("small");
    let big = m.path("big");
    let small_data = rng.bytes(10_000);
    let big_data = rng.bytes(200_000);
    fs::write(&small, &small_data).unwrap();
    fs::write(&big, &big_data).unwrap();
    for p in [&small, &big] {
        drop_cached_pages(p);
    }
    assert_eq!(fs::read(&small).unwrap(), small_data);
    assert_eq!(fs::read(&big).unwrap(), big_data);
    assert_eq!(reads(&small), 0, "the small file came with its open");
    assert!(reads(&big) > 0, "the big file is read with READ");
    // Changed contents, dropped pages: the kernel asks again, and gets the new contents.
    let new_data = rng.bytes(10_000);
    OpenOptions::new()
        .write(true)
        .open(&small)
        .unwrap()
        .write_all_at(&new_data, 0)
        .unwrap();
    drop_cached_pages(&small);
    assert_eq!(fs::read(&small).unwrap(), new_data);
    assert!(
        reads(&small) > 0,
        "given once: read with READ after the pages went"
    );
}

/// A writer that opens a file while a reader's open is prefetching it must not have its
/// writes overwritten by the prefetched (older) contents: every file ends with the last
/// version written, and no reader sees a byte older than the last version closed before
/// its open. (With the gate and the lone-reader rule removed it hung in two runs of three: a
/// prefetch then waits on a page that a writer's pending READ holds while every request
/// thread is storing; the timeout below turns that into a failure.)
#[test]
fn prefetch_never_brings_back_older_contents() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
    let Some(m) = Mounted::new() else { return };
    const FILES: usize = 200;
    const LEN: usize = 12_000;
    const VERSIONS: u8 = 40;
    let paths: Arc<Vec<_>> = Arc::new((0..FILES).map(|i| m.path(&format!("v{i}"))).collect());
    for p in paths.iter() {
        fs::write(p, vec![0u8; LEN]).unwrap();
        drop_cached_pages(p);
    }
    let closed: Arc<Vec<AtomicU8>> = Arc::new((0..FILES).map(|_| AtomicU8::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    {
        let (paths, closed, done, tx) = (paths.clone(), closed.clone(), done.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                for v in 1..=VERSIONS {
                    for (i, p) in paths.iter().enumerate() {
                        let f = OpenOptions::new().write(true).open(p).unwrap();
                        f.write_all_at(&vec![v; LEN], 0).unwrap();
                        drop(f);
                        closed[i].store(v, SeqCst);
                    }
                }
            });
            done.store(true, SeqCst);
            let _ = tx.send(r.map_err(|_| "writer failed".to_string()));
        });
    }
    for _ in 0..2 {
        let (paths, closed, done, tx) = (paths.clone(), closed.clone(), done.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = (|| {
                while !done.load(SeqCst) {
                    for (i, p) in paths.iter().enumerate() {
                        let before = closed[i].load(SeqCst);
                        let got = fs::read(p).map_err(|e| format!("{i}: {e}"))?;
                        let oldest = got.iter().min().copied();
                        if got.len() != LEN || oldest < Some(before) {
                            return Err(format!(
                                "{i}: read {} bytes, oldest version {oldest:?}, after {before} was closed",
                                got.len()
                            ));
                        }
                    }
                }
                Ok(())
            })();
            let _ = tx.send(r);
        });
    }
    drop(tx);
    for _ in 0..3 {
        match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(r) => r.unwrap(),
            Err(e) => panic!("writer and readers did not finish in 120 s ({e}): a deadlock"),
        }
    }
    for p in paths.iter() {
        assert_eq!(fs::read(p).unwrap(), vec![VERSIONS; LEN], "{}", p.display());
    }
}

/// A POSIX ACL as the kernel's `system.posix_acl_*` xattr value: version 2, then per entry
/// tag (u16), permissions (u16) and id (u32), little-endian.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// POSIX ACLs and SELinux labels fail with EOPNOTSUPP instead of being stored unenforced.
/// Passed through, `setfacl -m u:nobody:r` on a 0600 file turned its group bits into the
/// mask (0640): the file's group could read it and nobody still could not.
#[test]
fn acls_and_selinux_labels_are_refused() {
    let Some(mut m) = Mounted::new() else { return };
    let f = m.path("f");
    fs::write(&f, b"secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    const UNDEFINED: u32 = u32::MAX;
    let acl = acl_value(&[
        (0x01, 6, UNDEFINED), // user::rw-
        (0x02, 4, 65534),     // user:nobody:r--
        (0x04, 0, UNDEFINED), // group::---
        (0x10, 4, UNDEFINED), // mask::r--
        (0x20, 0, UNDEFINED), // other::---
    ]);
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        let target = if name.ends_with("default") {
            m.mnt().to_path_buf()
        } else {
            f.clone()
        };
        let e = set_xattr(&target, name, &acl, 0).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "set {name}: {e}");
        let e = get_xattr(&target, name).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "get {name}: {e}");
    }
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o600,
        "a refused ACL must not change the mode"
    );
    assert_eq!(
        fs::metadata(m.backing_path("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for e in [
        set_xattr(
            &f,
            "security.selinux",
            b"system_u:object_r:user_home_t:s0\0",
            0,
        )
        .unwrap_err(),
        get_xattr(&f, "security.selinux").unwrap_err(),
        remove_xattr(&f, "security.selinux").unwrap_err(),
        remove_xattr(&f, "system.posix_acl_access").unwrap_err(),
    ] {
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
    }
    // Other namespaces still work.
    set_xattr(&f, "user.k", b"v", 0).unwrap();
    assert_eq!(get_xattr(&f, "user.k").unwrap(), b"v");
    // A backing file that holds an ACL from before (set on the backing directly, where the
    // backing filesystem supports ACLs) does not show it through the mount.
    fs::write(m.path("g"), b"g").unwrap();
    set_xattr(&m.path("g"), "user.keep", b"1", 0).unwrap();
    match set_xattr(&m.backing_path("g"), "system.posix_acl_access", &acl, 0) {
        Ok(()) => {
            m.remount();
            assert_eq!(
                list_xattr(&m.path("g")).unwrap(),
                vec!["user.keep".to_string()]
            );
            let e = get_xattr(&m.path("g"), "system.posix_acl_access").unwrap_err();
            assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        }
        Err(e) => eprintln!("backing filesystem has no ACLs ({e}); stale-ACL part skipped"),
    }
    let listing = check(tool("ls").arg("-l").arg(m.mnt()));
    assert!(
        listing.contains(" f\n") && listing.contains(" g\n"),
        "{listing}"
    );
    assert_eq!(fs::read(&f).unwrap(), b"secret");
}

#[test]
fn statfs_and_fallocate() {
    let Some(m) = Mounted::new() else { return };
    let (sm, sb) = (statvfs(m.mnt()), statvfs(&m.data()));
    assert!(
        sm.f_blocks > 0 && sm.f_bsize > 0,
        "statfs of the mount: blocks {} bsize {}",
        sm.f_blocks,
        sm.f_bsize
    );
    assert_eq!(
        sm.f_blocks * sm.f_frsize,
        sb.f_blocks * sb.f_frsize,
        "total size is the backing filesystem's"
    );
    assert_eq!(sm.f_files, sb.f_files);
    assert!(sm.f_namemax >= 255);

    let p = m.path("falloc");
    fs::write(&p, vec![b'x'; 100]).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fallocate(&f, 0, 0, 10_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10_000);
    let data = fs::read(&p).unwrap();
    assert!(data[..100].iter().all(|&b| b == b'x') && data[100..].iter().all(|&b| b == 0));
    assert_eq!(
        fs::metadata(m.backing_path("falloc")).unwrap().len(),
        backing_len(10_000)
    );
    fallocate(&f, 0, 10, 50).unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        10_000,
        "fallocate inside the file changes nothing"
    );
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 50_000).unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        10_000,
        "KEEP_SIZE keeps the size"
    );
    assert_eq!(fs::read(&p).unwrap(), data);
    let e = fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .unwrap_err();
    assert_eq!(
        errno(&e),
        libc::EOPNOTSUPP,
        "punching holes is documented as unsupported"
    );
    assert_eq!(fs::read(&p).unwrap(), data);
    // fallocate into an empty file (no header yet).
    let g = File::create(m.path("empty")).unwrap();
    fallocate(&g, 0, 0, 5000).unwrap();
    assert_eq!(fs::read(m.path("empty")).unwrap(), vec![0u8; 5000]);
}

// ---------------------------------------------------------------------------------------------
// Real tools

/// Copies this crate's src/ (once, so concurrent edits don't matter) plus one entry of every
/// kind to a plain directory and tars it; returns (archive, reference dir).
fn reference_tree(m: &Mounted) -> (std::path::PathBuf, std::path::PathBuf) {
    let tar = m.scratch().join("src.tar");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = m.scratch().join("ref");
    fs::create_dir(&reference).unwrap();
    // cp, not tar: tar fails when a file changes while it reads it (src/ may be edited).
    check(
        tool("cp")
            .arg("-r")
            .arg(crate_dir.join("src"))
            .arg(crate_dir.join("Cargo.toml"))
            .arg(&reference),
    );
    // Something of every kind tar and cp carry: a big file, a symlink, a hard link, an
    // empty file and an empty directory.
    fs::write(reference.join("big.bin"), Rng::new(11).bytes(300_000)).unwrap();
    std::os::unix::fs::symlink("src/lib.rs", reference.join("link")).unwrap();
    fs::hard_link(reference.join("Cargo.toml"), reference.join("Cargo.hard")).unwrap();
    fs::write(reference.join("empty"), b"").unwrap();
    fs::create_dir(reference.join("emptydir")).unwrap();
    // POSIX (pax) format keeps sub-second times.
    check(
        tool("tar")
            .arg("-c")
            .arg("--format=posix")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&reference)
            .arg("."),
    );
    (tar, reference)
}

/// name, type, mode, size, mtime (ns) and link count of every entry, sorted.
/// Compares two [`tree_listing`]s: equal except that the mtime of a regular file not in
/// `exact` may differ by up to `slack` seconds.
fn assert_listings_match(got: &str, want: &str, exact: &[&str], slack: f64) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(
        g.len(),
        w.len(),
        "entries after remount:\n{got}\nbefore:\n{want}"
    );
    for (gl, wl) in g.iter().zip(&w) {
        let (gf, wf): (Vec<&str>, Vec<&str>) = (gl.split(' ').collect(), wl.split(' ').collect());
        let loose = gf[1] == "f" && !exact.contains(&gf[0]);
        let same_but_time = gf.len() == wf.len()
            && gf
                .iter()
                .zip(&wf)
                .enumerate()
                .all(|(i, (a, b))| i == 4 || a == b);
        let dt = (gf[4].parse::<f64>().unwrap() - wf[4].parse::<f64>().unwrap()).abs();
        assert!(
            same_but_time && (gf[4] == wf[4] || (loose && dt <= slack)),
            "after remount: {gl}\nbefore:       {wl}"
        );
    }
}

fn tree_listing(dir: &Path) -> String {
    sh("find . -printf '%p %y %m %s %T@ %n %l\\n' | sort", dir)
}

#[test]
fn tar_extract_then_diff() {
    let Some(m) = Mounted::new() else { return };
    let (tar, reference) = reference_tree(&m);
    let dst = m.path("untar");
    fs::create_dir(&dst).unwrap();
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&dst),
    );
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    // tar -d compares contents, sizes, modes, mtimes, link targets.
    check(
        tool("tar")
            .arg("-d")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&dst),
    );
    assert_eq!(tree_listing(&dst), tree_listing(&reference));
    // And back out again.
    let back = m.scratch().join("back.tar");
    check(
        tool("tar")
            .arg("-c")
            .arg("--format=posix")
            .arg("-f")
            .arg(&back)
            .arg("-C")
            .arg(&dst)
            .arg("."),
    );
    let again = m.scratch().join("again");
    fs::create_dir(&again).unwrap();
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&back)
            .arg("-C")
            .arg(&again),
    );
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&again),
    );
}

#[test]
fn cp_a_then_diff() {
    let Some(mut m) = Mounted::new() else { return };
    let (_tar, reference) = reference_tree(&m);
    let dst = m.path("copy");
    check(tool("cp").arg("-a").arg(&reference).arg(&dst));
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    assert_eq!(
        tree_listing(&dst),
        tree_listing(&reference),
        "cp -a preserves modes, times, links"
    );
    m.remount();
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    assert_eq!(
        tree_listing(&dst),
        tree_listing(&reference),
        "after remount"
    );
}

#[test]
fn git_commit_and_fsck() {
    let Some(mut m) = Mounted::new() else { return };
    let (tar, _reference) = reference_tree(&m);
    let repo = m.path("repo");
    fs::create_dir(&repo).unwrap();
    let home = m.scratch().join("home");
    fs::create_dir(&home).unwrap();
    let git = |args: &[&str]| {
        check(
            tool("git")
                .args([
                    "-c",
                    "user.name=Test",
                    "-c",
                    "user.email=test@example.invalid",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(["-c", "init.defaultBranch=main", "-c", "core.fsync=all"])
                .args(args)
                .current_dir(&repo)
                .env("HOME", &home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null"),
        )
    };
    git(&["init", "-q"]);
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&repo),
    );
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("src/lib.rs"), b"// changed\n").unwrap();
    fs::remove_file(repo.join("big.bin")).unwrap();
    git(&["commit", "-q", "-a", "-m", "second"]);
    git(&["repack", "-a", "-d", "-q"]);
    git(&["fsck", "--full", "--strict", "--no-progress"]);
    assert_eq!(git(&["status", "--porcelain"]), "");
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "2");
    let head = git(&["rev-parse", "HEAD"]);
    m.remount();
    git(&["fsck", "--full", "--strict", "--no-progress"]);
    assert_eq!(git(&["rev-parse", "HEAD"]), head);
    assert_eq!(git(&["status", "--porcelain"]), "");
    git(&["checkout", "-q", "HEAD~1", "--", "."]);
    assert_eq!(
        fs::read(repo.join("big.bin")).unwrap(),
        Rng::new(11).bytes(300_000)
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence and the on-disk size

/// With `--no-writeback-cache` every time survives a remount exactly.
#[test]
fn persistence_across_remount() {
    persistence(false);
}

/// With the kernel's writeback cache (the default) the kernel keeps a written file's mtime
/// itself while the inode is cached, so the stored mtime of a file written without an explicit
/// utimens may differ from what stat showed by the time the kernel took to hand the data over
/// (docs/SEMANTICS.md). Everything else survives exactly.
#[test]
fn persistence_across_remount_with_writeback_cache() {
    persistence(true);
}

fn persistence(writeback: bool) {
    let Some(mut m) = Mounted::with_options(common::Options {
        writeback,
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(5);
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        3 * 4096,
        3 * 4096 + 1,
        100_000,
        1 << 20,
    ];
    let mut files = Vec::new();
    fs::create_dir_all(m.path("a/b")).unwrap();
    for (i, &s) in sizes.iter().enumerate() {
        let name = if i % 2 == 0 {
            format!("f{i}")
        } else {
            format!("a/b/f{i}")
        };
        let data = rng.bytes(s);
        fs::write(m.path(&name), &data).unwrap();
        files.push((name, data));
    }
    fs::set_permissions(m.path("f0"), fs::Permissions::from_mode(0o600)).unwrap();
    utimens(&m.path("f2"), ts(1_500_000_000, 1), ts(1_600_000_000, 2)).unwrap();
    std::os::unix::fs::symlink("a/b", m.path("link")).unwrap();
    set_xattr(&m.path("a"), "user.k", b"v", 0).unwrap();
    let listing = tree_listing(m.mnt());
    m.remount();
    for (name, data) in &files {
        assert_eq!(
            &fs::read(m.path(name)).unwrap(),
            data,
            "{name} after remount"
        );
    }
    let after = tree_listing(m.mnt());
    if writeback {
        assert_listings_match(&after, &listing, &["./f2"], 2.0);
    } else {
        assert_eq!(after, listing, "names, modes, sizes, times after remount");
    }
    assert_eq!(get_xattr(&m.path("a"), "user.k").unwrap(), b"v");
    m.remount();
    for (name, data) in &files {
        assert_eq!(
            &fs::read(m.path(name)).unwrap(),
            data,
            "{name} after a second remount"
        );
    }
}

/// The plaintext size is derived from the backing length alone:
/// backing = 1024 + full blocks × (4096 + 28) + (tail + 28 if a partial block), and an empty
/// file with a header carries one empty sealed block (28 bytes, `sealed-holes`).
#[test]
fn plaintext_size_from_backing_size() {
    let Some(mut m) = Mounted::new() else { return };
    File::create(m.path("never_written")).unwrap();
    fs::write(m.path("one"), b"x").unwrap();
    fs::write(m.path("five_k"), vec![1u8; 5000]).unwrap();
    fs::write(m.path("three_blocks"), vec![2u8; 3 * 4096]).unwrap();
    fs::write(m.path("shrunk"), vec![3u8; 5000]).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("shrunk"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    fs::write(m.path("emptied"), b"was here").unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("emptied"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let cases = [
        ("never_written", 0u64, 1024u64 + 28), // the header is written at create
        ("one", 1, 1024 + 1 + 28),
        ("five_k", 5000, 1024 + 4124 + 904 + 28),
        ("three_blocks", 3 * 4096, 1024 + 3 * 4124),
        ("shrunk", 4096, 1024 + 4124),
        ("emptied", 0, 1024 + 28),
    ];
    for round in 0..2 {
        for (name, size, backing) in cases {
            assert_eq!(
                fs::metadata(m.path(name)).unwrap().len(),
                size,
                "{name}: size through the mount (round {round})"
            );
            assert_eq!(
                fs::metadata(m.backing_path(name)).unwrap().len(),
                backing,
                "{name}: backing length"
            );
            if size > 0 {
                assert_eq!(backing_len(size), backing);
            }
        }
        m.remount();
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering: every change to the ciphertext reads as EIO, never as garbage.

#[test]
fn tamper_flipped_byte_reads_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let size = 3 * BLOCK as usize + 500;
    let mut rng = Rng::new(9);
    let intact = rng.bytes(size);
    // (name, backing offset of the flipped byte)
    let cases = [
        ("ciphertext_mid", block_offset(1) + 12 + 100),
        ("nonce_first", block_offset(0) + 3),
        ("tag_last", block_offset(3) + 12 + 500 + 5),
        ("ciphertext_last", block_offset(3) + 12),
    ];
    for (name, _) in &cases {
        fs::write(m.path(name), &intact).unwrap();
    }
    fs::write(m.path("untouched"), &intact).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    for (name, off) in &cases {
        flip_byte(&m.backing_path(name), *off);
    }
    m.mount();
    for (name, _) in &cases {
        assert_eq!(
            fs::metadata(m.path(name)).unwrap().len(),
            size as u64,
            "{name}: size is still derivable"
        );
        assert_eq!(read_errno(&m.path(name)), Err(libc::EIO), "{name}");
    }
    assert_eq!(
        fs::read(m.path("untouched")).unwrap(),
        intact,
        "other files are unaffected"
    );
    let log = m.log_text();
    assert!(
        log.contains("WARN"),
        "an integrity failure is logged:\n{log}"
    );
    // A damaged file can be replaced whole (O_TRUNC drops the damaged blocks).
    fs::write(m.path("ciphertext_mid"), &intact).unwrap();
    assert_eq!(fs::read(m.path("ciphertext_mid")).unwrap(), intact);
}

#[test]
fn tamper_swapped_blocks_read_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let mut rng = Rng::new(10);
    fs::write(m.path("swapped"), rng.bytes(4 * BLOCK as usize)).unwrap();
    let x = rng.bytes(2 * BLOCK as usize);
    fs::write(m.path("x"), &x).unwrap();
    fs::write(m.path("y"), rng.bytes(2 * BLOCK as usize)).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    let sealed = (BLOCK + common::OVERHEAD) as usize;
    let read_block = |p: &Path, i: u64| {
        let mut b = vec![0u8; sealed];
        File::open(p)
            .unwrap()
            .read_exact_at(&mut b, block_offset(i))
            .unwrap();
        b
    };
    let write_block = |p: &Path, i: u64, b: &[u8]| {
        OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .write_all_at(b, block_offset(i))
            .unwrap()
    };
    // Blocks 1 and 2 of one file swap places.
    let s = m.backing_path("swapped");
    let (b1, b2) = (read_block(&s, 1), read_block(&s, 2));
    write_block(&s, 1, &b2);
    write_block(&s, 2, &b1);
    // Block 0 of x moves into y (same index, other file).
    write_block(
        &m.backing_path("y"),
        0,
        &read_block(&m.backing_path("x"), 0),
    );
    m.mount();
    assert_eq!(
        read_errno(&m.path("swapped")),
        Err(libc::EIO),
        "swapped blocks"
    );
    assert_eq!(
        read_errno(&m.path("y")),
        Err(libc::EIO),
        "a block from another file"
    );
    assert_eq!(
        fs::read(m.path("x")).unwrap(),
        x,
        "the donor file is intact"
    );
}

#[test]
fn tamper_truncated_backing_reads_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(12).bytes(3 * BLOCK as usize + 100);
    for name in ["cut_two_blocks", "cut_tail", "cut_mid_block"] {
        fs::write(m.path(name), &data).unwrap();
    }
    assert!(m.unmount().is_some_and(|s| s.success()));
    let cut = |name: &str, len: u64| {
        OpenOptions::new()
            .write(true)
            .open(m.backing_path(name))
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    cut("cut_two_blocks", block_offset(2)); // a valid-looking 8192-byte file
    cut("cut_tail", block_offset(3)); // a valid-looking 12288-byte file
    cut("cut_mid_block", block_offset(2) + 1000); // a valid-looking length, inside block 2
    m.mount();
    assert_eq!(
        fs::metadata(m.path("cut_two_blocks")).unwrap().len(),
        2 * BLOCK
    );
    assert_eq!(
        read_errno(&m.path("cut_two_blocks")),
        Err(libc::EIO),
        "truncated at a block boundary"
    );
    assert_eq!(
        read_errno(&m.path("cut_tail")),
        Err(libc::EIO),
        "tail block dropped"
    );
    assert_eq!(
        read_errno(&m.path("cut_mid_block")),
        Err(libc::EIO),
        "truncated inside a block"
    );
}

#[test]
fn tamper_header_copies() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(13).bytes(5000);
    for name in ["copy_a_damaged", "both_damaged", "magic_a_damaged"] {
        fs::write(m.path(name), &data).unwrap();
    }
    assert!(m.unmount().is_some_and(|s| s.success()));
    flip_byte(&m.backing_path("copy_a_damaged"), 100); // inside copy A's key slot
    flip_byte(&m.backing_path("magic_a_damaged"), 0);
    flip_byte(&m.backing_path("both_damaged"), 500); // copy A's MAC
    flip_byte(&m.backing_path("both_damaged"), 512 + 500); // copy B's MAC
    m.mount();
    assert_eq!(
        fs::read(m.path("copy_a_damaged")).unwrap(),
        data,
        "copy B takes over"
    );
    assert_eq!(
        fs::read(m.path("magic_a_damaged")).unwrap(),
        data,
        "copy B takes over"
    );
    assert_eq!(read_errno(&m.path("both_damaged")), Err(libc::EIO));
}

#[test]
fn tamper_appended_or_zeroed_blocks_and_swapped_headers_read_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let mut rng = Rng::new(14);
    let full = rng.bytes(3 * BLOCK as usize); // last block is full
    let partial = rng.bytes(2 * BLOCK as usize + 300);
    for name in ["append_block", "zero_last", "append_byte", "victim"] {
        fs::write(m.path(name), &full).unwrap();
    }
    fs::write(m.path("donor"), &partial).unwrap();
    fs::write(m.path("zero_last_partial"), &partial).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    let sealed = (BLOCK + common::OVERHEAD) as usize;
    let bp = |n: &str| m.backing_path(n);
    // A copy of block 1 appended as block 3: the old last block (flag 1) is no longer last.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(bp("append_block"))
        .unwrap();
    let mut b1 = vec![0u8; sealed];
    f.read_exact_at(&mut b1, block_offset(1)).unwrap();
    f.write_all_at(&b1, block_offset(3)).unwrap();
    drop(f);
    // The last block zeroed (a "hole" where the format always writes).
    OpenOptions::new()
        .write(true)
        .open(bp("zero_last"))
        .unwrap()
        .write_all_at(&vec![0u8; sealed], block_offset(2))
        .unwrap();
    let tail = 300 + common::OVERHEAD as usize;
    OpenOptions::new()
        .write(true)
        .open(bp("zero_last_partial"))
        .unwrap()
        .write_all_at(&vec![0u8; tail], block_offset(2))
        .unwrap();
    // One byte appended: a length the format cannot produce... or a 1-byte block.
    OpenOptions::new()
        .append(true)
        .open(bp("append_byte"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    // Another file's header region (copies A and B) put on "victim".
    let mut hdr = vec![0u8; common::HEADER_REGION as usize];
    File::open(bp("donor"))
        .unwrap()
        .read_exact_at(&mut hdr, 0)
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(bp("victim"))
        .unwrap()
        .write_all_at(&hdr, 0)
        .unwrap();
    m.mount();
    assert_eq!(
        fs::metadata(m.path("append_block")).unwrap().len(),
        4 * BLOCK
    );
    for name in [
        "append_block",
        "zero_last",
        "zero_last_partial",
        "append_byte",
        "victim",
    ] {
        assert_eq!(read_errno(&m.path(name)), Err(libc::EIO), "{name}");
    }
    assert_eq!(fs::read(m.path("donor")).unwrap(), partial);
}

/// A second mount of a mounted volume is refused (exit 6); a wrong or malformed key file is
/// refused (exit 3 / 1) without mounting anything.
#[test]
fn mount_refusals() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("f"), b"still here").unwrap();
    let mnt2 = m.root().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let backing = m.backing().to_owned();
    let try_mount = |key: &Path| {
        // Should fail fast; if it mounted instead, `timeout` stops it (SIGTERM unmounts).
        common::output(
            Command::new("timeout")
                .args(["-k", "5", "20"])
                .arg(common::BIN)
                .arg("mount")
                .arg(&backing)
                .arg(&mnt2)
                .arg("--keyfile")
                .arg(key)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null()),
        )
    };
    let out = try_mount(m.keyfile());
    assert_eq!(
        out.status.code(),
        Some(6),
        "second mount of a mounted volume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&mnt2));
    assert!(m.unmount().is_some_and(|s| s.success()));

    let wrong = m.scratch().join("wrong.key");
    fs::write(&wrong, common::random_bytes(32)).unwrap();
    let out = try_mount(&wrong);
    assert_eq!(
        out.status.code(),
        Some(3),
        "wrong key file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&mnt2));
    let short = m.scratch().join("short.key");
    fs::write(&short, common::random_bytes(31)).unwrap();
    let out = try_mount(&short);
    assert!(!out.status.success(), "a 31-byte key file must be refused");
    assert!(!common::is_mounted(&mnt2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains(&common::hex(m.key())),
        "error output holds the key"
    );

    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"still here");
}

#[test]
fn big_directory_and_odd_names() {
    let Some(mut m) = Mounted::new() else { return };
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..1000 {
        fs::write(m.path(&format!("many/file-{i:04}")), i.to_string()).unwrap();
    }
    let odd = [
        "with space",
        "new\nline",
        "tab\there",
        "ünïcødé-名前",
        "-dash",
        ".hidden",
        "x".repeat(255).as_str().to_owned().leak(),
    ];
    for n in odd {
        fs::write(m.path("many").join(n), n.as_bytes()).unwrap();
    }
    let count = |m: &Mounted| fs::read_dir(m.path("many")).unwrap().count();
    assert_eq!(count(&m), 1000 + odd.len());
    let ls = check(tool("ls").arg("-1a").arg(m.path("many")));
    assert_eq!(
        ls.lines().count(),
        1000 + 2 + odd.len() + 1,
        "ls -1a (the newline name spans two lines)"
    );
    let too_long = "y".repeat(256);
    assert_eq!(
        errno(&fs::write(m.path("many").join(&too_long), b"").unwrap_err()),
        libc::ENAMETOOLONG
    );
    m.remount();
    assert_eq!(count(&m), 1000 + odd.len());
    for n in odd {
        assert_eq!(fs::read(m.path("many").join(n)).unwrap(), n.as_bytes());
    }
    assert_eq!(fs::read(m.path("many/file-0999")).unwrap(), b"999");
    fs::remove_dir_all(m.path("many")).unwrap();
    assert!(!m.path("many").exists());
}

/// O_APPEND writers in parallel: no record lost, torn or overwritten.
#[test]
fn concurrent_appends() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("log");
    File::create(&p).unwrap();
    const RECORDS: usize = 300;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                for n in 0..RECORDS {
                    // 97 bytes: records straddle block boundaries.
                    let rec = format!("{t}:{n:05}:{}\n", "z".repeat(88));
                    assert_eq!(rec.len(), 97);
                    f.write_all(rec.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = String::from_utf8(fs::read(&p).unwrap()).unwrap();
    let mut next = [0usize; 3];
    for line in text.lines() {
        let (t, rest) = line.split_once(':').unwrap();
        let t: usize = t.parse().unwrap();
        assert_eq!(
            rest,
            format!("{:05}:{}", next[t], "z".repeat(88)),
            "record order of writer {t}"
        );
        next[t] += 1;
    }
    assert_eq!(next, [RECORDS; 3]);
}

/// fio random writes of odd sizes with checksums, verified by fio; then O_DIRECT.
#[test]
fn fio_verify() {
    let Some(m) = Mounted::new() else { return };
    let run = |args: &[&str]| {
        check(
            tool("fio")
                .args(["--output-format=terse", "--ioengine=psync"])
                .args(args)
                .current_dir(m.mnt()),
        )
    };
    run(&[
        "--name=cached",
        "--filename=fio.cached",
        "--size=4m",
        "--rw=randwrite",
        "--bsrange=512-37k",
        "--verify=crc32c",
        "--do_verify=1",
    ]);
    run(&[
        "--name=direct",
        "--filename=fio.direct",
        "--size=2m",
        "--rw=randwrite",
        "--bs=4k",
        "--direct=1",
        "--verify=md5",
        "--do_verify=1",
    ]);
    assert_eq!(fs::metadata(m.path("fio.cached")).unwrap().len(), 4 << 20);
}

/// SIGTERM and SIGINT unmount cleanly: exit 0, the mount is gone, the data is intact.
#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(15).bytes(50_000);
    fs::write(m.path("f"), &data).unwrap();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let status = m.signal_and_wait(sig);
        assert!(
            status.is_some_and(|s| s.success()),
            "signal {sig}: daemon exit {status:?}\n{}",
            m.diagnostics()
        );
        assert!(!common::is_mounted(m.mnt()), "signal {sig}: still mounted");
        m.mount();
        assert_eq!(fs::read(m.path("f")).unwrap(), data);
    }
    assert!(
        m.log_text().contains("signal received"),
        "the log says why it stopped"
    );
}

/// A write, truncate or O_TRUNC open by a process without CAP_FSETID clears set-user-id, and
/// set-group-id on a group-executable file, as the kernel does on a local filesystem (the
/// mount asks the kernel to leave this to it: FUSE_HANDLE_KILLPRIV_V2); root keeps them.
/// Checked with and without the writeback cache.
#[test]
fn unprivileged_write_and_truncate_clear_setid_bits() {
    for writeback in [true, false] {
        let Some(m) = Mounted::for_other_users(common::Options {
            writeback,
            ..Default::default()
        }) else {
            return;
        };
        let files = [
            ("write", 0o6777, "printf x >> write", 0o777),
            ("truncate", 0o6777, "truncate -s 1 truncate", 0o777),
            ("otrunc", 0o6777, ": > otrunc", 0o777),
            ("sgid_no_gx", 0o2767, "printf x >> sgid_no_gx", 0o2767),
            ("untouched", 0o6777, "cat untouched > /dev/null", 0o6777),
            ("by_root", 0o6777, "", 0o6777),
        ];
        for (name, mode, _, _) in &files {
            fs::write(m.path(name), b"0123456789").unwrap();
            fs::set_permissions(m.path(name), fs::Permissions::from_mode(*mode)).unwrap();
        }
        for (_, _, script, _) in files.iter().filter(|f| !f.2.is_empty()) {
            let out = common::as_user_1000(m.mnt(), script);
            assert!(
                out.status.success(),
                "as uid 1000: {script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        OpenOptions::new()
            .append(true)
            .open(m.path("by_root"))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        for (name, _, script, want) in &files {
            for md in [
                fs::metadata(m.path(name)).unwrap(),
                fs::metadata(m.backing_path(name)).unwrap(),
            ] {
                assert_eq!(
                    md.mode() & 0o7777,
                    *want,
                    "{name} after `{script}` (writeback cache {writeback})"
                );
            }
        }
    }
}

/// With --allow-other, another user (uid 1000) gets files it owns (in the backing store too)
/// and the kernel's permission checks (default_permissions) apply to it.
#[test]
fn other_user_with_allow_other() {
    let Some(m) = Mounted::for_other_users(common::Options::default()) else {
        return;
    };
    fs::create_dir(m.path("home")).unwrap();
    std::os::unix::fs::chown(m.path("home"), Some(1000), Some(1000)).unwrap();
    fs::write(m.path("rootonly"), b"root secret").unwrap();
    fs::set_permissions(m.path("rootonly"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.path("readonly"), b"shared").unwrap();
    fs::set_permissions(m.path("readonly"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |script: &str| common::as_user_1000(m.mnt(), script);
    let ok = |script: &str| {
        let out = as_user(script);
        assert!(
            out.status.success(),
            "as uid 1000: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok("umask 022 && echo mine > home/f && mkdir home/d && ln -s f home/l && echo more >> home/f");
    assert_eq!(ok("cat home/f readonly"), "mine\nmore\nshared");
    for (rel, mode) in [("home/f", 0o644), ("home/d", 0o755)] {
        for md in [
            fs::symlink_metadata(m.path(rel)).unwrap(),
            fs::symlink_metadata(m.backing_path(rel)).unwrap(),
        ] {
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777),
                (1000, 1000, mode),
                "{rel}"
            );
        }
    }
    assert_eq!(
        fs::symlink_metadata(m.backing_path("home/l"))
            .unwrap()
            .uid(),
        1000,
        "symlink owner"
    );
    assert!(
        !as_user("cat rootonly").status.success(),
        "a 0600 root file is not readable by uid 1000"
    );
    assert!(
        !as_user("echo x >> readonly").status.success(),
        "a 0644 root file is not writable by uid 1000"
    );
    assert!(
        !as_user("touch newfile").status.success(),
        "the root-owned 0755 mountpoint is not writable by uid 1000"
    );
    assert!(
        !as_user("chown 0 home/f").status.success(),
        "uid 1000 cannot give files away"
    );
    ok("chmod 600 home/f");
    assert_eq!(
        fs::metadata(m.path("home/f")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::read(m.path("readonly")).unwrap(), b"shared");
    assert_eq!(fs::read(m.path("rootonly")).unwrap(), b"root secret");
}

// ---------------------------------------------------------------------------------------------
// A full backing filesystem

const SMALL_FS: u64 = 1 << 20;

/// Writes `fill` through the mount until the backing filesystem is full; returns the error.
fn fill_up(m: &Mounted) -> io::Error {
    // A write that does not fit fails whole (envelopefs reserves space before writing), so
    // keep filling with smaller writes until even a small one fails.
    let mut f = File::create(m.path("fill")).unwrap();
    let mut last = None;
    for size in [64 * 1024, 4096, 512] {
        let chunk = vec![0x5au8; size];
        for _ in 0..(2 * SMALL_FS / size as u64) {
            if let Err(e) = f.write_all(&chunk) {
                last = Some(e);
                break;
            }
        }
    }
    last.unwrap_or_else(|| panic!("a {SMALL_FS}-byte backing filesystem never filled up"))
}

/// ENOSPC is reported as such, other files are untouched, and space freed is usable again.
#[test]
fn enospc_is_reported_and_recovered_from() {
    let Some(mut m) = Mounted::with_options(common::Options {
        backing_fs_size: Some(SMALL_FS),
        writeback: false,
        ..Default::default()
    }) else {
        return;
    };
    let keep = Rng::new(16).bytes(10_000);
    fs::write(m.path("keep"), &keep).unwrap();
    let e = fill_up(&m);
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    let e = fs::write(m.path("new"), vec![1u8; 50_000]).unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    assert_eq!(fs::read(m.path("keep")).unwrap(), keep);
    // A create whose header does not fit fails whole (ENOSPC, nothing left behind), so "new"
    // may not exist.
    let _ = fs::remove_file(m.path("new"));
    space_freed_is_usable_again(&mut m, &keep);
}

/// Removes `fill`, then a new 100,000-byte file must write and fsync, and it and `keep` must
/// read back after a remount.
///
/// The kernel sends RELEASE (close of the last descriptor) and FORGET (the inode's last
/// reference) asynchronously, and the backing file's space is free only once the daemon has
/// closed its descriptors, so the backing filesystem's free space is awaited first (5 s at
/// most: a daemon that never frees it fails here).
fn space_freed_is_usable_again(m: &mut Mounted, keep: &[u8]) {
    fs::remove_file(m.path("fill")).unwrap();
    let free = |m: &Mounted| {
        let v = statvfs(&m.data());
        v.f_bavail * v.f_frsize
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while free(m) < SMALL_FS / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "removing the file that filled the disk freed no space within 5 s ({} bytes free)",
            free(m)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut f = File::create(m.path("after")).unwrap();
    f.write_all(&[2u8; 100_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.remount();
    assert_eq!(fs::read(m.path("keep")).unwrap(), keep);
    assert_eq!(fs::read(m.path("after")).unwrap(), vec![2u8; 100_000]);
}

/// With the writeback cache (the default) a write lands in the kernel's page cache, so a full
/// backing filesystem is reported by fsync (or close), not by write; the files already on disk
/// are untouched and the space freed is usable again.
#[test]
fn enospc_with_writeback_cache_is_reported_by_fsync() {
    let Some(mut m) = Mounted::with_options(common::Options {
        backing_fs_size: Some(SMALL_FS),
        ..Default::default()
    }) else {
        return;
    };
    let keep = Rng::new(19).bytes(10_000);
    fs::write(m.path("keep"), &keep).unwrap();
    let mut f = File::create(m.path("fill")).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut err = None;
    for _ in 0..(2 * SMALL_FS / chunk.len() as u64) {
        if let Err(e) = f.write_all(&chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err
        .or_else(|| f.sync_all().err())
        .expect("2x the space written and fsynced");
    assert_eq!(errno(&err), libc::ENOSPC, "{err}");
    drop(f);
    assert_eq!(fs::read(m.path("keep")).unwrap(), keep);
    space_freed_is_usable_again(&mut m, &keep);
}

/// An append that fails with ENOSPC must leave the bytes already in the file readable (as on
/// any POSIX filesystem: old data intact, at most a prefix of the new data added).
#[test]
fn enospc_during_append_keeps_old_data() {
    let Some(mut m) = Mounted::with_options(common::Options {
        backing_fs_size: Some(SMALL_FS),
        writeback: false,
        ..Default::default()
    }) else {
        return;
    };
    let old = Rng::new(17).bytes(5000); // block 1 is a partial last block
    fs::write(m.path("a"), &old).unwrap();
    let e = fill_up(&m);
    assert_eq!(errno(&e), libc::ENOSPC);
    let more = Rng::new(18).bytes(20_000);
    let e = OpenOptions::new()
        .append(true)
        .open(m.path("a"))
        .unwrap()
        .write_all(&more)
        .unwrap_err();
    assert_eq!(errno(&e), libc::ENOSPC);
    let check_a = |m: &Mounted, when: &str| {
        let got = fs::read(m.path("a")).unwrap_or_else(|e| {
            panic!("{when}: the file that ran out of space is unreadable: {e}")
        });
        assert!(
            got.len() >= old.len() && got[..old.len()] == old[..],
            "{when}: the old bytes changed"
        );
        assert!(
            got[old.len()..] == more[..got.len() - old.len()],
            "{when}: more than a prefix of the append"
        );
    };
    check_a(&m, "while full");
    fs::remove_file(m.path("fill")).unwrap();
    check_a(&m, "after freeing space");
    m.remount();
    check_a(&m, "after remount");
}

/// open(O_CREAT|O_RDONLY) creates a file (the header is still written); O_CREAT|O_WRONLY too.
#[test]
fn create_with_read_only_and_write_only_access() {
    let Some(m) = Mounted::new() else { return };
    for (name, opts) in [
        (
            "ro",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CREAT)
                .mode(0o644)
                .clone(),
        ),
        ("wo", OpenOptions::new().write(true).create(true).clone()),
    ] {
        let f = opts
            .open(m.path(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(f);
        assert_eq!(fs::read(m.path(name)).unwrap(), b"", "{name}");
        fs::write(m.path(name), b"later").unwrap();
        assert_eq!(fs::read(m.path(name)).unwrap(), b"later", "{name}");
    }
}
