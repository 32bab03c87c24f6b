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
