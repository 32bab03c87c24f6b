//! Malformed requests: always an error, never a panic or an out-of-bounds read.

use super::*;

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

/// `r` fails with `want` through both transports' split and decode.
fn fails_on_both(r: &Req, want: &ProtoError) {
    assert_eq!(&classic_err(r), want, "classic: {r:?}");
    assert_eq!(&uring_err(r), want, "io_uring: {r:?}");
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
        fails_on_both(&r, &want);
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
        fails_on_both(&r, &want);
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
    fails_on_both(&r, &want);
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
    fails_on_both(&r, &want);
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
        fails_on_both(&r, &want);
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
