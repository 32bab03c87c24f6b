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

// Decoding, opcode by opcode.

#[test]
fn lookup() {
    both(&r_lookup(), |op| {
        let Op::Lookup { parent, name } = op else {
            panic!("{op:?}")
        };
        assert_eq!((parent, name), (7, os("hello.txt")));
    });
}

#[test]
fn forget() {
    both(&r_forget(), |op| {
        let Op::Forget { ino, nlookup } = op else {
            panic!("{op:?}")
        };
        assert_eq!((ino, nlookup), (9, 3));
    });
}

#[test]
fn batch_forget() {
    let r = r_batch_forget();
    both(&r, |op| {
        let Op::BatchForget { items } = op else {
            panic!("{op:?}")
        };
        assert_eq!(items, &r.rest[..]);
        assert_eq!(items.len(), 48);
    });
    // Bytes after the announced items are not part of them.
    let mut more = r.clone();
    more.rest.extend_from_slice(&[1; 16]);
    both(&more, |op| {
        let Op::BatchForget { items } = op else {
            panic!("{op:?}")
        };
        assert_eq!(items, &r.rest[..]);
    });
    // count 0.
    both(
        &req(opcode::BATCH_FORGET, 0, b().u32(0).u32(0), b()),
        |op| {
            assert!(matches!(op, Op::BatchForget { items: [] }), "{op:?}");
        },
    );
}

#[test]
fn getattr_readlink_statfs_access_opendir_fsyncdir() {
    both(&r_getattr(), |op| {
        assert!(matches!(op, Op::Getattr { ino: 5 }), "{op:?}")
    });
    both(&r_readlink(), |op| {
        assert!(matches!(op, Op::Readlink { ino: 8 }), "{op:?}")
    });
    both(&r_statfs(), |op| {
        assert!(matches!(op, Op::Statfs { ino: 1 }), "{op:?}")
    });
    both(&r_access(), |op| {
        assert!(matches!(op, Op::Access { ino: 28 }), "{op:?}")
    });
    both(&r_opendir(), |op| {
        assert!(matches!(op, Op::Opendir { ino: 23 }), "{op:?}")
    });
    both(&r_fsyncdir(), |op| {
        assert!(matches!(op, Op::Fsyncdir { ino: 27 }), "{op:?}")
    });
}

#[test]
fn setattr_all_fields() {
    both(&r_setattr(), |op| {
        let Op::Setattr { ino, set } = op else {
            panic!("{op:?}")
        };
        assert_eq!(ino, 6);
        assert_eq!(set.mode, Some(0o104_755));
        assert_eq!(set.uid, Some(2000));
        assert_eq!(set.gid, Some(3000));
        assert_eq!(set.size, Some(12345));
        assert_eq!(set.fh, Some(0x77));
        // A pre-epoch time arrives as two's complement seconds.
        assert!(
            matches!(set.atime, Some(SetTime::At(-5, 7))),
            "{:?}",
            set.atime
        );
        // MTIME_NOW wins over MTIME.
        assert!(matches!(set.mtime, Some(SetTime::Now)), "{:?}", set.mtime);
    });
}

#[test]
fn setattr_times_and_nothing() {
    // ATIME_NOW | ATIME and MTIME alone.
    both(
        &req(opcode::SETATTR, 6, setattr_in(128 | 16 | 32), b()),
        |op| {
            let Op::Setattr { set, .. } = op else {
                panic!("{op:?}")
            };
            assert!(matches!(set.atime, Some(SetTime::Now)), "{:?}", set.atime);
            assert!(
                matches!(set.mtime, Some(SetTime::At(1_600_000_000, 999_999_999))),
                "{:?}",
                set.mtime
            );
            assert_eq!(
                (set.mode, set.uid, set.gid, set.size, set.fh),
                (None, None, None, None, None)
            );
        },
    );
    // CTIME, LOCKOWNER and KILL_SUIDGID alone change nothing.
    both(
        &req(opcode::SETATTR, 6, setattr_in(512 | 1024 | 2048), b()),
        |op| {
            let Op::Setattr { set, .. } = op else {
                panic!("{op:?}")
            };
            assert_eq!(
                (set.mode, set.uid, set.gid, set.size, set.fh),
                (None, None, None, None, None)
            );
            assert!(set.atime.is_none() && set.mtime.is_none());
        },
    );
}

#[test]
fn symlink() {
    both(&r_symlink(), |op| {
        let Op::Symlink {
            parent,
            name,
            target,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (parent, name, target),
            (2, os("link"), os("../some/target"))
        );
    });
}

#[test]
fn mknod_mkdir() {
    both(&r_mknod(), |op| {
        let Op::Mknod {
            parent,
            name,
            mode,
            rdev,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (parent, name, mode, rdev),
            (3, os("fifo"), 0o010_644, 0x0801)
        );
    });
    both(&r_mkdir(), |op| {
        let Op::Mkdir { parent, name, mode } = op else {
            panic!("{op:?}")
        };
        assert_eq!((parent, name, mode), (4, os("sub"), 0o755));
    });
}

#[test]
fn unlink_rmdir() {
    both(&r_unlink(), |op| {
        let Op::Unlink { parent, name } = op else {
            panic!("{op:?}")
        };
        assert_eq!((parent, name), (5, os("gone")));
    });
    both(&r_rmdir(), |op| {
        let Op::Rmdir { parent, name } = op else {
            panic!("{op:?}")
        };
        assert_eq!((parent, name), (6, os("olddir")));
    });
}

#[test]
fn rename_and_rename2() {
    both(&r_rename(), |op| {
        let Op::Rename {
            parent,
            name,
            newparent,
            newname,
            flags,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (parent, name, newparent, newname, flags),
            (10, os("a"), 20, os("b"), 0)
        );
    });
    both(&r_rename2(), |op| {
        let Op::Rename {
            parent,
            name,
            newparent,
            newname,
            flags,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (parent, name, newparent, newname, flags),
            (11, os("from"), 21, os("to"), libc::RENAME_NOREPLACE)
        );
    });
}

#[test]
fn link() {
    both(&r_link(), |op| {
        let Op::Link {
            ino,
            newparent,
            newname,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!((ino, newparent, newname), (34, 12, os("hard")));
    });
}

#[test]
fn open_create() {
    both(&r_open(), |op| {
        let Op::Open { ino, flags } = op else {
            panic!("{op:?}")
        };
        assert_eq!((ino, flags), (13, libc::O_RDWR | libc::O_TRUNC));
    });
    both(&r_create(), |op| {
        let Op::Create {
            parent,
            name,
            mode,
            flags,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (parent, name, mode, flags),
            (
                29,
                os("new.bin"),
                0o100_640,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
            )
        );
    });
}

#[test]
fn read_readdir() {
    both(&r_read(), |op| {
        let Op::Read {
            ino,
            fh,
            offset,
            size,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!((ino, fh, offset, size), (14, 5, 1 << 40, 131072));
    });
    for (r, plus) in [(r_readdir(), false), (r_readdirplus(), true)] {
        let want = if plus {
            (25, 81, 17, 8192)
        } else {
            (24, 80, 3, 4096)
        };
        both(&r, |op| {
            let Op::Readdir {
                ino,
                fh,
                offset,
                size,
                plus: p,
            } = op
            else {
                panic!("{op:?}")
            };
            assert_eq!((ino, fh, offset, size), want);
            assert_eq!(p, plus);
        });
    }
}

#[test]
fn write() {
    both(&r_write(), |op| {
        let Op::Write {
            ino,
            fh,
            offset,
            data,
            kill_suidgid,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (ino, fh, offset, data, kill_suidgid),
            (15, 6, 4096, &b"hello"[..], true)
        );
    });
    // FUSE_WRITE_CACHE | FUSE_WRITE_LOCKOWNER but not KILL_SUIDGID; data exactly `size` bytes
    // even when more follows.
    both(&r_write_with(3, 1 | 2, b"abcdef"), |op| {
        let Op::Write {
            data, kill_suidgid, ..
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!((data, kill_suidgid), (&b"abc"[..], false));
    });
    both(&r_write_with(0, 0, b""), |op| {
        assert!(matches!(op, Op::Write { data: [], .. }), "{op:?}");
    });
}

#[test]
fn release_flush_fsync() {
    both(&r_release(), |op| {
        assert!(matches!(op, Op::Release { ino: 16, fh: 77 }), "{op:?}");
    });
    both(&r_releasedir(), |op| {
        assert!(matches!(op, Op::Releasedir { fh: 82 }), "{op:?}");
    });
    both(&r_flush(), |op| assert!(matches!(op, Op::Flush), "{op:?}"));
    both(&r_fsync(), |op| {
        assert!(
            matches!(
                op,
                Op::Fsync {
                    ino: 17,
                    fh: 78,
                    datasync: true
                }
            ),
            "{op:?}"
        );
    });
    let full = req(opcode::FSYNC, 17, b().u64(78).u32(0).u32(0), b());
    both(&full, |op| {
        assert!(
            matches!(
                op,
                Op::Fsync {
                    datasync: false,
                    ..
                }
            ),
            "{op:?}"
        );
    });
}

#[test]
fn xattrs() {
    both(&r_setxattr(), |op| {
        let Op::Setxattr {
            ino,
            name,
            value,
            flags,
        } = op
        else {
            panic!("{op:?}")
        };
        // The value may contain NULs; it is exactly `size` bytes.
        assert_eq!(
            (ino, name, value, flags),
            (18, os("user.k"), &b"v\0lu"[..], libc::XATTR_CREATE)
        );
    });
    // An empty value.
    let empty = req(opcode::SETXATTR, 18, b().u32(0).u32(0), b().name("user.e"));
    both(&empty, |op| {
        assert!(matches!(op, Op::Setxattr { value: [], .. }), "{op:?}");
    });
    both(&r_getxattr(), |op| {
        let Op::Getxattr { ino, name, size } = op else {
            panic!("{op:?}")
        };
        assert_eq!((ino, name, size), (19, os("user.k"), 256));
    });
    both(&r_listxattr(), |op| {
        assert!(matches!(op, Op::Listxattr { ino: 20, size: 0 }), "{op:?}");
    });
    both(&r_removexattr(), |op| {
        let Op::Removexattr { ino, name } = op else {
            panic!("{op:?}")
        };
        assert_eq!((ino, name), (21, os("user.k")));
    });
}

#[test]
fn fallocate() {
    both(&r_fallocate(), |op| {
        let Op::Fallocate {
            ino,
            fh,
            offset,
            length,
            mode,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(
            (ino, fh, offset, length, mode),
            (30, 84, 1 << 33, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        );
    });
}

#[test]
fn interrupt_and_notify_reply_need_no_answer() {
    both(&r_interrupt(), |op| {
        assert!(matches!(op, Op::Interrupt), "{op:?}")
    });
    both(&r_notify_reply(), |op| {
        assert!(matches!(op, Op::Interrupt), "{op:?}")
    });
}

#[test]
fn unimplemented_and_unknown_opcodes_are_unsupported() {
    for r in r_unsupported() {
        let code = r.opcode;
        both(&r, |op| {
            assert!(
                matches!(op, Op::Unsupported { opcode } if opcode == code),
                "{op:?}"
            );
        });
    }
    // INIT is the transport's; handed to decode anyway (in either form) it is not an error.
    let short = req(opcode::INIT, 0, b().u32(7).u32(31).u32(0).u32(0), b());
    both(&short, |op| {
        assert!(
            matches!(
                op,
                Op::Unsupported {
                    opcode: opcode::INIT
                }
            ),
            "{op:?}"
        );
    });
    let init = req(opcode::INIT, 0, init_in(7, 45, 1 << 30, 0), b());
    both(&init, |op| {
        assert!(
            matches!(
                op,
                Op::Unsupported {
                    opcode: opcode::INIT
                }
            ),
            "{op:?}"
        );
    });
}

#[test]
fn opcode_constants_and_names() {
    use opcode::*;
    let all = [
        LOOKUP,
        FORGET,
        GETATTR,
        SETATTR,
        READLINK,
        SYMLINK,
        MKNOD,
        MKDIR,
        UNLINK,
        RMDIR,
        RENAME,
        LINK,
        OPEN,
        READ,
        WRITE,
        STATFS,
        RELEASE,
        FSYNC,
        SETXATTR,
        GETXATTR,
        LISTXATTR,
        REMOVEXATTR,
        FLUSH,
        INIT,
        OPENDIR,
        READDIR,
        RELEASEDIR,
        FSYNCDIR,
        GETLK,
        SETLK,
        SETLKW,
        ACCESS,
        CREATE,
        INTERRUPT,
        BMAP,
        DESTROY,
        IOCTL,
        POLL,
        NOTIFY_REPLY,
        BATCH_FORGET,
        FALLOCATE,
        READDIRPLUS,
        RENAME2,
        LSEEK,
        COPY_FILE_RANGE,
        SETUPMAPPING,
        REMOVEMAPPING,
        SYNCFS,
        TMPFILE,
        STATX,
        COPY_FILE_RANGE_64,
    ];
    // 1..=53 without 7 and 19, which fuse_kernel.h never assigned.
    let want: Vec<u32> = (1..=53).filter(|&c| c != 7 && c != 19).collect();
    assert_eq!(all.to_vec(), want);
    for c in all {
        assert_ne!(opcode_name(c), "?", "{c}");
    }
    assert_eq!(opcode_name(7), "?");
    assert_eq!(opcode_name(BATCH_FORGET), "BATCH_FORGET");
}

// Malformed requests.

/// `r` through split_classic and decode.
fn classic_err(r: &Req) -> ProtoError {
    let buf = r.classic();
    let (h, op, rest) = match split_classic(&buf) {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    decode(&h, op, rest).expect_err("decoded")
}

/// `r` through split_uring and decode.
fn uring_err(r: &Req) -> ProtoError {
    let (hdr, payload) = r.uring();
    let (h, op, rest, _) = split_uring(&hdr, &payload).unwrap();
    decode(&h, op, rest).expect_err("decoded")
}

#[test]
fn names_without_nul() {
    let cases = [
        req(opcode::LOOKUP, 1, b(), b().bytes(b"abc")),
        req(opcode::LOOKUP, 1, b(), b()),
        req(opcode::MKDIR, 1, b().u32(0o755).u32(0), b().bytes(b"d")),
        req(opcode::SYMLINK, 1, b(), b().name("link").bytes(b"target")),
        req(opcode::SYMLINK, 1, b(), b().bytes(b"link")),
        req(opcode::RENAME, 1, b().u64(2), b().name("old")),
        req(
            opcode::RENAME2,
            1,
            b().u64(2).u32(0).u32(0),
            b().name("old").bytes(b"new"),
        ),
        req(opcode::LINK, 1, b().u64(2), b().bytes(b"x")),
        req(opcode::GETXATTR, 1, b().u32(0).u32(0), b().bytes(b"user.x")),
        req(opcode::SETXATTR, 1, b().u32(0).u32(0), b().bytes(b"user.x")),
        req(
            opcode::CREATE,
            1,
            b().u32(0).u32(0).u32(0).u32(0),
            b().bytes(b"f"),
        ),
    ];
    for r in cases {
        let want = ProtoError::MissingNul { opcode: r.opcode };
        assert_eq!(classic_err(&r), want, "{r:?}");
        assert_eq!(uring_err(&r), want, "{r:?}");
    }
}

#[test]
fn empty_names() {
    let cases = [
        req(opcode::LOOKUP, 1, b(), b().name("")),
        req(opcode::UNLINK, 1, b(), b().name("").name("x")),
        req(opcode::SYMLINK, 1, b(), b().name("link").name("")),
        req(opcode::RENAME, 1, b().u64(2), b().name("").name("new")),
        req(opcode::REMOVEXATTR, 1, b(), b().name("")),
    ];
    for r in cases {
        let want = ProtoError::EmptyName { opcode: r.opcode };
        assert_eq!(classic_err(&r), want, "{r:?}");
        assert_eq!(uring_err(&r), want, "{r:?}");
    }
}

#[test]
fn names_keep_slashes_and_high_bytes() {
    // Not this codec's business (the kernel never sends them), so passed through.
    let r = req(opcode::LOOKUP, 1, b(), b().bytes(b"a/b\xff\0"));
    both(&r, |op| {
        let Op::Lookup { name, .. } = op else {
            panic!("{op:?}")
        };
        assert_eq!(name.as_bytes(), b"a/b\xff");
    });
}

#[test]
fn write_shorter_than_its_size() {
    let r = r_write_with(10, 0, b"abc");
    let want = ProtoError::ShortPayload {
        opcode: opcode::WRITE,
        need: 10,
        got: 3,
    };
    assert_eq!(classic_err(&r), want);
    assert_eq!(uring_err(&r), want);
    assert_eq!(
        want.to_string(),
        "WRITE (16): 3 bytes of payload, 10 announced"
    );
    let huge = r_write_with(u32::MAX, 0, b"abc");
    assert!(matches!(
        classic_err(&huge),
        ProtoError::ShortPayload {
            need: 0xFFFF_FFFF,
            got: 3,
            ..
        }
    ));
}

#[test]
fn setxattr_value_shorter_than_its_size() {
    let r = req(
        opcode::SETXATTR,
        1,
        b().u32(5).u32(0),
        b().name("user.k").bytes(b"abcd"),
    );
    let want = ProtoError::ShortPayload {
        opcode: opcode::SETXATTR,
        need: 5,
        got: 4,
    };
    assert_eq!(classic_err(&r), want);
    assert_eq!(uring_err(&r), want);
}

#[test]
fn batch_forget_count_too_large() {
    for (count, need) in [(4, 64), (u32::MAX, u64::from(u32::MAX) * 16)] {
        let mut r = r_batch_forget();
        r.op = b().u32(count).u32(0).0;
        let want = ProtoError::ShortPayload {
            opcode: opcode::BATCH_FORGET,
            need,
            got: 48,
        };
        assert_eq!(classic_err(&r), want);
        assert_eq!(uring_err(&r), want);
    }
}

#[test]
fn header_len_must_match_the_read() {
    let r = r_lookup();
    let good = r.classic();
    for len in [
        0,
        1,
        39,
        40,
        good.len() as u32 - 1,
        good.len() as u32 + 1,
        u32::MAX,
    ] {
        let mut buf = r.header(len);
        buf.extend_from_slice(&r.rest);
        assert_eq!(
            split_classic(&buf).unwrap_err(),
            ProtoError::LenMismatch {
                header_len: len,
                got: good.len()
            }
        );
    }
    // Trailing bytes after a correct request are a mismatch too.
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        split_classic(&long),
        Err(ProtoError::LenMismatch { .. })
    ));
}

#[test]
fn short_headers() {
    let buf = r_lookup().classic();
    for n in 0..IN_HEADER_LEN {
        let want = ProtoError::ShortHeader {
            what: "fuse_in_header",
            need: 40,
            got: n,
        };
        assert_eq!(parse_in_header(&buf[..n]).unwrap_err(), want);
        assert_eq!(split_classic(&buf[..n]).unwrap_err(), want);
    }
    let (hdr, payload) = r_lookup().uring();
    for n in [0, 40, 256, 287] {
        assert_eq!(
            split_uring(&hdr[..n], &payload).unwrap_err(),
            ProtoError::ShortHeader {
                what: "fuse_uring_req_header",
                need: 288,
                got: n
            }
        );
    }
}

#[test]
fn short_op_struct() {
    let mut r = r_setattr();
    r.op.truncate(87);
    let want = ProtoError::ShortOpStruct {
        opcode: opcode::SETATTR,
        need: 88,
        got: 87,
    };
    assert_eq!(classic_err(&r), want);
    assert_eq!(
        want.to_string(),
        "SETATTR (4): 87 bytes of request arguments, 88 expected"
    );
    // decode on its own checks too (io_uring callers pass op_in).
    let h = r.expected_header();
    assert_eq!(decode(&h, &r.op, &[]).unwrap_err(), want);
    assert!(decode(&h, &[], &[]).is_err());
}

#[test]
fn uring_payload_sz_beyond_the_buffer() {
    let r = r_write();
    let (hdr, payload) = r.uring();
    // payload_sz 5 with fewer than 5 bytes in the buffer.
    for n in 0..5 {
        assert_eq!(
            split_uring(&hdr, &payload[..n]).unwrap_err(),
            ProtoError::UringPayloadSize {
                payload_sz: 5,
                buf_len: n
            }
        );
    }
    let mut lying = hdr.clone();
    lying[272..276].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        split_uring(&lying, &payload),
        Err(ProtoError::UringPayloadSize {
            payload_sz: u32::MAX,
            ..
        })
    ));
    // A smaller payload_sz than the data: WRITE's size then disagrees.
    let mut small = hdr.clone();
    small[272..276].copy_from_slice(&2u32.to_le_bytes());
    let (h, op, rest, _) = split_uring(&small, &payload).unwrap();
    assert_eq!(rest.len(), 2);
    assert!(matches!(
        decode(&h, op, rest),
        Err(ProtoError::ShortPayload {
            need: 5,
            got: 2,
            ..
        })
    ));
}

#[test]
fn every_truncation_is_an_error_or_an_op_never_a_panic() {
    for r in all_requests() {
        let buf = r.classic();
        for n in 0..buf.len() {
            // As read, the header's len now lies.
            assert!(split_classic(&buf[..n]).is_err(), "{r:?} at {n}");
            // With len corrected: an error, or an op from what is left.
            if n >= IN_HEADER_LEN {
                let mut cut = buf[..n].to_vec();
                cut[..4].copy_from_slice(&(n as u32).to_le_bytes());
                let res = split_classic(&cut).and_then(|(h, op, rest)| decode(&h, op, rest));
                if n < IN_HEADER_LEN + op_struct_size(r.opcode) {
                    assert!(res.is_err(), "{r:?} at {n}: {res:?}");
                }
            }
        }
        let (hdr, payload) = r.uring();
        let full = r.rest.len();
        for p in 0..full {
            // payload_sz cut short.
            let mut h = hdr.clone();
            h[272..276].copy_from_slice(&(p as u32).to_le_bytes());
            let (ih, op, rest, _) = split_uring(&h, &payload).unwrap();
            assert_eq!(rest.len(), p);
            let _ = decode(&ih, op, rest);
            // The payload buffer cut short under a full payload_sz.
            assert!(split_uring(&hdr, &payload[..p]).is_err(), "{r:?} at {p}");
        }
        // op_in cut short (as decode's caller might pass it).
        let ih = r.expected_header();
        for n in 0..op_struct_size(r.opcode) {
            assert!(decode(&ih, &hdr[128..128 + n], &r.rest).is_err());
        }
    }
}

#[test]
fn errors_are_eio() {
    let errs = [
        classic_err(&r_write_with(10, 0, b"")),
        classic_err(&req(opcode::LOOKUP, 1, b(), b())),
        split_classic(&[0; 3]).unwrap_err(),
    ];
    for e in errs {
        assert_eq!(e.errno(), libc::EIO);
    }
}

// INIT.

/// fuse_init_in, 64 bytes.
fn init_in(major: u32, minor: u32, flags: u32, flags2: u32) -> B {
    b().u32(major)
        .u32(minor)
        .u32(1 << 17)
        .u32(flags)
        .u32(flags2)
        .bytes(&[0; 44])
}

#[test]
fn init_in_long_and_short() {
    let long = init_in(7, 45, (1 << 30) | (1 << 13) | 1, 1 << 9).0;
    assert_eq!(long.len(), 64);
    assert_eq!(
        decode_init(&long).unwrap(),
        InitIn {
            major: 7,
            minor: 45,
            max_readahead: 1 << 17,
            flags: (1 << 30) | (1 << 13) | 1 | (1 << 41),
        }
    );
    // flags2 only counts with INIT_EXT.
    let no_ext = init_in(7, 45, 1 << 13, u32::MAX).0;
    assert_eq!(decode_init(&no_ext).unwrap().flags, 1 << 13);
    // The 16-byte form of kernels before 7.36.
    let short = b().u32(7).u32(31).u32(4096).u32((1 << 30) | 5).0;
    assert_eq!(
        decode_init(&short).unwrap(),
        InitIn {
            major: 7,
            minor: 31,
            max_readahead: 4096,
            flags: (1 << 30) | 5,
        }
    );
    for n in 0..16 {
        assert!(matches!(
            decode_init(&long[..n]),
            Err(ProtoError::ShortOpStruct { opcode: 26, need: 16, got }) if got == n
        ));
    }
}

#[test]
fn split_classic_init_forms() {
    for (body, op_len, rest_len) in [(16, 16, 0), (40, 40, 0), (64, 64, 0), (80, 64, 16)] {
        let r = req(
            opcode::INIT,
            0,
            b().bytes(&init_in(7, 45, 0, 0).0[..body.min(64)]),
            b(),
        );
        let mut buf = r.classic();
        buf.resize(IN_HEADER_LEN + body, 0);
        let len = buf.len() as u32;
        buf[..4].copy_from_slice(&len.to_le_bytes());
        let (h, op, rest) = split_classic(&buf).unwrap();
        assert_eq!(h.opcode, opcode::INIT);
        assert_eq!((op.len(), rest.len()), (op_len, rest_len));
        assert_eq!(decode_init(op).unwrap().minor, 45);
    }
    let r = req(opcode::INIT, 0, b().bytes(&[7, 0, 0, 0, 45]), b());
    assert!(matches!(
        split_classic(&r.classic()),
        Err(ProtoError::ShortOpStruct {
            need: 16,
            got: 5,
            ..
        })
    ));
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

#[test]
fn init_out_layout() {
    let o = InitOut {
        minor: 50,
        max_readahead: 1 << 20,
        flags: (1 << 41) | (1 << 28) | (1 << 13),
        max_background: 64,
        congestion_threshold: 48,
        max_write: 1 << 20,
        max_pages: 256,
    };
    let mut out = Vec::new();
    encode_init_out(&o, &mut out);
    assert_eq!(out.len(), 64);
    assert_eq!(out.len(), INIT_OUT_LEN);
    assert_eq!((u32_at(&out, 0), u32_at(&out, 4)), (7, 45));
    assert_eq!(u32_at(&out, 8), 1 << 20);
    // A high bit set: INIT_EXT joins the low half, the high half is flags2 at 32.
    assert_eq!(u32_at(&out, 12), (1 << 30) | (1 << 28) | (1 << 13));
    assert_eq!(u32_at(&out, 32), 1 << 9);
    assert_eq!((u16_at(&out, 16), u16_at(&out, 18)), (64, 48));
    assert_eq!(u32_at(&out, 20), 1 << 20); // max_write
    assert_eq!(u32_at(&out, 24), 1); // time_gran
    assert_eq!((u16_at(&out, 28), u16_at(&out, 30)), (256, 0)); // max_pages, map_alignment
    assert_eq!(u32_at(&out, 36), 0); // max_stack_depth
    assert!(out[40..].iter().all(|&b| b == 0));

    // An older kernel's minor is kept; no high bit, no INIT_EXT, flags2 0.
    let mut out = Vec::new();
    encode_init_out(
        &InitOut {
            minor: 31,
            flags: 1 << 13,
            ..InitOut::default()
        },
        &mut out,
    );
    assert_eq!(u32_at(&out, 4), 31);
    assert_eq!(u32_at(&out, 12), 1 << 13);
    assert_eq!(u32_at(&out, 32), 0);
}

// Replies.

const TTL: Duration = Duration::new(3, 250_000_000);

fn attr(ino: u64, kind: Kind) -> Attr {
    Attr {
        ino,
        size: 0x0102_0304_0506,
        blocks: 77,
        atime: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
        // 1.5 s before the epoch: -2 s + 0.5 s.
        mtime: UNIX_EPOCH - Duration::new(1, 500_000_000),
        // Exactly 1 s before.
        ctime: UNIX_EPOCH - Duration::new(1, 0),
        kind,
        perm: 0o4755,
        nlink: 3,
        uid: 1000,
        gid: 100,
        rdev: 0x0801,
        blksize: 4096,
    }
}

fn body(r: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    encode_body(r, &mut out);
    out
}

/// Checks a fuse_attr at `at`.
fn check_attr(b: &[u8], at: usize, a: &Attr, mode: u32) {
    assert_eq!(u64_at(b, at), a.ino);
    assert_eq!(u64_at(b, at + 8), a.size);
    assert_eq!(u64_at(b, at + 16), a.blocks);
    assert_eq!(u64_at(b, at + 24), 1_700_000_000);
    assert_eq!(u64_at(b, at + 32) as i64, -2);
    assert_eq!(u64_at(b, at + 40) as i64, -1);
    assert_eq!(u32_at(b, at + 48), 123);
    assert_eq!(u32_at(b, at + 52), 500_000_000);
    assert_eq!(u32_at(b, at + 56), 0);
    assert_eq!(u32_at(b, at + 60), mode);
    assert_eq!(u32_at(b, at + 64), a.nlink);
    assert_eq!(u32_at(b, at + 68), a.uid);
    assert_eq!(u32_at(b, at + 72), a.gid);
    assert_eq!(u32_at(b, at + 76), a.rdev);
    assert_eq!(u32_at(b, at + 80), a.blksize);
    assert_eq!(u32_at(b, at + 84), 0);
}

/// Checks the fuse_entry_out header (nodeid, generation, timeouts) at `at`.
fn check_entry_head(b: &[u8], at: usize, nodeid: u64) {
    assert_eq!(u64_at(b, at), nodeid);
    assert_eq!(u64_at(b, at + 8), 0);
    assert_eq!((u64_at(b, at + 16), u64_at(b, at + 24)), (3, 3));
    assert_eq!(
        (u32_at(b, at + 32), u32_at(b, at + 36)),
        (250_000_000, 250_000_000)
    );
}

#[test]
fn entry_reply() {
    let a = attr(42, Kind::File);
    let out = body(&Reply::Entry {
        attr: Some(a),
        ttl: TTL,
    });
    assert_eq!(out.len(), 128);
    assert_eq!(out.len(), ENTRY_OUT_LEN);
    check_entry_head(&out, 0, 42);
    check_attr(&out, 40, &a, libc::S_IFREG | 0o4755);
    // attr.mode at 40 + 6*8 + 3*4.
    assert_eq!(u32_at(&out, 100), 0o104_755);
}

#[test]
fn negative_entry_has_nodeid_0() {
    let out = body(&Reply::Entry {
        attr: None,
        ttl: TTL,
    });
    assert_eq!(out.len(), 128);
    check_entry_head(&out, 0, 0);
    assert!(out[40..].iter().all(|&b| b == 0));
}

#[test]
fn attr_reply() {
    let a = attr(43, Kind::Dir);
    let out = body(&Reply::Attr { attr: a, ttl: TTL });
    assert_eq!(out.len(), 104);
    assert_eq!(out.len(), ATTR_OUT_LEN);
    assert_eq!(u64_at(&out, 0), 3);
    assert_eq!(u32_at(&out, 8), 250_000_000);
    assert_eq!(u32_at(&out, 12), 0);
    check_attr(&out, 16, &a, libc::S_IFDIR | 0o4755);
}

#[test]
fn file_type_bits() {
    for (kind, ifmt) in [
        (Kind::File, libc::S_IFREG),
        (Kind::Dir, libc::S_IFDIR),
        (Kind::Symlink, libc::S_IFLNK),
        (Kind::Fifo, libc::S_IFIFO),
        (Kind::Socket, libc::S_IFSOCK),
        (Kind::CharDev, libc::S_IFCHR),
        (Kind::BlockDev, libc::S_IFBLK),
    ] {
        let out = body(&Reply::Attr {
            attr: Attr {
                perm: 0o640,
                ..attr(1, kind)
            },
            ttl: TTL,
        });
        assert_eq!(u32_at(&out, 16 + 60), ifmt | 0o640);
        assert_eq!(Kind::from_mode(ifmt), kind);
    }
}

#[test]
fn open_create_reply() {
    let out = body(&Reply::Open {
        fh: 0x0123_4567_89AB,
        keep_cache: true,
    });
    assert_eq!(out.len(), 16);
    assert_eq!(out.len(), OPEN_OUT_LEN);
    assert_eq!(u64_at(&out, 0), 0x0123_4567_89AB);
    assert_eq!(u32_at(&out, 8), 2); // FOPEN_KEEP_CACHE
    assert_eq!(i32_at(&out, 12), 0); // backing_id
    let out = body(&Reply::Open {
        fh: 1,
        keep_cache: false,
    });
    assert_eq!(u32_at(&out, 8), 0);

    let a = attr(44, Kind::File);
    let out = body(&Reply::Create {
        attr: a,
        ttl: TTL,
        fh: 9,
        keep_cache: true,
    });
    assert_eq!(out.len(), 144);
    check_entry_head(&out, 0, 44);
    check_attr(&out, 40, &a, libc::S_IFREG | 0o4755);
    assert_eq!(
        (u64_at(&out, 128), u32_at(&out, 136), i32_at(&out, 140)),
        (9, 2, 0)
    );
}

#[test]
fn small_replies() {
    assert_eq!(body(&Reply::Written(4096)), b().u32(4096).u32(0).0);
    assert_eq!(body(&Reply::XattrSize(17)), b().u32(17).u32(0).0);
    assert_eq!(body(&Reply::Data(b"xyz".to_vec())), b"xyz");
    assert_eq!(body(&Reply::Data(Vec::new())), b"");
    assert!(body(&Reply::Empty).is_empty());
    assert!(body(&Reply::None).is_empty());
    assert!(body(&Reply::Err(libc::ENOENT)).is_empty());
    // encode_body appends.
    let mut out = vec![1, 2];
    encode_body(&Reply::Written(1), &mut out);
    assert_eq!(out.len(), 10);
}

#[test]
fn statfs_reply() {
    let s = Statfs {
        blocks: 1,
        bfree: 2,
        bavail: 3,
        files: 4,
        ffree: 5,
        bsize: 6,
        namelen: 255,
        frsize: 8,
    };
    let out = body(&Reply::Statfs(s));
    assert_eq!(out.len(), 80);
    assert_eq!(out.len(), STATFS_OUT_LEN);
    for (i, v) in [1, 2, 3, 4, 5].into_iter().enumerate() {
        assert_eq!(u64_at(&out, i * 8), v);
    }
    assert_eq!(
        (u32_at(&out, 40), u32_at(&out, 44), u32_at(&out, 48)),
        (6, 255, 8)
    );
    assert!(out[52..].iter().all(|&b| b == 0));
}

fn entry(ino: u64, kind: Kind, name: &str) -> Entry {
    Entry {
        ino,
        kind,
        name: name.into(),
    }
}

#[test]
fn dir_reply_dirents_and_padding() {
    let entries = vec![
        (1, entry(1, Kind::Dir, ".")),
        (2, entry(1, Kind::Dir, "..")),
        (3, entry(50, Kind::File, "exactly8")),
        (4, entry(51, Kind::Symlink, "seven77")),
        (5, entry(52, Kind::Fifo, "f")),
        (6, entry(53, Kind::Socket, "s")),
        (7, entry(54, Kind::CharDev, "c")),
        (8, entry(55, Kind::BlockDev, "ninechars")),
    ];
    let dtypes = [
        libc::DT_DIR,
        libc::DT_DIR,
        libc::DT_REG,
        libc::DT_LNK,
        libc::DT_FIFO,
        libc::DT_SOCK,
        libc::DT_CHR,
        libc::DT_BLK,
    ];
    let out = body(&Reply::Dir(entries.clone()));
    let total: usize = entries.iter().map(|(_, e)| dirent_size(&e.name)).sum();
    assert_eq!(out.len(), total);
    let mut at = 0;
    for ((next, e), dt) in entries.iter().zip(dtypes) {
        let n = e.name.len();
        assert_eq!(u64_at(&out, at), e.ino);
        assert_eq!(u64_at(&out, at + 8), *next);
        assert_eq!(u32_at(&out, at + 16) as usize, n);
        assert_eq!(u32_at(&out, at + 20), u32::from(dt));
        assert_eq!(&out[at + 24..at + 24 + n], e.name.as_bytes());
        let size = dirent_size(&e.name);
        assert_eq!(size % 8, 0);
        assert!(out[at + 24 + n..at + size].iter().all(|&b| b == 0));
        assert_eq!(Kind::from_dtype(dt), e.kind);
        at += size;
    }
    assert_eq!(dirent_size(os("exactly8")), 32);
    assert_eq!(dirent_size(os("ninechars")), 40);
    assert!(body(&Reply::Dir(Vec::new())).is_empty());
}

#[test]
fn dirplus_reply() {
    let entries = vec![
        (1, entry(1, Kind::Dir, "."), attr(1, Kind::Dir)),
        (2, entry(60, Kind::File, "a-file"), attr(60, Kind::File)),
        (
            3,
            entry(61, Kind::Symlink, "sixteen-chars-xx"),
            attr(61, Kind::Symlink),
        ),
    ];
    let out = body(&Reply::DirPlus {
        entries: entries.clone(),
        ttl: TTL,
    });
    let total: usize = entries
        .iter()
        .map(|(_, e, _)| direntplus_size(&e.name))
        .sum();
    assert_eq!(out.len(), total);
    let mut at = 0;
    for (next, e, a) in &entries {
        check_entry_head(&out, at, e.ino);
        check_attr(&out, at + 40, a, type_bits(a.kind) | 0o4755);
        let d = at + 128;
        assert_eq!((u64_at(&out, d), u64_at(&out, d + 8)), (e.ino, *next));
        assert_eq!(u32_at(&out, d + 16) as usize, e.name.len());
        assert_eq!(u32_at(&out, d + 20), type_bits(e.kind) >> 12);
        assert_eq!(&out[d + 24..d + 24 + e.name.len()], e.name.as_bytes());
        at += direntplus_size(&e.name);
    }
}

#[test]
fn whole_replies() {
    let mut out = vec![9; 300];
    assert!(encode_reply(5, &Reply::Err(libc::ENOENT), &mut out));
    assert_eq!(out, out_header(5, -libc::ENOENT, 16));
    assert_eq!(
        (u32_at(&out, 0), i32_at(&out, 4), u64_at(&out, 8)),
        (16, -2, 5)
    );

    assert!(!encode_reply(5, &Reply::None, &mut out));
    assert!(out.is_empty());

    assert!(encode_reply(6, &Reply::Empty, &mut out));
    assert_eq!(out, out_header(6, 0, 16));

    let r = Reply::Entry {
        attr: Some(attr(42, Kind::File)),
        ttl: TTL,
    };
    assert!(encode_reply(UNIQUE, &r, &mut out));
    assert_eq!(out.len(), 16 + 128);
    assert_eq!(&out[..16], &out_header(UNIQUE, 0, 144));
    assert_eq!(&out[16..], &body(&r)[..]);

    // An errno the kernel would refuse becomes EIO.
    for bad in [0, -1, 512, i32::MIN, i32::MAX] {
        assert!(encode_reply(1, &Reply::Err(bad), &mut out));
        assert_eq!(i32_at(&out, 4), -libc::EIO, "{bad}");
    }
    assert_eq!(wire_error(511), -511);
    assert_eq!(wire_error(1), -1);
}

#[test]
fn uring_reply_header() {
    let (mut hdr, _) = r_read().uring();
    let before = hdr.clone();
    set_uring_reply(&mut hdr, UNIQUE, 0, 4096);
    assert_eq!(&hdr[..16], &out_header(UNIQUE, 0, 16 + 4096));
    assert_eq!(u32_at(&hdr, 272), 4096);
    assert_eq!(u64_at(&hdr, 264), COMMIT);
    // Nothing else touched.
    assert_eq!(&hdr[16..272], &before[16..272]);
    assert_eq!(&hdr[276..], &before[276..]);
    set_uring_reply(&mut hdr, 7, -libc::EACCES, 0);
    assert_eq!(
        (u32_at(&hdr, 0), i32_at(&hdr, 4), u64_at(&hdr, 8)),
        (16, -13, 7)
    );
    assert_eq!(u32_at(&hdr, 272), 0);
}

#[test]
fn notifications() {
    let mut out = vec![1; 7];
    encode_notify_inval_inode(77, -1, 0, &mut out);
    assert_eq!(out.len(), 40);
    assert_eq!(&out[..16], &out_header(0, 2, 40));
    assert_eq!(
        (u64_at(&out, 16), u64_at(&out, 24) as i64, u64_at(&out, 32)),
        (77, -1, 0)
    );

    encode_notify_store(78, 8192, b"page data", &mut out);
    assert_eq!(out.len(), 40 + 9);
    assert_eq!(&out[..16], &out_header(0, 4, 49));
    assert_eq!((u64_at(&out, 16), u64_at(&out, 24)), (78, 8192));
    assert_eq!((u32_at(&out, 32), u32_at(&out, 36)), (9, 0));
    assert_eq!(&out[40..], b"page data");
}

#[test]
fn times_before_the_epoch_round_down() {
    let cases = [
        (UNIX_EPOCH, (0, 0)),
        (UNIX_EPOCH + Duration::new(1, 5), (1, 5)),
        (
            UNIX_EPOCH - Duration::new(0, 1),
            (-1i64 as u64, 999_999_999),
        ),
        (UNIX_EPOCH - Duration::new(1, 0), (-1i64 as u64, 0)),
        (
            UNIX_EPOCH - Duration::new(1, 500_000_000),
            (-2i64 as u64, 500_000_000),
        ),
    ];
    for (t, want) in cases {
        assert_eq!(wire_time(t), want, "{t:?}");
    }
}

// No input makes the decoder panic.

/// A classic request for `opcode` with `body`, its len correct.
fn framed(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let r = req(opcode, nodeid, b(), b().bytes(body));
    r.classic()
}

proptest! {
    #[test]
    fn arbitrary_classic_bytes(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok((h, op, rest)) = split_classic(&buf) {
            let _ = decode(&h, op, rest);
        }
    }

    #[test]
    fn arbitrary_bodies_of_real_opcodes(
        opcode in 0u32..56,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let buf = framed(opcode, 1, &body);
        let (h, op, rest) = match split_classic(&buf) {
            Ok(parts) => parts,
            Err(_) => return Ok(()),
        };
        prop_assert_eq!(op.len() + rest.len(), body.len());
        if let Ok(Op::Write { data, .. }) = decode(&h, op, rest) {
            prop_assert_eq!(data.len() as u32, u32::from_le_bytes(op[16..20].try_into().unwrap()));
        }
        if opcode == opcode::INIT {
            let _ = decode_init(op);
        }
    }

    #[test]
    fn arbitrary_uring_entries(
        header in proptest::collection::vec(any::<u8>(), 0..300),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok((h, op, rest, _)) = split_uring(&header, &payload) {
            prop_assert!(rest.len() <= payload.len());
            let _ = decode(&h, op, rest);
        }
    }

    #[test]
    fn uring_entries_of_real_opcodes(
        opcode in 0u32..56,
        op_in in proptest::collection::vec(any::<u8>(), 128),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        payload_sz in 0u32..320,
    ) {
        let mut hdr = req(opcode, 1, b(), b()).header(0);
        hdr.resize(128, 0);
        hdr.extend_from_slice(&op_in);
        hdr.extend_from_slice(&b().u64(0).u64(COMMIT).u32(payload_sz).u32(0).u64(0).0);
        match split_uring(&hdr, &payload) {
            Ok((h, op, rest, commit)) => {
                prop_assert_eq!(commit, COMMIT);
                prop_assert_eq!(rest.len(), payload_sz as usize);
                let _ = decode(&h, op, rest);
                let _ = decode(&h, &hdr[128..256], rest);
            }
            Err(e) => prop_assert!(payload_sz as usize > payload.len(), "{e}"),
        }
    }

    #[test]
    fn names_round_trip(name in proptest::collection::vec(1u8..=255, 1..300)) {
        let mut body = name.clone();
        body.push(0);
        let buf = framed(opcode::LOOKUP, 3, &body);
        let (h, op, rest) = split_classic(&buf).unwrap();
        let Op::Lookup { parent, name: got } = decode(&h, op, rest).unwrap() else {
            panic!("not a lookup");
        };
        prop_assert_eq!(parent, 3);
        prop_assert_eq!(got.as_bytes(), &name[..]);
    }
}
