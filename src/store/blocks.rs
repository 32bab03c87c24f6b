//! Writing sealed blocks into a backing file: the store's half of a write
//! (docs/DESIGN.md §How a write flows). The plan (`fs::plan`) says where, `fs` seals, this
//! module reserves the space, writes the runs and fixes the length.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::sys;

/// Writes `runs` (backing offset, sealed bytes) into `file`, which is `old_len` bytes long.
///
/// First the `reserve` ranges are allocated (fallocate, keeping the size; filesystems without
/// it are written anyway), so a full disk fails the request cleanly (ENOSPC) before any
/// existing block is touched. Then the runs are written in order; if one fails, the file is
/// given back its old length (best effort: the blocks written so far are whole, the space was
/// reserved) and the error returned. Last, a shrinking change cuts the file to `truncate_to`.
pub(crate) fn write_runs(
    file: &File,
    reserve: &[Range<u64>],
    runs: &[(u64, Vec<u8>)],
    old_len: u64,
    truncate_to: Option<u64>,
) -> io::Result<()> {
    for r in reserve {
        match sys::fallocate(file, libc::FALLOC_FL_KEEP_SIZE, r.start, r.end - r.start) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    for (off, bytes) in runs {
        if let Err(e) = file.write_all_at(bytes, *off) {
            if file.metadata().is_ok_and(|m| m.len() > old_len) {
                let _ = file.set_len(old_len);
            }
            return Err(e);
        }
    }
    if let Some(len) = truncate_to {
        file.set_len(len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_runs_then_truncates() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = File::options().read(true).write(true).open(&p).unwrap();
        let runs = vec![(2, b"ab".to_vec()), (12, b"cd".to_vec())];
        let reserve = [Range { start: 10, end: 14 }];
        write_runs(&f, &reserve, &runs, 10, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"01ab456789\0\0cd");
        write_runs(&f, &[], &[(0, b"x".to_vec())], 14, Some(3)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x1a");
    }

    #[test]
    fn a_failed_write_gives_back_the_old_length() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"0123").unwrap();
        // Read-only: every write fails, and the file keeps its length and bytes.
        let f = File::open(&p).unwrap();
        assert!(write_runs(&f, &[], &[(2, b"abcdef".to_vec())], 4, None).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"0123");
    }
}
