//! Tests of the embedded key service: wrap/unwrap, states, rotation, live refresh.

use super::service::{dek_aad, kek};
use super::*;
use crate::secret::{self, KeyMaterial};
use crate::{KeyService, WrappedKey};

/// The caller of these tests: the current process, which is the administrator
/// (it created the keystore, so the keystore lists it as administrator).
fn me() -> Caller {
    Caller::current()
}

fn ctx(file: u8) -> EncryptionContext {
    EncryptionContext::for_file("vol-1", &[file; 16])
}

#[test]
fn generate_then_decrypt_round_trips() {
    let kms = LocalKms::in_memory_for_tests();
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    assert_eq!((w.blob.len(), w.version), (60, 1));
    let back = kms.decrypt(&w, &ctx(1), &me()).unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    let (dek2, w2) = kms
        .generate_data_key(&w.key_id.to_string(), &ctx(1), &me())
        .unwrap();
    assert_ne!(dek2.expose_secret(), dek.expose_secret());
    assert_ne!(w2.blob, w.blob);
}

#[test]
fn altered_context_blob_version_or_key_is_invalid_ciphertext() {
    let kms = LocalKms::in_memory_for_tests();
    let (_, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    let invalid = |w: &WrappedKey, c: &EncryptionContext| {
        matches!(kms.decrypt(w, c, &me()), Err(KeyError::InvalidCiphertext))
    };
    assert!(invalid(&w, &ctx(2)));
    assert!(invalid(&w, &EncryptionContext::new()));
    for i in 0..w.blob.len() {
        let mut bad = w.clone();
        bad.blob[i] ^= 0x80;
        assert!(invalid(&bad, &ctx(1)), "flipped byte {i}");
    }
    let mut short = w.clone();
    short.blob.pop();
    assert!(invalid(&short, &ctx(1)));
    let mut v2 = w.clone();
    v2.version = 2;
    assert!(invalid(&v2, &ctx(1)));
    let other = kms.create_key("other", &me()).unwrap();
    let mut moved = w.clone();
    moved.key_id = other.key_id.parse().unwrap();
    assert!(invalid(&moved, &ctx(1)));
    let mut unknown = w.clone();
    unknown.key_id = KeyId([0; 16]);
    assert!(matches!(
        kms.decrypt(&unknown, &ctx(1), &me()),
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        kms.generate_data_key("alias/nope", &ctx(1), &me()),
        Err(KeyError::NotFound(_))
    ));
    assert!(matches!(
        kms.describe_key("not-a-uuid"),
        Err(KeyError::NotFound(_))
    ));
}

#[test]
fn disabled_and_pending_deletion_keys_refuse_work() {
    let kms = LocalKms::in_memory_for_tests();
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    kms.set_state("alias/default", KeyState::Disabled, &me())
        .unwrap();
    assert!(matches!(
        kms.decrypt(&w, &ctx(1), &me()),
        Err(KeyError::Disabled { .. })
    ));
    assert!(matches!(
        kms.generate_data_key("alias/default", &ctx(1), &me()),
        Err(KeyError::Disabled { .. })
    ));
    assert!(matches!(
        kms.rotate("alias/default", &me()),
        Err(KeyError::Disabled { .. })
    ));
    let m = kms
        .set_state("alias/default", KeyState::PendingDeletion, &me())
        .unwrap();
    assert_eq!(m.state, KeyState::PendingDeletion);
    assert!(matches!(
        kms.decrypt(&w, &ctx(1), &me()),
        Err(KeyError::PendingDeletion { .. })
    ));
    assert!(matches!(
        kms.set_state("alias/default", KeyState::Enabled, &me()),
        Err(KeyError::PendingDeletion { .. })
    ));
    kms.set_state("alias/default", KeyState::Disabled, &me())
        .unwrap(); // cancel deletion
    kms.set_state("alias/default", KeyState::Enabled, &me())
        .unwrap();
    assert_eq!(
        kms.decrypt(&w, &ctx(1), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );
}

#[test]
fn rotation_adds_a_version_and_old_wraps_still_decrypt() {
    let kms = LocalKms::in_memory_for_tests();
    let (dek1, w1) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    assert_eq!(kms.rotate("alias/default", &me()).unwrap(), 2);
    let (dek2, w2) = kms
        .generate_data_key("alias/default", &ctx(2), &me())
        .unwrap();
    assert_eq!((w1.version, w2.version), (1, 2));
    assert_eq!(
        kms.decrypt(&w1, &ctx(1), &me()).unwrap().expose_secret(),
        dek1.expose_secret()
    );
    assert_eq!(
        kms.decrypt(&w2, &ctx(2), &me()).unwrap().expose_secret(),
        dek2.expose_secret()
    );
    assert_eq!(
        kms.describe_key("alias/default").unwrap().current_version,
        2
    );
}

#[test]
fn re_encrypt_moves_a_wrap_to_another_key() {
    let kms = LocalKms::in_memory_for_tests();
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    let other = kms.create_key("archive", &me()).unwrap();
    kms.create_alias("alias/archive", &other.key_id, &me())
        .unwrap();
    let moved = kms.re_encrypt(&w, &ctx(1), "alias/archive", &me()).unwrap();
    assert_eq!(moved.key_id.to_string(), other.key_id);
    assert_eq!(
        kms.decrypt(&moved, &ctx(1), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );
    assert!(matches!(
        kms.re_encrypt(&w, &ctx(9), "alias/archive", &me()),
        Err(KeyError::InvalidCiphertext)
    ));
    kms.rotate("alias/default", &me()).unwrap();
    let same = kms.re_encrypt(&w, &ctx(1), "alias/default", &me()).unwrap();
    assert_eq!(same.version, 2);
    assert_eq!(
        kms.decrypt(&same, &ctx(1), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );
}

#[test]
fn changes_persist_across_reopen() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("keystore.json");
    let key = Unlock::random_keyfile();
    let kms = LocalKms::create(&p, &key).unwrap();
    let (dek1, w1) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    kms.rotate("alias/default", &me()).unwrap();
    let (dek2, w2) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    let k = kms.create_key("x", &me()).unwrap();
    kms.set_state(&k.key_id, KeyState::Disabled, &me()).unwrap();
    drop(kms);
    let kms = LocalKms::open(&p, &key).unwrap();
    assert_eq!(
        kms.decrypt(&w1, &ctx(1), &me()).unwrap().expose_secret(),
        dek1.expose_secret()
    );
    assert_eq!(
        kms.decrypt(&w2, &ctx(1), &me()).unwrap().expose_secret(),
        dek2.expose_secret()
    );
    assert_eq!(
        kms.describe_key(&k.key_id).unwrap().state,
        KeyState::Disabled
    );
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LocalKms>();
    let kms = std::sync::Arc::new(LocalKms::in_memory_for_tests());
    let handles: Vec<_> = (0..4u8)
        .map(|i| {
            let kms = kms.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let (dek, w) = kms
                        .generate_data_key("alias/default", &ctx(i), &me())
                        .unwrap();
                    assert_eq!(
                        kms.decrypt(&w, &ctx(i), &me()).unwrap().expose_secret(),
                        dek.expose_secret()
                    );
                }
            })
        })
        .collect();
    kms.rotate("alias/default", &me()).unwrap();
    handles.into_iter().for_each(|h| h.join().unwrap());
}

/// The test vector in docs/FORMAT.md (its AES-GCM-SIV part was cross-checked against
/// Python `cryptography`'s AESGCMSIV). Inputs: material 0x11×32, key id 0x22×16,
/// version 3, context for_file("vol-1", 0x55×16), nonce 0x33×12, DEK 0x44×32.
#[test]
fn wrapped_key_test_vector() {
    use envelopefs_format::context::hex;
    let k = kek(&KeyMaterial::from_bytes([0x11; 32]));
    assert_eq!(
        hex(k.expose_secret()),
        "07c505110be36527d4d5f052ed1ced2ebde440a9aaaae6cb2d07ce0cd8801af9"
    );
    let aad = dek_aad(
        &KeyId([0x22; 16]),
        3,
        &EncryptionContext::for_file("vol-1", &[0x55; 16]),
    );
    let blob = secret::seal32_with_nonce(k.expose_secret(), &aad, &[0x44; 32], [0x33; 12]).unwrap();
    assert_eq!(
        hex(&blob),
        "333333333333333333333333e193d2d6bf7e5258bac29c51538a2a2964b4359a\
         f8531e8aaca636850e10579db9cc04758f88637174027bf8f61f0b57"
    );
    let mut out = [0u8; 32];
    secret::open32(k.expose_secret(), &aad, &blob, &mut out).unwrap();
    assert_eq!(out, [0x44; 32]);
}

fn keyfile_kms(dir: &Path) -> (std::path::PathBuf, Unlock, LocalKms) {
    let p = dir.join("keystore.json");
    let key = Unlock::random_keyfile();
    let kms = LocalKms::create(&p, &key).unwrap();
    (p, key, kms)
}

fn reopen(p: &Path, key: &Unlock) -> LocalKms {
    let Unlock::KeyFile(k) = key else { panic!() };
    LocalKms::open(p, &Unlock::KeyFile(zeroize::Zeroizing::new(**k))).unwrap()
}

#[test]
fn refresh_sees_a_disable_made_by_another_instance() {
    let d = tempfile::tempdir().unwrap();
    let (p, key, daemon) = keyfile_kms(d.path());
    let (dek, w) = daemon
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    let cli = reopen(&p, &key);
    cli.disable_key("alias/default", &me()).unwrap();
    // The daemon notices at its next call, with no explicit refresh.
    assert!(matches!(
        daemon.decrypt(&w, &ctx(1), &me()),
        Err(KeyError::Disabled { .. })
    ));
    assert!(matches!(
        daemon.generate_data_key("alias/default", &ctx(1), &me()),
        Err(KeyError::Disabled { .. })
    ));
    cli.enable_key("alias/default", &me()).unwrap();
    assert_eq!(
        daemon.decrypt(&w, &ctx(1), &me()).unwrap().expose_secret(),
        dek.expose_secret()
    );
    // A rotation by the CLI is used by the daemon's next wrap.
    cli.rotate("alias/default", &me()).unwrap();
    let (_, w2) = daemon
        .generate_data_key("alias/default", &ctx(2), &me())
        .unwrap();
    assert_eq!(w2.version, 2);
    assert!(!daemon.refresh_if_changed().unwrap(), "nothing new on disk");
}

#[test]
fn daemon_mutation_does_not_clobber_a_cli_change() {
    let d = tempfile::tempdir().unwrap();
    let (p, key, daemon) = keyfile_kms(d.path());
    let cli = reopen(&p, &key);
    let k = cli.create_key("made by the cli", &me()).unwrap();
    // The daemon has not refreshed; its write hits a Conflict, re-reads and retries.
    let written = daemon.mutate_store(|ks| ks.add_key("made by the daemon", Origin::AwsKms, 1));
    written.unwrap();
    let again = reopen(&p, &key);
    let descs: Vec<String> = again
        .list_keys()
        .into_iter()
        .map(|m| m.description)
        .collect();
    assert!(descs.contains(&"made by the cli".to_string()), "{descs:?}");
    assert!(
        descs.contains(&"made by the daemon".to_string()),
        "{descs:?}"
    );
    assert_eq!(
        daemon.describe_key(&k.key_id).unwrap().description,
        "made by the cli"
    );
}

#[test]
fn refresh_rereads_only_when_the_file_changed_and_is_cheap() {
    let d = tempfile::tempdir().unwrap();
    let (p, key, kms) = keyfile_kms(d.path());
    let n = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(!kms.refresh_if_changed().unwrap());
    }
    let per_call = t.elapsed() / n;
    eprintln!("refresh_if_changed with no change: {per_call:?} per call");
    assert!(
        per_call < std::time::Duration::from_micros(200),
        "{per_call:?}"
    );
    // A file that fails to verify is refused; the last good state stays.
    let good = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, good.replace("\"mac\": \"", "\"mac\": \"00")).unwrap();
    assert!(kms.refresh_if_changed().is_err());
    kms.generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    drop(key);
}

/// Issue 11 item 8b: ten `key create --alias` at once (ten independent services on one file,
/// as ten processes) all land, each key with its alias; none is left without its alias.
#[test]
fn parallel_creates_with_alias_all_land() {
    let d = tempfile::tempdir().unwrap();
    let (p, key, first) = keyfile_kms(d.path());
    drop(first);
    let barrier = std::sync::Barrier::new(10);
    let results: Vec<Result<KeyMetadata, KeyError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let kms = reopen(&p, &key);
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let req = crate::lifecycle::CreateKeyRequest {
                        description: format!("k{i}"),
                        alias: Some(format!("alias/k{i}")),
                        ..Default::default()
                    };
                    kms.create_key_with(&req, &me())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        let m = r.as_ref().unwrap_or_else(|e| panic!("create failed: {e}"));
        assert_eq!(m.aliases.len(), 1, "{m:?}");
    }
    let kms = reopen(&p, &key);
    let all = kms.list_keys();
    assert_eq!(all.len(), 11);
    for m in &all[1..] {
        let i = m.description.strip_prefix('k').unwrap();
        assert_eq!(m.aliases, [format!("alias/k{i}")], "{m:?}");
    }
    // An alias that exists already: refused, and no key is created either.
    let req = crate::lifecycle::CreateKeyRequest {
        alias: Some("alias/k3".into()),
        ..Default::default()
    };
    let e = kms.create_key_with(&req, &me()).unwrap_err();
    assert!(matches!(e, KeyError::AlreadyExists(_)), "{e}");
    assert_eq!(reopen(&p, &key).list_keys().len(), 11);
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

const ALICE: Caller = Caller {
    uid: 4242,
    gid: 4242,
    pid: 0,
};

/// Issue 11 item 3: the administrators are recorded in the keystore at creation; whoever
/// owns (or last rewrote) the file gains nothing; a rewrite keeps the file's owner and mode;
/// only an administrator changes the list, and never empties it.
#[test]
fn admins_are_recorded_in_the_keystore_not_taken_from_the_file_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = tempfile::tempdir().unwrap();
    let (p, key, kms) = keyfile_kms(d.path());
    assert_eq!(kms.admins(), [me().uid]);
    assert!(
        std::fs::read_to_string(&p)
            .unwrap()
            .contains(r#"\"admins\":["#)
    );
    if is_root() {
        // Alice owning the file (say she rewrote it) does not make her an administrator.
        std::os::unix::fs::chown(&p, Some(ALICE.uid), Some(ALICE.gid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o660)).unwrap();
        let kms = reopen(&p, &key);
        assert_eq!(kms.admins(), [me().uid]);
        let e = kms.disable_key("alias/default", &ALICE).unwrap_err();
        assert!(matches!(e, KeyError::AccessDenied { .. }), "{e}");
        let e = kms.create_key("by alice", &ALICE).unwrap_err();
        assert!(matches!(e, KeyError::AccessDenied { .. }), "{e}");
        // A rewrite (by root, who may chown) keeps the file's owner, group and mode.
        kms.create_key("by root", &me()).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (ALICE.uid, ALICE.gid, 0o660)
        );
    }
    // Only an administrator changes the list.
    let e = kms.add_admin(ALICE.uid, &ALICE).unwrap_err();
    assert!(matches!(e, KeyError::AccessDenied { .. }), "{e}");
    assert_eq!(
        kms.add_admin(ALICE.uid, &me()).unwrap(),
        [me().uid, ALICE.uid]
    );
    kms.disable_key("alias/default", &ALICE).unwrap();
    let kms2 = reopen(&p, &key);
    assert_eq!(kms2.admins(), [me().uid, ALICE.uid]);
    if me().uid != ALICE.uid {
        kms2.remove_admin(me().uid, &ALICE).unwrap();
        let e = kms2.remove_admin(ALICE.uid, &ALICE).unwrap_err();
        assert!(e.to_string().contains("last administrator"), "{e}");
        assert_eq!(reopen(&p, &key).admins(), [ALICE.uid]);
    }
}

/// A keystore written before administrators were recorded: its owner at open is the
/// administrator (once), and the next write records that uid; a later owner change does not
/// move it.
#[test]
fn legacy_keystore_takes_its_owner_once_and_records_it() {
    if !is_root() {
        eprintln!("skipping: needs root to chown the keystore");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (p, key, kms) = keyfile_kms(d.path());
    kms.mutate_store(|ks| {
        ks.body.admins = None;
        Ok(())
    })
    .unwrap();
    drop(kms);
    assert!(!std::fs::read_to_string(&p).unwrap().contains("admins"));
    std::os::unix::fs::chown(&p, Some(ALICE.uid), None).unwrap();
    let kms = reopen(&p, &key);
    assert_eq!(kms.admins(), [ALICE.uid]);
    kms.create_key("any write", &ALICE).unwrap();
    assert!(
        std::fs::read_to_string(&p)
            .unwrap()
            .contains(&format!(r#"\"admins\":[{}]"#, ALICE.uid))
    );
    std::os::unix::fs::chown(&p, Some(4343), None).unwrap();
    assert_eq!(reopen(&p, &key).admins(), [ALICE.uid]);
}

/// Issue 11 item 8f: a keystore file that changes into one that fails to verify (here: the
/// body edited by hand, the MAC left as it was) is reported once per change, naming the
/// file; the service keeps serving the last good keystore and writes nothing over it.
#[test]
fn a_keystore_failing_its_mac_is_reported_once_and_the_last_good_one_serves() {
    let d = tempfile::tempdir().unwrap();
    let (p, _key, kms) = keyfile_kms(d.path());
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx(1), &me())
        .unwrap();
    let good = std::fs::read_to_string(&p).unwrap();
    let bad = good.replace("Enabled", "Disabled");
    assert_ne!(bad, good);
    std::fs::write(&p, &bad).unwrap();
    let e = kms.refresh_if_changed().unwrap_err();
    assert!(
        matches!(&e, KeyError::Corrupt { .. }) && e.to_string().contains(&p.display().to_string()),
        "{e}"
    );
    assert!(
        !kms.refresh_if_changed().unwrap(),
        "reported once per change"
    );
    assert_eq!(
        kms.decrypt(&w, &ctx(1), &me()).unwrap().expose_secret(),
        dek.expose_secret(),
        "the last good keystore still serves"
    );
    assert!(kms.disable_key("alias/default", &me()).is_err());
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        bad,
        "nothing written over it"
    );
    // A second bad change is reported again; the good file back is taken again.
    std::fs::write(&p, bad.replace("\"mac\": \"", "\"mac\": \"00")).unwrap();
    assert!(kms.refresh_if_changed().is_err());
    // A missing file too, once.
    std::fs::rename(&p, d.path().join("moved")).unwrap();
    assert!(kms.refresh_if_changed().is_err());
    assert!(!kms.refresh_if_changed().unwrap());
    std::fs::write(&p, &good).unwrap();
    kms.refresh_if_changed().unwrap();
    kms.disable_key("alias/default", &me()).unwrap();
}
