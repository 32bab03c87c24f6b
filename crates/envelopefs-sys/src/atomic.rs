//! Crash-safe whole-file replacement, shared by the keystore, the volume config and the
//! store layer: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the directory. After a crash at any instant the target holds either its
//! old or its new contents, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Atomically replaces `path` with `bytes`, creating it with `mode` if it does not exist.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, None).map(|_| ())
}

/// What [`atomic_write_preserving`] kept of the file it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// There was no file: the new one has the requested mode and the writer as owner.
    Created,
    /// The new file has the old one's mode, owner and group.
    ModeAndOwner,
    /// The new file has the old one's mode, but this process may not give files away
    /// (only root may), so it owns the new file; `uid` owned the old one.
    ModeOnly {
        /// The old file's owner.
        uid: u32,
    },
}

/// [`atomic_write`], except that when `path` exists the new file gets its mode (permission
/// bits, setuid/setgid/sticky included) and, if this process may (`fchown(2)`: root, or the
/// same owner), its owner and group; with only the group allowed (a member of it), the group.
/// The temporary file is private (mode 0600) until then, so no one sees a wider mode.
pub fn atomic_write_preserving(path: &Path, bytes: &[u8], mode_if_new: u32) -> io::Result<Kept> {
    use std::os::unix::fs::MetadataExt;
    let old = fs::metadata(path).ok().filter(fs::Metadata::is_file);
    let keep = old.map(|m| (m.mode() & 0o7777, m.uid(), m.gid()));
    replace(path, bytes, mode_if_new, keep)
}

/// Writes `bytes` to a temporary file beside `path`, gives it `keep` = (mode, uid, gid) if
/// asked, fsyncs it and renames it over `path`.
fn replace(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    keep: Option<(u32, u32, u32)>,
) -> io::Result<Kept> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "atomic_write: path has no file name",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if keep.is_some() { 0o600 } else { mode })
            .open(&tmp)?;
        f.write_all(bytes)?;
        let kept = match keep {
            None => Kept::Created,
            Some((old_mode, uid, gid)) => {
                use std::os::unix::fs::{PermissionsExt, fchown};
                // Owner first: chown may clear setuid/setgid bits, the chmod below restores them.
                let kept = match fchown(&f, Some(uid), Some(gid)) {
                    Ok(()) => Kept::ModeAndOwner,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        // Not allowed to give the file away; keep at least the group if we may.
                        let _ = fchown(&f, None, Some(gid));
                        Kept::ModeOnly { uid }
                    }
                    Err(e) => return Err(e),
                };
                f.set_permissions(fs::Permissions::from_mode(old_mode))?;
                kept
            }
        };
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)?;
        Ok(kept)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    /// The replacement keeps the old file's mode and (as root, who may chown) its owner.
    #[test]
    fn preserving_write_keeps_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert_eq!(
            atomic_write_preserving(&p, b"one", 0o600).unwrap(),
            Kept::Created
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o660)).unwrap();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&p, Some(4242), Some(4243)).unwrap();
        }
        let kept = atomic_write_preserving(&p, b"two", 0o600).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(
            (fs::read(&p).unwrap(), m.mode() & 0o7777),
            (b"two".to_vec(), 0o660)
        );
        if root {
            assert_eq!(kept, Kept::ModeAndOwner);
            assert_eq!((m.uid(), m.gid()), (4242, 4243));
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
