//! Decoding, opcode by opcode.

use super::*;

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
