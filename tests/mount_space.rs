//! Mount tests of space: statfs and fallocate, and a full backing filesystem (ENOSPC reported,
//! with and without the writeback cache; old data kept; space freed usable again).
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};

use common::sys::{errno, fallocate, statvfs};
use common::{Mounted, Rng, backing_len};

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
    // may not exist. If it does, its first write failed with nothing reserved before it: the
    // file was cut back and reads without error, at most a prefix of what was written.
    match fs::read(m.path("new")) {
        Ok(bytes) => assert!(bytes.iter().all(|&b| b == 1), "new holds foreign bytes"),
        Err(e) => assert_eq!(errno(&e), libc::ENOENT, "{e}"),
    }
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
