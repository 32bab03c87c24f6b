//! `envelopefs reencrypt`: gives files a fresh data key and re-encrypts their contents
//! (`fs::reencrypt`), offline through the filesystem core or, on a mounted volume, by asking the
//! daemon through the mount; with a progress bar, a summary, and a progress file that lets an
//! interrupted run resume.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::fs::EncFs;
use crate::fs::reencrypt::REENCRYPT_XATTR;
use crate::keys::Caller;
use crate::keys::local::LocalKms;
use crate::store::reencrypt::JOURNAL_DIR;
use crate::store::volume::{self as vol, VolumeError};

/// What to re-encrypt.
#[derive(Clone, Debug, Default)]
pub struct ReencryptOptions {
    /// Wrap the new data keys under this CMK (default: each file's current CMK).
    pub to_key: Option<String>,
    /// Only files under this path, relative to the volume root.
    pub path: Option<PathBuf>,
    /// The volume's mount point when it is mounted (found in /proc/self/mountinfo otherwise).
    pub mountpoint: Option<PathBuf>,
    /// Forget an interrupted run and start over.
    pub restart: bool,
    /// Print the summary as JSON.
    pub json: bool,
}

/// Outcome counts of a run.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    files: u64,
    reencrypted: u64,
    /// Empty files that have no data key yet.
    empty: u64,
    /// Done by an earlier, interrupted run.
    resumed: u64,
    failed: Vec<(PathBuf, String)>,
    /// "offline" or the mount point the daemon worked through.
    via: String,
}

/// Name of the progress file in BACKING/.reencrypt.
const PROGRESS: &str = "progress";

/// How the files are reached.
enum Worker {
    /// The volume is not mounted: the core, under the volume lock.
    Offline {
        fs: Box<EncFs>,
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

/// The regular files to visit, relative to BACKING/data, one name per inode (hard links once).
fn files_under(data: &Path, sub: Option<&Path>) -> Result<Vec<PathBuf>, CliError> {
    let start = match sub {
        Some(p) => {
            if p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(fail(
                    ExitCode::Usage,
                    format!(
                        "--path {}: give a path inside the volume, relative to its root, without `..`",
                        p.display()
                    ),
                ));
            }
            data.join(p)
        }
        None => data.to_owned(),
    };
    let meta = std::fs::symlink_metadata(&start).map_err(|e| {
        fail(
            ExitCode::Usage,
            format!("--path: {} is not in the volume: {e}", start.display()),
        )
    })?;
    let all = if meta.is_file() {
        vec![(meta.dev(), meta.ino(), start)]
    } else {
        crate::store::walk::regular_files_with_inodes(&start)
            .map_err(|e| {
                fail(
                    ExitCode::Failure,
                    format!("cannot walk {}: {e}", start.display()),
                )
            })?
            .into_iter()
            .map(|e| (e.dev, e.ino, e.path))
            .collect()
    };
    let mut seen = HashSet::new();
    Ok(all
        .into_iter()
        .filter(|(dev, ino, _)| seen.insert((*dev, *ino)))
        .filter_map(|(_, _, p)| p.strip_prefix(data).ok().map(Path::to_owned))
        .collect())
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
    fn open(backing: &Path, opts: &ReencryptOptions) -> Result<Progress, CliError> {
        let dir = backing.join(JOURNAL_DIR);
        let path = dir.join(PROGRESS);
        let io = |e: std::io::Error| {
            fail(
                ExitCode::Failure,
                format!("progress file {}: {e}", path.display()),
            )
        };
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
                    return Err(fail(
                        ExitCode::Usage,
                        format!(
                            "an interrupted reencrypt run with other options is pending ({}); \
                             finish it with the same --to-key, or pass --restart",
                            text.lines().next().unwrap_or("?")
                        ),
                    ));
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

/// Runs a re-encryption of a volume (mounted or not).
pub fn run(backing: &Path, opts: &ReencryptOptions, secret: &SecretArgs) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    let data = backing.join(vol::DATA_DIR);
    let worker = match vol::lock(backing) {
        Ok(lock) => {
            let n = crate::store::reencrypt::recover(backing, &data).map_err(|e| {
                fail(
                    ExitCode::Failure,
                    format!("cannot finish an interrupted re-encryption: {e}"),
                )
            })?;
            if n > 0 && !opts.json {
                println!("finished {n} re-encryptions a crash had interrupted");
            }
            let unlock = read_unlock(secret, false)?;
            let kms = Arc::new(LocalKms::open(&vol::keystore_path(backing, &cfg), &unlock)?);
            let fs = EncFs::new(vol::open(backing)?, kms, &Caller::current())
                .map_err(|e| fail(ExitCode::Failure, format!("cannot open the volume: {e}")))?;
            Worker::Offline {
                fs: Box::new(fs),
                _lock: lock,
            }
        }
        Err(VolumeError::Busy(_)) => {
            let mnt = match opts
                .mountpoint
                .clone()
                .or_else(|| crate::daemon::mounts::mount_of(backing))
            {
                Some(m) => m,
                None => {
                    return Err(fail(
                        ExitCode::Busy,
                        format!(
                            "{} is mounted, but its mount point is not in this namespace's \
                             mount table; give it with --mountpoint",
                            backing.display()
                        ),
                    ));
                }
            };
            Worker::Online(mnt)
        }
        Err(e) => return Err(e.into()),
    };
    let files = files_under(&data, opts.path.as_deref())?;
    let mut progress = Progress::open(backing, opts)?;
    let mut summary = Summary {
        via: match &worker {
            Worker::Offline { .. } => "offline".into(),
            Worker::Online(m) => m.display().to_string(),
        },
        ..Summary::default()
    };
    if !progress.done.is_empty() && !opts.json {
        println!(
            "resuming an interrupted run: {} files already done (--restart starts over)",
            progress.done.len()
        );
    }
    let bar = crate::cli_rewrap::files_bar("reencrypt", files.len() as u64, opts.json);
    for rel in &files {
        summary.files += 1;
        bar.inc(1);
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
        if let Err(e) = progress.record(rel) {
            return Err(fail(
                ExitCode::Failure,
                format!("cannot write {}: {e}", progress.path.display()),
            ));
        }
    }
    bar.finish_and_clear();
    if summary.failed.is_empty() {
        let _ = std::fs::remove_file(&progress.path);
    } else {
        let _ = progress.out.sync_data();
    }
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serialises")
        );
    } else {
        println!(
            "{} files ({}): re-encrypted {}, empty (no key yet) {}, done by the earlier run {}, failed {}",
            summary.files,
            summary.via,
            summary.reencrypted,
            summary.empty,
            summary.resumed,
            summary.failed.len()
        );
        for (p, e) in &summary.failed {
            println!("  failed: {}: {e}", p.display());
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::Failure,
            format!(
                "{} files could not be re-encrypted (listed above); fix the cause and run \
                 reencrypt again: it resumes",
                summary.failed.len()
            ),
        ))
    }
}
