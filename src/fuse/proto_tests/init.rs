//! INIT: both input forms and the reply layout.

use super::*;

// INIT.

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
