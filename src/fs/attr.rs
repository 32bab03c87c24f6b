//! Attributes: getattr, setattr (chmod, chown, truncate, utimens), access, statfs.

use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::EncFs;
use super::error::{FsResult, errno};
use crate::keys::Caller;
use crate::store::sys::{self, SetTime};

/// The set-id bits of `mode` that a write or truncate by a process without CAP_FSETID
/// removes: set-user-id, and set-group-id when the file is group-executable.
pub(crate) fn setid_to_drop(mode: u32) -> u32 {
    let sgid = libc::S_ISGID | libc::S_IXGRP;
    (mode & libc::S_ISUID)
        | if mode & sgid == sgid {
            libc::S_ISGID
        } else {
            0
        }
}

/// Clears [`setid_to_drop`] bits of the regular file `fd`; with `Some(caller)`, only when
/// the caller lacks CAP_FSETID (checked only when there is something to clear).
pub(crate) fn drop_setid_fd(fd: std::os::fd::RawFd, caller: Option<&Caller>) -> FsResult<()> {
    let st = sys::fstat(fd)?;
    let bits = setid_to_drop(st.st_mode);
    if bits == 0 || Kind::from_mode(st.st_mode) != Kind::File {
        return Ok(());
    }
    if caller.is_some_and(has_cap_fsetid) {
        return Ok(());
    }
    sys::chmod_fd(fd, st.st_mode & 0o7777 & !bits)?;
    Ok(())
}

/// Whether the calling process has CAP_FSETID in its effective set (from
/// `/proc/<pid>/status`; when that cannot be read, whether it runs as root).
fn has_cap_fsetid(c: &Caller) -> bool {
    const CAP_FSETID: u32 = 4;
    let status = if c.pid != 0 {
        std::fs::read_to_string(format!("/proc/{}/status", c.pid)).ok()
    } else {
        None
    };
    status
        .as_deref()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .map_or(c.uid == 0, |caps| caps & (1 << CAP_FSETID) != 0)
}

/// File type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// FIFO.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl Kind {
    /// From `st_mode`.
    pub(crate) fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => Kind::File,
        }
    }

    /// From a `d_type`.
    pub(crate) fn from_dtype(t: u8) -> Kind {
        match t {
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_CHR => Kind::CharDev,
            libc::DT_BLK => Kind::BlockDev,
            _ => Kind::File,
        }
    }
}

/// Attributes as the kernel sees them (sizes are plaintext sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Plaintext size.
    pub size: u64,
    /// 512-byte blocks used in the backing store.
    pub blocks: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Type.
    pub kind: Kind,
    /// Permission bits (incl. setuid, setgid, sticky).
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// What a setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New plaintext size.
    pub size: Option<u64>,
    /// New atime.
    pub atime: Option<SetTime>,
    /// New mtime.
    pub mtime: Option<SetTime>,
    /// Open handle the request came through, if any.
    pub fh: Option<u64>,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::from_nanos(nsec as u64)
    }
}

impl EncFs {
    /// Converts a backing stat to the attributes the kernel sees.
    pub(crate) fn attr_from_stat(&self, ino: u64, st: &libc::stat) -> Attr {
        let kind = Kind::from_mode(st.st_mode);
        let size = if kind == Kind::File {
            self.layout
                .plaintext_size(st.st_size as u64)
                .unwrap_or_else(|e| {
                    log::warn!("inode {ino}: {e}; reporting size 0 (reads will fail with EIO)");
                    0
                })
        } else if kind == Kind::Symlink && self.names.encrypted_names() {
            // The plaintext target's length, as readlink will return it.
            self.readlink(ino)
                .map_or(st.st_size as u64, |t| t.len() as u64)
        } else {
            st.st_size as u64
        };
        Attr {
            ino,
            size,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: self.block_size.max(4096),
        }
    }

    /// getattr.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let fd = self.inodes.get(ino)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        Ok(self.attr_from_stat(ino, &st))
    }

    /// setattr: applies each requested change, then returns the new attributes.
    pub fn setattr(&self, ino: u64, set: &SetAttr, caller: &Caller) -> FsResult<Attr> {
        let fd = self.inodes.get(ino)?;
        let raw = fd.as_raw_fd();
        if let Some(size) = set.size {
            self.truncate(ino, set.fh, size, caller)?;
            if set.mode.is_none() {
                // The kernel (FUSE_HANDLE_KILLPRIV_V2) no longer sends the mode it would
                // compute for an unprivileged truncate.
                drop_setid_fd(raw, Some(caller))?;
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchown(
                raw,
                set.uid.unwrap_or(u32::MAX),
                set.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = set.mode {
            let st = sys::fstat(raw)?;
            if Kind::from_mode(st.st_mode) == Kind::Symlink {
                return Err(errno(libc::EOPNOTSUPP));
            }
            sys::chmod_fd(raw, mode & 0o7777)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::utimens(
                raw,
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            )?;
        }
        self.getattr(ino)
    }

    /// Clears the set-id bits that a write or truncate by an unprivileged process removes
    /// (set-user-id; set-group-id when group-executable), as the kernel would. With
    /// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the filesystem and says when
    /// (FUSE_WRITE_KILL_SUIDGID on a write); in exchange it stops asking for
    /// `security.capability` before every write.
    pub(crate) fn drop_setid(&self, ino: u64) -> FsResult<()> {
        let fd = self.inodes.get(ino)?;
        drop_setid_fd(fd.as_raw_fd(), None)
    }

    /// access: the kernel checks mode bits (default_permissions); this only checks existence.
    pub(crate) fn access(&self, ino: u64) -> FsResult<()> {
        let fd = self.inodes.get(ino)?;
        sys::fstat(fd.as_raw_fd()).map(drop).map_err(Into::into)
    }

    /// statfs of the backing filesystem.
    pub(crate) fn statfs(&self) -> FsResult<libc::statvfs> {
        let fd = self.inodes.get(super::inode::ROOT_INO)?;
        Ok(sys::statvfs(fd.as_raw_fd())?)
    }
}
