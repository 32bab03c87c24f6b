//! The fuser adapter (the classic /dev/fuse transport): every callback turns its arguments into
//! a [`dispatch::Op`], hands it to the shared [`dispatch::Dispatcher`], and turns the
//! [`dispatch::Reply`] into fuser's reply object. No logic lives here; the io_uring transport
//! ([`uring`]) goes through the same dispatcher.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::fs::{EncFs, SetAttr};

mod convert;
mod courtesy;
pub(crate) mod dispatch;
mod mount;
mod op;
use convert::{caller, file_attr, file_type, negative_entry, set_time};
pub(crate) use dispatch::Dispatcher;
use dispatch::{KernelNotify, NotifierSlot, Op, Reply};
pub use mount::{MountOptions, Transport};
pub(crate) mod proto;
pub(crate) mod uring;
pub(crate) use mount::{
    READAHEAD_KIB, fuser_config, set_readahead, spawn_revocation_watch, unmount,
};

/// Whether to serve on io_uring for `transport`, or why that is impossible (`uring` asked for
/// where the kernel or the privileges do not allow it). `auto` falls back to classic and says
/// why in the log.
pub(crate) fn choose_uring(transport: Transport) -> Result<bool, String> {
    let root = crate::store::sys::geteuid() == 0;
    let enabled = uring::kernel_uring_enabled();
    let why_not = match (root, enabled) {
        (true, Some(true)) => return Ok(transport != Transport::Classic),
        (_, None) => "this kernel has no FUSE over io_uring (it needs Linux 6.14+ built with \
                      CONFIG_FUSE_IO_URING)"
            .to_string(),
        (_, Some(false)) => format!(
            "FUSE over io_uring is switched off in this kernel; as root: echo Y > {}",
            uring::ENABLE_URING
        ),
        (false, Some(true)) => "the io_uring transport mounts with mount(2), which needs root; \
                                run the mount as root"
            .to_string(),
    };
    match transport {
        Transport::Uring => Err(format!("cannot use --transport uring: {why_not}")),
        Transport::Auto => {
            log::info!("classic FUSE transport: {why_not}");
            Ok(false)
        }
        Transport::Classic => Ok(false),
    }
}

/// The fuser `Filesystem` over the dispatcher.
pub struct Adapter {
    d: Dispatcher,
}

impl KernelNotify for Notifier {
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        Notifier::store(self, INodeNo(ino), offset, data)
    }
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        Notifier::inval_inode(self, INodeNo(ino), offset, len)
    }
}

/// A reply of the wrong kind for the request: a bug in the dispatcher, answered EIO.
fn mismatch(what: &str, r: &Reply) -> Errno {
    log::error!("internal error: {what} request answered with {r:?}");
    Errno::EIO
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn to_entry(reply: ReplyEntry, r: Reply) {
    match r {
        Reply::Entry { attr, ttl } => {
            let a = attr.as_ref().map(file_attr).unwrap_or_else(negative_entry);
            reply.entry(&ttl, &a, Generation(0))
        }
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("entry", &r)),
    }
}

fn to_attr(reply: ReplyAttr, r: Reply) {
    match r {
        Reply::Attr { attr, ttl } => reply.attr(&ttl, &file_attr(&attr)),
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("attr", &r)),
    }
}

fn to_empty(reply: ReplyEmpty, r: Reply) {
    match r {
        Reply::Empty => reply.ok(),
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("empty", &r)),
    }
}

fn to_data(reply: ReplyData, r: Reply) {
    match r {
        Reply::Data(d) => reply.data(&d),
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("data", &r)),
    }
}

fn to_open(reply: ReplyOpen, r: Reply) {
    match r {
        Reply::Open { fh, keep_cache } => reply.opened(FileHandle(fh), open_flags(keep_cache)),
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("open", &r)),
    }
}

fn to_xattr(reply: ReplyXattr, r: Reply) {
    match r {
        Reply::XattrSize(n) => reply.size(n),
        Reply::Data(d) => reply.data(&d),
        Reply::Err(e) => reply.error(errno(e)),
        r => reply.error(mismatch("xattr", &r)),
    }
}

fn open_flags(keep_cache: bool) -> FopenFlags {
    if keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

impl Adapter {
    /// Wraps a core.
    pub fn new(fs: Arc<EncFs>, opts: &MountOptions) -> Self {
        Adapter {
            d: Dispatcher::new(fs, opts),
        }
    }

    /// Where [`crate::daemon`] puts the session's notifier once the session exists.
    pub(crate) fn notifier_slot(&self) -> NotifierSlot {
        self.d.notifier_slot()
    }

    fn run(&self, req: &Request, op: Op<'_>) -> Reply {
        self.d.handle(&caller(req), op)
    }
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(dispatch::init::MAX_WRITE);
        let _ = config.set_max_readahead(dispatch::init::MAX_READAHEAD);
        let wanted = self.d.wanted_init_flags();
        // Each capability is optional: an old kernel without it just does without.
        for bit in (0..64).map(|i| 1u64 << i).filter(|b| wanted & b != 0) {
            if let Err(missing) = config.add_capabilities(InitFlags::from_bits_retain(bit)) {
                log::info!("kernel lacks FUSE capability {missing:?}; continuing without it");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        to_entry(
            reply,
            self.run(
                req,
                Op::Lookup {
                    parent: parent.0,
                    name,
                },
            ),
        )
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.run(
            req,
            Op::Forget {
                ino: ino.0,
                nlookup,
            },
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        to_attr(reply, self.run(req, Op::Getattr { ino: ino.0 }))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        to_attr(reply, self.run(req, Op::Setattr { ino: ino.0, set }))
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        to_data(reply, self.run(req, Op::Readlink { ino: ino.0 }))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mknod {
            parent: parent.0,
            name,
            mode,
            rdev,
        };
        to_entry(reply, self.run(req, op))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mkdir {
            parent: parent.0,
            name,
            mode,
        };
        to_entry(reply, self.run(req, op))
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        to_empty(
            reply,
            self.run(
                req,
                Op::Unlink {
                    parent: parent.0,
                    name,
                },
            ),
        )
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        to_empty(
            reply,
            self.run(
                req,
                Op::Rmdir {
                    parent: parent.0,
                    name,
                },
            ),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = Op::Symlink {
            parent: parent.0,
            name: link_name,
            target: target.as_os_str(),
        };
        to_entry(reply, self.run(req, op))
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let op = Op::Rename {
            parent: parent.0,
            name,
            newparent: newparent.0,
            newname,
            flags: flags.bits(),
        };
        to_empty(reply, self.run(req, op))
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let op = Op::Link {
            ino: ino.0,
            newparent: newparent.0,
            newname,
        };
        to_entry(reply, self.run(req, op))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let op = Op::Open {
            ino: ino.0,
            flags: flags.0,
        };
        to_open(reply, self.run(req, op))
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = Op::Read {
            ino: ino.0,
            fh: fh.0,
            offset,
            size,
        };
        to_data(reply, self.run(req, op))
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let op = Op::Write {
            ino: ino.0,
            fh: fh.0,
            offset,
            data,
            kill_suidgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
        };
        match self.run(req, op) {
            Reply::Written(n) => reply.written(n),
            Reply::Err(e) => reply.error(errno(e)),
            r => reply.error(mismatch("write", &r)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        to_empty(reply, self.run(req, Op::Flush))
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        to_empty(
            reply,
            self.run(
                req,
                Op::Release {
                    ino: ino.0,
                    fh: fh.0,
                },
            ),
        )
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fsync {
            ino: ino.0,
            fh: fh.0,
            datasync,
        };
        to_empty(reply, self.run(req, op))
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        to_open(reply, self.run(req, Op::Opendir { ino: ino.0 }))
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // fuser sizes the buffer from the request without telling, and stops at the first
        // entry that does not fit (READDIR holds no lookups, so nothing to undo).
        let op = Op::Readdir {
            ino: ino.0,
            fh: fh.0,
            offset,
            size: u32::MAX,
            plus: false,
        };
        match self.run(req, op) {
            Reply::Dir(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Reply::Err(e) => reply.error(errno(e)),
            r => reply.error(mismatch("readdir", &r)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // fuser sizes the buffer from the request without telling; entries past the first
        // that does not fit go back to the dispatcher, which undoes their lookups.
        let op = Op::Readdir {
            ino: ino.0,
            fh: fh.0,
            offset,
            size: u32::MAX,
            plus: true,
        };
        match self.run(req, op) {
            Reply::DirPlus { entries, ttl } => {
                let mut it = entries.into_iter();
                for (next, e, attr) in it.by_ref() {
                    let a = file_attr(&attr);
                    if reply.add(INodeNo(e.ino), next, &e.name, &ttl, &a, Generation(0)) {
                        self.d.not_sent(std::iter::once(e));
                        break;
                    }
                }
                self.d.not_sent(it.map(|(_, e, _)| e));
                reply.ok();
            }
            Reply::Err(e) => reply.error(errno(e)),
            r => reply.error(mismatch("readdirplus", &r)),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        to_empty(reply, self.run(req, Op::Releasedir { fh: fh.0 }))
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        to_empty(reply, self.run(req, Op::Fsyncdir { ino: ino.0 }))
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.run(req, Op::Statfs { ino: ino.0 }) {
            Reply::Statfs(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Reply::Err(e) => reply.error(errno(e)),
            r => reply.error(mismatch("statfs", &r)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Setxattr {
            ino: ino.0,
            name,
            value,
            flags,
        };
        to_empty(reply, self.run(req, op))
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let op = Op::Getxattr {
            ino: ino.0,
            name,
            size,
        };
        to_xattr(reply, self.run(req, op))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        to_xattr(reply, self.run(req, Op::Listxattr { ino: ino.0, size }))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        to_empty(reply, self.run(req, Op::Removexattr { ino: ino.0, name }))
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        to_empty(reply, self.run(req, Op::Access { ino: ino.0 }))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let op = Op::Create {
            parent: parent.0,
            name,
            mode,
            flags,
        };
        match self.run(req, op) {
            Reply::Create {
                attr,
                ttl,
                fh,
                keep_cache,
            } => reply.created(
                &ttl,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                open_flags(keep_cache),
            ),
            Reply::Err(e) => reply.error(errno(e)),
            r => reply.error(mismatch("create", &r)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let op = Op::Fallocate {
            ino: ino.0,
            fh: fh.0,
            offset,
            length,
            mode,
        };
        to_empty(reply, self.run(req, op))
    }
}
