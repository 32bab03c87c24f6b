//! Tests of the keystore file: unlock, tampering, versions, concurrent writers.

use super::*;
use zeroize::Zeroizing;

fn pw(s: &str) -> Unlock {
    Unlock::Passphrase(Zeroizing::new(s.as_bytes().to_vec()))
}

/// A passphrase keystore with cheap Argon2 costs.
fn small(dir: &Path, pass: &str) -> (PathBuf, Keystore) {
    let p = dir.join("keystore.json");
    let ks = Keystore::create_with_params(&p, &pw(pass), 1024, 1, 1).unwrap();
    (p, ks)
}

#[test]
fn passphrase_reopen_and_wrong_passphrase_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (p, ks) = small(d.path(), "right");
    let id = ks.resolve(DEFAULT_ALIAS).unwrap();
    let m1 = *ks.material(&id, 1).unwrap().expose_secret();
    let before = std::fs::read(&p).unwrap();
    let e = Keystore::open(&p, &pw("wrong")).err().unwrap();
    assert!(matches!(e, KeyError::WrongPassphrase { .. }), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    let ks2 = Keystore::open(&p, &pw("right")).unwrap();
    assert_eq!(ks2.material(&id, 1).unwrap().expose_secret(), &m1);
    assert_eq!(ks2.key(&id).unwrap().description, DEFAULT_DESCRIPTION);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn tampering_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = small(d.path(), "pw");
    let orig = std::fs::read_to_string(&p).unwrap();
    let mut top: serde_json::Value = serde_json::from_str(&orig).unwrap();
    let body = top["body"]
        .as_str()
        .unwrap()
        .replace("default key", "defau1t key");
    top["body"] = body.into();
    std::fs::write(&p, serde_json::to_string(&top).unwrap()).unwrap();
    let e = Keystore::open(&p, &pw("pw")).err().unwrap();
    assert!(matches!(e, KeyError::Corrupt { .. }), "{e}");
    assert!(matches!(
        Keystore::open(&p, &pw("other")),
        Err(KeyError::WrongPassphrase { .. })
    ));
    std::fs::write(&p, orig.replace("\"mac\": \"", "\"mac\": \"00")).unwrap();
    assert!(matches!(
        Keystore::open(&p, &pw("pw")),
        Err(KeyError::Corrupt { .. })
    ));
    std::fs::write(&p, &orig[..orig.len() / 2]).unwrap();
    assert!(matches!(
        Keystore::open(&p, &pw("pw")),
        Err(KeyError::Corrupt { .. })
    ));
}

#[test]
fn newer_version_and_foreign_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = small(d.path(), "pw");
    let orig = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, orig.replace("\"version\": 2", "\"version\": 3")).unwrap();
    let e = Keystore::open(&p, &pw("pw")).err().unwrap().to_string();
    assert!(e.contains("newer envelopefs"), "{e}");
    std::fs::write(&p, b"{\"hello\": 1}").unwrap();
    let e = Keystore::open(&p, &pw("pw")).err().unwrap().to_string();
    assert!(e.contains("not an envelopefs keystore"), "{e}");
}

#[test]
fn keyfile_unlock_and_mismatched_unlock_kind() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks");
    let key = Unlock::random_keyfile();
    let ks = Keystore::create(&p, &key).unwrap();
    let id = ks.resolve(DEFAULT_ALIAS).unwrap();
    let ks2 = Keystore::open(&p, &key).unwrap();
    assert_eq!(
        ks2.material(&id, 1).unwrap().expose_secret(),
        ks.material(&id, 1).unwrap().expose_secret()
    );
    let other = Unlock::random_keyfile();
    assert!(matches!(
        Keystore::open(&p, &other),
        Err(KeyError::WrongPassphrase { .. })
    ));
    assert!(matches!(
        Keystore::open(&p, &pw("x")),
        Err(KeyError::InvalidArgument(_))
    ));
    assert!(matches!(
        Keystore::create(&p, &key),
        Err(KeyError::AlreadyExists(_))
    ));
}

#[test]
fn mutations_persist_and_unknown_fields_survive() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks");
    let key = Unlock::random_keyfile();
    let mut ks = Keystore::create(&p, &key).unwrap();
    let id = ks.create_key("second").unwrap();
    assert_eq!(ks.add_version(&id, RotationType::OnDemand).unwrap(), 2);
    ks.set_alias("alias/two", Some(&id)).unwrap();
    // A later version adds fields; this one must keep them when it rewrites the file.
    let mut body: serde_json::Value = serde_json::to_value(&ks.body).unwrap();
    body["policy_version"] = 7.into();
    body["keys"][1]["future_field"] = serde_json::json!([{"id": "g"}]);
    ks.body = serde_json::from_value(body).unwrap();
    ks.save().unwrap();
    let mut ks2 = Keystore::open(&p, &key).unwrap();
    assert_eq!(ks2.resolve("alias/two").unwrap(), id);
    assert_eq!(ks2.key(&id).unwrap().current_version(), 2);
    assert!(ks2.material(&id, 2).is_some() && ks2.material(&id, 1).is_some());
    ks2.update_key(&id, |r| {
        r.description = "renamed".into();
        Ok(())
    })
    .unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("policy_version")
            && text.contains("future_field")
            && text.contains("renamed")
    );
}

/// A writer whose view is stale catches up under the writers' lock before it changes
/// anything: both writers' changes land (no Conflict, nothing clobbered). A change that
/// fails is rolled back and writes nothing.
#[test]
fn concurrent_writers_serialize_and_a_failed_change_rolls_back() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks");
    let key = Unlock::random_keyfile();
    let mut a = Keystore::create(&p, &key).unwrap();
    let mut b = Keystore::open(&p, &key).unwrap();
    let by_b = b.create_key("by b").unwrap();
    let by_a = a.create_key("by a").unwrap();
    let again = Keystore::open(&p, &key).unwrap();
    assert!(again.key(&by_a).is_some() && again.key(&by_b).is_some());
    assert_eq!(again.keys().len(), 3);
    let on_disk = std::fs::read(&p).unwrap();
    let e = a.transact(|ks| {
        ks.add_key("never written", Origin::AwsKms, 1)?;
        Err::<(), _>(KeyError::InvalidArgument("refused".into()))
    });
    assert!(e.is_err());
    assert_eq!(a.keys().len(), 3, "failed mutation must roll back");
    assert_eq!(std::fs::read(&p).unwrap(), on_disk);
}

/// Issue 11 item 7: the Argon2 costs are under the MAC. Editing them (or the salt, or the
/// algorithm) in keystore.json is reported as a modified keystore before anything is
/// derived, not as a wrong passphrase, and never opens.
#[test]
fn edited_kdf_parameters_are_a_modified_keystore() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = small(d.path(), "pw");
    let orig = std::fs::read_to_string(&p).unwrap();
    assert!(orig.contains("\"version\": 2"), "{orig}");
    let top: serde_json::Value = serde_json::from_str(&orig).unwrap();
    for (field, value) in [
        ("m_kib", serde_json::json!(2048)),
        ("m_kib", serde_json::json!(4 * 1024 * 1024)),
        ("t", serde_json::json!(2)),
        ("t", serde_json::json!(1000)),
        ("p", serde_json::json!(2)),
        ("salt", serde_json::json!("03".repeat(16))),
    ] {
        let mut edited = top.clone();
        edited["kdf"][field] = value.clone();
        std::fs::write(&p, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
        let t = std::time::Instant::now();
        let e = Keystore::open(&p, &pw("pw")).err().unwrap();
        assert!(
            matches!(&e, KeyError::Corrupt { reason, .. } if reason.contains("modified")),
            "{field}={value}: {e}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "no Argon2 run"
        );
    }
    // Editing both copies consistently: the KDF runs (within bounds) and the MAC fails.
    let mut both = top.clone();
    both["kdf"]["t"] = 2.into();
    let body = top["body"].as_str().unwrap().replace("\"t\":1", "\"t\":2");
    both["body"] = body.into();
    std::fs::write(&p, serde_json::to_string_pretty(&both).unwrap()).unwrap();
    assert!(Keystore::open(&p, &pw("pw")).is_err());
    // Costs beyond the bounds are refused before deriving even when both copies agree.
    let mut huge = both.clone();
    huge["kdf"]["t"] = 101.into();
    let body = top["body"]
        .as_str()
        .unwrap()
        .replace("\"t\":1", "\"t\":101");
    huge["body"] = body.into();
    std::fs::write(&p, serde_json::to_string_pretty(&huge).unwrap()).unwrap();
    let e = Keystore::open(&p, &pw("pw")).err().unwrap();
    assert!(e.to_string().contains("unreasonable"), "{e}");
    std::fs::write(&p, &orig).unwrap();
    Keystore::open(&p, &pw("pw")).unwrap();
}

/// A version-1 keystore (MAC over the body alone, no kdf copy) still opens, and the next
/// change rewrites it as version 2.
#[test]
fn version_1_keystore_opens_and_is_upgraded_at_the_next_write() {
    let d = tempfile::tempdir().unwrap();
    let (p, ks) = small(d.path(), "pw");
    let mut top: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut body: serde_json::Value = serde_json::from_str(top["body"].as_str().unwrap()).unwrap();
    body.as_object_mut().unwrap().remove("kdf");
    let body = serde_json::to_string(&body).unwrap();
    top["mac"] = ks.keys.mac(1, b"", &body).to_hex().to_string().into();
    top["body"] = body.into();
    top["version"] = 1.into();
    std::fs::write(&p, serde_json::to_string_pretty(&top).unwrap()).unwrap();
    let mut v1 = Keystore::open(&p, &pw("pw")).unwrap();
    assert!(
        std::fs::read_to_string(&p)
            .unwrap()
            .contains("\"version\": 1")
    );
    v1.create_key("upgrade").unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("\"version\": 2") && text.contains("m_kib"),
        "{text}"
    );
    assert_eq!(Keystore::open(&p, &pw("pw")).unwrap().keys().len(), 2);
}

/// The material AAD of docs/FORMAT.md.
#[test]
fn material_aad_vector() {
    let aad = material_aad(&KeyId([0x22; 16]), 1);
    let want = "656e76656c6f7065667320636d6b206d6174657269616c207631 22222222222222222222222222222222 00000001";
    assert_eq!(hex(&aad), want.replace(' ', ""));
}

/// Vector `keystore-material-1` of docs/FORMAT.md §6.4 (cross-checked with Python
/// `cryptography`'s AESGCMSIV): material M = 44×32 of key 22×16 version 1 sealed under
/// wrap_key 11×32 with nonce 33×12.
#[test]
fn material_sealing_vector() {
    let aad = material_aad(&KeyId([0x22; 16]), 1);
    let sealed =
        crate::secret::seal32_with_nonce(&[0x11; 32], &aad, &[0x44; 32], [0x33; 12]).unwrap();
    assert_eq!(
        hex(&sealed),
        "333333333333333333333333\
         71f936210e872b09cb78869564c0ad0501f2a4384eac363a11669a6519c530fc\
         e7fef9e5b887d1cdc2954dd7b729689d"
    );
    let mut back = [0u8; 32];
    crate::secret::open32(&[0x11; 32], &aad, &sealed, &mut back).unwrap();
    assert_eq!(back, [0x44; 32]);
    let doc = crate::doc_vectors::get("keystore-material-1");
    let inputs = [
        &doc["wrap_key"],
        &doc["key_id"],
        &doc["version"],
        &doc["nonce"],
        &doc["m"],
    ];
    let want = [
        hex(&[0x11; 32]),
        hex(&[0x22; 16]),
        "1".into(),
        hex(&[0x33; 12]),
        hex(&[0x44; 32]),
    ];
    assert_eq!(inputs, want.each_ref());
    assert_eq!(doc["material"], hex(&sealed));
}

/// The unauthenticated labels `scan` shows: every key's state and aliases, read without the
/// key; nothing for a file that is not a keystore.
#[test]
fn labels_are_read_without_the_key() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks");
    let ks = Keystore::create(&p, &Unlock::random_keyfile()).unwrap();
    let id = ks.resolve(DEFAULT_ALIAS).unwrap().to_string();
    let labels = labels_unverified(&p);
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[&id], format!("Enabled, {DEFAULT_ALIAS}"));
    std::fs::write(&p, b"not json").unwrap();
    assert!(labels_unverified(&p).is_empty());
}
