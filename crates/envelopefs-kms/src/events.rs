//! What a caller asks the key service to do ([`Op`]), and the single place where every call
//! is recorded in the audit trail (`LocalKms::record`; docs/KEYS.md §Audit).

use std::path::Path;

use crate::audit::{self, AuditEvent};
use crate::keystore::Keystore;
use crate::local::LocalKms;
use crate::{Caller, KeyError};
use envelopefs_format::context::EncryptionContext;

/// What a caller asks to do: the unit of authorization and of audit records. The names are
/// KMS's API actions (`kms:` + the name is the policy action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    GenerateDataKey,
    Decrypt,
    ReEncryptFrom,
    ReEncryptTo,
    DescribeKey,
    ListKeys,
    CreateKey,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    UpdateKeyDescription,
    TagResource,
    UntagResource,
    CreateAlias,
    UpdateAlias,
    DeleteAlias,
    ListAliases,
    RotateKeyOnDemand,
    EnableKeyRotation,
    DisableKeyRotation,
    GetKeyRotationStatus,
    ListKeyRotations,
    GetParametersForImport,
    ImportKeyMaterial,
    DeleteImportedKeyMaterial,
    GetKeyPolicy,
    PutKeyPolicy,
    CreateGrant,
    ListGrants,
    RetireGrant,
    RevokeGrant,
    /// `envelopefs key admin list` (not a KMS event).
    ListAdministrators,
    /// `envelopefs key admin add` (not a KMS event).
    AddAdministrator,
    /// `envelopefs key admin remove` (not a KMS event).
    RemoveAdministrator,
    /// `envelopefs hsm user create` (the crypto officer; not a KMS event).
    CreateCryptoUser,
    /// `envelopefs hsm user delete`.
    DeleteCryptoUser,
    /// `envelopefs hsm user unlock`.
    UnlockCryptoUser,
    /// `envelopefs hsm user share`.
    ShareKey,
    /// `envelopefs hsm user unshare`.
    UnshareKey,
    /// A crypto user's login (password `NAME:...` as the token PIN).
    LoginCryptoUser,
    /// Service events (no caller): automatic rotation.
    RotateKey,
    /// Service event: a deletion window ended and the key's material was destroyed.
    DeleteKey,
    /// Service event: imported material reached its valid-to time.
    DeleteExpiredKeyMaterial,
}

impl Op {
    /// The KMS event name (CloudTrail `eventName`).
    pub(crate) fn name(self) -> &'static str {
        use Op::*;
        match self {
            GenerateDataKey => "GenerateDataKey",
            Decrypt => "Decrypt",
            ReEncryptFrom => "ReEncryptFrom",
            ReEncryptTo => "ReEncryptTo",
            DescribeKey => "DescribeKey",
            ListKeys => "ListKeys",
            CreateKey => "CreateKey",
            EnableKey => "EnableKey",
            DisableKey => "DisableKey",
            ScheduleKeyDeletion => "ScheduleKeyDeletion",
            CancelKeyDeletion => "CancelKeyDeletion",
            UpdateKeyDescription => "UpdateKeyDescription",
            TagResource => "TagResource",
            UntagResource => "UntagResource",
            CreateAlias => "CreateAlias",
            UpdateAlias => "UpdateAlias",
            DeleteAlias => "DeleteAlias",
            ListAliases => "ListAliases",
            RotateKeyOnDemand => "RotateKeyOnDemand",
            EnableKeyRotation => "EnableKeyRotation",
            DisableKeyRotation => "DisableKeyRotation",
            GetKeyRotationStatus => "GetKeyRotationStatus",
            ListKeyRotations => "ListKeyRotations",
            GetParametersForImport => "GetParametersForImport",
            ImportKeyMaterial => "ImportKeyMaterial",
            DeleteImportedKeyMaterial => "DeleteImportedKeyMaterial",
            GetKeyPolicy => "GetKeyPolicy",
            PutKeyPolicy => "PutKeyPolicy",
            CreateGrant => "CreateGrant",
            ListGrants => "ListGrants",
            RetireGrant => "RetireGrant",
            RevokeGrant => "RevokeGrant",
            ListAdministrators => "ListAdministrators",
            AddAdministrator => "AddAdministrator",
            RemoveAdministrator => "RemoveAdministrator",
            CreateCryptoUser => "CreateCryptoUser",
            DeleteCryptoUser => "DeleteCryptoUser",
            UnlockCryptoUser => "UnlockCryptoUser",
            ShareKey => "ShareKey",
            UnshareKey => "UnshareKey",
            LoginCryptoUser => "LoginCryptoUser",
            RotateKey => "RotateKey",
            DeleteKey => "DeleteKey",
            DeleteExpiredKeyMaterial => "DeleteExpiredKeyMaterial",
        }
    }

    /// The policy action (`kms:` + name).
    pub(crate) fn action(self) -> String {
        format!("kms:{}", self.name())
    }

    /// Whether the event is done by the service itself rather than asked for by a caller.
    pub(crate) fn is_service_event(self) -> bool {
        matches!(
            self,
            Op::RotateKey | Op::DeleteKey | Op::DeleteExpiredKeyMaterial
        )
    }
}

/// What one audit record says besides the caller and the result.
#[derive(Clone, Debug, Default)]
pub(super) struct Event<'a> {
    /// The key as the caller named it, or its id once resolved.
    pub key: Option<String>,
    /// The key-material version involved.
    pub version: Option<u32>,
    /// The encryption context of a crypto call.
    pub context: Option<&'a EncryptionContext>,
    /// Request parameters worth recording (never secrets).
    pub detail: Option<String>,
    /// The destination key and version (ReEncrypt).
    pub destination: Option<(String, Option<u32>)>,
    /// The policy statement or grant that allowed the call.
    pub authorized_by: Option<String>,
}

impl<'a> Event<'a> {
    pub(super) fn key(key: impl ToString) -> Self {
        Event {
            key: Some(key.to_string()),
            ..Event::default()
        }
    }
}

impl LocalKms {
    /// The single place where every call is recorded in the audit trail: event name, caller,
    /// key and version, encryption context, what allowed it or the error; never key material.
    /// A failed append is logged (the call itself is not failed).
    pub(super) fn record(
        &self,
        op: Op,
        ev: Event<'_>,
        caller: &Caller,
        result: Result<(), &KeyError>,
    ) {
        match result {
            Ok(()) => log::debug!("{} {:?} by uid {}: ok", op.name(), ev.key, caller.uid),
            Err(e) => log::debug!(
                "{} {:?} by uid {}: {}",
                op.name(),
                ev.key,
                caller.uid,
                e.code()
            ),
        }
        let Some(log) = &self.audit else { return };
        let name = match op {
            Op::ReEncryptFrom | Op::ReEncryptTo => "ReEncrypt",
            _ => op.name(),
        };
        let mut a = AuditEvent::new(name, caller);
        if let Some(k) = ev.key {
            a = a.key(k, ev.version);
        }
        if let Some((k, v)) = ev.destination {
            a = a.destination(k, v);
        }
        if let Some(c) = ev.context {
            a = a.context(c);
        }
        if let Some(d) = ev.detail {
            a = a.param("details", d);
        }
        if op.is_service_event() {
            a = a.param("invokedBy", "envelopefs key service");
        }
        if let Some(by) = ev.authorized_by {
            a = a.authorized_by(by);
        }
        if let Err(e) = result {
            a = a.error(e);
        }
        if let Err(e) = log.append(a) {
            log::error!(
                "cannot append to the audit log {}: {e}",
                log.dir().display()
            );
        }
    }
}

impl LocalKms {
    /// Records a use of a customer-provided key (SSE-C): the event, the key's public id as
    /// `customerKeyId`, the file's context and the refusal; never the key.
    pub(crate) fn record_customer(
        &self,
        event: &str,
        key_id: &str,
        context: Option<&EncryptionContext>,
        caller: &Caller,
        error: Option<&KeyError>,
    ) {
        log::debug!("{event} customer key {key_id} by uid {}", caller.uid);
        let Some(log) = &self.audit else { return };
        let mut a = AuditEvent::new(event, caller).param("customerKeyId", key_id);
        if let Some(c) = context {
            a = a.context(c);
        }
        if let Some(e) = error {
            a = a.error(e);
        }
        if let Err(e) = log.append(a) {
            log::error!(
                "cannot append to the audit log {}: {e}",
                log.dir().display()
            );
        }
    }

    /// Records the audit trail's checkpoint in the keystore body about to be saved (every
    /// keystore write goes through `mutate_store`, which calls this): the head of the chain,
    /// fsynced, as the trail's checkpoint file now says. The recorded head only moves forward
    /// along the same chain: if the trail no longer holds it (its tail was cut, or it was
    /// replaced), it stays, so `audit verify` keeps failing, and the trail takes no more
    /// checkpoints. Problems are logged; the keystore write goes on.
    pub(super) fn stamp_audit_checkpoint(&self, ks: &mut Keystore) {
        let Some(log) = &self.audit else { return };
        let head = match log.checkpoint() {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                log::warn!(
                    "cannot take an audit checkpoint in {}: {e}; the keystore keeps the last one",
                    log.dir().display()
                );
                return;
            }
        };
        let held = match ks.audit_checkpoint() {
            None => true,
            Some(old) if old == head => return,
            Some(old) if old.seq > head.seq => false,
            Some(old) => audit::holds(log.dir(), &old).unwrap_or_else(|e| {
                log::warn!("cannot read the audit trail {}: {e}", log.dir().display());
                false
            }),
        };
        if held {
            ks.set_audit_checkpoint(&head);
        } else {
            log.mark_diverged(format!(
                "audit trail {}: it does not hold the head the keystore recorded (seq {}): \
                 records were deleted or the trail replaced; run `envelopefs audit verify`",
                log.dir().display(),
                ks.audit_checkpoint().map_or(0, |c| c.seq)
            ));
        }
    }

    /// After the trail is opened: a keystore checkpoint beyond the trail's end means records
    /// were deleted (or the directory); say so now and take no checkpoints that would hide it.
    pub(super) fn check_audit_against_keystore(&self) {
        let Some(log) = &self.audit else { return };
        let Some(cp) = self.read().audit_checkpoint() else {
            return;
        };
        let last = log.next_seq() - 1;
        if cp.seq > last {
            log.mark_diverged(format!(
                "audit trail {}: the keystore's checkpoint says seq {} but the trail ends at \
                 seq {last}: records were deleted or the trail replaced; run `envelopefs audit \
                 verify`",
                log.dir().display(),
                cp.seq
            ));
        }
    }
}

/// A service that goes away takes a last checkpoint, so every command's records are covered
/// (rewrap, init and the like included) without each caller remembering to sync.
impl Drop for LocalKms {
    fn drop(&mut self) {
        if let Some(log) = &self.audit
            && let Err(e) = log.sync()
        {
            log::warn!(
                "cannot flush the audit trail {} or take its checkpoint: {e}",
                log.dir().display()
            );
        }
    }
}

/// After a failed unlock of the keystore at `keystore` (a wrong passphrase or key file, which
/// cannot compute the audit key): leaves a note in its audit directory for the next
/// successful unlock to move into the trail (`crate::audit::unlocks`). Other errors are
/// not unlock attempts and leave none. Never fails: a note that cannot be written is logged.
pub fn note_failed_unlock(keystore: &Path, e: &KeyError) {
    if !matches!(e, KeyError::WrongPassphrase { .. }) {
        return;
    }
    let dir = audit_dir(keystore);
    if let Err(err) = audit::note_failed_unlock(&dir, &Caller::current(), e) {
        log::warn!(
            "cannot note this failed unlock in {}: {err}; it is not recorded",
            dir.display()
        );
    }
}

/// The audit trail directory of a keystore: `<keystore path>.audit/`.
pub fn audit_dir(keystore: &Path) -> std::path::PathBuf {
    let mut name = keystore.file_name().unwrap_or_default().to_owned();
    name.push(".audit");
    keystore.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyService;
    use crate::audit;
    use crate::keystore::Keystore;
    use crate::secret::Unlock;
    use envelopefs_format::context::hex;

    const ALICE: Caller = Caller {
        uid: 4242,
        gid: 4242,
        pid: 0,
    };

    fn ctx() -> EncryptionContext {
        EncryptionContext::for_file("vol-1", &[5; 16])
    }

    fn keyfile_copy(u: &Unlock) -> Unlock {
        let Unlock::KeyFile(k) = u else { panic!() };
        Unlock::KeyFile(zeroize::Zeroizing::new(**k))
    }

    #[test]
    fn allowed_and_denied_calls_are_audited_without_key_material() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let unlock = Unlock::random_keyfile();
        let kms = LocalKms::create(&p, &unlock).unwrap();
        let me = Caller::current();
        let (dek, w) = kms.generate_data_key("alias/default", &ctx(), &me).unwrap();
        kms.decrypt(&w, &ctx(), &ALICE).unwrap();
        let admin_only = r#"{"Statement": [{"Effect": "Allow", "Principal": {"Admin": true}, "Action": "kms:*"}]}"#;
        kms.put_key_policy("alias/default", admin_only, &me)
            .unwrap();
        assert!(kms.decrypt(&w, &ctx(), &ALICE).is_err());
        assert!(kms.disable_key("alias/default", &ALICE).is_err());
        assert!(
            kms.schedule_key_deletion("alias/default", Some(3), &me)
                .is_err()
        );
        kms.sync_audit().unwrap();

        let dir = audit_dir(&p);
        let recs = audit::read_all(&dir).unwrap();
        let names: Vec<&str> = recs.iter().map(|r| r.event_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "GenerateDataKey",
                "Decrypt",
                "PutKeyPolicy",
                "Decrypt",
                "DisableKey",
                "ScheduleKeyDeletion"
            ]
        );
        let q = &recs[0].request_parameters;
        assert_eq!(
            (q.key_id.as_deref(), q.key_version),
            (Some(w.key_id.to_string().as_str()), Some(1))
        );
        assert_eq!(q.encryption_context.len(), 2);
        assert!(recs[0].error_code.is_none() && recs[1].error_code.is_none());
        assert_eq!(recs[1].user_identity.uid, 4242);
        assert!(
            recs[1].additional_event_data.is_some(),
            "records what allowed it"
        );
        for r in &recs[3..5] {
            assert_eq!(
                r.error_code.as_deref(),
                Some("AccessDeniedException"),
                "{r:?}"
            );
        }
        assert_eq!(recs[5].error_code.as_deref(), Some("ValidationException"));
        // Never key material: neither the data key nor the wrapped blob appears anywhere.
        let text: String = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        assert!(!text.contains(&hex(dek.expose_secret())) && !text.contains(&hex(&w.blob)));
        let key = Keystore::open(&p, &keyfile_copy(&unlock))
            .unwrap()
            .audit_key();
        assert_eq!(audit::verify(&dir, &key).unwrap().records, 6);
    }

    /// Issue 11 item 5: the keystore body vouches for the trail's head, so cutting its tail or
    /// deleting it is noticed, and a service that finds the trail behind it does not move it.
    #[test]
    fn the_keystore_records_the_trail_head_and_keeps_it_when_the_trail_is_deleted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let unlock = Unlock::random_keyfile();
        let kms = LocalKms::create(&p, &unlock).unwrap();
        let recorded = || Keystore::open(&p, &keyfile_copy(&unlock)).unwrap();
        assert_eq!(recorded().audit_checkpoint().map(|c| c.seq), Some(0));
        let me = Caller::current();
        for _ in 0..3 {
            kms.generate_data_key("alias/default", &ctx(), &me).unwrap();
        }
        kms.rotate("alias/default", &me).unwrap();
        kms.sync_audit().unwrap();
        drop(kms);
        let ks = recorded();
        let cp = ks.audit_checkpoint().unwrap();
        assert_eq!(cp.seq, 3, "the head before the rotation's own record");
        let key = ks.audit_key();
        let r = audit::verify_with_keystore(&audit_dir(&p), &key, Some(&cp)).unwrap();
        assert_eq!((r.last_seq, r.keystore_checkpoint_seq), (4, Some(3)));

        std::fs::remove_dir_all(audit_dir(&p)).unwrap();
        let kms = LocalKms::open(&p, &keyfile_copy(&unlock)).unwrap();
        for _ in 0..5 {
            kms.generate_data_key("alias/default", &ctx(), &me).unwrap();
        }
        kms.rotate("alias/default", &me).unwrap();
        kms.sync_audit().unwrap();
        assert_eq!(
            recorded().audit_checkpoint(),
            Some(cp.clone()),
            "a new trail does not replace the keystore's checkpoint"
        );
        let e = audit::verify_with_keystore(&audit_dir(&p), &key, Some(&cp)).unwrap_err();
        // The new trail has no checkpoint file: its service took none over the deleted one.
        assert!(
            e.reason
                .contains("missing, but the keystore says the trail reached seq 3"),
            "{e}"
        );
    }

    /// Commands that never call `sync_audit` (rewrap, init) still leave their records under
    /// a checkpoint: the service takes one when it is dropped.
    #[test]
    fn dropping_the_service_takes_a_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let unlock = Unlock::random_keyfile();
        let kms = LocalKms::create(&p, &unlock).unwrap();
        kms.generate_data_key("alias/default", &ctx(), &Caller::current())
            .unwrap();
        drop(kms);
        let key = Keystore::open(&p, &keyfile_copy(&unlock))
            .unwrap()
            .audit_key();
        let cp = audit::read_checkpoint(&audit_dir(&p), &key)
            .unwrap()
            .unwrap();
        assert_eq!(cp.seq, 1);
    }

    /// Issue 11 item 5: a wrong passphrase or key file cannot extend the chain, but the next
    /// successful unlock records it.
    #[test]
    fn failed_unlocks_are_recorded_by_the_next_unlock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let unlock = Unlock::random_keyfile();
        drop(LocalKms::create(&p, &unlock).unwrap());
        for _ in 0..2 {
            let e = LocalKms::open(&p, &Unlock::random_keyfile()).unwrap_err();
            assert!(matches!(e, KeyError::WrongPassphrase { .. }), "{e}");
        }
        let kms = LocalKms::open(&p, &keyfile_copy(&unlock)).unwrap();
        kms.sync_audit().unwrap();
        let recs = audit::read_all(&audit_dir(&p)).unwrap();
        let failed: Vec<_> = recs
            .iter()
            .filter(|r| r.event_name == audit::FAILED_UNLOCK_EVENT)
            .collect();
        assert_eq!(failed.len(), 2, "{recs:?}");
        assert_eq!(failed[0].user_identity.uid, Caller::current().uid);
        assert_eq!(
            failed[0].error_code.as_deref(),
            Some("AccessDeniedException")
        );
        let ks = Keystore::open(&p, &keyfile_copy(&unlock)).unwrap();
        let r = audit::verify_with_keystore(
            &audit_dir(&p),
            &ks.audit_key(),
            ks.audit_checkpoint().as_ref(),
        );
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    /// Issue 11 item 5: every administrative command a non-administrator tries is refused and
    /// recorded as AccessDeniedException.
    #[test]
    fn denied_admin_commands_are_recorded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let kms = LocalKms::create(&p, &Unlock::random_keyfile()).unwrap();
        let me = Caller::current();
        assert_ne!(me.uid, ALICE.uid, "this test needs to run as another uid");
        let grant = kms
            .create_grant(
                "alias/default",
                crate::policy::Grant::new(
                    crate::policy::PrincipalSpec::user("4343"),
                    &["Decrypt"],
                    None,
                    None,
                    None,
                )
                .unwrap(),
                &me,
            )
            .unwrap();
        let k = "alias/default";
        const ADMIN_ONLY: &str = r#"{"Statement": [{"Effect": "Allow", "Principal": {"Admin": true}, "Action": "kms:*"}]}"#;
        let tries: Vec<(&str, Result<(), KeyError>)> = vec![
            ("CreateKey", kms.create_key("x", &ALICE).map(drop)),
            ("DisableKey", kms.disable_key(k, &ALICE).map(drop)),
            ("EnableKey", kms.enable_key(k, &ALICE).map(drop)),
            (
                "ScheduleKeyDeletion",
                kms.schedule_key_deletion(k, Some(7), &ALICE).map(drop),
            ),
            (
                "CancelKeyDeletion",
                kms.cancel_key_deletion(k, &ALICE).map(drop),
            ),
            ("CreateAlias", kms.create_alias("alias/x", k, &ALICE)),
            ("DeleteAlias", kms.delete_alias(k, &ALICE)),
            ("RotateKeyOnDemand", kms.rotate(k, &ALICE).map(drop)),
            ("PutKeyPolicy", kms.put_key_policy(k, ADMIN_ONLY, &ALICE)),
            ("RevokeGrant", kms.revoke_grant(k, &grant, &ALICE)),
            ("RetireGrant", kms.retire_grant(&grant, &ALICE).map(drop)),
        ];
        kms.sync_audit().unwrap();
        let recs = audit::read_all(&audit_dir(&p)).unwrap();
        for (name, result) in tries {
            let e = result.expect_err(name);
            assert_eq!(e.code(), "AccessDeniedException", "{name}: {e}");
            let found = recs.iter().any(|r| {
                r.event_name == name
                    && r.user_identity.uid == ALICE.uid
                    && r.error_code.as_deref() == Some("AccessDeniedException")
            });
            assert!(
                found,
                "no denied {name} record by uid {}: {recs:?}",
                ALICE.uid
            );
        }
    }

    /// A mount daemon and the CLI write the same trail from two processes. This needs the
    /// audit log to re-read the chain head written by the other process before appending.
    #[test]
    fn two_services_on_one_keystore_keep_one_chain() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let unlock = Unlock::random_keyfile();
        let daemon = LocalKms::create(&p, &unlock).unwrap();
        let me = Caller::current();
        daemon
            .generate_data_key("alias/default", &ctx(), &me)
            .unwrap();
        let cli = LocalKms::open(&p, &keyfile_copy(&unlock)).unwrap();
        cli.rotate("alias/default", &me).unwrap();
        cli.sync_audit().unwrap();
        drop(cli);
        daemon
            .generate_data_key("alias/default", &ctx(), &me)
            .unwrap();
        daemon.sync_audit().unwrap();
        let key = Keystore::open(&p, &keyfile_copy(&unlock))
            .unwrap()
            .audit_key();
        let r = audit::verify(&audit_dir(&p), &key);
        assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
