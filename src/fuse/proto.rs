//! The FUSE wire protocol, both directions, as pure functions over byte slices: kernel requests
//! (read from /dev/fuse, or put in an io_uring entry) into [`Op`]s, and [`Reply`]s,
//! INIT replies and notifications into kernel bytes (that direction in `proto/encode.rs`). No
//! I/O here.
//!
//! Layouts are those of the kernel's `fuse_kernel.h` (protocol 7.45), all little-endian.
//! Requests come from the kernel, which is trusted, but a mistake here (or a kernel this code
//! does not expect) must never become a panic or an out-of-bounds read: every length is
//! checked and a malformed request is a [`ProtoError`].
//!
//! Extensions (`fuse_in_header.total_extlen`, security contexts and supplementary groups after
//! the arguments) are only sent when the filesystem asks for them at INIT (FUSE_SECURITY_CTX,
//! FUSE_CREATE_SUPP_GROUP), which this filesystem does not; the field is parsed and otherwise
//! ignored. Were extension bytes to arrive anyway they would sit at the end of the body, after
//! everything decoded here (names end at their NUL, WRITE and SETXATTR take exactly the size
//! they announce), and so would be ignored too.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fs::{Attr, Kind, SetAttr};
use crate::store::sys::SetTime;

use super::dispatch::{Op, Reply, Statfs, dirent_size};

// Replies, the INIT reply and notifications (the kernel-bound direction).
mod encode;
pub(crate) use encode::*;

/// Size of `fuse_in_header`.
pub(crate) const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub(crate) const OUT_HEADER_LEN: usize = 16;
/// Size of `fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
pub(crate) const URING_HEADER_LEN: usize = 288;

/// Offset of `op_in` in `fuse_uring_req_header`.
const URING_OP_IN: usize = 128;
/// Size of `op_in`.
const URING_OP_IN_LEN: usize = 128;
/// Offset of `ring_ent_in_out` (flags u64, commit_id u64, payload_sz u32, padding u32,
/// reserved u64) in `fuse_uring_req_header`.
const URING_ENT: usize = 256;
const URING_COMMIT_ID: usize = URING_ENT + 8;
const URING_PAYLOAD_SZ: usize = URING_ENT + 16;

/// The protocol version this codec speaks (`FUSE_KERNEL_VERSION`.`FUSE_KERNEL_MINOR_VERSION`).
pub(crate) const KERNEL_VERSION: u32 = 7;
pub(crate) const KERNEL_MINOR_VERSION: u32 = 45;

/// Request opcodes (`enum fuse_opcode`).
pub(crate) mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    /// Protocol 7.45.
    pub const COPY_FILE_RANGE_64: u32 = 53;
}

/// Notification codes (`enum fuse_notify_code`), sent in `fuse_out_header.error`.
pub(crate) mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const STORE: i32 = 4;
}

/// `fuse_setattr_in.valid` bits.
mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2).
const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_fsync_in.fsync_flags`: fdatasync.
const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `fuse_open_out.open_flags`: keep the page cache across opens.
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// INIT flag: `flags2` is valid (in the request) / present (in the reply).
const INIT_EXT: u32 = 1 << 30;

/// The name of an opcode, for messages ("?" when unknown).
pub(crate) fn opcode_name(op: u32) -> &'static str {
    use opcode::*;
    match op {
        LOOKUP => "LOOKUP",
        FORGET => "FORGET",
        GETATTR => "GETATTR",
        SETATTR => "SETATTR",
        READLINK => "READLINK",
        SYMLINK => "SYMLINK",
        MKNOD => "MKNOD",
        MKDIR => "MKDIR",
        UNLINK => "UNLINK",
        RMDIR => "RMDIR",
        RENAME => "RENAME",
        LINK => "LINK",
        OPEN => "OPEN",
        READ => "READ",
        WRITE => "WRITE",
        STATFS => "STATFS",
        RELEASE => "RELEASE",
        FSYNC => "FSYNC",
        SETXATTR => "SETXATTR",
        GETXATTR => "GETXATTR",
        LISTXATTR => "LISTXATTR",
        REMOVEXATTR => "REMOVEXATTR",
        FLUSH => "FLUSH",
        INIT => "INIT",
        OPENDIR => "OPENDIR",
        READDIR => "READDIR",
        RELEASEDIR => "RELEASEDIR",
        FSYNCDIR => "FSYNCDIR",
        GETLK => "GETLK",
        SETLK => "SETLK",
        SETLKW => "SETLKW",
        ACCESS => "ACCESS",
        CREATE => "CREATE",
        INTERRUPT => "INTERRUPT",
        BMAP => "BMAP",
        DESTROY => "DESTROY",
        IOCTL => "IOCTL",
        POLL => "POLL",
        NOTIFY_REPLY => "NOTIFY_REPLY",
        BATCH_FORGET => "BATCH_FORGET",
        FALLOCATE => "FALLOCATE",
        READDIRPLUS => "READDIRPLUS",
        RENAME2 => "RENAME2",
        LSEEK => "LSEEK",
        COPY_FILE_RANGE => "COPY_FILE_RANGE",
        SETUPMAPPING => "SETUPMAPPING",
        REMOVEMAPPING => "REMOVEMAPPING",
        SYNCFS => "SYNCFS",
        TMPFILE => "TMPFILE",
        STATX => "STATX",
        COPY_FILE_RANGE_64 => "COPY_FILE_RANGE_64",
        _ => "?",
    }
}

/// For error messages: `opcode_name` of a field thiserror passes by reference.
fn name_of(op: &u32) -> &'static str {
    opcode_name(*op)
}

/// `fuse_in_header`, less its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InHeader {
    /// Length of the whole request (header, arguments, extensions), as the kernel counts it.
    pub len: u32,
    pub opcode: u32,
    /// Request id, echoed in the reply (bit 63 marks a resend, only with FUSE_HAS_RESEND,
    /// which is not negotiated).
    pub unique: u64,
    /// The inode the request is about (the parent directory for name operations).
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the extensions after the arguments, in 8-byte units; always 0 here, since no
    /// extension is negotiated, and ignored.
    pub total_extlen: u16,
}

/// A request the codec cannot make sense of. The kernel never sends one; if one arrives
/// anyway, it is answered with [`ProtoError::errno`] (when it has a readable header).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProtoError {
    /// Fewer bytes than the fixed header (`fuse_in_header`, or `fuse_uring_req_header`).
    #[error("{got}-byte request is shorter than its {need}-byte {what}")]
    ShortHeader {
        what: &'static str,
        need: usize,
        got: usize,
    },
    /// `fuse_in_header.len` disagrees with the number of bytes read from /dev/fuse.
    #[error("request header says {header_len} bytes but {got} were read")]
    LenMismatch { header_len: u32, got: usize },
    /// The per-opcode struct after the header is cut short.
    #[error("{} ({opcode}): {got} bytes of request arguments, {need} expected", name_of(.opcode))]
    ShortOpStruct {
        opcode: u32,
        need: usize,
        got: usize,
    },
    /// A name (or link target) runs to the end of the request without its NUL.
    #[error("{} ({opcode}): name without a terminating NUL", name_of(.opcode))]
    MissingNul { opcode: u32 },
    /// An empty name (or link target), which the kernel's VFS never passes on.
    #[error("{} ({opcode}): empty name", name_of(.opcode))]
    EmptyName { opcode: u32 },
    /// Fewer payload bytes than the request announces (WRITE data, SETXATTR value,
    /// BATCH_FORGET items).
    #[error("{} ({opcode}): {got} bytes of payload, {need} announced", name_of(.opcode))]
    ShortPayload { opcode: u32, need: u64, got: usize },
    /// An io_uring entry's `payload_sz` exceeds its payload buffer.
    #[error("io_uring entry: payload_sz {payload_sz} exceeds the {buf_len}-byte payload buffer")]
    UringPayloadSize { payload_sz: u32, buf_len: usize },
}

impl ProtoError {
    /// The errno to answer a malformed request with: EIO for every kind. EINVAL would tell the
    /// caller its arguments were wrong, but the fault is in the kernel/daemon channel, not in
    /// the system call; EIO is also what the kernel itself returns to the caller when a
    /// reply is malformed.
    pub(crate) fn errno(&self) -> i32 {
        libc::EIO
    }
}

/// Reads little-endian fields at fixed offsets. Out-of-range reads give 0 instead of
/// panicking; callers check lengths first, so that never happens on a path that is used.
#[derive(Clone, Copy)]
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn bytes<const N: usize>(self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(s) = off.checked_add(N).and_then(|end| self.0.get(off..end)) {
            a.copy_from_slice(s);
        }
        a
    }
    fn u16(self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes(off))
    }
    fn u32(self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    fn u64(self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
}

/// Parses a `fuse_in_header` from the start of `b`.
pub(crate) fn parse_in_header(b: &[u8]) -> Result<InHeader, ProtoError> {
    if b.len() < IN_HEADER_LEN {
        return Err(ProtoError::ShortHeader {
            what: "fuse_in_header",
            need: IN_HEADER_LEN,
            got: b.len(),
        });
    }
    let f = Le(b);
    Ok(InHeader {
        len: f.u32(0),
        opcode: f.u32(4),
        unique: f.u64(8),
        nodeid: f.u64(16),
        uid: f.u32(24),
        gid: f.u32(28),
        pid: f.u32(32),
        total_extlen: f.u16(36),
    })
}

/// Fixed size of the per-opcode struct that follows `fuse_in_header` (0 when none: LOOKUP,
/// UNLINK, RMDIR, SYMLINK, READLINK, STATFS, REMOVEXATTR, DESTROY).
///
/// Opcodes this codec does not decode (those [`decode`] turns into [`Op::Unsupported`], and
/// NOTIFY_REPLY, which is ignored) also give 0: their bytes are left in `rest`, so a request
/// that will be answered ENOSYS can never fail to split. INIT gives the 64 bytes of the
/// current `fuse_init_in`; [`split_classic`] also accepts the 16-byte form of kernels before
/// protocol 7.36.
pub(crate) fn op_struct_size(op: u32) -> usize {
    use opcode::*;
    match op {
        FORGET => 8,                        // fuse_forget_in
        GETATTR => 16,                      // fuse_getattr_in
        SETATTR => 88,                      // fuse_setattr_in
        MKNOD => 16,                        // fuse_mknod_in
        MKDIR => 8,                         // fuse_mkdir_in
        RENAME => 8,                        // fuse_rename_in
        LINK => 8,                          // fuse_link_in
        OPEN | OPENDIR => 8,                // fuse_open_in
        READ | READDIR | READDIRPLUS => 40, // fuse_read_in
        WRITE => 40,                        // fuse_write_in
        RELEASE | RELEASEDIR => 24,         // fuse_release_in
        FSYNC | FSYNCDIR => 16,             // fuse_fsync_in
        // fuse_setxattr_in as sent without FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE).
        SETXATTR => 8,
        GETXATTR | LISTXATTR => 8, // fuse_getxattr_in
        FLUSH => 24,               // fuse_flush_in
        INIT => 64,                // fuse_init_in
        ACCESS => 8,               // fuse_access_in
        CREATE => 16,              // fuse_create_in
        INTERRUPT => 8,            // fuse_interrupt_in
        BATCH_FORGET => 8,         // fuse_batch_forget_in
        FALLOCATE => 32,           // fuse_fallocate_in
        RENAME2 => 16,             // fuse_rename2_in
        _ => 0,
    }
}

/// Size of `fuse_init_in` before protocol 7.36 (major, minor, max_readahead, flags).
const INIT_IN_SHORT: usize = 16;

/// A request as read() from /dev/fuse (one whole request): header, fixed struct, rest.
///
/// `header.len` must equal `buf.len()`. The fixed struct is exactly [`op_struct_size`] bytes
/// (for INIT, between 16 and 64), `rest` everything after it.
pub(crate) fn split_classic(buf: &[u8]) -> Result<(InHeader, &[u8], &[u8]), ProtoError> {
    let h = parse_in_header(buf)?;
    if h.len as usize != buf.len() {
        return Err(ProtoError::LenMismatch {
            header_len: h.len,
            got: buf.len(),
        });
    }
    let body = &buf[IN_HEADER_LEN..];
    let need = op_struct_size(h.opcode);
    let take = if h.opcode == opcode::INIT {
        if body.len() < INIT_IN_SHORT {
            return Err(ProtoError::ShortOpStruct {
                opcode: h.opcode,
                need: INIT_IN_SHORT,
                got: body.len(),
            });
        }
        body.len().min(need)
    } else {
        need
    };
    if body.len() < take {
        return Err(ProtoError::ShortOpStruct {
            opcode: h.opcode,
            need,
            got: body.len(),
        });
    }
    let (op, rest) = body.split_at(take);
    Ok((h, op, rest))
}

/// What [`split_uring`] returns: header, op struct bytes, used payload, `commit_id`.
pub(crate) type UringRequest<'a> = (InHeader, &'a [u8], &'a [u8], u64);

/// A request as the kernel put it in an io_uring entry: `header` is the 288-byte
/// `fuse_uring_req_header` (`in_out[128]` holds `fuse_in_header`, `op_in[128]` the fixed
/// struct, `ring_ent_in_out` at 256: u64 flags, u64 commit_id, u32 payload_sz, u32 padding,
/// u64 reserved), `payload` the entry's payload buffer.
///
/// Returns the header, the op struct bytes (the [`op_struct_size`] prefix of `op_in`), the
/// used payload prefix (`payload_sz` bytes) and `commit_id`. `fuse_in_header.len` (the length
/// the request would have on /dev/fuse) is not checked.
pub(crate) fn split_uring<'a>(
    header: &'a [u8],
    payload: &'a [u8],
) -> Result<UringRequest<'a>, ProtoError> {
    if header.len() < URING_HEADER_LEN {
        return Err(ProtoError::ShortHeader {
            what: "fuse_uring_req_header",
            need: URING_HEADER_LEN,
            got: header.len(),
        });
    }
    let h = parse_in_header(header)?;
    let f = Le(header);
    let commit_id = f.u64(URING_COMMIT_ID);
    let payload_sz = f.u32(URING_PAYLOAD_SZ);
    let Some(used) = payload.get(..payload_sz as usize) else {
        return Err(ProtoError::UringPayloadSize {
            payload_sz,
            buf_len: payload.len(),
        });
    };
    let take = op_struct_size(h.opcode).min(URING_OP_IN_LEN);
    let op = &header[URING_OP_IN..URING_OP_IN + take];
    Ok((h, op, used, commit_id))
}

/// Splits a NUL-terminated name off the front of `b`: (name without NUL, what follows).
fn take_name(opcode: u32, b: &[u8]) -> Result<(&OsStr, &[u8]), ProtoError> {
    let Some(nul) = b.iter().position(|&c| c == 0) else {
        return Err(ProtoError::MissingNul { opcode });
    };
    if nul == 0 {
        return Err(ProtoError::EmptyName { opcode });
    }
    Ok((OsStr::from_bytes(&b[..nul]), &b[nul + 1..]))
}

/// The first `need` bytes of `b`, or ShortPayload.
fn take_payload(opcode: u32, b: &[u8], need: u64) -> Result<&[u8], ProtoError> {
    usize::try_from(need)
        .ok()
        .and_then(|n| b.get(..n))
        .ok_or(ProtoError::ShortPayload {
            opcode,
            need,
            got: b.len(),
        })
}

/// A `fuse_setattr_in` as the core's [`SetAttr`] (CTIME, LOCKOWNER and KILL_SUIDGID are
/// ignored: the core sets ctime itself, there are no locks here, and set-id bits are dropped by
/// the core on truncate).
fn setattr_in(f: Le<'_>) -> SetAttr {
    let valid = f.u32(0);
    let has = |bit: u32| valid & bit != 0;
    let time = |now: u32, set: u32, sec_off: usize, nsec_off: usize| {
        if has(now) {
            Some(SetTime::Now)
        } else if has(set) {
            Some(SetTime::At(f.u64(sec_off) as i64, f.u32(nsec_off)))
        } else {
            None
        }
    };
    SetAttr {
        mode: has(fattr::MODE).then(|| f.u32(68)),
        uid: has(fattr::UID).then(|| f.u32(76)),
        gid: has(fattr::GID).then(|| f.u32(80)),
        size: has(fattr::SIZE).then(|| f.u64(16)),
        atime: time(fattr::ATIME_NOW, fattr::ATIME, 32, 56),
        mtime: time(fattr::MTIME_NOW, fattr::MTIME, 40, 60),
        fh: has(fattr::FH).then(|| f.u64(8)),
    }
}

/// Decodes any opcode except INIT and DESTROY (the transport handles those; here they are
/// [`Op::Unsupported`]) into an [`Op`]. `op` is the fixed struct (it may be longer than
/// [`op_struct_size`], as `op_in` of an io_uring entry is; the excess is ignored), `rest` what
/// follows it (names, data).
///
/// Opcodes this filesystem does not implement (GETLK, SETLK, SETLKW, BMAP, IOCTL, POLL, LSEEK,
/// COPY_FILE_RANGE(_64), SETUPMAPPING, REMOVEMAPPING, SYNCFS, TMPFILE, STATX, anything unknown)
/// become [`Op::Unsupported`]. NOTIFY_REPLY (the answer to a NOTIFY_RETRIEVE, which is never
/// sent) and INTERRUPT become [`Op::Interrupt`]: nothing to do, nothing to answer.
pub(crate) fn decode<'a>(h: &InHeader, op: &'a [u8], rest: &'a [u8]) -> Result<Op<'a>, ProtoError> {
    use opcode::*;
    let code = h.opcode;
    // INIT is not decoded here, so its (variable-length) struct is not required either.
    let need = if code == INIT {
        0
    } else {
        op_struct_size(code)
    };
    if op.len() < need {
        return Err(ProtoError::ShortOpStruct {
            opcode: code,
            need,
            got: op.len(),
        });
    }
    let f = Le(op);
    let ino = h.nodeid;
    let name = || take_name(code, rest).map(|(n, _)| n);
    let two_names = || -> Result<(&'a OsStr, &'a OsStr), ProtoError> {
        let (a, after) = take_name(code, rest)?;
        let (b, _) = take_name(code, after)?;
        Ok((a, b))
    };
    Ok(match code {
        LOOKUP => Op::Lookup {
            parent: ino,
            name: name()?,
        },
        FORGET => Op::Forget {
            ino,
            nlookup: f.u64(0),
        },
        BATCH_FORGET => {
            let count = f.u32(0);
            Op::BatchForget {
                items: take_payload(code, rest, u64::from(count) * 16)?,
            }
        }
        GETATTR => Op::Getattr { ino },
        SETATTR => Op::Setattr {
            ino,
            set: setattr_in(f),
        },
        READLINK => Op::Readlink { ino },
        SYMLINK => {
            let (name, target) = two_names()?;
            Op::Symlink {
                parent: ino,
                name,
                target,
            }
        }
        MKNOD => Op::Mknod {
            parent: ino,
            name: name()?,
            mode: f.u32(0),
            rdev: f.u32(4),
        },
        MKDIR => Op::Mkdir {
            parent: ino,
            name: name()?,
            mode: f.u32(0),
        },
        UNLINK => Op::Unlink {
            parent: ino,
            name: name()?,
        },
        RMDIR => Op::Rmdir {
            parent: ino,
            name: name()?,
        },
        RENAME | RENAME2 => {
            let (name, newname) = two_names()?;
            Op::Rename {
                parent: ino,
                name,
                newparent: f.u64(0),
                newname,
                flags: if code == RENAME2 { f.u32(8) } else { 0 },
            }
        }
        LINK => Op::Link {
            ino: f.u64(0),
            newparent: ino,
            newname: name()?,
        },
        OPEN => Op::Open {
            ino,
            flags: f.u32(0) as i32,
        },
        READ => Op::Read {
            ino,
            fh: f.u64(0),
            offset: f.u64(8),
            size: f.u32(16),
        },
        WRITE => Op::Write {
            ino,
            fh: f.u64(0),
            offset: f.u64(8),
            data: take_payload(code, rest, u64::from(f.u32(16)))?,
            kill_suidgid: f.u32(20) & WRITE_KILL_SUIDGID != 0,
        },
        FLUSH => Op::Flush,
        RELEASE => Op::Release { ino, fh: f.u64(0) },
        FSYNC => Op::Fsync {
            ino,
            fh: f.u64(0),
            datasync: f.u32(8) & FSYNC_FDATASYNC != 0,
        },
        OPENDIR => Op::Opendir { ino },
        READDIR | READDIRPLUS => Op::Readdir {
            ino,
            fh: f.u64(0),
            offset: f.u64(8),
            size: f.u32(16),
            plus: code == READDIRPLUS,
        },
        RELEASEDIR => Op::Releasedir { fh: f.u64(0) },
        FSYNCDIR => Op::Fsyncdir { ino },
        STATFS => Op::Statfs { ino },
        SETXATTR => {
            let (name, after) = take_name(code, rest)?;
            Op::Setxattr {
                ino,
                name,
                value: take_payload(code, after, u64::from(f.u32(0)))?,
                flags: f.u32(4) as i32,
            }
        }
        GETXATTR => Op::Getxattr {
            ino,
            name: name()?,
            size: f.u32(0),
        },
        LISTXATTR => Op::Listxattr {
            ino,
            size: f.u32(0),
        },
        REMOVEXATTR => Op::Removexattr { ino, name: name()? },
        ACCESS => Op::Access { ino },
        CREATE => Op::Create {
            parent: ino,
            name: name()?,
            mode: f.u32(4),
            flags: f.u32(0) as i32,
        },
        FALLOCATE => Op::Fallocate {
            ino,
            fh: f.u64(0),
            offset: f.u64(8),
            length: f.u64(16),
            mode: f.u32(24) as i32,
        },
        INTERRUPT | NOTIFY_REPLY => Op::Interrupt,
        _ => Op::Unsupported { opcode: code },
    })
}

/// `fuse_init_in`, as far as this filesystem cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (`flags2` only when INIT_EXT is in `flags`).
    pub flags: u64,
}

/// Decodes `fuse_init_in`: the 16-byte form of kernels before 7.36 or the 64-byte one.
/// `flags2` is read when present (at least 20 bytes) and INIT_EXT says it is valid.
pub(crate) fn decode_init(op: &[u8]) -> Result<InitIn, ProtoError> {
    if op.len() < INIT_IN_SHORT {
        return Err(ProtoError::ShortOpStruct {
            opcode: opcode::INIT,
            need: INIT_IN_SHORT,
            got: op.len(),
        });
    }
    let f = Le(op);
    let flags = f.u32(12);
    let flags2 = if flags & INIT_EXT != 0 && op.len() >= 20 {
        f.u32(16)
    } else {
        0
    };
    Ok(InitIn {
        major: f.u32(0),
        minor: f.u32(4),
        max_readahead: f.u32(8),
        flags: u64::from(flags) | u64::from(flags2) << 32,
    })
}

#[cfg(test)]
#[path = "proto_tests/mod.rs"]
mod tests;
