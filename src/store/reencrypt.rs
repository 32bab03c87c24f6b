//! Crash-safe in-place replacement of a backing file's bytes, for re-encryption under a fresh
//! data key (`envelopefs reencrypt`): a redo journal in `BACKING/.reencrypt/`.
//!
//! The file keeps its inode (hard links, the mounted daemon's descriptors and its inode table
//! stay valid), so the new bytes cannot arrive by rename. Instead:
//!
//! 1. the new bytes go to `BACKING/.reencrypt/<random>.tmp`, which is fsynced;
//! 2. it is renamed to `<random>.redo` and the directory fsynced: the **commit point**;
//! 3. the bytes are copied over the target in place, the target is cut to their length and
//!    fsynced;
//! 4. the journal is removed.
//!
//! A crash before 2 leaves the target untouched (the `.tmp` is removed by [`recover`]); a crash
//! after 2 leaves a journal that [`recover`] (run before a volume is mounted or re-encrypted)
//! copies again, so the target ends as its old or its new version, never a mix that is read.
//!
//! Journal file: `"EnvFSrj1"` (8) ‖ st_dev (u64) ‖ st_ino (u64) ‖ content length (u64) ‖
//! content. The target is found again by device and inode number (a walk of the data tree).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Journal directory, in BACKING.
pub(crate) const JOURNAL_DIR: &str = ".reencrypt";
const MAGIC: &[u8; 8] = b"EnvFSrj1";
const PREFIX_LEN: u64 = 32;
const COPY_CHUNK: usize = 1 << 20;
/// Environment variable naming a failpoint (`reencrypt-after-commit`: abort the process right
/// after a journal is committed), so tests can crash in a window too short to hit by timing.
pub(crate) const FAILPOINT: &str = "ENVELOPEFS_FAILPOINT";

/// A journal being written: [`Journal::writer`] takes the new bytes, [`Journal::apply`] commits
/// them and copies them over the target.
pub struct Journal {
    dir: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl Journal {
    /// Starts a journal for `target` in `backing/.reencrypt`.
    pub(crate) fn begin(backing: &Path, target: &File) -> io::Result<Journal> {
        let dir = backing.join(JOURNAL_DIR);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).expect("the OS random number generator failed");
        let tmp = dir.join(format!("{}.tmp", crate::format::context::hex(&rnd)));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let meta = target.metadata()?;
        let mut out = BufWriter::with_capacity(COPY_CHUNK, f);
        out.write_all(MAGIC)?;
        out.write_all(&meta.dev().to_be_bytes())?;
        out.write_all(&meta.ino().to_be_bytes())?;
        out.write_all(&0u64.to_be_bytes())?; // length, filled in at commit
        Ok(Journal {
            dir,
            tmp,
            out,
            len: 0,
        })
    }

    /// Appends new bytes of the target's content.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Commits the journal (fsync, rename to `.redo`, fsync the directory), copies it over
    /// `target` and removes it. An error before the commit leaves the target untouched and
    /// removes the journal; an error after it leaves the journal for [`recover`].
    pub(crate) fn apply(self, target: &File) -> io::Result<()> {
        let Journal { dir, tmp, out, len } = self;
        let committed = (|| -> io::Result<PathBuf> {
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.write_all_at(&len.to_be_bytes(), 24)?;
            f.sync_all()?;
            let redo = tmp.with_extension("redo");
            fs::rename(&tmp, &redo)?;
            crate::atomic::sync_dir(&dir)?;
            Ok(redo)
        })();
        let redo = match committed {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        log::debug!(
            "re-encryption journal {} committed ({len} bytes)",
            redo.display()
        );
        if std::env::var_os(FAILPOINT).is_some_and(|v| v == "reencrypt-after-commit") {
            // Tests: a crash in the window between the commit and the copy (tests/trust.rs).
            log::error!("failpoint reencrypt-after-commit: aborting");
            std::process::abort();
        }
        copy_over(&redo, target)?;
        fs::remove_file(&redo)?;
        log::debug!("re-encryption journal {} applied", redo.display());
        Ok(())
    }
}

/// Copies the content of journal `redo` over `target`, cuts `target` to its length and
/// fsyncs it.
fn copy_over(redo: &Path, target: &File) -> io::Result<()> {
    let mut j = File::open(redo)?;
    let (_, _, len) = read_prefix(&mut j)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(COPY_CHUNK as u64) as usize;
        j.read_exact(&mut buf[..n])?;
        target.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    target.set_len(len)?;
    target.sync_all()
}

fn read_prefix(j: &mut File) -> io::Result<(u64, u64, u64)> {
    let mut p = [0u8; PREFIX_LEN as usize];
    j.seek(SeekFrom::Start(0))?;
    j.read_exact(&mut p)?;
    if &p[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an envelopefs re-encryption journal",
        ));
    }
    let word = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let (dev, ino, len) = (word(8), word(16), word(24));
    if j.metadata()?.len() != PREFIX_LEN + len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "re-encryption journal has the wrong length",
        ));
    }
    Ok((dev, ino, len))
}

/// Finishes what a crash interrupted (see the module docs): every committed journal in
/// `backing/.reencrypt` is copied over its target (found under `data_dir` by device and inode
/// number) and removed; uncommitted ones are removed. Returns how many files were completed.
/// Call with the volume not mounted (under its lock).
pub(crate) fn recover(backing: &Path, data_dir: &Path) -> io::Result<usize> {
    let dir = backing.join(JOURNAL_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut done = 0;
    let mut targets: Option<Vec<(u64, u64, PathBuf)>> = None;
    for e in entries {
        let path = e?.path();
        match path.extension().and_then(|x| x.to_str()) {
            Some("tmp") => {
                log::info!(
                    "re-encryption journal {}: never committed; removing it",
                    path.display()
                );
                fs::remove_file(&path)?;
            }
            Some("redo") => {
                let mut j = File::open(&path)?;
                let (dev, ino, _) = match read_prefix(&mut j) {
                    Ok(p) => p,
                    Err(e) => {
                        log::error!(
                            "re-encryption journal {}: {e}; left in place, move it away to go on",
                            path.display()
                        );
                        return Err(e);
                    }
                };
                let all = match &targets {
                    Some(t) => t,
                    None => targets.insert(inodes(data_dir)?),
                };
                match all.iter().find(|(d, i, _)| (*d, *i) == (dev, ino)) {
                    Some((_, _, p)) => {
                        let target = OpenOptions::new().read(true).write(true).open(p)?;
                        copy_over(&path, &target)?;
                        log::info!("finished the interrupted re-encryption of {}", p.display());
                        done += 1;
                    }
                    None => log::warn!(
                        "re-encryption journal {}: its file is gone; removing it",
                        path.display()
                    ),
                }
                fs::remove_file(&path)?;
            }
            _ => {}
        }
    }
    if done > 0 {
        crate::atomic::sync_dir(&dir)?;
    }
    Ok(done)
}

/// (device, inode, path) of every regular file under `dir`.
fn inodes(dir: &Path) -> io::Result<Vec<(u64, u64, PathBuf)>> {
    Ok(super::walk::regular_files_with_inodes(dir)?
        .into_iter()
        .map(|e| (e.dev, e.ino, e.path))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap();
        let target = data.join("f");
        fs::write(&target, b"old contents, longer than the new").unwrap();
        (tmp, data, target)
    }

    #[test]
    fn apply_replaces_in_place_and_keeps_the_inode() {
        let (tmp, _data, target) = setup();
        let ino = fs::metadata(&target).unwrap().ino();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        let mut j = Journal::begin(tmp.path(), &f).unwrap();
        j.write(b"new ").unwrap();
        j.write(b"bytes").unwrap();
        j.apply(&f).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new bytes");
        assert_eq!(fs::metadata(&target).unwrap().ino(), ino);
        assert_eq!(
            fs::read_dir(tmp.path().join(JOURNAL_DIR)).unwrap().count(),
            0
        );
    }

    /// A crash after the commit point: recovery copies the journal; before it: recovery
    /// removes it and the target keeps its old bytes.
    #[test]
    fn recovery_finishes_committed_journals_and_drops_the_others() {
        let (tmp, data, target) = setup();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        // Uncommitted: only the .tmp exists.
        let mut j = Journal::begin(tmp.path(), &f).unwrap();
        j.write(b"never committed").unwrap();
        j.out.flush().unwrap();
        std::mem::forget(j);
        assert_eq!(recover(tmp.path(), &data).unwrap(), 0);
        assert_eq!(
            fs::read(&target).unwrap(),
            b"old contents, longer than the new"
        );
        assert_eq!(
            fs::read_dir(tmp.path().join(JOURNAL_DIR)).unwrap().count(),
            0
        );
        // Committed, then a crash half way through the copy.
        let mut j = Journal::begin(tmp.path(), &f).unwrap();
        j.write(b"committed new").unwrap();
        let Journal {
            tmp: t, out, len, ..
        } = j;
        let jf = out.into_inner().unwrap();
        jf.write_all_at(&len.to_be_bytes(), 24).unwrap();
        fs::rename(&t, t.with_extension("redo")).unwrap();
        f.write_all_at(b"commi", 0).unwrap();
        // The target was renamed meanwhile: it is found by inode number.
        fs::rename(&target, data.join("g")).unwrap();
        assert_eq!(recover(tmp.path(), &data).unwrap(), 1);
        assert_eq!(fs::read(data.join("g")).unwrap(), b"committed new");
        assert_eq!(
            fs::read_dir(tmp.path().join(JOURNAL_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_damaged_journal_stops_recovery_and_is_kept() {
        let (tmp, data, _target) = setup();
        let dir = tmp.path().join(JOURNAL_DIR);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("x.redo"), b"EnvFSrj1 too short").unwrap();
        assert!(recover(tmp.path(), &data).is_err());
        assert!(dir.join("x.redo").exists());
    }
}
