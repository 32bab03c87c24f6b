//! The mount daemon: everything that runs while a volume is mounted. [`Daemon::open`] takes
//! the volume (its lock, an interrupted re-encryption finished, the open-file limit raised);
//! [`Daemon::mount`] unlocks the keystore with the secret, starts key maintenance and the
//! audit writer, mounts through fuser, watches for revocations, unmounts on Ctrl-C or SIGTERM
//! and returns when the mount is gone. `mount --background` ([`background`]) starts this
//! program again as a detached daemon and hands it a [`DaemonSettings`] and the secret on a
//! pipe.
//!
//! The CLI builds the settings, reads the secret, calls this module and maps a
//! [`DaemonError`] to an exit code; nothing here parses arguments or picks exit codes.

pub mod background;
pub(crate) mod control;
pub mod mounts;
mod settings;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use settings::DaemonSettings;

use crate::fs::EncFs;
use crate::fs::error::FsError;
use crate::fuse::Adapter;
use crate::keys::local::LocalKms;
use crate::keys::secret::Unlock;
use crate::keys::{Caller, KeyError};
use crate::store::reencrypt::{JOURNAL_DIR, recover};
use crate::store::sys;
use crate::store::volume::{self as vol, VolumeError};

/// How often a mounted daemon runs key maintenance (automatic rotation when due, ended
/// deletion windows, expired imported material) and flushes the audit trail to disk.
pub(crate) const MAINTENANCE_PERIOD: Duration = Duration::from_secs(60);

/// Why a mount did not start or ended badly. The CLI turns each into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// BACKING is not a usable volume, or is already mounted.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The keystore did not open (a wrong passphrase above all).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A re-encryption a crash interrupted could not be finished.
    #[error("cannot finish an interrupted re-encryption in {}: {source}", journal.display())]
    Recovery {
        /// The journal directory.
        journal: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The mountpoint is missing or not a directory.
    #[error("mountpoint {} is not a directory; create it with mkdir -p", .0.display())]
    NotADirectory(PathBuf),
    /// The filesystem core refused the volume.
    #[error("cannot open the volume: {0}")]
    OpenVolume(FsError),
    /// The kernel mount failed.
    #[error(
        "cannot mount at {}: {source} (is fuse3 installed and /dev/fuse usable?)",
        mountpoint.display()
    )]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// What fuser said.
        source: std::io::Error,
    },
    /// The transport asked for is not available here.
    #[error("{0}")]
    Transport(String),
    /// Ctrl-C / SIGTERM could not be caught.
    #[error("cannot install the signal handler: {0}")]
    SignalHandler(ctrlc::Error),
    /// The FUSE session failed while mounted.
    #[error("the FUSE session ended with an error: {0}")]
    Session(std::io::Error),
    /// The log file could not be opened.
    #[error("cannot open log file {}: {source}", path.display())]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Stderr could not be pointed at the log file.
    #[error("cannot redirect stderr: {0}")]
    RedirectStderr(std::io::Error),
}

/// Points this process's stderr (and with it the log) at `path`, appending.
pub(crate) fn redirect_stderr(path: &Path) -> Result<(), DaemonError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DaemonError::LogFile {
            path: path.to_owned(),
            source,
        })?;
    sys::redirect_stderr(&f).map_err(DaemonError::RedirectStderr)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A volume taken for mounting: opened, locked against a second daemon, recovered; not yet
/// unlocked or mounted.
pub struct Daemon {
    settings: DaemonSettings,
    volume: vol::Volume,
    /// Held until the daemon ends: one daemon per volume.
    _lock: vol::VolumeLock,
}

impl Daemon {
    /// Sends the log to `settings.log_file` if set, opens and locks the volume, finishes an
    /// interrupted re-encryption, raises the open-file limit and checks the mountpoint. Needs
    /// no secret, so a bad volume or a busy one is reported before anyone types a passphrase.
    pub fn open(settings: DaemonSettings) -> Result<Self, DaemonError> {
        if let Some(log) = &settings.log_file {
            redirect_stderr(log)?;
        }
        let backing = &settings.backing;
        let volume = vol::open(backing)?;
        let lock = vol::lock(backing)?;
        // A re-encryption a crash interrupted is finished before anything reads the file.
        match recover(backing, &backing.join(vol::DATA_DIR)) {
            Ok(0) => {}
            Ok(n) => log::info!("finished {n} re-encryptions a crash had interrupted"),
            Err(source) => {
                return Err(DaemonError::Recovery {
                    journal: backing.join(JOURNAL_DIR),
                    source,
                });
            }
        }
        match sys::raise_fd_limit() {
            Ok(n) if n < 4096 => log::warn!(
                "open-file limit is only {n}: few files can be open at once through the mount \
                 (raise the hard limit: ulimit -Hn, or LimitNOFILE= in a systemd unit)"
            ),
            Ok(n) => log::debug!("open-file limit {n}"),
            Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
        }
        if !settings.mountpoint.is_dir() {
            return Err(DaemonError::NotADirectory(settings.mountpoint.clone()));
        }
        Ok(Daemon {
            settings,
            volume,
            _lock: lock,
        })
    }

    /// Unlocks the keystore with `unlock` (dropped, so zeroized, once the keystore is open),
    /// mounts, calls `on_mounted` once the mount is up, and serves until unmounted or
    /// signalled (Ctrl-C, SIGTERM: unmount, lazily if busy).
    pub(crate) fn mount(
        self,
        unlock: Unlock,
        on_mounted: impl FnOnce(&DaemonSettings),
    ) -> Result<(), DaemonError> {
        let Daemon {
            settings,
            volume,
            _lock,
        } = self;
        let mountpoint = &settings.mountpoint;
        let opts = settings.mount_options();
        let kms = crate::custody::open_kms(&volume.keystore_path(), &unlock)?;
        drop(unlock);
        let kms = Arc::new(kms);
        for done in kms.maintain(now()) {
            log::info!("key maintenance: {done}");
        }
        // Audit records leave the open/create path for a writer thread (docs/KEYS.md §Audit
        // trail); `sync_audit` at unmount writes out the queue.
        if let Some(audit) = kms.audit_log()
            && let Err(e) = audit.write_in_background()
        {
            log::warn!("cannot start the audit writer thread ({e}); records are written inline");
        }
        let fs =
            EncFs::new(volume, kms.clone(), &Caller::current()).map_err(DaemonError::OpenVolume)?;
        spawn_maintenance(kms.clone());
        // Modes arrive from the kernel with the caller's umask already applied and must reach
        // the backing store as is.
        sys::set_umask(0);
        let fs = Arc::new(fs);
        // The control socket of `envelopefs ssec` (customer keys), named after the canonical
        // mount point (resolved before the mount covers it).
        let _control = std::fs::canonicalize(mountpoint)
            .and_then(|canon| control::spawn(fs.clone(), &canon))
            .map_err(|e| {
                log::warn!("no control socket ({e}): `envelopefs ssec` will not reach this mount")
            })
            .ok();
        let use_uring =
            crate::fuse::choose_uring(opts.transport).map_err(DaemonError::Transport)?;
        let result = if use_uring {
            serve_uring(fs, &opts, &settings, on_mounted)
        } else {
            serve_classic(fs, &opts, &settings, on_mounted)
        };
        if let Err(e) = kms.sync_audit() {
            log::error!("cannot flush the audit trail: {e}");
        }
        result?;
        log::info!("unmounted {}", mountpoint.display());
        Ok(())
    }
}

/// Installs the Ctrl-C / SIGTERM handler: unmount (lazily if busy), after which the session
/// ends. `first` is tried before the lazy unmount (fuser's own, for the classic transport).
fn unmount_on_signal(
    mountpoint: &Path,
    mut first: impl FnMut() -> std::io::Result<()> + Send + 'static,
) -> Result<(), DaemonError> {
    let mnt = mountpoint.to_owned();
    ctrlc::set_handler(move || {
        log::info!("signal received; unmounting {}", mnt.display());
        if let Err(e) = first() {
            log::debug!(
                "plain unmount of {} failed ({e}); unmounting lazily",
                mnt.display()
            );
            if let Err(e) = crate::fuse::unmount(&mnt) {
                log::error!("unmount of {} failed: {e}", mnt.display());
            }
        }
    })
    .map_err(DaemonError::SignalHandler)
}

/// Logs the mount (with its transport) and tells the caller.
fn mounted(settings: &DaemonSettings, transport: &str, on_mounted: impl FnOnce(&DaemonSettings)) {
    log::info!(
        "mounted {} at {} ({transport} transport)",
        settings.backing.display(),
        settings.mountpoint.display()
    );
    on_mounted(settings);
    let _ = std::io::stderr().flush();
}

/// Mounts with fuser and serves on the classic transport until unmounted.
fn serve_classic(
    fs: Arc<EncFs>,
    opts: &crate::fuse::MountOptions,
    settings: &DaemonSettings,
    on_mounted: impl FnOnce(&DaemonSettings),
) -> Result<(), DaemonError> {
    let mountpoint = &settings.mountpoint;
    let watched = Arc::downgrade(&fs);
    let adapter = Adapter::new(fs, opts);
    let notifier_slot = adapter.notifier_slot();
    let mut session = fuser::Session::new(adapter, mountpoint, &crate::fuse::fuser_config(opts))
        .map_err(|e| mount_error(mountpoint, e))?;
    let _ = notifier_slot.set(Box::new(session.notifier()));
    // fuser has answered INIT by now.
    crate::fuse::set_readahead(mountpoint, crate::fuse::READAHEAD_KIB);
    if let Some(fs) = watched.upgrade() {
        crate::fuse::spawn_revocation_watch(&fs, notifier_slot.clone());
    }
    // fuser's own unmount first (so the session does not try again on exit).
    let mut unmounter = session.unmount_callable();
    unmount_on_signal(mountpoint, move || unmounter.unmount())?;
    mounted(settings, "classic", on_mounted);
    session.run().map_err(DaemonError::Session)
}

/// Mounts on its own /dev/fuse descriptor and serves on io_uring rings until unmounted.
fn serve_uring(
    fs: Arc<EncFs>,
    opts: &crate::fuse::MountOptions,
    settings: &DaemonSettings,
    on_mounted: impl FnOnce(&DaemonSettings),
) -> Result<(), DaemonError> {
    let mountpoint = &settings.mountpoint;
    let dispatcher = Arc::new(crate::fuse::Dispatcher::new(fs.clone(), opts));
    let dev =
        crate::fuse::uring::mount(mountpoint, opts).map_err(|e| mount_error(mountpoint, e))?;
    crate::fuse::spawn_revocation_watch(&fs, dispatcher.notifier_slot());
    drop(fs);
    let mnt = mountpoint.clone();
    unmount_on_signal(mountpoint, move || crate::fuse::unmount(&mnt))?;
    // The kernel sends INIT only once the mount exists; `serve` answers it before anything.
    let serving = std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name("fuse-reader".into())
            .spawn_scoped(s, || {
                crate::fuse::uring::serve(dispatcher, dev, true, opts.threads, || {
                    crate::fuse::set_readahead(mountpoint, crate::fuse::READAHEAD_KIB)
                })
            })?;
        mounted(settings, "io_uring", on_mounted);
        t.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the FUSE session panicked")))
    });
    serving.map_err(DaemonError::Session)
}

fn mount_error(mountpoint: &Path, source: std::io::Error) -> DaemonError {
    DaemonError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    }
}

/// Runs key maintenance every [`MAINTENANCE_PERIOD`] for the life of the daemon.
fn spawn_maintenance(kms: Arc<LocalKms>) {
    let spawned = std::thread::Builder::new()
        .name("key-maintenance".into())
        .spawn(move || {
            loop {
                std::thread::sleep(MAINTENANCE_PERIOD);
                for done in kms.maintain(now()) {
                    log::info!("key maintenance: {done}");
                }
                if let Err(e) = kms.sync_audit() {
                    log::warn!("cannot flush the audit trail: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the key-maintenance thread ({e}); rotation runs only at mount");
    }
}

/// Unmounts `mountpoint` (lazily: see [`crate::fuse::unmount`]) and waits up to `wait` for its
/// daemon to let go of the volume (its lock on BACKING/.lock), so that once this returns
/// `Released` the volume can be mounted, backed up or re-encrypted at once. `Detached` means
/// the daemon is still running (a process keeps a file open on the mount): it exits when the
/// last such file is closed.
pub(crate) fn unmount_and_wait(
    mountpoint: &Path,
    wait: std::time::Duration,
) -> std::io::Result<Unmounted> {
    let backing = mounts::volume_at(mountpoint);
    crate::fuse::unmount(mountpoint)?;
    let Some(backing) = backing else {
        return Ok(Unmounted::Unknown);
    };
    let deadline = std::time::Instant::now() + wait;
    loop {
        match vol::lock(&backing) {
            Ok(_lock) => return Ok(Unmounted::Released),
            Err(VolumeError::Busy(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(VolumeError::Busy(_)) => return Ok(Unmounted::Detached(backing)),
            // Cannot tell (no write access to BACKING, say): the unmount itself is done.
            Err(_) => return Ok(Unmounted::Unknown),
        }
    }
}

/// What [`unmount_and_wait`] saw after the unmount.
#[derive(Debug)]
pub(crate) enum Unmounted {
    /// The daemon let go of the volume.
    Released,
    /// Still held after the wait (open files on the detached mount keep the daemon alive).
    Detached(PathBuf),
    /// Not a volume this process can watch: unmounted, nothing more known.
    Unknown,
}
