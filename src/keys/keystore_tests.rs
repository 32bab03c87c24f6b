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
    std::fs::write(&p, orig.replace("\"version\": 1", "\"version\": 2")).unwrap();
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

/// The material AAD of docs/FORMAT.md.
#[test]
fn material_aad_vector() {
    let aad = material_aad(&KeyId([0x22; 16]), 1);
    let want = "656e76656c6f7065667320636d6b206d6174657269616c207631 22222222222222222222222222222222 00000001";
    assert_eq!(hex(&aad), want.replace(' ', ""));
}
