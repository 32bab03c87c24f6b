//! The fuser adapter: every method calls the core, then replies or logs and replies the errno
//! from `FsError::errno()`. No logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, EncFs, FsError, Kind, SetAttr};
use crate::keys::Caller;
use crate::store::sys::SetTime;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (and root) use the mount (`allow_other`).
    pub allow_other: bool,
    /// Request-handling threads.
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Attribute and entry cache lifetime given to the kernel.
    pub ttl: Duration,
    /// Keep the kernel's page cache of a file across opens.
    pub kernel_cache: bool,
    /// FUSE_WRITEBACK_CACHE: the kernel buffers writes in its page cache and sends them in
    /// batches (it then owns size and mtime while pages are dirty).
    pub writeback_cache: bool,
    /// Extended attributes. Off (`--no-xattr`), every xattr call fails with ENOSYS once and
    /// the kernel stops asking (EOPNOTSUPP to applications), including the
    /// getxattr(security.capability) it sends while creating files.
    pub xattrs: bool,
    /// Honour setuid/setgid bits and file capabilities (`suid`). Off by default: modes, owners
    /// and `security.capability` in BACKING are not authenticated, so whoever can write BACKING
    /// could otherwise plant a setuid binary. Only root can turn it on.
    pub suid: bool,
    /// Honour device nodes (`dev`). Off by default for the same reason. Only root.
    pub dev: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            threads: 2,
            fsname: "envelopefs".into(),
            read_only: false,
            // Every change goes through this daemon (and so through the kernel's caches), so the
            // kernel may keep attributes and names longer than libfuse's 1 s default.
            ttl: Duration::from_secs(10),
            kernel_cache: true,
            writeback_cache: true,
            xattrs: true,
            suid: false,
            dev: false,
        }
    }
}

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

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn file_type(k: Kind) -> FileType {
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

fn file_attr(a: &Attr) -> FileAttr {
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
fn negative_entry() -> FileAttr {
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
fn set_time(t: TimeOrNow) -> SetTime {
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

/// The size protocol of getxattr/listxattr: size 0 asks for the length.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Starts the thread that carries key decisions to the kernel's page cache: when the key
/// service's generation moves (a key disabled, a grant revoked, a policy changed, by this or
/// another process), the cached pages of every open file are dropped, so the next read of an
/// open file reaches the daemon and its handle's key decision is taken again
/// ([`EncFs::check_handle`]). Without it a process could go on reading cached plaintext of a
/// file it opened before the revocation.
/// The thread ends once the filesystem is dropped.
pub(crate) fn spawn_revocation_watch(fs: &Arc<EncFs>, notifier: Arc<OnceLock<Notifier>>) {
    let period = Duration::from_millis(crate::keys::GENERATION_CHECK_MS);
    let weak = Arc::downgrade(fs);
    let mut last = fs.key_generation();
    let spawned = std::thread::Builder::new()
        .name("revocation-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(fs) = weak.upgrade() else { return };
                let now = fs.key_generation();
                if now == last {
                    continue;
                }
                last = now;
                let Some(n) = notifier.get() else { continue };
                for ino in fs.open_inodes() {
                    if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                        log::debug!("cache of inode {ino} not dropped: {e}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "cannot start the revocation watch ({e}); key decisions reach open files only \
             when their cached pages are evicted"
        );
    }
}

/// fuser session config for `opts`.
pub(crate) fn fuser_config(opts: &MountOptions) -> fuser::Config {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("envelopefs".into()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    // nosuid and nodev unless asked for: BACKING's modes, owners, device numbers and
    // security.capability are not authenticated (docs/SECURITY.md). fusermount3 imposes both
    // on non-root mounts anyway; the CLI refuses --suid/--dev for non-root callers.
    cfg.mount_options.push(if opts.dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    cfg.mount_options.push(if opts.suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    if opts.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(opts.threads.max(1));
    cfg
}

/// Unmounts `mountpoint` lazily (root: umount2 with MNT_DETACH; others: fusermount3 -u -z).
pub(crate) fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    if crate::store::sys::geteuid() == 0 {
        return crate::store::sys::umount_lazy(mountpoint);
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u {} failed",
            mountpoint.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
