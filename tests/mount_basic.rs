//! Mount tests of file I/O: create, read, write, append and truncate checked against a plain
//! reference file, several handles on one file, mmap, parallel O_APPEND writers, and O_CREAT
//! with read-only or write-only access.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use common::sys::{Map, errno};
use common::{BLOCK, Mounted, Rng, check, tool};

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
