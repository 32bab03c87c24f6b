//! Tests of key import, end to end with the real `openssl` CLI when it is installed.

use std::path::Path;
use std::process::Command;

use rsa::pkcs8::DecodePublicKey;

use super::*;
use crate::KeyService;
use crate::lifecycle::CreateKeyRequest;
use envelopefs_format::context::EncryptionContext;

/// The caller of these tests: the current process, which is the administrator
/// (it created the keystore, so the keystore lists it as administrator).
fn me() -> Caller {
    Caller::current()
}

fn ctx() -> EncryptionContext {
    EncryptionContext::for_file("vol-1", &[9; 16])
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Wraps `material` for import exactly as docs/KEYS.md tells users to: with `openssl pkeyutl`
/// when installed, else (printing that the openssl part is skipped) with the rsa crate.
fn wrap_material(dir: &Path, params: &ImportParameters, material: &[u8]) -> Vec<u8> {
    let pem = dir.join("wrapping-key.pem");
    std::fs::write(&pem, &params.public_key_pem).unwrap();
    std::fs::write(dir.join("material.bin"), material).unwrap();
    if have_openssl() {
        let md = match params.algorithm {
            WrappingAlgorithm::OaepSha256 => "sha256",
            WrappingAlgorithm::OaepSha1 => "sha1",
        };
        let out = Command::new("openssl")
            .current_dir(dir)
            .args([
                "pkeyutl",
                "-encrypt",
                "-pubin",
                "-inkey",
                "wrapping-key.pem",
            ])
            .args(["-pkeyopt", "rsa_padding_mode:oaep"])
            .args(["-pkeyopt", &format!("rsa_oaep_md:{md}")])
            .args(["-pkeyopt", &format!("rsa_mgf1_md:{md}")])
            .args(["-in", "material.bin", "-out", "material.enc"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return std::fs::read(dir.join("material.enc")).unwrap();
    }
    eprintln!("openssl is not installed: skipping the openssl part, wrapping with the rsa crate");
    let public = RsaPublicKey::from_public_key_pem(&params.public_key_pem).unwrap();
    let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
    match params.algorithm {
        WrappingAlgorithm::OaepSha256 => {
            public.encrypt(&mut rng, Oaep::<sha2::Sha256>::new(), material)
        }
        WrappingAlgorithm::OaepSha1 => {
            public.encrypt(&mut rng, Oaep::<sha1::Sha1>::new(), material)
        }
    }
    .unwrap()
}

fn external_key(kms: &LocalKms) -> String {
    let req = CreateKeyRequest {
        origin: Origin::External,
        description: "byok".into(),
        ..CreateKeyRequest::default()
    };
    kms.create_key_with(&req, &me()).unwrap().key_id
}

#[test]
fn import_round_trip_with_openssl() {
    let d = tempfile::tempdir().unwrap();
    let kms = LocalKms::in_memory_for_tests();
    let k = external_key(&kms);
    assert_eq!(
        kms.generate_data_key(&k, &ctx(), &me()).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    let params = kms
        .get_parameters_for_import(
            &k,
            WrappingSpec::Rsa2048,
            WrappingAlgorithm::OaepSha256,
            &me(),
        )
        .unwrap();
    assert!(
        params
            .public_key_pem
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(params.import_token.len(), TOKEN_LEN);
    let material = [0x5a; 32];
    let enc = wrap_material(d.path(), &params, &material);
    let out = kms
        .import_key_material(&k, &params.import_token, &enc, None, false, &me())
        .unwrap();
    assert_eq!(
        (out.version, out.import_type, out.key_state),
        (1, "NEW_KEY_MATERIAL", KeyState::Enabled)
    );
    let (dek, w) = kms.generate_data_key(&k, &ctx(), &me()).unwrap();
    assert_eq!(
        kms.decrypt(&w, &ctx(), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );

    // Imported keys rotate on demand only, and only to new imported material.
    assert_eq!(
        kms.enable_key_rotation(&k, None, &me()).unwrap_err().code(),
        "UnsupportedOperationException"
    );
    assert_eq!(
        kms.rotate(&k, &me()).unwrap_err().code(),
        "UnsupportedOperationException"
    );
    let enc2 = wrap_material(d.path(), &params, &[0x6b; 32]);
    let out = kms
        .import_key_material(&k, &params.import_token, &enc2, None, true, &me())
        .unwrap();
    assert_eq!((out.version, out.import_type), (2, "PENDING_ROTATION"));
    assert_eq!(
        kms.generate_data_key(&k, &ctx(), &me()).unwrap().1.version,
        1,
        "not current yet"
    );
    assert_eq!(kms.rotate(&k, &me()).unwrap(), 2);
    assert_eq!(
        kms.generate_data_key(&k, &ctx(), &me()).unwrap().1.version,
        2
    );
    assert_eq!(
        kms.decrypt(&w, &ctx(), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );

    // Delete the material: PendingImport; only the same material comes back.
    assert_eq!(
        kms.delete_imported_key_material(&k, &me()).unwrap(),
        KeyState::PendingImport
    );
    assert_eq!(
        kms.decrypt(&w, &ctx(), &me()).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    let other = wrap_material(d.path(), &params, &[0x11; 32]);
    let e = kms
        .import_key_material(&k, &params.import_token, &other, None, false, &me())
        .unwrap_err();
    assert_eq!(e.code(), "IncorrectKeyMaterialException", "{e}");
    let out = kms
        .import_key_material(&k, &params.import_token, &enc2, None, false, &me())
        .unwrap();
    assert_eq!(
        (out.version, out.import_type, out.key_state),
        (2, "EXISTING_KEY_MATERIAL", KeyState::Enabled)
    );
    // Version 1's material is still deleted until it too is imported again.
    let e = kms.decrypt(&w, &ctx(), &me()).unwrap_err();
    assert!(e.to_string().contains("version 1 was deleted"), "{e}");
    kms.import_key_material(&k, &params.import_token, &enc, None, false, &me())
        .unwrap();
    assert_eq!(
        kms.decrypt(&w, &ctx(), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );
}

#[test]
fn bad_tokens_and_material_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let kms = LocalKms::in_memory_for_tests();
    let (a, b) = (external_key(&kms), external_key(&kms));
    let pa = kms
        .get_parameters_for_import(
            &a,
            WrappingSpec::Rsa2048,
            WrappingAlgorithm::OaepSha1,
            &me(),
        )
        .unwrap();
    let enc = wrap_material(d.path(), &pa, &[1; 32]);
    let code = |r: Result<ImportOutcome, KeyError>| r.unwrap_err().code();
    // A token for another key, an altered token, garbage.
    assert_eq!(
        code(kms.import_key_material(&b, &pa.import_token, &enc, None, false, &me())),
        "InvalidImportTokenException"
    );
    let mut altered = pa.import_token.clone();
    altered[45] ^= 1;
    assert_eq!(
        code(kms.import_key_material(&a, &altered, &enc, None, false, &me())),
        "InvalidImportTokenException"
    );
    assert_eq!(
        code(kms.import_key_material(&a, b"nope", &enc, None, false, &me())),
        "InvalidImportTokenException"
    );
    // Expired: the same token checked a day and a second later.
    let id: KeyId = a.parse().unwrap();
    let later = pa.parameters_valid_to + 1;
    let e = kms
        .peek(|ks| unwrap_material(ks, &id, &pa.import_token, &enc, later))
        .unwrap_err();
    assert_eq!(e.code(), "ExpiredImportTokenException", "{e}");
    // Material wrapped with the wrong OAEP hash, or of the wrong length.
    let mut sha256 = ImportParameters {
        algorithm: WrappingAlgorithm::OaepSha256,
        ..pa.clone()
    };
    let wrong_hash = wrap_material(d.path(), &sha256, &[1; 32]);
    assert_eq!(
        code(kms.import_key_material(&a, &pa.import_token, &wrong_hash, None, false, &me())),
        "IncorrectKeyMaterialException"
    );
    sha256.algorithm = WrappingAlgorithm::OaepSha1;
    let short = wrap_material(d.path(), &sha256, &[1; 16]);
    let e = kms
        .import_key_material(&a, &pa.import_token, &short, None, false, &me())
        .unwrap_err();
    assert!(e.to_string().contains("exactly 32 bytes"), "{e}");
    // Newer parameters replace the older token.
    let pa2 = kms
        .get_parameters_for_import(
            &a,
            WrappingSpec::Rsa2048,
            WrappingAlgorithm::OaepSha1,
            &me(),
        )
        .unwrap();
    assert_eq!(
        code(kms.import_key_material(&a, &pa.import_token, &enc, None, false, &me())),
        "InvalidImportTokenException"
    );
    let enc2 = wrap_material(d.path(), &pa2, &[1; 32]);
    kms.import_key_material(&a, &pa2.import_token, &enc2, None, false, &me())
        .unwrap();
    // AWS_KMS keys take no import.
    let e = kms.get_parameters_for_import(
        "alias/default",
        WrappingSpec::Rsa2048,
        WrappingAlgorithm::OaepSha256,
        &me(),
    );
    assert_eq!(e.unwrap_err().code(), "UnsupportedOperationException");
}

#[test]
fn expiry_deletes_material_and_the_private_key_is_never_on_disk_in_clear() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks.json");
    let unlock = crate::secret::Unlock::random_keyfile();
    let kms = LocalKms::create(&p, &unlock).unwrap();
    let k = external_key(&kms);
    let params = kms
        .get_parameters_for_import(
            &k,
            WrappingSpec::Rsa2048,
            WrappingAlgorithm::OaepSha256,
            &me(),
        )
        .unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(!text.contains("PRIVATE KEY") && text.contains("private_key"));
    let enc = wrap_material(d.path(), &params, &[3; 32]);
    let now = keystore::now_secs();
    let e = kms.import_key_material(
        &k,
        &params.import_token,
        &enc,
        Some(now + 400 * DAY),
        false,
        &me(),
    );
    assert_eq!(e.unwrap_err().code(), "ValidationException");
    let out = kms
        .import_key_material(
            &k,
            &params.import_token,
            &enc,
            Some(now + 100),
            false,
            &me(),
        )
        .unwrap();
    assert_eq!(out.valid_to, Some(now + 100));
    let (_, w) = kms.generate_data_key(&k, &ctx(), &me()).unwrap();
    assert_eq!(kms.purge_expired(now + 101).unwrap().len(), 1);
    let m = kms.describe_key(&k).unwrap();
    assert_eq!((m.state, m.valid_to), (KeyState::PendingImport, None));
    assert_eq!(
        kms.decrypt(&w, &ctx(), &me()).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    // The same material, re-imported, brings the key back, and it survives a reopen.
    kms.import_key_material(&k, &params.import_token, &enc, None, false, &me())
        .unwrap();
    drop(kms);
    let kms = LocalKms::open(&p, &unlock).unwrap();
    kms.decrypt(&w, &ctx(), &me()).unwrap();
}
