//! Checks the test vectors printed in docs/FORMAT.md against the implementation, so the
//! document cannot drift from the code. Each vector is a fenced block of `key = value` lines
//! between `vector NAME` and `end`; hex values are lowercase; a key given on several lines is
//! their concatenation.

use std::collections::BTreeMap;

use envelopefs::format::block::BlockCipher;
use envelopefs::format::context::{EncryptionContext, hex};
use envelopefs::format::header::{FileHeader, KeySlot, verify_mac};
use envelopefs::format::layout::Layout;
use envelopefs::store::keystore_backup as kb;

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn vectors() -> BTreeMap<String, BTreeMap<String, String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, BTreeMap<String, String>)> = None;
    for line in doc.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("vector ") {
            cur = Some((name.trim().to_owned(), BTreeMap::new()));
        } else if line == "end" {
            let (name, map) = cur.take().expect("end without vector");
            out.insert(name, map);
        } else if let Some((_, map)) = cur.as_mut()
            && let Some((k, v)) = line.split_once('=')
        {
            let v = v.trim();
            let entry = map.entry(k.trim().to_owned()).or_insert_with(String::new);
            entry.push_str(v);
        }
    }
    out
}

fn arr<const N: usize>(v: &BTreeMap<String, String>, k: &str) -> [u8; N] {
    unhex(&v[k])
        .try_into()
        .unwrap_or_else(|_| panic!("{k} must be {N} bytes"))
}

fn get<'a>(
    all: &'a BTreeMap<String, BTreeMap<String, String>>,
    name: &str,
) -> &'a BTreeMap<String, String> {
    all.get(name)
        .unwrap_or_else(|| panic!("docs/FORMAT.md lacks vector {name}"))
}

#[test]
fn block_vector() {
    let all = vectors();
    let v = get(&all, "block-1");
    let dek: [u8; 32] = arr(v, "dek");
    let c = BlockCipher::new(&dek, arr(v, "file_id"));
    assert_eq!(
        hex(&blake3::derive_key("envelopefs block key v1", &dek)),
        v["block_key"]
    );
    let pt = unhex(&v["plaintext"]);
    let mut out = vec![0u8; pt.len() + 28];
    let index: u64 = v["index"].parse().unwrap();
    let last = v["last"] == "1";
    c.seal(index, last, arr(v, "nonce"), &pt, &mut out);
    assert_eq!(hex(&out), v["sealed"]);
    let mut back = vec![0u8; pt.len()];
    c.open(index, last, &out, &mut back).unwrap();
    assert_eq!(back, pt);
}

#[test]
fn header_vector() {
    let all = vectors();
    let v = get(&all, "header-1");
    let dek: [u8; 32] = arr(v, "dek");
    let h = FileHeader {
        sealed_holes: false,
        block_size: v["block_size"].parse().unwrap(),
        file_id: arr(v, "file_id"),
        seq: v["seq"].parse().unwrap(),
        slots: vec![KeySlot::Cmk {
            key_id: arr(v, "slot_key_id"),
            version: v["slot_version"].parse().unwrap(),
            blob: unhex(&v["slot_blob"]),
        }],
    };
    let bytes = check_header(v, &h, &dek);
    assert_eq!(hex(&bytes[480..]), v["mac"]);
}

/// Encodes `h` under `dek`, checks it against the vector's `copy` lines, that it decodes back
/// to `h` (unknown slots kept verbatim) and that its MAC verifies; returns the bytes.
fn check_header(v: &BTreeMap<String, String>, h: &FileHeader, dek: &[u8; 32]) -> Vec<u8> {
    let bytes = h.encode(dek).unwrap();
    assert_eq!(hex(&bytes), v["copy"]);
    assert_eq!(&FileHeader::decode(&bytes).unwrap(), h);
    verify_mac(&bytes, dek).unwrap();
    bytes.to_vec()
}

#[test]
fn context_vector() {
    let all = vectors();
    let v = get(&all, "context-1");
    let c = EncryptionContext::for_file(&v["volume_id"], &arr(v, "file_id"));
    assert_eq!(hex(&c.encode()), v["encoded"]);
}

#[test]
fn size_vectors() {
    let all = vectors();
    let v = get(&all, "sizes-4096");
    let l = Layout::new(4096);
    for (k, val) in v {
        let plain: u64 = k
            .strip_prefix("plaintext_")
            .expect("plaintext_N keys")
            .parse()
            .unwrap();
        assert_eq!(
            l.backing_size(plain).to_string(),
            *val,
            "backing size of {plain}"
        );
    }
}

#[test]
fn header_with_several_slots_vector() {
    let all = vectors();
    let v = get(&all, "header-2");
    let dek: [u8; 32] = arr(v, "dek");
    let h = FileHeader {
        sealed_holes: false,
        block_size: v["block_size"].parse().unwrap(),
        file_id: arr(v, "file_id"),
        seq: v["seq"].parse().unwrap(),
        slots: vec![
            KeySlot::Cmk {
                key_id: arr(v, "slot1_key_id"),
                version: v["slot1_version"].parse().unwrap(),
                blob: unhex(&v["slot1_blob"]),
            },
            KeySlot::Unknown {
                kind: v["slot2_kind"].parse().unwrap(),
                body: unhex(&v["slot2_body"]),
            },
            KeySlot::Cmk {
                key_id: arr(v, "slot3_key_id"),
                version: v["slot3_version"].parse().unwrap(),
                blob: unhex(&v["slot3_blob"]),
            },
        ],
    };
    check_header(v, &h, &dek);
}

#[test]
fn volume_key_context_vector() {
    let all = vectors();
    let v = get(&all, "context-volume-1");
    let c = EncryptionContext::for_volume_key(&v["volume_id"]);
    assert_eq!(hex(&c.encode()), v["encoded"]);
}

#[test]
fn xattr_value_vector() {
    let all = vectors();
    let v = get(&all, "xattr-1");
    let vk: [u8; 32] = arr(v, "volume_key");
    assert_eq!(
        hex(&blake3::derive_key("envelopefs xattr key v1", &vk)),
        v["xattr_key"]
    );
    let name = String::from_utf8(unhex(&v["name"])).unwrap();
    let c = envelopefs::fs::xattr::XattrCipher::from_volume_key(&vk);
    let stored = c.seal_with_nonce(
        std::ffi::OsStr::new(&name),
        &unhex(&v["value"]),
        arr(v, "nonce"),
    );
    assert_eq!(hex(&stored), v["stored"]);
    assert_eq!(
        c.open(std::ffi::OsStr::new(&name), &stored).unwrap(),
        unhex(&v["value"])
    );
}

#[test]
fn empty_block_vector() {
    let all = vectors();
    let v = get(&all, "empty-block-1");
    let c = BlockCipher::new(&arr(v, "dek"), arr(v, "file_id")).without_holes();
    let sealed = c.seal_empty(arr(v, "nonce"));
    assert_eq!(hex(&sealed), v["sealed"]);
    c.open_empty(&sealed).unwrap();
}

#[test]
fn sealed_holes_size_vectors() {
    let all = vectors();
    let v = get(&all, "sizes-4096-sealed-holes");
    let l = Layout::with_sealed_holes(4096, true);
    for (k, val) in v {
        let plain: u64 = k
            .strip_prefix("plaintext_")
            .expect("plaintext_N keys")
            .parse()
            .unwrap();
        assert_eq!(l.backing_size(plain).to_string(), *val, "{plain}");
    }
}

#[test]
fn encrypted_name_vectors() {
    use envelopefs::format::names::{BackingName, NameCipher, dirid_target, parse_dirid};
    let all = vectors();
    let v = get(&all, "names-1");
    let vk: [u8; 32] = arr(v, "volume_key");
    assert_eq!(
        hex(&blake3::derive_key("envelopefs name key v1", &vk)),
        v["name_key"]
    );
    let c = NameCipher::from_volume_key(&vk);
    let dirid: [u8; 16] = arr(v, "dirid");
    assert_eq!(dirid_target(&dirid), v["dirid_link"]);
    assert_eq!(parse_dirid(v["dirid_link"].as_bytes()).unwrap(), dirid);
    for (n, b) in [("name_a", "backing_a"), ("name_b", "backing_b")] {
        let name = unhex(&v[n]);
        assert_eq!(
            c.backing_name(&dirid, &name).unwrap(),
            BackingName::Short(v[b].clone()),
            "{n}"
        );
        assert_eq!(c.decode_name(&dirid, &v[b]).unwrap(), name);
    }
    assert_eq!(v["long_name"], "4c×200");
    let long = vec![b'L'; 200];
    match c.backing_name(&dirid, &long).unwrap() {
        BackingName::Long {
            entry,
            sidecar,
            encoded,
        } => {
            assert_eq!(entry, v["long_entry"]);
            assert_eq!(
                sidecar,
                v["long_entry"].replacen("long.", ".name.", 1),
                "sidecar"
            );
            assert_eq!(encoded, v["long_encoded"]);
            assert_eq!(c.decode_name(&dirid, &encoded).unwrap(), long);
        }
        other => panic!("200 bytes must take the long form: {other:?}"),
    }
}

#[test]
fn link_target_and_xattr_name_vectors() {
    use envelopefs::format::names::NameCipher;
    let all = vectors();
    let v = get(&all, "link-target-1");
    let c = NameCipher::from_volume_key(&arr(v, "volume_key"));
    let target = unhex(&v["target"]);
    let stored = c.encode_target(&target, arr(v, "nonce")).unwrap();
    assert_eq!(stored, v["stored"]);
    assert_eq!(c.decode_target(stored.as_bytes()).unwrap(), target);
    let v = get(&all, "xattr-name-1");
    let c = NameCipher::from_volume_key(&arr(v, "volume_key"));
    let stored = c
        .encode_xattr_name(v["name"].as_bytes())
        .unwrap()
        .expect("user.* names are encrypted");
    assert_eq!(String::from_utf8(stored.clone()).unwrap(), v["stored"]);
    assert_eq!(
        c.decode_xattr_name(&stored).unwrap().unwrap(),
        v["name"].as_bytes()
    );
}

#[test]
fn customer_key_slot_vector() {
    use envelopefs::format::customer::{CustomerKey, CustomerSlot};
    let all = vectors();
    let v = get(&all, "sse-c-1");
    let k: [u8; 32] = arr(v, "customer_key");
    assert_eq!(
        hex(&blake3::derive_key("envelopefs sse-c kek v1", &k)),
        v["kek"]
    );
    let key = CustomerKey::new(&k);
    assert_eq!(key.id(), v["key_id"]);
    let uid: u32 = v["uid"].parse().unwrap();
    let context = unhex(&v["context"]);
    let slot = key.wrap(
        uid,
        &arr(v, "dek"),
        &context,
        arr(v, "salt"),
        arr(v, "nonce"),
    );
    assert_eq!(hex(&slot.verifier), v["verifier"]);
    assert_eq!(hex(&slot.encode()), v["body"]);
    let parsed = CustomerSlot::parse(&unhex(&v["body"])).unwrap();
    assert!(key.matches(&parsed));
    assert_eq!(*key.unwrap(&parsed, &context).unwrap(), arr::<32>(v, "dek"));
    assert!(!CustomerKey::new(&[0x32; 32]).matches(&parsed));
}

/// A keystore-backup vector of docs/FORMAT.md §11.
fn check_keystore_backup(name: &str) {
    let all = vectors();
    let v = all
        .get(name)
        .unwrap_or_else(|| panic!("docs/FORMAT.md lacks vector {name}"));
    let file = unhex(&v["file"]);
    let prefix = kb::Prefix::decode(&file).unwrap();
    assert_eq!(prefix.salt.to_vec(), unhex(&v["salt"]));
    assert_eq!(prefix.nonce.to_vec(), unhex(&v["nonce"]));
    let pass = v.get("passphrase").map(|p| unhex(p));
    let key: Option<[u8; 32]> = v.get("keyfile").map(|k| unhex(k).try_into().unwrap());
    let secret = match (&pass, &key) {
        (Some(p), _) => kb::BackupSecret::Passphrase(p),
        (_, Some(k)) => kb::BackupSecret::KeyFile(k),
        _ => panic!("{name}: no secret"),
    };
    if pass.is_some() {
        let costs = (
            v["m_kib"].parse().unwrap(),
            v["t"].parse().unwrap(),
            v["p"].parse().unwrap(),
        );
        assert_eq!(prefix.costs, costs);
    }
    let bk = kb::backup_key(&prefix, &secret).unwrap();
    assert_eq!(bk.to_vec(), unhex(&v["backup_key"]), "{name}: backup key");
    let payload = kb::open(&file, &v["volume_id"], &secret).unwrap();
    let json = serde_json::to_vec(&payload).unwrap();
    assert_eq!(json, unhex(&v["payload"]), "{name}: payload");
    // Sealing the same payload with the same prefix gives the same bytes.
    assert_eq!(
        kb::seal(&prefix, &secret, &payload).unwrap(),
        file,
        "{name}: file"
    );
    // Another volume's backup is refused.
    assert!(kb::open(&file, "00000000-0000-4000-8000-000000000000", &secret).is_err());
}

#[test]
fn keystore_backup_passphrase_vector() {
    check_keystore_backup("keystore-backup-passphrase-1");
}

#[test]
fn keystore_backup_keyfile_vector() {
    check_keystore_backup("keystore-backup-keyfile-1");
}
