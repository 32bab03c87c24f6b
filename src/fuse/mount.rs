//! Mounting with fuser: the session config for [`MountOptions`] (nosuid/nodev unless asked,
//! `default_permissions`, `allow_other`), unmounting, and the revocation watch that drops the
//! kernel's page cache of open files when a key decision may have changed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;

use super::dispatch::NotifierSlot;

use crate::fs::EncFs;

/// How requests travel between the kernel and the daemon.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// io_uring when the kernel offers it (and the daemon runs as root), else classic.
    #[default]
    Auto,
    /// FUSE over io_uring: one ring per CPU (kernel 6.14+, enable_uring=Y, root).
    Uring,
    /// One read(2) and one write(2) on /dev/fuse per request (fuser).
    Classic,
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The request transport.
    pub transport: Transport,
    /// Let other users (and root) use the mount (`allow_other`).
    pub allow_other: bool,
    /// Request-handling threads.
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Attribute and entry cache lifetime given to the kernel.
    pub ttl: Duration,
    /// Keep the kernel's page cache of a file across opens.
    pub kernel_cache: bool,
    /// FUSE_WRITEBACK_CACHE: the kernel buffers writes in its page cache and sends them in
    /// batches (it then owns size and mtime while pages are dirty).
    pub writeback_cache: bool,
    /// Extended attributes. Off (`--no-xattr`), every xattr call fails with ENOSYS once and
    /// the kernel stops asking (EOPNOTSUPP to applications), including the
    /// getxattr(security.capability) it sends while creating files.
    pub xattrs: bool,
    /// Honour setuid/setgid bits and file capabilities (`suid`). Off by default: modes, owners
    /// and `security.capability` in BACKING are not authenticated, so whoever can write BACKING
    /// could otherwise plant a setuid binary. Only root can turn it on.
    pub suid: bool,
    /// Honour device nodes (`dev`). Off by default for the same reason. Only root.
    pub dev: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            transport: Transport::Auto,
            allow_other: false,
            threads: 2,
            fsname: "envelopefs".into(),
            read_only: false,
            // Every change goes through this daemon (and so through the kernel's caches), so the
            // kernel may keep attributes and names longer than libfuse's 1 s default.
            ttl: Duration::from_secs(10),
            kernel_cache: true,
            writeback_cache: true,
            xattrs: true,
            suid: false,
            dev: false,
        }
    }
}

/// Starts the thread that carries key decisions to the kernel's page cache: when the key
/// service's generation moves (a key disabled, a grant revoked, a policy changed, by this or
/// another process), the cached pages of every open file are dropped, so the next read of an
/// open file reaches the daemon and its handle's key decision is taken again
/// ([`EncFs::check_handle`]). Without it a process could go on reading cached plaintext of a
/// file it opened before the revocation.
/// The thread ends once the filesystem is dropped.
pub(crate) fn spawn_revocation_watch(fs: &Arc<EncFs>, notifier: NotifierSlot) {
    let period = Duration::from_millis(crate::keys::GENERATION_CHECK_MS);
    let weak = Arc::downgrade(fs);
    let mut last = fs.key_generation();
    let spawned = std::thread::Builder::new()
        .name("revocation-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(fs) = weak.upgrade() else { return };
                let now = fs.key_generation();
                if now == last {
                    continue;
                }
                last = now;
                let Some(n) = notifier.get() else { continue };
                for ino in fs.open_inodes() {
                    if let Err(e) = n.inval_inode(ino, 0, 0) {
                        log::debug!("cache of inode {ino} not dropped: {e}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "cannot start the revocation watch ({e}); key decisions reach open files only \
             when their cached pages are evicted"
        );
    }
}

/// Readahead window given to the mount once INIT is done (KiB). The kernel offers the
/// daemon at most its default of 128 KiB at INIT and cuts READs to `max_pages` (1 MiB), so a
/// sequential read had one 128 KiB READ in flight at a time; with 4 MiB, four 1 MiB READs are
/// in flight and both CPUs decrypt (docs/PERFORMANCE.md: sequential reads 1.1 → 1.5 GB/s on
/// the classic transport). Random reads are unaffected: readahead grows only on sequential
/// access.
pub(crate) const READAHEAD_KIB: u32 = 4096;

/// Sets the readahead of the FUSE mount at `mountpoint` (its backing-device info,
/// /sys/class/bdi/MAJOR:MINOR/read_ahead_kb, found through /proc/self/mountinfo so that no
/// request reaches the mount). Best effort: root only, logged when it does not work.
pub(crate) fn set_readahead(mountpoint: &Path, kib: u32) {
    let canon = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let dev = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().rev().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let mp = f.get(4)?.replace("\\040", " ");
                (Path::new(&mp) == canon && l.contains(" - fuse")).then(|| f[2].to_owned())
            })
        });
    let Some(dev) = dev else {
        log::debug!(
            "readahead not set: {} not found in mountinfo",
            canon.display()
        );
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, kib.to_string()) {
        Ok(()) => log::debug!("readahead of the mount: {kib} KiB ({path})"),
        Err(e) => log::debug!("readahead of the mount left as is ({path}: {e})"),
    }
}

/// fuser session config for `opts`.
pub(crate) fn fuser_config(opts: &MountOptions) -> fuser::Config {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("envelopefs".into()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    // nosuid and nodev unless asked for: BACKING's modes, owners, device numbers and
    // security.capability are not authenticated (docs/SECURITY.md). fusermount3 imposes both
    // on non-root mounts anyway; the CLI refuses --suid/--dev for non-root callers.
    cfg.mount_options.push(if opts.dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    cfg.mount_options.push(if opts.suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    if opts.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(opts.threads.max(1));
    cfg
}

/// Unmounts `mountpoint` lazily (root: umount2 with MNT_DETACH; others: fusermount3 -u -z).
pub(crate) fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    if crate::store::sys::geteuid() == 0 {
        return crate::store::sys::umount_lazy(mountpoint);
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u {} failed",
            mountpoint.display()
        )))
    }
}
