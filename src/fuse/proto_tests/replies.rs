//! Replies: their bytes, field by field.

use super::*;

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
