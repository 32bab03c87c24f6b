//! Re-encryption of a whole volume or subtree (`envelopefs reencrypt`): which files, through
//! which path (offline through the filesystem core under the volume lock, or online by asking
//! the running daemon through its mount), and the progress file that lets an interrupted run
//! resume. The CLI parses, reads the secret when the run is offline, and prints.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::fs::EncFs;
use crate::fs::reencrypt::REENCRYPT_XATTR;
use crate::keys::secret::Unlock;
use crate::keys::{Caller, KeyError};
use crate::store::reencrypt::JOURNAL_DIR;
use crate::store::volume::{self as vol, VolumeError};

/// What to re-encrypt.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReencryptOptions {
    /// Wrap the new data keys under this CMK (default: each file's current CMK).
    pub(crate) to_key: Option<String>,
    /// Only files under this path, relative to the volume root.
    pub(crate) path: Option<PathBuf>,
    /// The volume's mount point when it is mounted (found in /proc/self/mountinfo otherwise).
    pub(crate) mountpoint: Option<PathBuf>,
    /// Forget an interrupted run and start over.
    pub(crate) restart: bool,
}

/// Why a run could not start or finish (per-file failures are in the [`Summary`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    /// The options do not fit the volume.
    #[error("{0}")]
    Usage(String),
    /// The volume is mounted where this process cannot see it.
    #[error("{0}")]
    Busy(String),
    /// The volume could not be opened or locked.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The key service refused or failed (opening the keystore offline).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Anything else: the tree walk, the journal, the progress file, the core.
    #[error("{0}")]
    Io(String),
}

/// Outcome counts of a run.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) files: u64,
    pub(crate) reencrypted: u64,
    /// Empty files that have no data key yet.
    pub(crate) empty: u64,
    /// Done by an earlier, interrupted run.
    pub(crate) resumed: u64,
    pub(crate) failed: Vec<(PathBuf, String)>,
    /// "offline" or the mount point the daemon worked through.
    pub(crate) via: String,
}

/// Name of the progress file in BACKING/.reencrypt.
const PROGRESS: &str = "progress";

/// How the volume is reached, decided before any secret is read.
pub(crate) enum Mode {
    /// Not mounted: this process holds the volume lock (and has finished any interrupted
    /// re-encryption: the count is in the second field).
    Offline(vol::VolumeLock, usize),
    /// A daemon serves the volume at this mount point.
    Online(PathBuf),
}

impl Mode {
    /// Takes the volume lock (offline) or finds the mount (online).
    pub(crate) fn choose(backing: &Path, mountpoint: Option<PathBuf>) -> Result<Mode, OpsError> {
        match vol::lock(backing) {
            Ok(lock) => {
                let data = backing.join(vol::DATA_DIR);
                let n = crate::store::reencrypt::recover(backing, &data).map_err(|e| {
                    OpsError::Io(format!("cannot finish an interrupted re-encryption: {e}"))
                })?;
                Ok(Mode::Offline(lock, n))
            }
            Err(VolumeError::Busy(_)) => mountpoint
                .or_else(|| crate::daemon::mounts::mount_of(backing))
                .map(Mode::Online)
                .ok_or_else(|| {
                    OpsError::Busy(format!(
                        "{} is mounted, but its mount point is not in this namespace's mount \
                         table; give it with --mountpoint",
                        backing.display()
                    ))
                }),
            Err(e) => Err(e.into()),
        }
    }

    /// True when the run needs the passphrase or key file (offline).
    pub(crate) fn needs_secret(&self) -> bool {
        matches!(self, Mode::Offline(..))
    }
}

/// How the files are reached.
enum Worker {
    /// The volume is not mounted: the core, under the volume lock.
    Offline {
        fs: Box<EncFs>,
        /// The volume's name cipher (None: names in the clear).
        cipher: Option<Box<crate::format::names::NameCipher>>,
        _lock: vol::VolumeLock,
    },
    /// A daemon serves the volume at this mount point.
    Online(PathBuf),
}

impl Worker {
    fn reencrypt(&self, rel: &Path, to_key: Option<&str>) -> Result<bool, String> {
        match self {
            Worker::Offline { fs, .. } => {
                let mut ino = crate::fs::inode::ROOT_INO;
                for c in rel.components() {
                    ino = fs
                        .lookup(ino, c.as_os_str())
                        .map_err(|e| e.to_string())?
                        .ino;
                }
                fs.reencrypt(ino, to_key, &Caller::current())
                    .map_err(|e| e.to_string())
            }
            Worker::Online(mnt) => {
                let value = to_key.unwrap_or("").as_bytes();
                match crate::store::sys::lsetxattr_path(
                    &mnt.join(rel),
                    OsStr::new(REENCRYPT_XATTR),
                    value,
                ) {
                    Ok(()) => Ok(true),
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(
                        "the mount has extended attributes off (--no-xattr): unmount it and \
                         run reencrypt again, offline"
                            .into(),
                    ),
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(format!(
                        "{e}: the key service refused (see the daemon's log and `envelopefs audit show`)"
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// The regular files to visit, as plaintext paths relative to the volume root, one name per
/// inode (hard links once). `root` is BACKING/data (names decrypted with `cipher` when the
/// volume encrypts them) or the mount point.
fn files_under(
    root: &Path,
    sub: Option<&Path>,
    cipher: Option<&crate::format::names::NameCipher>,
) -> Result<Vec<PathBuf>, OpsError> {
    let start = match sub {
        Some(p) => {
            if p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(OpsError::Usage(format!(
                    "--path {}: give a path inside the volume, relative to its root, without `..`",
                    p.display()
                )));
            }
            let b = crate::store::names::encrypt_path(root, cipher, p)
                .map_err(|e| OpsError::Usage(format!("--path {}: {e}", p.display())))?;
            root.join(b)
        }
        None => root.to_owned(),
    };
    let meta = std::fs::symlink_metadata(&start).map_err(|e| {
        OpsError::Usage(format!(
            "--path: {} is not in the volume: {e}",
            start.display()
        ))
    })?;
    let all = if meta.is_file() {
        vec![(meta.dev(), meta.ino(), start)]
    } else {
        crate::store::walk::regular_files_with_inodes(&start)
            .map_err(|e| OpsError::Io(format!("cannot walk {}: {e}", start.display())))?
            .into_iter()
            .map(|e| (e.dev, e.ino, e.path))
            .collect()
    };
    let mut seen = HashSet::new();
    all.into_iter()
        .filter(|(dev, ino, _)| seen.insert((*dev, *ino)))
        .filter_map(|(_, _, p)| p.strip_prefix(root).ok().map(Path::to_owned))
        .map(|rel| {
            crate::store::names::decrypt_path(root, cipher, &rel).map_err(|e| {
                OpsError::Io(format!(
                    "{}: cannot decrypt its name: {e}",
                    root.join(&rel).display()
                ))
            })
        })
        .collect()
}

/// The progress file of an interrupted run: its first line names the run's destination key,
/// every further line a file done (relative path, as UTF-8 lossy text).
struct Progress {
    path: PathBuf,
    done: HashSet<String>,
    out: std::fs::File,
    since_sync: u32,
}

impl Progress {
    fn open(backing: &Path, opts: &ReencryptOptions) -> Result<Progress, OpsError> {
        let dir = backing.join(JOURNAL_DIR);
        let path = dir.join(PROGRESS);
        let io = |e: std::io::Error| OpsError::Io(format!("progress file {}: {e}", path.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let head = format!(
            "to-key {}",
            opts.to_key.as_deref().unwrap_or("(each file's own)")
        );
        let mut done = HashSet::new();
        match std::fs::read_to_string(&path) {
            Ok(text) if !opts.restart => {
                let mut lines = text.lines();
                if lines.next() != Some(head.as_str()) {
                    return Err(OpsError::Usage(format!(
                        "an interrupted reencrypt run with other options is pending ({}); \
                         finish it with the same --to-key, or pass --restart",
                        text.lines().next().unwrap_or("?")
                    )));
                }
                done.extend(lines.map(str::to_owned));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let fresh = done.is_empty();
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&path)
            .map_err(io)?;
        if fresh {
            writeln!(out, "{head}").map_err(io)?;
        }
        Ok(Progress {
            path,
            done,
            out,
            since_sync: 0,
        })
    }

    fn record(&mut self, rel: &Path) -> std::io::Result<()> {
        writeln!(self.out, "{}", rel.to_string_lossy())?;
        self.since_sync += 1;
        if self.since_sync >= 64 {
            self.out.sync_data()?;
            self.since_sync = 0;
        }
        Ok(())
    }
}

/// Runs a re-encryption in `mode` (`unlock` is the secret for an offline run). `on_start` is
/// told how many files an interrupted earlier run already did and how many files there are;
/// `on_file` is called after each file.
pub(crate) fn run(
    backing: &Path,
    mode: Mode,
    unlock: Option<Unlock>,
    opts: &ReencryptOptions,
    on_start: impl FnOnce(usize, u64),
    mut on_file: impl FnMut(),
) -> Result<Summary, OpsError> {
    let data = backing.join(vol::DATA_DIR);
    let worker = match mode {
        Mode::Offline(lock, _) => {
            let unlock = unlock.ok_or_else(|| {
                OpsError::Usage("an offline re-encryption needs the passphrase or key file".into())
            })?;
            let cfg = vol::read_config(backing)?;
            let kms = Arc::new(crate::custody::open_kms(
                &vol::keystore_path(backing, &cfg),
                &unlock,
            )?);
            drop(unlock);
            let cipher = crate::store::names::cipher_of(&cfg, kms.as_ref(), &Caller::current())
                .map_err(|e| OpsError::Io(format!("cannot read the volume's names: {e}")))?;
            let fs = EncFs::new(vol::open(backing)?, kms, &Caller::current())
                .map_err(|e| OpsError::Io(format!("cannot open the volume: {e}")))?;
            Worker::Offline {
                fs: Box::new(fs),
                cipher: cipher.map(Box::new),
                _lock: lock,
            }
        }
        Mode::Online(mnt) => Worker::Online(mnt),
    };
    // Plaintext paths: the mounted tree, or the backing tree with its names decrypted.
    let files = match &worker {
        Worker::Offline { cipher, .. } => {
            files_under(&data, opts.path.as_deref(), cipher.as_deref())?
        }
        Worker::Online(mnt) => files_under(mnt, opts.path.as_deref(), None)?,
    };
    let mut progress = Progress::open(backing, opts)?;
    let mut summary = Summary {
        via: match &worker {
            Worker::Offline { .. } => "offline".into(),
            Worker::Online(m) => m.display().to_string(),
        },
        ..Summary::default()
    };
    on_start(progress.done.len(), files.len() as u64);
    for rel in &files {
        summary.files += 1;
        on_file();
        if progress.done.contains(&*rel.to_string_lossy()) {
            summary.resumed += 1;
            continue;
        }
        match worker.reencrypt(rel, opts.to_key.as_deref()) {
            Ok(true) => summary.reencrypted += 1,
            Ok(false) => summary.empty += 1,
            Err(e) => {
                log::warn!("reencrypt {}: {e}", rel.display());
                summary.failed.push((rel.clone(), e));
                continue;
            }
        }
        progress
            .record(rel)
            .map_err(|e| OpsError::Io(format!("cannot write {}: {e}", progress.path.display())))?;
    }
    if summary.failed.is_empty() {
        let _ = std::fs::remove_file(&progress.path);
    } else {
        let _ = progress.out.sync_data();
    }
    Ok(summary)
}
