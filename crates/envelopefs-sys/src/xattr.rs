//! Extended attributes of the inode behind an O_PATH fd, an open file or a path.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::{check, cname, proc_path};

/// Gets an xattr of the inode behind O_PATH `fd`; `buf` empty asks for the size.
pub fn getxattr(fd: RawFd, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = proc_path(fd);
    let c = cname(name)?;
    // SAFETY: C strings valid; `buf` is writable for `buf.len()` bytes (a null pointer with
    // size 0 asks only for the size).
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sets an xattr of the inode behind O_PATH `fd`.
pub fn setxattr(fd: RawFd, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_path(fd);
    let c = cname(name)?;
    // SAFETY: C strings valid; `value` readable for its length.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// Sets an xattr of the file at `path` itself (not following a final symlink).
pub fn lsetxattr_path(path: &std::path::Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let p = cname(path.as_os_str())?;
    let c = cname(name)?;
    // SAFETY: C strings valid; `value` readable for its length.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Lists xattr names (NUL-separated) of the inode behind O_PATH `fd` (through /proc).
pub fn listxattr(fd: RawFd) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    // SAFETY: `p` is a valid C string; `buf` is null with size 0 or writable for `size` bytes.
    list_names(|buf, size| unsafe { libc::listxattr(p.as_ptr(), buf, size) })
}

/// Lists xattr names (NUL-separated) of an open (not O_PATH) file: no /proc walk.
pub fn flistxattr(f: &File) -> io::Result<Vec<u8>> {
    let fd = f.as_raw_fd();
    // SAFETY: `buf` is null with size 0 or writable for `size` bytes.
    list_names(|buf, size| unsafe { libc::flistxattr(fd, buf, size) })
}

/// The size-then-fill protocol of listxattr(2), retried if the list grew in between.
fn list_names(list: impl Fn(*mut libc::c_char, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = list(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let n = list(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// Removes an xattr of the inode behind O_PATH `fd`.
pub fn removexattr(fd: RawFd, name: &OsStr) -> io::Result<()> {
    let p = proc_path(fd);
    let c = cname(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(p.as_ptr(), c.as_ptr()) }).map(drop)
}
