//! The exclusive `flock` of the backing store, the keystore and the audit trail.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// An exclusive `flock` on an open file, released on drop: the one lock type of the backing
/// store, the keystore and the audit trail.
#[derive(Debug)]
pub struct FileLock<'a> {
    file: &'a File,
}

impl<'a> FileLock<'a> {
    /// Blocks until the lock is held (retrying on EINTR).
    pub fn exclusive(file: &'a File) -> io::Result<Self> {
        loop {
            // SAFETY: flock on a valid open fd has no memory-safety preconditions.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: releases a lock this process holds on a valid fd.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Takes an exclusive `flock` on `file` without waiting, held until the file is closed:
/// Ok(false) when another open file description holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid open fd has no memory-safety preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
