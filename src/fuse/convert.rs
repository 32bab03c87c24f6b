//! Conversions between fuser's types and the core's: the caller of a request, attributes,
//! file types, times, negative entries and the xattr size protocol.

use std::time::UNIX_EPOCH;

use fuser::{FileAttr, FileType, INodeNo, Request, TimeOrNow};

use crate::fs::{Attr, Kind};
use crate::keys::Caller;
use crate::store::sys::SetTime;

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

pub(super) fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of a negative lookup reply: inode 0 means "no such name" to the kernel,
/// which caches that for the entry timeout; the other fields are not looked at.
pub(super) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The kernel's (seconds, nanoseconds) behind a time fuser decoded from a setattr request.
///
/// fuser 0.18 decodes a pre-epoch `(sec, nsec)` as `UNIX_EPOCH - (-sec s + nsec ns)` instead of
/// `UNIX_EPOCH - (-sec s) + nsec ns` (its `time::system_time_from_time`, marked TODO), so the
/// seconds and nanoseconds of the distance to the epoch are the kernel's own, negated seconds.
pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                SetTime::At((d.as_secs() as i64).wrapping_neg(), d.subsec_nanos())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pre_epoch_setattr_times_come_back_as_the_kernel_sent_them() {
        // What fuser 0.18 hands over for the kernel's (sec, nsec) = (-101, 500_000_000),
        // i.e. -100.5 s.
        let from_fuser = UNIX_EPOCH - Duration::new(101, 500_000_000);
        assert!(matches!(
            set_time(TimeOrNow::SpecificTime(from_fuser)),
            SetTime::At(-101, 500_000_000)
        ));
        let whole = UNIX_EPOCH - Duration::new(7, 0);
        assert!(matches!(
            set_time(TimeOrNow::SpecificTime(whole)),
            SetTime::At(-7, 0)
        ));
        let after = UNIX_EPOCH + Duration::new(7, 3);
        assert!(matches!(
            set_time(TimeOrNow::SpecificTime(after)),
            SetTime::At(7, 3)
        ));
    }
}
