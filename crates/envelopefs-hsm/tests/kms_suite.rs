//! One key-service test suite, run against both custodies: the embedded service (material in
//! the keystore) and the PKCS#11 custody (material in a SoftHSM2 token). Lifecycle, rotation,
//! re-encryption, policies, grants and deletion must behave the same.

mod common;

use envelopefs_format::context::EncryptionContext;
use envelopefs_kms::local::LocalKms;
use envelopefs_kms::policy::{Grant, PrincipalSpec};
use envelopefs_kms::{Caller, KeyError, KeyService, KeyState};

fn ctx(n: u8) -> EncryptionContext {
    EncryptionContext::for_file("vol-suite", &[n; 16])
}

/// The shared suite. `held` says whether the material is in a token (only for messages).
fn suite(kms: &LocalKms, held: &str) {
    let me = Caller::current();
    let stranger = Caller {
        uid: me.uid + 4242,
        gid: me.gid + 4242,
        pid: 0,
    };

    // Wrap and unwrap, bound to the context.
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me)
        .unwrap();
    assert_eq!((w.version, w.blob.len()), (1, 60), "{held}");
    let back = kms.decrypt(&w, &ctx(1), &me).unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret(), "{held}");
    assert!(
        matches!(
            kms.decrypt(&w, &ctx(2), &me),
            Err(KeyError::InvalidCiphertext)
        ),
        "{held}"
    );
    let mut bad = w.clone();
    bad.blob[30] ^= 1;
    assert!(
        matches!(
            kms.decrypt(&bad, &ctx(1), &me),
            Err(KeyError::InvalidCiphertext)
        ),
        "{held}"
    );
    let mut v9 = w.clone();
    v9.version = 9;
    assert!(
        matches!(
            kms.decrypt(&v9, &ctx(1), &me),
            Err(KeyError::InvalidCiphertext)
        ),
        "{held}"
    );

    // Rotation: new wraps use version 2, version 1 still decrypts, re-encrypt moves to 2.
    assert_eq!(kms.rotate("alias/default", &me).unwrap(), 2, "{held}");
    let (dek2, w2) = kms
        .generate_data_key("alias/default", &ctx(3), &me)
        .unwrap();
    assert_eq!(w2.version, 2, "{held}");
    assert_eq!(
        kms.decrypt(&w2, &ctx(3), &me).unwrap().expose_secret(),
        dek2.expose_secret()
    );
    assert_eq!(
        kms.decrypt(&w, &ctx(1), &me).unwrap().expose_secret(),
        dek.expose_secret()
    );
    let re = kms.re_encrypt(&w, &ctx(1), "alias/default", &me).unwrap();
    assert_eq!(re.version, 2, "{held}");
    assert_eq!(
        kms.decrypt(&re, &ctx(1), &me).unwrap().expose_secret(),
        dek.expose_secret()
    );

    // Re-encrypt to another key.
    let other = kms.create_key("second", &me).unwrap();
    let moved = kms.re_encrypt(&w, &ctx(1), &other.key_id, &me).unwrap();
    assert_eq!(moved.key_id.to_string(), other.key_id);
    assert_eq!(
        kms.decrypt(&moved, &ctx(1), &me).unwrap().expose_secret(),
        dek.expose_secret()
    );

    // Disable / enable.
    kms.disable_key("alias/default", &me).unwrap();
    assert!(
        matches!(
            kms.decrypt(&w, &ctx(1), &me),
            Err(KeyError::Disabled { .. })
        ),
        "{held}"
    );
    kms.enable_key("alias/default", &me).unwrap();
    assert!(kms.decrypt(&w, &ctx(1), &me).is_ok(), "{held}");

    // Policy per uid: only the administrator and uid `me` may decrypt; a stranger is denied
    // until a grant lets them.
    let policy = format!(
        r#"{{"Statement":[
            {{"Effect":"Allow","Principal":{{"User":"{}"}},"Action":"kms:*"}}]}}"#,
        me.uid
    );
    kms.put_key_policy(&other.key_id, &policy, &me).unwrap();
    assert!(kms.decrypt(&moved, &ctx(1), &me).is_ok(), "{held}");
    assert!(
        matches!(
            kms.decrypt(&moved, &ctx(1), &stranger),
            Err(KeyError::AccessDenied { .. })
        ),
        "{held}"
    );
    let grantee = PrincipalSpec::from_cli(&format!("user:{}", stranger.uid)).unwrap();
    let grant = Grant::new(grantee, &["Decrypt"], None, None, None).unwrap();
    kms.create_grant(&other.key_id, grant, &me).unwrap();
    assert!(kms.decrypt(&moved, &ctx(1), &stranger).is_ok(), "{held}");

    // Deletion: PendingDeletion refuses; when the window ends the key (and its material) is
    // gone for good.
    kms.schedule_key_deletion(&other.key_id, Some(7), &me)
        .unwrap();
    assert!(
        matches!(
            kms.decrypt(&moved, &ctx(1), &me),
            Err(KeyError::PendingDeletion { .. })
        ),
        "{held}"
    );
    kms.maintain(envelopefs_kms::keystore::now_secs() + 8 * 86_400);
    assert!(
        matches!(
            kms.decrypt(&moved, &ctx(1), &me),
            Err(KeyError::Deleted { .. })
        ),
        "{held}"
    );
    assert_eq!(
        kms.describe_key("alias/default").unwrap().state,
        KeyState::Enabled
    );

    // Imported material is for software keystores only.
    let req = envelopefs_kms::lifecycle::CreateKeyRequest {
        origin: envelopefs_kms::Origin::External,
        ..Default::default()
    };
    let imported = kms.create_key_with(&req, &me);
    assert_eq!(imported.is_ok(), held == "software", "{held}: {imported:?}");
}

#[test]
fn suite_on_the_embedded_service() {
    suite(&LocalKms::in_memory_for_tests(), "software");
}

#[test]
fn suite_on_the_pkcs11_custody() {
    let Some((_, token)) = common::token("suite") else {
        return;
    };
    let kms = LocalKms::in_memory_with_custody_for_tests(token.clone()).unwrap();
    assert!(kms.has_custody());
    suite(&kms, "pkcs11");
}
