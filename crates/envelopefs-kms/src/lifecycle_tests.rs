//! Tests of the key lifecycle: state transitions, deletion windows, aliases, descriptions and
//! tags.

use super::*;
use crate::KeyService;
use envelopefs_format::context::EncryptionContext;

/// The caller of these tests: the current process, which is the administrator
/// (it created the keystore, so the keystore lists it as administrator).
fn me() -> Caller {
    Caller::current()
}

fn ctx() -> EncryptionContext {
    EncryptionContext::for_file("vol-1", &[7; 16])
}

#[test]
fn every_state_transition_follows_kms() {
    let kms = LocalKms::in_memory_for_tests();
    let k = "alias/default";
    let (_, w) = kms.generate_data_key(k, &ctx(), &me()).unwrap();
    // Enabled → Disabled → Enabled (both idempotent).
    assert_eq!(kms.disable_key(k, &me()).unwrap().state, KeyState::Disabled);
    assert_eq!(kms.disable_key(k, &me()).unwrap().state, KeyState::Disabled);
    assert_eq!(kms.enable_key(k, &me()).unwrap().state, KeyState::Enabled);
    assert_eq!(kms.enable_key(k, &me()).unwrap().state, KeyState::Enabled);
    // Cancel without a scheduled deletion is KMSInvalidStateException.
    let e = kms.cancel_key_deletion(k, &me()).unwrap_err();
    assert_eq!(e.code(), "KMSInvalidStateException");
    // Enabled → PendingDeletion: unusable, cannot be enabled or disabled, nor re-scheduled.
    let m = kms.schedule_key_deletion(k, Some(7), &me()).unwrap();
    assert_eq!(
        (m.state, m.pending_window_days),
        (KeyState::PendingDeletion, Some(7))
    );
    let soon = keystore::now_secs() + 7 * DAY;
    assert!(m.deletion_date.unwrap().abs_diff(soon) < 5);
    for e in [
        kms.enable_key(k, &me()).unwrap_err(),
        kms.disable_key(k, &me()).unwrap_err(),
        kms.schedule_key_deletion(k, None, &me()).unwrap_err(),
        kms.decrypt(&w, &ctx(), &me()).unwrap_err(),
    ] {
        assert_eq!(e.code(), "KMSInvalidStateException", "{e}");
        assert!(e.to_string().contains("cancel-deletion"), "{e}");
    }
    // Cancel → Disabled, as in KMS; then enable works again.
    let m = kms.cancel_key_deletion(k, &me()).unwrap();
    assert_eq!((m.state, m.deletion_date), (KeyState::Disabled, None));
    kms.enable_key(k, &me()).unwrap();
    kms.decrypt(&w, &ctx(), &me()).unwrap();
    // Disabled keys can be scheduled too.
    kms.disable_key(k, &me()).unwrap();
    kms.schedule_key_deletion(k, None, &me()).unwrap();
    // An EXTERNAL key starts PendingImport, cannot be enabled, and cancels to PendingImport.
    let req = CreateKeyRequest {
        origin: Origin::External,
        ..CreateKeyRequest::default()
    };
    let ext = kms.create_key_with(&req, &me()).unwrap();
    assert_eq!(
        (ext.state, ext.current_version),
        (KeyState::PendingImport, 0)
    );
    assert_eq!(
        kms.enable_key(&ext.key_id, &me()).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    kms.schedule_key_deletion(&ext.key_id, Some(30), &me())
        .unwrap();
    let m = kms.cancel_key_deletion(&ext.key_id, &me()).unwrap();
    assert_eq!(m.state, KeyState::PendingImport);
}

#[test]
fn deletion_window_bounds_and_message() {
    let kms = LocalKms::in_memory_for_tests();
    for bad in [0, 6, 31, 365] {
        let e = kms
            .schedule_key_deletion("alias/default", Some(bad), &me())
            .unwrap_err();
        assert_eq!(e.code(), "ValidationException");
        assert!(e.to_string().contains("pendingWindowInDays"), "{e}");
    }
    let m = kms
        .schedule_key_deletion("alias/default", None, &me())
        .unwrap();
    assert_eq!(m.pending_window_days, Some(30));
}

#[test]
fn ended_window_destroys_the_material_for_good() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks.json");
    let key = crate::secret::Unlock::random_keyfile();
    let kms = LocalKms::create(&p, &key).unwrap();
    let (_, w) = kms
        .generate_data_key("alias/default", &ctx(), &me())
        .unwrap();
    let m = kms
        .schedule_key_deletion("alias/default", Some(7), &me())
        .unwrap();
    let when = m.deletion_date.unwrap();
    assert!(kms.purge_expired(when - 1).unwrap().is_empty());
    let done = kms.purge_expired(when).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    // Gone: NotFound naming the deletion; aliases deleted; material gone from the file.
    let e = kms.decrypt(&w, &ctx(), &me()).unwrap_err();
    assert!(
        matches!(e, KeyError::Deleted { .. }) && e.code() == "NotFoundException",
        "{e}"
    );
    assert!(kms.describe_key("alias/default").is_err());
    assert!(kms.list_aliases(None, &me()).unwrap().is_empty());
    let reopened = crate::keystore::Keystore::open(&p, &key).unwrap();
    assert!(reopened.keys().is_empty());
    assert_eq!(reopened.deleted_keys()[0].key_id, m.key_id);
    // Lazily on open: a window that ended while nothing ran is applied when opened.
    let kms = LocalKms::in_memory_for_tests();
    kms.schedule_key_deletion("alias/default", Some(7), &me())
        .unwrap();
    assert_eq!(kms.maintain(keystore::now_secs() + 8 * DAY).len(), 1);
    assert!(kms.list_keys().is_empty());
}

#[test]
fn aliases_descriptions_and_tags() {
    let kms = LocalKms::in_memory_for_tests();
    let k = kms.create_key("second", &me()).unwrap();
    kms.create_alias("alias/team-a/logs", &k.key_id, &me())
        .unwrap();
    assert!(matches!(
        kms.create_alias("alias/team-a/logs", &k.key_id, &me()),
        Err(KeyError::AlreadyExists(_))
    ));
    for bad in [
        "team",
        "alias/",
        "alias/aws/x",
        "alias/sp ace",
        &format!("alias/{}", "a".repeat(251)),
    ] {
        let e = kms.create_alias(bad, &k.key_id, &me()).unwrap_err();
        assert_eq!(e.code(), "InvalidAliasNameException", "{bad}");
    }
    check_alias_name(&format!("alias/{}", "a".repeat(250))).unwrap();
    assert_eq!(
        kms.update_alias("alias/nope", &k.key_id, &me())
            .unwrap_err()
            .code(),
        "NotFoundException"
    );
    kms.update_alias("alias/team-a/logs", "alias/default", &me())
        .unwrap();
    let def = kms.describe_key("alias/default").unwrap();
    assert_eq!(def.aliases, ["alias/default", "alias/team-a/logs"]);
    assert_eq!(kms.list_aliases(Some(&k.key_id), &me()).unwrap(), []);
    kms.delete_alias("alias/team-a/logs", &me()).unwrap();
    assert_eq!(kms.list_aliases(None, &me()).unwrap().len(), 1);

    let m = kms
        .update_key_description(&k.key_id, "logs", &me())
        .unwrap();
    assert_eq!(m.description, "logs");
    assert!(
        kms.update_key_description(&k.key_id, &"x".repeat(8193), &me())
            .is_err()
    );
    let tags = BTreeMap::from([
        ("team".to_string(), "a".to_string()),
        ("env".into(), "prod".into()),
    ]);
    assert_eq!(kms.tag_key(&k.key_id, &tags, &me()).unwrap().tags, tags);
    let m = kms
        .untag_key(&k.key_id, &["env".into(), "absent".into()], &me())
        .unwrap();
    assert_eq!(m.tags.len(), 1);
    let bad = BTreeMap::from([("aws:x".to_string(), String::new())]);
    assert!(kms.tag_key(&k.key_id, &bad, &me()).is_err());
    let many: BTreeMap<String, String> =
        (0..51).map(|i| (format!("t{i}"), String::new())).collect();
    assert_eq!(
        kms.tag_key(&k.key_id, &many, &me()).unwrap_err().code(),
        "LimitExceededException"
    );
    assert_eq!(
        kms.describe_key(&k.key_id).unwrap().tags.len(),
        1,
        "failed tag rolled back"
    );
}
