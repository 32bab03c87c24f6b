//! The one seam both transports share: a request, decoded into an [`Op`], is handled here by
//! [`Dispatcher::handle`], which calls the core and returns a [`Reply`]. The fuser adapter
//! ([`super::Adapter`]) and the io_uring transport ([`super::uring`]) only translate: fuser's
//! callbacks into `Op`s and `Reply`s into fuser's reply objects on one side, kernel buffers into
//! `Op`s ([`super::proto`]) and `Reply`s into kernel buffers on the other. Every decision (which
//! core call, which errno, negative entries, prefetch on open, which directory entries fit)
//! is made here, once.

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::fs::dir::Entry;
use crate::fs::{Attr, EncFs, FsError};
use crate::keys::Caller;

use super::MountOptions;
pub(crate) use super::op::Op;

/// What to answer. Attribute-carrying replies hold the timeout the kernel may cache them for.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// No reply at all (FORGET, INTERRUPT).
    None,
    /// Success without data.
    Empty,
    /// A positive errno.
    Err(i32),
    /// A lookup, mknod, mkdir, symlink or link; `None` is a negative entry (inode 0), which
    /// the kernel caches for `ttl`.
    Entry {
        attr: Option<Attr>,
        ttl: Duration,
    },
    Attr {
        attr: Attr,
        ttl: Duration,
    },
    Data(Vec<u8>),
    /// READ data already written into the transport's buffer ([`Dispatcher::read_into`]):
    /// this many bytes.
    Filled(usize),
    Open {
        fh: u64,
        keep_cache: bool,
    },
    Create {
        attr: Attr,
        ttl: Duration,
        fh: u64,
        keep_cache: bool,
    },
    Written(u32),
    Statfs(Statfs),
    /// getxattr/listxattr with size 0: the length of the value.
    XattrSize(u32),
    /// Entries that fit the kernel's buffer, each with the offset of the next.
    Dir(Vec<(u64, Entry)>),
    /// As `Dir`, each entry with its attributes (and a lookup count the kernel now holds).
    DirPlus {
        entries: Vec<(u64, Entry, Attr)>,
        ttl: Duration,
    },
}

/// The statfs answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Size of a `fuse_dirent` carrying `name` in a READDIR reply (24-byte header, the name, padded
/// to 8 bytes).
pub(crate) fn dirent_size(name: &OsStr) -> usize {
    (24 + name.len()).next_multiple_of(8)
}

/// Size of a `fuse_direntplus` (a 128-byte `fuse_entry_out` before the dirent).
pub(crate) fn direntplus_size(name: &OsStr) -> usize {
    128 + dirent_size(name)
}

/// Notifications to the kernel, written on /dev/fuse by whichever transport owns it.
pub(crate) trait KernelNotify: Send + Sync {
    /// FUSE_NOTIFY_STORE: put `data` in the page cache of `ino` at `offset`.
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// FUSE_NOTIFY_INVAL_INODE: drop cached pages of `ino` (`len` 0: to the end).
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()>;
}

/// Where the session's notifier goes once the session exists. Until then (and in tests without
/// one) opens do not prefetch and the revocation watch has nothing to notify.
pub(crate) type NotifierSlot = Arc<OnceLock<Box<dyn KernelNotify>>>;

/// INIT capabilities wanted from the kernel (fuse_kernel.h bit numbers), each optional: an old
/// kernel without one just does without.
pub(crate) mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const OVER_IO_URING: u64 = 1 << 41;
    /// Largest WRITE (and READ) the kernel may send.
    pub const MAX_WRITE: u32 = 1 << 20;
    /// Readahead window.
    pub const MAX_READAHEAD: u32 = 1 << 20;
}

/// The handler behind both transports.
pub(crate) struct Dispatcher {
    fs: Arc<EncFs>,
    ttl: Duration,
    kernel_cache: bool,
    writeback_cache: bool,
    xattrs: bool,
    notifier: NotifierSlot,
}

/// Largest file whose plaintext an open puts in the kernel's page cache before answering
/// (docs/DESIGN.md §Prefetch on open).
pub(crate) const PREFETCH_MAX: u64 = 64 << 10;

/// The request trace (`-vv`), one line per request, whichever transport carried it.
fn trace(who: &Caller, op: &Op<'_>) {
    if log::log_enabled!(target: "envelopefs::request", log::Level::Debug) {
        log::debug!(target: "envelopefs::request", "{op} pid {}", who.pid);
    }
}

/// Logs a failed request at the level it deserves and returns its errno.
fn fail(op: &str, ino: u64, e: &FsError) -> Reply {
    if e.is_alarming() {
        log::warn!("{op} inode {ino}: {e}");
    } else {
        log::debug!("{op} inode {ino}: {e}");
    }
    Reply::Err(e.errno())
}

impl Dispatcher {
    /// Wraps a core.
    pub(crate) fn new(fs: Arc<EncFs>, opts: &MountOptions) -> Self {
        Dispatcher {
            fs,
            ttl: opts.ttl,
            kernel_cache: opts.kernel_cache,
            writeback_cache: opts.writeback_cache && opts.kernel_cache && !opts.read_only,
            xattrs: opts.xattrs,
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// The slot the transport puts its notifier in.
    pub(crate) fn notifier_slot(&self) -> NotifierSlot {
        self.notifier.clone()
    }

    /// The INIT capabilities to ask for (those the kernel offers are granted; see [`init`]).
    pub(crate) fn wanted_init_flags(&self) -> u64 {
        let mut f = init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO
            | init::PARALLEL_DIROPS
            | init::AUTO_INVAL_DATA
            // The filesystem clears set-id bits on write, truncate and chown itself; the
            // kernel then sets SB_NOSEC and stops sending a getxattr(security.capability)
            // before every write(2) (measured: 101 getxattr requests for 101 writes before).
            | init::HANDLE_KILLPRIV_V2;
        // Writeback caching is safe for the same reason as FOPEN_KEEP_CACHE (this daemon sees
        // every change). The kernel may then read through a write-only handle (to fill a
        // partially written page) and sends appends at the offset it computed; the core
        // handles both (backing files of writers are O_RDWR, O_APPEND is not passed down).
        if self.writeback_cache {
            f |= init::WRITEBACK_CACHE;
        }
        f
    }

    /// FOPEN_KEEP_CACHE: the kernel keeps a file's cached pages across opens. Safe because
    /// every change to a file's contents goes through this daemon (and so through the kernel's
    /// cache); FUSE_AUTO_INVAL_DATA drops them if the mtime changes anyway.
    fn keep_cache(&self) -> bool {
        self.kernel_cache
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

    /// Prefetch on open: a small file opened read-only, with no other handle on it, has its
    /// plaintext put in the kernel's page cache (FUSE_NOTIFY_STORE) before the open is
    /// answered, so reading it costs no READ round trip. Only with the kernel cache on (the
    /// handle gets FOPEN_KEEP_CACHE, so the pages stay).
    fn prefetch(&self, ino: u64, flags: i32, fh: u64) {
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

    fn entry(&self, op: &str, ino: u64, res: Result<Attr, FsError>) -> Reply {
        match res {
            Ok(a) => Reply::Entry {
                attr: Some(a),
                ttl: self.ttl,
            },
            Err(e) => fail(op, ino, &e),
        }
    }

    fn attr(&self, op: &str, ino: u64, res: Result<Attr, FsError>) -> Reply {
        match res {
            Ok(attr) => Reply::Attr {
                attr,
                ttl: self.ttl,
            },
            Err(e) => fail(op, ino, &e),
        }
    }

    fn xattr(op: &str, ino: u64, res: Result<Vec<u8>, FsError>, size: u32) -> Reply {
        match res {
            // The size protocol of getxattr/listxattr: size 0 asks for the length.
            Ok(v) if size == 0 => Reply::XattrSize(v.len() as u32),
            Ok(v) if v.len() > size as usize => Reply::Err(libc::ERANGE),
            Ok(v) => Reply::Data(v),
            Err(e) => fail(op, ino, &e),
        }
    }

    /// READ straight into a transport's buffer `out` (at least `size` bytes): the same
    /// request as [`Op::Read`], answered with [`Reply::Filled`] instead of a copy of the data.
    pub(crate) fn read_into(
        &self,
        who: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut [u8],
    ) -> Reply {
        trace(
            who,
            &Op::Read {
                ino,
                fh,
                offset,
                size,
            },
        );
        if out.len() < size as usize {
            return Reply::Err(libc::EIO);
        }
        match self.fs.read_into(fh, offset, size, out) {
            Ok(n) => Reply::Filled(n),
            Err(e) => fail("read", ino, &e),
        }
    }

    /// READDIRPLUS entries that were not passed on (they did not fit the kernel's buffer): the
    /// kernel will never forget them, so the lookups the core counted are undone.
    pub(crate) fn not_sent(&self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            if e.name != "." && e.name != ".." {
                self.fs.forget(e.ino, 1);
            }
        }
    }

    /// Handles one request from `who`.
    pub(crate) fn handle(&self, who: &Caller, op: Op<'_>) -> Reply {
        trace(who, &op);
        let fs = &*self.fs;
        let empty = |op: &str, ino: u64, res: Result<(), FsError>| match res {
            Ok(()) => Reply::Empty,
            Err(e) => fail(op, ino, &e),
        };
        match op {
            // A name that does not exist is answered as a negative entry (inode 0) valid for
            // the entry timeout, so the kernel remembers the miss instead of asking again:
            // compilers probing include paths, `$PATH` searches and Python imports stat many
            // names that are not there. Sound for the same reason as the positive timeouts:
            // every change to the volume goes through this mount, and the kernel replaces the
            // negative entry itself when a create, mkdir, link, symlink or rename through the
            // mount makes the name.
            Op::Lookup { parent, name } => match fs.lookup(parent, name) {
                Err(e) if e.errno() == libc::ENOENT => Reply::Entry {
                    attr: None,
                    ttl: self.ttl,
                },
                res => self.entry("lookup", parent, res),
            },
            Op::Forget { ino, nlookup } => {
                fs.forget(ino, nlookup);
                Reply::None
            }
            Op::BatchForget { items } => {
                for one in items.chunks_exact(16) {
                    let (ino, n) = one.split_at(8);
                    let le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
                    fs.forget(le(ino), le(n));
                }
                Reply::None
            }
            Op::Getattr { ino } => self.attr("getattr", ino, fs.getattr(ino)),
            Op::Setattr { ino, set } => self.attr("setattr", ino, fs.setattr(ino, &set, who)),
            Op::Readlink { ino } => match fs.readlink(ino) {
                Ok(t) => Reply::Data(t),
                Err(e) => fail("readlink", ino, &e),
            },
            Op::Mknod {
                parent,
                name,
                mode,
                rdev,
            } => self.entry("mknod", parent, fs.mknod(parent, name, mode, rdev, who)),
            Op::Mkdir { parent, name, mode } => {
                self.entry("mkdir", parent, fs.mkdir(parent, name, mode, who))
            }
            Op::Unlink { parent, name } => empty("unlink", parent, fs.unlink(parent, name)),
            Op::Rmdir { parent, name } => empty("rmdir", parent, fs.rmdir(parent, name)),
            Op::Symlink {
                parent,
                name,
                target,
            } => self.entry("symlink", parent, fs.symlink(parent, name, target, who)),
            Op::Rename {
                parent,
                name,
                newparent,
                newname,
                flags,
            } => empty(
                "rename",
                parent,
                fs.rename(parent, name, newparent, newname, flags),
            ),
            Op::Link {
                ino,
                newparent,
                newname,
            } => self.entry("link", ino, fs.link(ino, newparent, newname)),
            Op::Open { ino, flags } => match fs.open(ino, flags, who) {
                Ok(fh) => {
                    self.prefetch(ino, flags, fh);
                    Reply::Open {
                        fh,
                        keep_cache: self.keep_cache(),
                    }
                }
                Err(e) => fail("open", ino, &e),
            },
            Op::Read {
                ino,
                fh,
                offset,
                size,
            } => match fs.read(fh, offset, size) {
                Ok(d) => Reply::Data(d),
                Err(e) => fail("read", ino, &e),
            },
            Op::Write {
                ino,
                fh,
                offset,
                data,
                kill_suidgid,
            } => {
                // FUSE_HANDLE_KILLPRIV_V2: the writer lacks CAP_FSETID, so set-id bits go.
                if kill_suidgid && let Err(e) = fs.drop_setid(ino) {
                    return fail("write", ino, &e);
                }
                match fs.write(fh, offset, data, who) {
                    Ok(n) => Reply::Written(n),
                    Err(e) => fail("write", ino, &e),
                }
            }
            // FLUSH is answered with ENOSYS, after which the kernel stops sending it (one
            // request less per close(2)). Nothing is lost: the daemon has nothing to do at close
            // that RELEASE does not do, and in writeback mode the kernel still writes the dirty
            // pages and reports their errors from close(2) before it would have sent FLUSH.
            // Byte-range locks are the kernel's own (no getlk/setlk here), so no lock owner
            // needs a FLUSH either.
            Op::Flush => Reply::Err(libc::ENOSYS),
            Op::Release { ino, fh } => empty("release", ino, fs.release(fh)),
            Op::Fsync { ino, fh, datasync } => empty("fsync", ino, fs.fsync(fh, datasync)),
            Op::Opendir { ino } => match fs.opendir(ino) {
                Ok(fh) => Reply::Open {
                    fh,
                    keep_cache: false,
                },
                Err(e) => fail("opendir", ino, &e),
            },
            Op::Readdir {
                ino,
                fh,
                offset,
                size,
                plus: false,
            } => match fs.readdir(ino, fh, offset) {
                Ok(entries) => {
                    let mut room = size as usize;
                    let mut fit = Vec::with_capacity(entries.len());
                    for (next, e) in entries {
                        let need = dirent_size(&e.name);
                        if need > room {
                            break;
                        }
                        room -= need;
                        fit.push((next, e));
                    }
                    Reply::Dir(fit)
                }
                Err(e) => fail("readdir", ino, &e),
            },
            Op::Readdir {
                ino,
                fh,
                offset,
                size,
                plus: true,
            } => match fs.readdirplus(ino, fh, offset) {
                Ok(entries) => {
                    let mut room = size as usize;
                    let mut fit = Vec::with_capacity(entries.len());
                    let mut full = false;
                    let mut left = Vec::new();
                    for (next, e, attr) in entries {
                        let need = direntplus_size(&e.name);
                        if full || need > room {
                            full = true;
                            left.push(e);
                            continue;
                        }
                        room -= need;
                        fit.push((next, e, attr));
                    }
                    self.not_sent(left);
                    Reply::DirPlus {
                        entries: fit,
                        ttl: self.ttl,
                    }
                }
                Err(e) => fail("readdirplus", ino, &e),
            },
            Op::Releasedir { fh } => {
                fs.releasedir(fh);
                Reply::Empty
            }
            Op::Fsyncdir { ino } => empty("fsyncdir", ino, fs.fsyncdir(ino)),
            Op::Statfs { ino } => match fs.statfs() {
                Ok(s) => Reply::Statfs(Statfs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    namelen: 255,
                    frsize: s.f_frsize as u32,
                }),
                Err(e) => fail("statfs", ino, &e),
            },
            Op::Setxattr {
                ino,
                name,
                value,
                flags,
            } => empty(
                "setxattr",
                ino,
                self.with_xattrs(|| fs.setxattr(ino, name, value, flags, who)),
            ),
            Op::Getxattr { ino, name, size } => Self::xattr(
                "getxattr",
                ino,
                self.with_xattrs(|| fs.getxattr(ino, name, who)),
                size,
            ),
            Op::Listxattr { ino, size } => Self::xattr(
                "listxattr",
                ino,
                self.with_xattrs(|| fs.listxattr(ino)),
                size,
            ),
            Op::Removexattr { ino, name } => empty(
                "removexattr",
                ino,
                self.with_xattrs(|| fs.removexattr(ino, name)),
            ),
            Op::Access { ino } => empty("access", ino, fs.access(ino)),
            Op::Create {
                parent,
                name,
                mode,
                flags,
            } => match fs.create(parent, name, mode, flags, who) {
                Ok((attr, fh)) => Reply::Create {
                    attr,
                    ttl: self.ttl,
                    fh,
                    keep_cache: self.keep_cache(),
                },
                Err(e) => fail("create", parent, &e),
            },
            Op::Fallocate {
                ino,
                fh,
                offset,
                length,
                mode,
            } => empty(
                "fallocate",
                ino,
                fs.fallocate(fh, offset, length, mode, who),
            ),
            Op::Interrupt => Reply::None,
            Op::Unsupported { opcode } => {
                log::debug!("unsupported FUSE opcode {opcode}: ENOSYS");
                Reply::Err(libc::ENOSYS)
            }
        }
    }
}
