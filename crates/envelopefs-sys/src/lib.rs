//! Safe wrappers over the libc calls used on the backing tree. Every path component passed in
//! is a single name (no '/'), resolved relative to a directory fd, so a concurrent rename in
//! the backing tree can never redirect an operation outside it.

mod at;
pub mod atomic;
mod file;
pub mod fuse_ring;
mod lock;
mod process;
pub mod users;
mod xattr;

pub use at::{
    DirEntry, SetTime, chmod_fd, fchown, fstat, link_fd, list_dir, lstatat, mkdirat, mknodat,
    open_dir, open_path, open_regular_at, openat, readlink, readlinkat, renameat2, reopen, statvfs,
    symlinkat, unlinkat, utimens,
};
pub use file::{fallocate, peer_cred, status_flags, syncfs};
pub use lock::{FileLock, try_lock_exclusive};
pub use process::{
    current_ids, default_sigpipe, fd_limit, geteuid, getuid, new_session_on_spawn, parent_pid,
    raise_fd_limit, redirect_stderr, set_umask, umount_lazy,
};
pub use xattr::{flistxattr, getxattr, listxattr, lsetxattr_path, removexattr, setxattr};

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// A C string from a file name; names with NUL bytes are invalid (EINVAL).
pub fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `/proc/self/fd/N` for an fd, the way to reach an O_PATH fd's inode by path.
pub(crate) fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}
