//! This process: its ids, umask, open-file limit, stderr, SIGPIPE, sessions of its children
//! and lazy unmounts.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::{check, cname};

/// Raises this process's open-file soft limit to its hard limit and returns the new limit.
/// The filesystem core keeps one O_PATH descriptor per inode the kernel remembers, so a large
/// tree needs far more than the usual soft limit of 1024.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    // Root may raise the hard limit too (CAP_SYS_RESOURCE), up to the kernel's nr_open.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let want = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: `want` is a valid rlimit struct; failure leaves the limits unchanged.
        if nr_open > lim.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Ok(nr_open);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit struct; raising the soft limit up to the hard limit
        // needs no privilege.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// This process's open-file soft limit.
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct; on failure it keeps the default.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// This process's effective uid, effective gid and pid.
pub fn current_ids() -> (u32, u32, u32) {
    // SAFETY: geteuid/getegid/getpid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid(), libc::getpid() as u32) }
}

/// This process's parent pid.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    u32::try_from(unsafe { libc::getppid() }).unwrap_or(0)
}

/// This process's effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// This process's real user id.
pub fn getuid() -> u32 {
    // SAFETY: getuid takes no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// Sets this process's file-creation mask and returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask only changes this process's file-creation mask and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Detaches the mount at `path` at once (`umount2` with MNT_DETACH, root only): new opens
/// fail, and the filesystem goes when its last user does.
pub fn umount_lazy(path: &std::path::Path) -> io::Result<()> {
    let c = cname(path.as_os_str())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Points this process's stderr (fd 2) at `f`, closing the old stderr atomically (`dup2`).
pub fn redirect_stderr(f: &File) -> io::Result<()> {
    // SAFETY: dup2 between two descriptors; `f` is open for the whole call, fd 2 is replaced
    // atomically and no memory is passed.
    check(unsafe { libc::dup2(f.as_raw_fd(), libc::STDERR_FILENO) }).map(drop)
}

/// Makes `cmd`'s child start a new session (`setsid` between fork and exec), so it has no
/// controlling terminal and a Ctrl-C or hang-up of ours does not reach it.
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only setsid, which
    // is async-signal-safe and allocates nothing. Its only failure (already a process group
    // leader) cannot happen in a freshly forked child, and the child would still run.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Gives SIGPIPE its default action back (Rust starts with it ignored): a command that
/// prints into a closed pipe is then killed quietly, as Unix tools are. Call before starting
/// any thread.
pub fn default_sigpipe() {
    // SAFETY: restores a signal's default disposition; no handler function is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}
