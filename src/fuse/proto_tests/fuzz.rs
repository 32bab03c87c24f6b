//! No input makes the decoder panic (proptests).

use super::*;

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
