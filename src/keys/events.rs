//! What a caller asks the key service to do ([`Op`]), and the single place where every call
//! is recorded in the audit trail (`LocalKms::record`; docs/KEYS.md §Audit).

use std::path::Path;

use crate::format::context::EncryptionContext;
use crate::keys::audit::AuditEvent;
use crate::keys::local::LocalKms;
use crate::keys::{Caller, KeyError};

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
    /// Service events (no caller): automatic rotation.
    RotateKey,
    /// Service event: a deletion window ended and the key's material was destroyed.
    DeleteKey,
    /// Service event: imported material reached its valid-to time.
    DeleteExpiredKeyMaterial,
}

impl Op {
    /// The KMS event name (CloudTrail `eventName`).
    pub fn name(self) -> &'static str {
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
            RotateKey => "RotateKey",
            DeleteKey => "DeleteKey",
            DeleteExpiredKeyMaterial => "DeleteExpiredKeyMaterial",
        }
    }

    /// The policy action (`kms:` + name).
    pub fn action(self) -> String {
        format!("kms:{}", self.name())
    }

    /// Whether the event is done by the service itself rather than asked for by a caller.
    pub fn is_service_event(self) -> bool {
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

/// The audit trail directory of a keystore: `<keystore path>.audit/`.
pub fn audit_dir(keystore: &Path) -> std::path::PathBuf {
    let mut name = keystore.file_name().unwrap_or_default().to_owned();
    name.push(".audit");
    keystore.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::context::hex;
    use crate::keys::KeyService;
    use crate::keys::audit;
    use crate::keys::keystore::Keystore;
    use crate::keys::secret::Unlock;

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
