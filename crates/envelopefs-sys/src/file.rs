//! Operations on an open (not O_PATH) file: fallocate, syncfs and its status flags.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::check;

/// `fallocate` on an open file.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// `syncfs`: makes everything written to the filesystem holding `f` durable.
pub fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::syncfs(f.as_raw_fd()) }).map(drop)
}

/// The file status flags of an open file (`fcntl(F_GETFL)`: access mode, O_APPEND, ...).
pub fn status_flags(f: &File) -> io::Result<i32> {
    // SAFETY: F_GETFL on a valid fd has no memory effects.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// The peer of a connected Unix socket: (pid, uid, gid), from `SO_PEERCRED` (the credentials
/// the kernel recorded when the peer connected; the peer cannot forge them).
pub fn peer_cred(sock: &impl std::os::fd::AsRawFd) -> io::Result<(u32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds `cred`'s size, as
    // getsockopt(SO_PEERCRED) requires.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid, cred.gid))
}
