//! Checks the keystore-backup vectors of docs/FORMAT.md §11 against the implementation (the
//! same vector syntax as tests/vectors.rs: `vector NAME`, `key = value` lines, `end`; a key
//! given on several lines is their concatenation).

use std::collections::BTreeMap;

use envelopefs::store::keystore_backup::{self as kb, BackupSecret, Prefix};

fn unhex(s: &str) -> Vec<u8> {
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
            map.entry(k.trim().to_owned())
                .or_insert_with(String::new)
                .push_str(v.trim());
        }
    }
    out
}

fn check(name: &str) {
    let all = vectors();
    let v = all
        .get(name)
        .unwrap_or_else(|| panic!("docs/FORMAT.md lacks vector {name}"));
    let file = unhex(&v["file"]);
    let prefix = Prefix::decode(&file).unwrap();
    assert_eq!(prefix.salt.to_vec(), unhex(&v["salt"]));
    assert_eq!(prefix.nonce.to_vec(), unhex(&v["nonce"]));
    let pass = v.get("passphrase").map(|p| unhex(p));
    let key: Option<[u8; 32]> = v.get("keyfile").map(|k| unhex(k).try_into().unwrap());
    let secret = match (&pass, &key) {
        (Some(p), _) => BackupSecret::Passphrase(p),
        (_, Some(k)) => BackupSecret::KeyFile(k),
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
    check("keystore-backup-passphrase-1");
}

#[test]
fn keystore_backup_keyfile_vector() {
    check("keystore-backup-keyfile-1");
}
