//! The fuser adapter: every method calls the core, then replies or logs and replies the errno
//! from `FsError::errno()`. No logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, EncFs, FsError, SetAttr};

mod convert;
pub(crate) mod dispatch;
mod mount;
pub(crate) mod proto;
use convert::{caller, file_attr, file_type, negative_entry, set_time, xattr_reply};
pub use mount::MountOptions;
pub(crate) use mount::{fuser_config, spawn_revocation_watch, unmount};

/// The fuser `Filesystem` over the core.
pub struct Adapter {
    fs: Arc<EncFs>,
    ttl: Duration,
    kernel_cache: bool,
    writeback_cache: bool,
    xattrs: bool,
    /// The session's notifier, once the session exists (for prefetch on open).
    notifier: Arc<OnceLock<Notifier>>,
}

/// Largest file whose plaintext an open puts in the kernel's page cache before answering
/// (docs/DESIGN.md §Prefetch on open).
pub(crate) const PREFETCH_MAX: u64 = 64 << 10;

/// Logs a failed request at the level it deserves and returns its errno.
fn fail(op: &str, ino: u64, e: &FsError) -> Errno {
    if e.is_alarming() {
        log::warn!("{op} inode {ino}: {e}");
    } else {
        log::debug!("{op} inode {ino}: {e}");
    }
    Errno::from_i32(e.errno())
}

macro_rules! reply {
    ($reply:expr, $op:expr, $ino:expr, $res:expr, |$v:ident| $ok:expr) => {
        match $res {
            Ok($v) => $ok,
            Err(e) => $reply.error(fail($op, $ino, &e)),
        }
    };
}

impl Adapter {
    /// Wraps a core.
    pub fn new(fs: Arc<EncFs>, opts: &MountOptions) -> Self {
        Adapter {
            fs,
            ttl: opts.ttl,
            kernel_cache: opts.kernel_cache,
            writeback_cache: opts.writeback_cache && opts.kernel_cache && !opts.read_only,
            xattrs: opts.xattrs,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Where [`crate::cli`] puts the session's notifier once the session exists. Until then
    /// (and in tests without one) opens do not prefetch.
    pub(crate) fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Prefetch on open: a small file opened read-only, with no other handle on it, has its
    /// plaintext put in the kernel's page cache (FUSE_NOTIFY_STORE) before the open is
    /// answered, so reading it costs no READ round trip. Only with the kernel cache on (the
    /// handle gets FOPEN_KEEP_CACHE, so the pages stay).
    fn prefetch(&self, ino: INodeNo, flags: i32, fh: u64) {
        if !self.kernel_cache
            || flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & libc::O_TRUNC != 0
        {
            return;
        }
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        if let Some(p) = self.fs.prefetch(fh, PREFETCH_MAX) {
            match notifier.store(ino, 0, &p.data) {
                Ok(()) => self.fs.prefetched(p.ino),
                // Harmless: the kernel reads the file with READ as usual.
                Err(e) => log::debug!("prefetch of inode {} not stored: {e}", p.ino),
            }
        }
    }

    /// FOPEN_KEEP_CACHE: the kernel keeps a file's cached pages across opens. Safe because
    /// every change to a file's contents goes through this daemon (and so through the kernel's
    /// cache); FUSE_AUTO_INVAL_DATA drops them if the mtime changes anyway.
    fn open_flags(&self) -> FopenFlags {
        if self.kernel_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// Runs an xattr operation, or, on a `--no-xattr` mount, fails it with ENOSYS, after which
    /// the kernel sends no more xattr requests of that kind.
    fn with_xattrs<T>(&self, op: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
        if self.xattrs {
            op()
        } else {
            Err(crate::fs::error::errno(libc::ENOSYS))
        }
    }

    fn entry(&self, reply: ReplyEntry, op: &str, parent: u64, res: Result<Attr, FsError>) {
        reply!(reply, op, parent, res, |a| reply.entry(
            &self.ttl,
            &file_attr(&a),
            Generation(0)
        ))
    }
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Each capability is optional: an old kernel without it just does without.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            // The filesystem clears set-id bits on write, truncate and chown itself; the
            // kernel then sets SB_NOSEC and stops sending a getxattr(security.capability)
            // before every write(2) (measured: 101 getxattr requests for 101 writes before).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                log::info!("kernel lacks FUSE capability {missing:?}; continuing without it");
            }
        }
        // Writeback caching is safe for the same reason as FOPEN_KEEP_CACHE (this daemon sees
        // every change). The kernel may then read through a write-only handle (to fill a
        // partially written page) and sends appends at the offset it computed; the core
        // handles both (backing files of writers are O_RDWR, O_APPEND is not passed down).
        if self.writeback_cache
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
        {
            log::info!("kernel lacks FUSE capability {missing:?}; continuing without it");
        }
        Ok(())
    }

    /// A name that does not exist is answered as a negative entry (inode 0) valid for the
    /// entry timeout, so the kernel remembers the miss instead of asking again: compilers
    /// probing include paths, `$PATH` searches and Python imports stat many names that are
    /// not there. Sound for the same reason as the positive timeouts: every change to the
    /// volume goes through this mount, and the kernel replaces the negative entry itself when
    /// a create, mkdir, link, symlink or rename through the mount makes the name.
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Err(e) if e.errno() == libc::ENOENT => {
                reply.entry(&self.ttl, &negative_entry(), Generation(0));
            }
            res => self.entry(reply, "lookup", parent.0, res),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply!(reply, "getattr", ino.0, self.fs.getattr(ino.0), |a| reply
            .attr(&self.ttl, &file_attr(&a)))
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
        reply!(
            reply,
            "setattr",
            ino.0,
            self.fs.setattr(ino.0, &set, &caller(req)),
            |a| reply.attr(&self.ttl, &file_attr(&a))
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply!(reply, "readlink", ino.0, self.fs.readlink(ino.0), |t| reply
            .data(&t))
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
        self.entry(
            reply,
            "mknod",
            parent.0,
            self.fs.mknod(parent.0, name, mode, rdev, &caller(req)),
        );
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
        self.entry(
            reply,
            "mkdir",
            parent.0,
            self.fs.mkdir(parent.0, name, mode, &caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(
            reply,
            "unlink",
            parent.0,
            self.fs.unlink(parent.0, name),
            |_v| reply.ok()
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(
            reply,
            "rmdir",
            parent.0,
            self.fs.rmdir(parent.0, name),
            |_v| reply.ok()
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
        self.entry(
            reply,
            "symlink",
            parent.0,
            self.fs
                .symlink(parent.0, link_name, target.as_os_str(), &caller(req)),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply!(
            reply,
            "rename",
            parent.0,
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
            |_v| reply.ok()
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            "link",
            ino.0,
            self.fs.link(ino.0, newparent.0, newname),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        reply!(
            reply,
            "open",
            ino.0,
            self.fs.open(ino.0, flags.0, &caller(req)),
            |fh| {
                self.prefetch(ino, flags.0, fh);
                reply.opened(FileHandle(fh), self.open_flags())
            }
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply!(
            reply,
            "read",
            _ino.0,
            self.fs.read(fh.0, offset, size),
            |d| reply.data(&d)
        )
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // FUSE_HANDLE_KILLPRIV_V2: the writer lacks CAP_FSETID, so set-id bits go.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.fs.drop_setid(_ino.0)
        {
            return reply.error(fail("write", _ino.0, &e));
        }
        reply!(
            reply,
            "write",
            _ino.0,
            self.fs.write(fh.0, offset, data, &caller(req)),
            |n| reply.written(n)
        )
    }

    /// FLUSH is answered with ENOSYS, after which the kernel stops sending it (one request
    /// less per close(2)). Nothing is lost: the daemon has nothing to do at close that RELEASE
    /// does not do, and in writeback mode the kernel still writes the dirty pages and reports
    /// their errors from close(2) before it would have sent FLUSH. Byte-range locks are the
    /// kernel's own (no getlk/setlk here), so no lock owner needs a FLUSH either.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply!(reply, "release", _ino.0, self.fs.release(fh.0), |_v| reply
            .ok())
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply!(
            reply,
            "fsync",
            _ino.0,
            self.fs.fsync(fh.0, datasync),
            |_v| reply.ok()
        )
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply!(reply, "opendir", ino.0, self.fs.opendir(ino.0), |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()))
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (next, e) in entries {
                    if reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdir", ino.0, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdirplus(ino.0, fh.0, offset) {
            Ok(entries) => {
                let mut full = false;
                for (next, e, attr) in entries {
                    let dot = e.name == "." || e.name == "..";
                    if full
                        || reply.add(
                            INodeNo(e.ino),
                            next,
                            &e.name,
                            &self.ttl,
                            &file_attr(&attr),
                            Generation(0),
                        )
                    {
                        full = true;
                        if !dot {
                            // Not passed on, so the kernel will never forget it: undo the lookup.
                            self.fs.forget(e.ino, 1);
                        }
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdirplus", ino.0, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply!(reply, "fsyncdir", ino.0, self.fs.fsyncdir(ino.0), |_v| {
            reply.ok()
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply!(reply, "statfs", _ino.0, self.fs.statfs(), |s| reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            255,
            s.f_frsize as u32
        ))
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
        reply!(
            reply,
            "setxattr",
            ino.0,
            self.with_xattrs(|| self.fs.setxattr(ino.0, name, value, flags, &caller(req))),
            |_v| reply.ok()
        )
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply!(
            reply,
            "getxattr",
            ino.0,
            self.with_xattrs(|| self.fs.getxattr(ino.0, name, &caller(req))),
            |v| { xattr_reply(reply, &v, size) }
        )
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply!(
            reply,
            "listxattr",
            ino.0,
            self.with_xattrs(|| self.fs.listxattr(ino.0)),
            |v| { xattr_reply(reply, &v, size) }
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(
            reply,
            "removexattr",
            ino.0,
            self.with_xattrs(|| self.fs.removexattr(ino.0, name)),
            |_v| reply.ok()
        )
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply!(reply, "access", ino.0, self.fs.access(ino.0), |_v| reply
            .ok())
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
        reply!(
            reply,
            "create",
            parent.0,
            self.fs.create(parent.0, name, mode, flags, &caller(req)),
            |v| reply.created(
                &self.ttl,
                &file_attr(&v.0),
                Generation(0),
                FileHandle(v.1),
                self.open_flags()
            )
        )
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply!(
            reply,
            "fallocate",
            _ino.0,
            self.fs.fallocate(fh.0, offset, length, mode, &caller(req)),
            |_v| reply.ok()
        )
    }
}
