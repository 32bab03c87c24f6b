//! Tests of the wire codec against requests built byte by byte from field values (the layouts
//! of fuse_kernel.h written out again here, independently of the decoder's offsets).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::fs::dir::Entry;
use crate::fuse::dispatch::direntplus_size;

const UNIQUE: u64 = 0x1122_3344_5566_7788;
const UID: u32 = 1000;
const GID: u32 = 100;
const PID: u32 = 4242;
const COMMIT: u64 = 0xC0FF_EE00_0000_0042;

/// Little-endian bytes, field by field.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A name with its NUL.
    fn name(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn b() -> B {
    B::default()
}

/// A request: header fields, the fixed struct, what follows it.
#[derive(Clone, Debug)]
struct Req {
    opcode: u32,
    nodeid: u64,
    op: Vec<u8>,
    rest: Vec<u8>,
}

fn req(opcode: u32, nodeid: u64, op: B, rest: B) -> Req {
    Req {
        opcode,
        nodeid,
        op: op.0,
        rest: rest.0,
    }
}

impl Req {
    fn total_len(&self) -> usize {
        IN_HEADER_LEN + self.op.len() + self.rest.len()
    }

    /// `fuse_in_header` with the given `len`.
    fn header(&self, len: u32) -> Vec<u8> {
        b().u32(len)
            .u32(self.opcode)
            .u64(UNIQUE)
            .u64(self.nodeid)
            .u32(UID)
            .u32(GID)
            .u32(PID)
            .u32(0) // total_extlen, padding
            .0
    }

    fn expected_header(&self) -> InHeader {
        InHeader {
            len: self.total_len() as u32,
            opcode: self.opcode,
            unique: UNIQUE,
            nodeid: self.nodeid,
            uid: UID,
            gid: GID,
            pid: PID,
            total_extlen: 0,
        }
    }

    /// As read() from /dev/fuse.
    fn classic(&self) -> Vec<u8> {
        let mut v = self.header(self.total_len() as u32);
        v.extend_from_slice(&self.op);
        v.extend_from_slice(&self.rest);
        v
    }

    /// As the kernel fills an io_uring entry: the 288-byte header (op_in padded with 0xAA so
    /// that reading past the struct shows) and a payload buffer larger than `payload_sz`.
    fn uring(&self) -> (Vec<u8>, Vec<u8>) {
        let mut h = self.header(self.total_len() as u32);
        h.resize(128, 0);
        h.extend_from_slice(&self.op);
        h.resize(256, 0xAA);
        h.extend_from_slice(
            &b().u64(0)
                .u64(COMMIT)
                .u32(self.rest.len() as u32)
                .u32(0)
                .u64(0)
                .0,
        );
        assert_eq!(h.len(), URING_HEADER_LEN);
        let mut payload = self.rest.clone();
        payload.extend_from_slice(&[0x55; 64]);
        (h, payload)
    }
}

/// Decodes `r` as /dev/fuse and as io_uring would deliver it (and with the whole 128-byte
/// op_in), checking the header, and hands each decoded op to `check`.
fn both(r: &Req, check: impl Fn(Op<'_>)) {
    let buf = r.classic();
    let (h, op, rest) = split_classic(&buf).unwrap();
    assert_eq!(h, r.expected_header());
    assert_eq!(op, &r.op[..]);
    assert_eq!(rest, &r.rest[..]);
    check(decode(&h, op, rest).unwrap());

    let (hdr, payload) = r.uring();
    let (h2, op2, rest2, commit) = split_uring(&hdr, &payload).unwrap();
    assert_eq!(h2, h);
    assert_eq!(commit, COMMIT);
    assert_eq!(op2.len(), op_struct_size(r.opcode));
    assert_eq!(rest2, &r.rest[..]);
    check(decode(&h2, op2, rest2).unwrap());
    check(decode(&h2, &hdr[128..256], rest2).unwrap());
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// Request builders, one per opcode, with distinctive values.

fn r_lookup() -> Req {
    req(opcode::LOOKUP, 7, b(), b().name("hello.txt"))
}
fn r_forget() -> Req {
    req(opcode::FORGET, 9, b().u64(3), b())
}
fn r_batch_forget() -> Req {
    let items = b().u64(10).u64(1).u64(11).u64(2).u64(12).u64(u64::MAX);
    req(opcode::BATCH_FORGET, 0, b().u32(3).u32(0), items)
}
fn r_getattr() -> Req {
    req(opcode::GETATTR, 5, b().u32(1).u32(0).u64(99), b())
}
/// fuse_setattr_in with every field set to something recognisable.
fn setattr_in(valid: u32) -> B {
    b().u32(valid)
        .u32(0) // padding
        .u64(0x77) // fh
        .u64(12345) // size
        .u64(0xDEAD) // lock_owner
        .u64((-5i64) as u64) // atime
        .u64(1_600_000_000) // mtime
        .u64(42) // ctime
        .u32(7) // atimensec
        .u32(999_999_999) // mtimensec
        .u32(3) // ctimensec
        .u32(0o104_755) // mode
        .u32(0) // unused4
        .u32(2000) // uid
        .u32(3000) // gid
        .u32(0) // unused5
}
fn r_setattr() -> Req {
    // MODE UID GID SIZE ATIME MTIME FH MTIME_NOW LOCKOWNER CTIME KILL_SUIDGID
    let valid = 1 | 2 | 4 | 8 | 16 | 32 | 64 | 256 | 512 | 1024 | 2048;
    req(opcode::SETATTR, 6, setattr_in(valid), b())
}
fn r_readlink() -> Req {
    req(opcode::READLINK, 8, b(), b())
}
fn r_symlink() -> Req {
    req(
        opcode::SYMLINK,
        2,
        b(),
        b().name("link").name("../some/target"),
    )
}
fn r_mknod() -> Req {
    let op = b().u32(0o010_644).u32(0x0801).u32(0o022).u32(0);
    req(opcode::MKNOD, 3, op, b().name("fifo"))
}
fn r_mkdir() -> Req {
    req(opcode::MKDIR, 4, b().u32(0o755).u32(0o022), b().name("sub"))
}
fn r_unlink() -> Req {
    req(opcode::UNLINK, 5, b(), b().name("gone"))
}
fn r_rmdir() -> Req {
    req(opcode::RMDIR, 6, b(), b().name("olddir"))
}
fn r_rename() -> Req {
    req(opcode::RENAME, 10, b().u64(20), b().name("a").name("b"))
}
fn r_rename2() -> Req {
    let op = b().u64(21).u32(libc::RENAME_NOREPLACE).u32(0);
    req(opcode::RENAME2, 11, op, b().name("from").name("to"))
}
fn r_link() -> Req {
    req(opcode::LINK, 12, b().u64(34), b().name("hard"))
}
fn r_open() -> Req {
    let flags = (libc::O_RDWR | libc::O_TRUNC) as u32;
    req(opcode::OPEN, 13, b().u32(flags).u32(0), b())
}
fn read_in(fh: u64, offset: u64, size: u32) -> B {
    b().u64(fh)
        .u64(offset)
        .u32(size)
        .u32(0)
        .u64(0xAB)
        .u32(0)
        .u32(0)
}
fn r_read() -> Req {
    req(opcode::READ, 14, read_in(5, 1 << 40, 131072), b())
}
/// fuse_write_in then `data`.
fn r_write_with(size: u32, write_flags: u32, data: &[u8]) -> Req {
    let op = b()
        .u64(6)
        .u64(4096)
        .u32(size)
        .u32(write_flags)
        .u64(0)
        .u32(0)
        .u32(0);
    req(opcode::WRITE, 15, op, b().bytes(data))
}
fn r_write() -> Req {
    r_write_with(5, 1 << 2, b"hello")
}
fn r_statfs() -> Req {
    req(opcode::STATFS, 1, b(), b())
}
fn r_release() -> Req {
    req(opcode::RELEASE, 16, b().u64(77).u32(0).u32(0).u64(0), b())
}
fn r_fsync() -> Req {
    req(opcode::FSYNC, 17, b().u64(78).u32(1).u32(0), b())
}
fn r_setxattr() -> Req {
    let op = b().u32(4).u32(libc::XATTR_CREATE as u32);
    req(opcode::SETXATTR, 18, op, b().name("user.k").bytes(b"v\0lu"))
}
fn r_getxattr() -> Req {
    req(
        opcode::GETXATTR,
        19,
        b().u32(256).u32(0),
        b().name("user.k"),
    )
}
fn r_listxattr() -> Req {
    req(opcode::LISTXATTR, 20, b().u32(0).u32(0), b())
}
fn r_removexattr() -> Req {
    req(opcode::REMOVEXATTR, 21, b(), b().name("user.k"))
}
fn r_flush() -> Req {
    req(opcode::FLUSH, 22, b().u64(79).u32(0).u32(0).u64(5), b())
}
fn r_opendir() -> Req {
    req(
        opcode::OPENDIR,
        23,
        b().u32(libc::O_RDONLY as u32).u32(0),
        b(),
    )
}
fn r_readdir() -> Req {
    req(opcode::READDIR, 24, read_in(80, 3, 4096), b())
}
fn r_readdirplus() -> Req {
    req(opcode::READDIRPLUS, 25, read_in(81, 17, 8192), b())
}
fn r_releasedir() -> Req {
    req(
        opcode::RELEASEDIR,
        26,
        b().u64(82).u32(0).u32(0).u64(0),
        b(),
    )
}
fn r_fsyncdir() -> Req {
    req(opcode::FSYNCDIR, 27, b().u64(83).u32(0).u32(0), b())
}
fn r_access() -> Req {
    req(opcode::ACCESS, 28, b().u32(libc::R_OK as u32).u32(0), b())
}
fn r_create() -> Req {
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
    let op = b().u32(flags).u32(0o100_640).u32(0o022).u32(0);
    req(opcode::CREATE, 29, op, b().name("new.bin"))
}
fn r_interrupt() -> Req {
    req(opcode::INTERRUPT, 0, b().u64(UNIQUE - 2), b())
}
fn r_fallocate() -> Req {
    let op = b()
        .u64(84)
        .u64(1 << 33)
        .u64(1 << 20)
        .u32(libc::FALLOC_FL_KEEP_SIZE as u32)
        .u32(0);
    req(opcode::FALLOCATE, 30, op, b())
}
fn r_notify_reply() -> Req {
    let op = b().u64(0).u64(0).u32(3).u32(0).u64(0).u64(0);
    req(opcode::NOTIFY_REPLY, 31, b(), op.bytes(b"abc"))
}
/// Opcodes answered ENOSYS, each with a plausible body.
fn r_unsupported() -> Vec<Req> {
    use opcode::*;
    [
        (GETLK, 48),
        (SETLK, 48),
        (SETLKW, 48),
        (BMAP, 16),
        (IOCTL, 32),
        (POLL, 24),
        (LSEEK, 24),
        (COPY_FILE_RANGE, 56),
        (SETUPMAPPING, 40),
        (REMOVEMAPPING, 20),
        (SYNCFS, 8),
        (TMPFILE, 20),
        (STATX, 24),
        (COPY_FILE_RANGE_64, 56),
        (DESTROY, 0),
        (0, 0),
        (7, 3),
        (19, 8),
        (54, 8),
        (4096, 16),
        (u32::MAX, 1),
    ]
    .into_iter()
    .map(|(code, n)| req(code, 1, b(), b().bytes(&vec![0x5A; n])))
    .collect()
}

fn all_requests() -> Vec<Req> {
    let mut v = vec![
        r_lookup(),
        r_forget(),
        r_batch_forget(),
        r_getattr(),
        r_setattr(),
        r_readlink(),
        r_symlink(),
        r_mknod(),
        r_mkdir(),
        r_unlink(),
        r_rmdir(),
        r_rename(),
        r_rename2(),
        r_link(),
        r_open(),
        r_read(),
        r_write(),
        r_statfs(),
        r_release(),
        r_fsync(),
        r_setxattr(),
        r_getxattr(),
        r_listxattr(),
        r_removexattr(),
        r_flush(),
        r_opendir(),
        r_readdir(),
        r_readdirplus(),
        r_releasedir(),
        r_fsyncdir(),
        r_access(),
        r_create(),
        r_interrupt(),
        r_fallocate(),
        r_notify_reply(),
    ];
    v.extend(r_unsupported());
    v
}

// Shared by the INIT, reply and fuzz tests.

/// fuse_init_in, 64 bytes.
fn init_in(major: u32, minor: u32, flags: u32, flags2: u32) -> B {
    b().u32(major)
        .u32(minor)
        .u32(1 << 17)
        .u32(flags)
        .u32(flags2)
        .bytes(&[0; 44])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

mod decode;
mod fuzz;
mod init;
mod malformed;
mod replies;
