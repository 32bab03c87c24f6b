//! Mount tests of the namespace: renames (RENAME_NOREPLACE, RENAME_EXCHANGE), hard links,
//! symlinks, fifos, a big directory and odd names.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use common::sys::{errno, mkfifo, renameat2};
use common::{Mounted, check, tool};

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
