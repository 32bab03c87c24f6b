//! Writing sealed blocks into a backing file: the store's half of a write
//! (docs/DESIGN.md §How a write flows). The plan (`fs::plan`) says where, `fs` seals, this
//! module writes the runs (the bytes past the old end first) and fixes the length.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Writes `runs` (backing offset, sealed bytes, by increasing offset) into `file`, which is
/// `old_len` bytes long, then cuts a shrinking file to `truncate_to`.
///
/// A full disk must fail the request before an existing block is touched. So the bytes at or
/// past `old_len` go first: every run's part past the old end, in order. If one of those
/// writes fails, the file is cut back to `old_len` (nothing old was touched) and the error
/// returned. Only then are the runs' parts below `old_len` written: they overwrite bytes the
/// backing filesystem has already allocated, which on an in-place filesystem (ext4, xfs,
/// tmpfs) needs no new space. Should one fail anyway (a copy-on-write filesystem that is
/// full), the file is cut back too and the error returned; a block may then be torn, which
/// reads back as EIO, never as wrong bytes (docs/SECURITY.md §Crashes).
///
/// This replaced an `fallocate(KEEP_SIZE)` of the new range before a single `pwrite` per run:
/// same guarantee, without a journal transaction per write (~5 % of the daemon's CPU on an
/// untar, where every new file's first write also rewrites its sealed empty block).
pub(crate) fn write_runs(
    file: &File,
    runs: &[(u64, Vec<u8>)],
    old_len: u64,
    truncate_to: Option<u64>,
) -> io::Result<()> {
    let past_end = runs
        .iter()
        .filter(|(off, bytes)| off + bytes.len() as u64 > old_len)
        .map(|(off, bytes)| {
            let at = (*off).max(old_len);
            (at, &bytes[(at - off) as usize..])
        });
    let below_end = runs
        .iter()
        .filter(|(off, _)| *off < old_len)
        .map(|(off, bytes)| {
            let end = (off + bytes.len() as u64).min(old_len);
            (*off, &bytes[..(end - off) as usize])
        });
    for (at, bytes) in past_end.chain(below_end) {
        if let Err(e) = file.write_all_at(bytes, at) {
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
        write_runs(&f, &runs, 10, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"01ab456789\0\0cd");
        // A run straddling the old end, written in two parts.
        write_runs(&f, &[(8, b"WXYZ".to_vec())], 14, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"01ab4567WXYZcd");
        write_runs(&f, &[(12, b"PQRS".to_vec())], 14, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"01ab4567WXYZPQRS");
        write_runs(&f, &[(0, b"x".to_vec())], 16, Some(3)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x1a");
    }

    #[test]
    fn a_failed_write_gives_back_the_old_length() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"0123").unwrap();
        // Read-only: every write fails, and the file keeps its length and bytes.
        let f = File::open(&p).unwrap();
        assert!(write_runs(&f, &[(2, b"abcdef".to_vec())], 4, None).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"0123");
    }
}
