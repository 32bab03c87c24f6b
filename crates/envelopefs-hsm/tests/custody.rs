//! The PKCS#11 custody against throwaway SoftHSM2 tokens: wrapping inside the token, objects
//! that cannot leave it, reconnection, and errors.

mod common;

use envelopefs_kms::KeyError;
use envelopefs_kms::custody::Custody;

#[test]
fn wrap_unwrap_in_the_token_binds_the_aad() {
    let Some((_, t)) = common::token("wrap-unwrap") else {
        return;
    };
    let id = envelopefs_kms::KeyId([7; 16]);
    let label = t.generate(&id, 1).unwrap();
    assert_eq!(label, format!("envelopefs cmk {id} v1"));
    let dek = [0x42u8; 32];
    let blob = t.wrap(&label, &dek, b"aad one").unwrap();
    assert_eq!(blob.len(), 60);
    assert!(
        !blob.windows(32).any(|w| w == dek),
        "the DEK is not in the blob"
    );
    assert_eq!(&t.unwrap(&label, &blob, b"aad one").unwrap()[..], &dek);
    let other = t.wrap(&label, &dek, b"aad one").unwrap();
    assert_ne!(other, blob, "a fresh IV each time");
    let r = t.unwrap(&label, &blob, b"aad two");
    assert!(
        matches!(r, Err(KeyError::InvalidCiphertext)),
        "{:?}",
        r.map(|p| p.to_vec())
    );
    for i in [0, 11, 12, 43, 44, 59] {
        let mut bad = blob.clone();
        bad[i] ^= 1;
        assert!(
            matches!(
                t.unwrap(&label, &bad, b"aad one"),
                Err(KeyError::InvalidCiphertext)
            ),
            "flipped byte {i}"
        );
    }
    assert!(matches!(
        t.unwrap(&label, &blob[..59], b"aad one"),
        Err(KeyError::InvalidCiphertext)
    ));
    // Another version's key does not open it.
    let label2 = t.generate(&id, 2).unwrap();
    assert!(matches!(
        t.unwrap(&label2, &blob, b"aad one"),
        Err(KeyError::InvalidCiphertext)
    ));
    assert!(matches!(
        t.generate(&id, 2),
        Err(KeyError::AlreadyExists(_))
    ));
}

#[test]
fn a_destroyed_object_is_invalid_state_naming_it() {
    let Some((_, t)) = common::token("destroyed") else {
        return;
    };
    let id = envelopefs_kms::KeyId([9; 16]);
    let label = t.generate(&id, 1).unwrap();
    let blob = t.wrap(&label, &[1; 32], b"").unwrap();
    t.destroy(&label).unwrap();
    t.destroy(&label).unwrap(); // already gone: not an error
    match t.unwrap(&label, &blob, b"") {
        Err(KeyError::InvalidState { key_id, .. }) => assert_eq!(key_id, label),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keystore_secret_is_a_deterministic_prf_of_the_salt() {
    let Some((_, t)) = common::token("ks-secret") else {
        return;
    };
    let a = t.keystore_secret("ks", &[1; 16], true).unwrap();
    let b = t.keystore_secret("ks", &[1; 16], false).unwrap();
    let c = t.keystore_secret("ks", &[2; 16], false).unwrap();
    assert_eq!(*a, *b);
    assert_ne!(*a, *c);
    assert!(matches!(
        t.keystore_secret("ks", &[1; 16], true),
        Err(KeyError::AlreadyExists(_))
    ));
    assert!(matches!(
        t.keystore_secret("no such object", &[1; 16], false),
        Err(KeyError::InvalidState { .. })
    ));
}

#[test]
fn wrong_pin_and_missing_token_are_clear_errors() {
    let Some(dir) = common::dir() else { return };
    match envelopefs_hsm::Token::open(&dir.module, &dir.label, common::pin("wrong")) {
        Err(KeyError::AccessDenied { reason, .. }) => assert!(reason.contains("wrong PIN")),
        other => panic!("{other:?}"),
    }
    match envelopefs_hsm::Token::open(&dir.module, "no such token", common::pin("x")) {
        Err(e @ KeyError::Unavailable(_)) => assert!(e.to_string().contains("no token labelled")),
        other => panic!("{other:?}"),
    }
    let e = envelopefs_hsm::Token::open(
        std::path::Path::new("/nonexistent/libpkcs11.so"),
        "x",
        common::pin("x"),
    )
    .unwrap_err();
    assert!(matches!(e, KeyError::Unavailable(_)), "{e}");
}

/// A keystore file over a token: created, reopened with the PIN, holding no key material;
/// its MAC still detects an edit; a wrong PIN opens nothing.
#[test]
fn keystore_file_over_a_token() {
    let Some((dir, _)) = common::token("keystore-file") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("keystore.json");
    let me = envelopefs_kms::Caller::current();
    let ctx = envelopefs_format::context::EncryptionContext::for_file("v", &[3; 16]);
    let kms = envelopefs_hsm::create_kms(
        &path,
        &dir.module,
        "keystore-file",
        common::pin(envelopefs_hsm::softhsm::USER_PIN),
        false,
    )
    .unwrap();
    use envelopefs_kms::KeyService;
    let (dek, w) = kms.generate_data_key("alias/default", &ctx, &me).unwrap();
    kms.rotate("alias/default", &me).unwrap();
    drop(kms);

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(r#"\"material\":null"#), "{text}");
    assert!(text.contains("token_object"), "{text}");
    assert!(text.contains(r#""alg": "pkcs11""#), "{text}");

    let pin = || common::pin(envelopefs_hsm::softhsm::USER_PIN);
    let kms = envelopefs_hsm::open_kms(&path, None, pin()).unwrap();
    assert_eq!(
        kms.decrypt(&w, &ctx, &me).unwrap().expose_secret(),
        dek.expose_secret()
    );
    assert_eq!(kms.describe_key("alias/default").unwrap().versions, 2);
    drop(kms);

    assert!(matches!(
        envelopefs_hsm::open_kms(&path, None, common::pin("wrong")),
        Err(KeyError::AccessDenied { .. })
    ));
    // A passphrase cannot open it.
    let unlock =
        envelopefs_kms::secret::Unlock::Passphrase(zeroize::Zeroizing::new(b"pw".to_vec()));
    let e = envelopefs_kms::local::LocalKms::open(&path, &unlock).unwrap_err();
    assert!(e.to_string().contains("PIN"), "{e}");
    // An edited body fails the MAC.
    let edited = text.replacen("Enabled", "Disabled", 1);
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    assert!(matches!(
        envelopefs_hsm::open_kms(&path, None, pin()),
        Err(KeyError::Corrupt { .. })
    ));
}

/// A session that lost its login under the custody (as after a token reset) is reopened and
/// logged in again.
#[test]
fn a_lost_session_is_reopened() {
    let Some((dir, t)) = common::token("reconnect") else {
        return;
    };
    let id = envelopefs_kms::KeyId([5; 16]);
    let label = t.generate(&id, 1).unwrap();
    let blob = t.wrap(&label, &[8; 32], b"x").unwrap();
    // Log the application out through another session (login state is per application).
    let ctx = cryptoki::context::Pkcs11::new(&dir.module).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "reconnect")
        .unwrap();
    let other = ctx.open_rw_session(slot).unwrap();
    other.logout().unwrap();
    drop(other);
    assert_eq!(&t.unwrap(&label, &blob, b"x").unwrap()[..], &[8; 32]);
}
