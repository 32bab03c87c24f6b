//! Unit tests of `fs::content`: times on truncate, and the `sealed-holes` rules (zeroed blocks,
//! files cut to their header, gaps filled with sealed zeros, a config that lost the feature).

use std::time::{Duration, UNIX_EPOCH};

use crate::fs::{SetAttr, testing};
use crate::store::sys::SetTime;

#[test]
fn truncate_to_the_same_size_still_updates_mtime() {
    let (fs, _tmp, caller, ino, fh) = testing::with_file();
    fs.release(fh).unwrap();
    let old = SetAttr {
        atime: Some(SetTime::At(1000, 0)),
        mtime: Some(SetTime::At(1000, 0)),
        ..SetAttr::default()
    };
    for size in [0, 5, 5, 0] {
        fs.setattr(ino, &old, &caller).unwrap();
        let a = fs
            .setattr(
                ino,
                &SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                },
                &caller,
            )
            .unwrap();
        assert_eq!(a.size, size);
        assert!(
            a.mtime > UNIX_EPOCH + Duration::from_secs(1000),
            "size {size}: mtime not updated"
        );
        assert_eq!(
            a.atime,
            UNIX_EPOCH + Duration::from_secs(1000),
            "size {size}: atime changed"
        );
    }
}

/// Reads the whole of inode `ino` through a fresh open (errno on failure).
fn read_all(fs: &crate::fs::EncFs, ino: u64, caller: &crate::keys::Caller) -> Result<Vec<u8>, i32> {
    let fh = fs
        .open(ino, libc::O_RDONLY, caller)
        .map_err(|e| e.errno())?;
    let r = fs.read(fh, 0, 1 << 24).map_err(|e| e.errno());
    fs.release(fh).unwrap();
    r
}

fn backing(fs: &crate::fs::EncFs, tmp: &tempfile::TempDir) -> std::path::PathBuf {
    crate::fs::testing::backing_path(fs, tmp, "f")
}

fn zero_at(path: &std::path::Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&vec![0u8; len], at)
        .unwrap();
}

/// Finding 4: on a `sealed-holes` volume (every new volume) a gap left by a write past the
/// end is sealed zeros, so zeroing any block behind the mount's back is EIO, never a forged
/// hole.
#[test]
fn sealed_holes_a_zeroed_block_is_eio_not_a_hole() {
    let (fs, tmp, caller, ino, fh) = testing::with_file();
    assert!(fs.layout().sealed_holes());
    let bs = fs.layout().block_size();
    fs.write(fh, 5 * bs + 10, b"after a gap", &caller).unwrap();
    fs.release(fh).unwrap();
    let mut expect = vec![0u8; (5 * bs + 10) as usize];
    expect.extend_from_slice(b"after a gap");
    assert_eq!(read_all(&fs, ino, &caller), Ok(expect));
    let l = fs.layout();
    let bytes = std::fs::read(backing(&fs, &tmp)).unwrap();
    for i in 0..5 {
        let at = l.block_offset(i) as usize;
        let sealed = &bytes[at..at + l.sealed_block_size() as usize];
        assert!(
            !crate::format::block::is_hole(sealed),
            "block {i} left as a hole"
        );
    }
    zero_at(
        &backing(&fs, &tmp),
        l.block_offset(2),
        l.sealed_block_size() as usize,
    );
    assert_eq!(read_all(&fs, ino, &caller), Err(libc::EIO));
}

/// Finding 4: a file cut down to its header alone (or to its header and the first bytes
/// of block 0) is EIO; an emptied file keeps an authenticated empty block and reads empty.
#[test]
fn sealed_holes_a_file_cut_to_its_header_is_eio() {
    let (fs, tmp, caller, ino, fh) = testing::with_file();
    fs.write(fh, 0, b"some content", &caller).unwrap();
    fs.release(fh).unwrap();
    for cut in [1024u64, 1024 + 28] {
        let saved = std::fs::read(backing(&fs, &tmp)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(backing(&fs, &tmp))
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_eq!(read_all(&fs, ino, &caller), Err(libc::EIO), "cut to {cut}");
        std::fs::write(backing(&fs, &tmp), saved).unwrap();
    }
    assert_eq!(read_all(&fs, ino, &caller), Ok(b"some content".to_vec()));
    // Emptied through the mount: header + empty block, reads empty, and the empty block
    // is checked (zeroed: EIO).
    let set = crate::fs::SetAttr {
        size: Some(0),
        ..crate::fs::SetAttr::default()
    };
    fs.setattr(ino, &set, &caller).unwrap();
    assert_eq!(
        std::fs::metadata(backing(&fs, &tmp)).unwrap().len(),
        1024 + 28
    );
    assert_eq!(read_all(&fs, ino, &caller), Ok(Vec::new()));
    zero_at(&backing(&fs, &tmp), 1024, 28);
    assert_eq!(read_all(&fs, ino, &caller), Err(libc::EIO));
}

/// A truncate far past the end grows in bounded steps and reads back as zeros.
#[test]
fn sealed_holes_truncate_up_fills_with_sealed_zeros() {
    let (fs, tmp, caller, ino, fh) = testing::with_file();
    fs.write(fh, 0, b"x", &caller).unwrap();
    let size = 3 * crate::fs::plan::FILL_BYTES + 12345;
    fs.truncate(ino, Some(fh), size, &caller).unwrap();
    fs.release(fh).unwrap();
    let data = read_all(&fs, ino, &caller).unwrap();
    assert_eq!(data.len() as u64, size);
    assert_eq!(data[0], b'x');
    assert!(data[1..].iter().all(|&b| b == 0));
    assert_eq!(
        std::fs::metadata(backing(&fs, &tmp)).unwrap().len(),
        fs.layout().backing_size(size)
    );
}

/// A file written under `sealed-holes` says so in its MAC'd header: taking the feature out
/// of the (unauthenticated) volume config to make zeroed blocks read as holes again gives
/// EIO instead.
#[test]
fn removing_sealed_holes_from_the_config_is_refused_per_file() {
    let (fs, tmp, caller, kms) = testing::fresh_with_kms();
    let (a, fh) = fs
        .create(1, std::ffi::OsStr::new("f"), 0o600, libc::O_RDWR, &caller)
        .unwrap();
    fs.write(fh, 0, b"data", &caller).unwrap();
    fs.release(fh).unwrap();
    assert!(fs.stored_header(a.ino).unwrap().sealed_holes);
    let root = tmp.path().join("vol");
    let cfg_path = root.join(crate::store::volume::CONFIG_NAME);
    let mut cfg =
        crate::format::volume::VolumeConfig::parse(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg.features
        .retain(|f| f != crate::format::volume::SEALED_HOLES);
    std::fs::write(&cfg_path, cfg.to_bytes()).unwrap();
    let downgraded = crate::fs::EncFs::new(
        crate::store::volume::open(&root).unwrap(),
        kms.clone(),
        &caller,
    )
    .unwrap();
    assert!(!downgraded.layout().sealed_holes());
    let ino = downgraded.lookup(1, std::ffi::OsStr::new("f")).unwrap().ino;
    assert_eq!(
        downgraded
            .open(ino, libc::O_RDONLY, &caller)
            .map(|_| ())
            .map_err(|e| e.errno()),
        Err(libc::EIO)
    );
}
