//! Key policies and grants of [`LocalKms`] as stored in each key record (KMS GetKeyPolicy,
//! PutKeyPolicy, CreateGrant, ListGrants, RetireGrant, RevokeGrant). The documents and their
//! evaluation are [`crate::policy`]'s; every operation is checked by
//! `LocalKms::authorize` (docs/KEYS.md §Access control).

use crate::local::{DEFAULT_POLICY, Event, LocalKms, Op};
use crate::policy::{self, Grant, KeyPolicy, MAX_GRANTS_PER_KEY};
use crate::principal::Principal;
use crate::{Caller, KeyError};

/// Turns the policy module's `InvalidArgument("MalformedPolicyDocument: …")` into KMS's
/// MalformedPolicyDocumentException.
fn malformed(e: KeyError) -> KeyError {
    match e {
        KeyError::InvalidArgument(m) => match m.strip_prefix("MalformedPolicyDocument: ") {
            Some(rest) => KeyError::MalformedPolicy(rest.to_owned()),
            None => KeyError::InvalidArgument(m),
        },
        other => other,
    }
}

impl LocalKms {
    /// The key's policy document (the default policy if none was put).
    pub fn get_key_policy(&self, key: &str, caller: &Caller) -> Result<KeyPolicy, KeyError> {
        self.view(Op::GetKeyPolicy, key, caller, |ks, id| {
            let rec = ks.key(&id).expect("resolved");
            Ok(rec.policy.clone().unwrap_or_else(|| DEFAULT_POLICY.clone()))
        })
    }

    /// Replaces the key's policy (KMS PutKeyPolicy) after checking the document and that it
    /// would still let `caller` change it (KMS's lockout safety check).
    pub fn put_key_policy(&self, key: &str, json: &str, caller: &Caller) -> Result<(), KeyError> {
        let new = match policy::parse_policy(json).map_err(malformed) {
            Ok(p) => p,
            Err(e) => {
                self.record(Op::PutKeyPolicy, Event::key(key), caller, Err(&e));
                return Err(e);
            }
        };
        let detail = Some(format!("{} statements", new.statement.len()));
        self.mutate(Op::PutKeyPolicy, key, caller, detail, |ks, id| {
            // After authorization (in `mutate`), as KMS: the safety check comes second.
            let who = Principal::from_caller(caller, ks.admins());
            policy::check_lockout(&new, &who).map_err(malformed)?;
            ks.record_mut(&id)?.policy = Some(new.clone());
            Ok(())
        })
    }

    /// Adds a grant to the key (KMS CreateGrant). Allowed when the key policy allows
    /// `kms:CreateGrant`, or a grant of the caller's allows it and the new grant is no wider.
    /// Returns the grant id.
    pub fn create_grant(
        &self,
        key: &str,
        grant: Grant,
        caller: &Caller,
    ) -> Result<String, KeyError> {
        let detail = Some(format!(
            "{} for {} operations {:?}",
            grant.label(),
            grant.grantee,
            grant.operations
        ));
        self.mutate(Op::CreateGrant, key, caller, detail, |ks, id| {
            grant.validate()?;
            let who = Principal::from_caller(caller, ks.admins());
            let rec = ks.record_mut(&id)?;
            let policy = rec.policy.as_ref().unwrap_or(&DEFAULT_POLICY);
            policy::evaluate_create_grant(policy, &rec.grants, &who, &grant)
                .into_result(&id.to_string())?;
            if rec.grants.len() >= MAX_GRANTS_PER_KEY {
                return Err(KeyError::LimitExceeded(format!(
                    "key {id} already has {MAX_GRANTS_PER_KEY} grants; retire or revoke some"
                )));
            }
            rec.grants.push(grant.clone());
            Ok(grant.grant_id.clone())
        })
    }

    /// The key's grants (KMS ListGrants).
    pub fn list_grants(&self, key: &str, caller: &Caller) -> Result<Vec<Grant>, KeyError> {
        self.view(Op::ListGrants, key, caller, |ks, id| {
            Ok(ks.key(&id).expect("resolved").grants.clone())
        })
    }

    /// Retires a grant by its id, on whichever key holds it (KMS RetireGrant): allowed for its
    /// retiring principal, its grantee if it lists RetireGrant, or whom the key policy allows
    /// `kms:RetireGrant`. Returns the key id.
    pub fn retire_grant(&self, grant_id: &str, caller: &Caller) -> Result<String, KeyError> {
        self.refresh_quietly();
        let key = std::cell::RefCell::new(None);
        let result = self.mutate_store(|ks| {
            let who = Principal::from_caller(caller, ks.admins());
            let rec = ks
                .keys()
                .iter()
                .find(|r| r.grants.iter().any(|g| g.grant_id == grant_id))
                .ok_or_else(|| KeyError::InvalidGrantId(format!("no key has grant {grant_id}")))?;
            let id = rec.key_id();
            *key.borrow_mut() = Some(id.to_string());
            let grant = rec
                .grants
                .iter()
                .find(|g| g.grant_id == grant_id)
                .expect("found");
            let policy = rec.policy.as_ref().unwrap_or(&DEFAULT_POLICY);
            let ctx = Default::default();
            let by_policy = policy::evaluate(
                policy,
                &rec.grants,
                &who,
                policy::action::RETIRE_GRANT,
                &ctx,
            );
            if !grant.may_retire(&who) && !by_policy.is_allowed() {
                return Err(KeyError::AccessDenied {
                    key_id: id.to_string(),
                    reason: format!(
                        "{} may retire {} only as its retiring principal, as a grantee allowed \
                         RetireGrant, or if the key policy allows kms:RetireGrant",
                        who.label(),
                        grant.label()
                    ),
                });
            }
            ks.record_mut(&id)?
                .grants
                .retain(|g| g.grant_id != grant_id);
            Ok(id.to_string())
        });
        let ev = Event {
            key: key.into_inner(),
            detail: Some(format!("grant {grant_id}")),
            ..Event::default()
        };
        self.record(Op::RetireGrant, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    /// Revokes a grant of the key (KMS RevokeGrant; the key policy must allow
    /// `kms:RevokeGrant`, by default the administrator only).
    pub fn revoke_grant(&self, key: &str, grant_id: &str, caller: &Caller) -> Result<(), KeyError> {
        let detail = Some(format!("grant {grant_id}"));
        self.mutate(Op::RevokeGrant, key, caller, detail, |ks, id| {
            let rec = ks.record_mut(&id)?;
            let before = rec.grants.len();
            rec.grants.retain(|g| g.grant_id != grant_id);
            if rec.grants.len() == before {
                return Err(KeyError::InvalidGrantId(format!(
                    "key {id} has no grant {grant_id}"
                )));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyService;
    use crate::policy::{GrantConstraints, PrincipalSpec};
    use envelopefs_format::context::EncryptionContext;

    /// The administrator (this process).
    fn admin() -> Caller {
        Caller::current()
    }

    /// Another local user, not the administrator (pid 0: no /proc groups lookup).
    const ALICE: Caller = Caller {
        uid: 4242,
        gid: 4242,
        pid: 0,
    };

    fn ctx(file: u8) -> EncryptionContext {
        EncryptionContext::for_file("vol-1", &[file; 16])
    }

    const ADMIN_ONLY: &str = r#"{"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable administrator", "Effect": "Allow", "Principal": {"Admin": true}, "Action": "kms:*"}]}"#;

    #[test]
    fn default_policy_lets_users_use_but_not_manage() {
        let kms = LocalKms::in_memory_for_tests();
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ALICE)
            .unwrap();
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ALICE).unwrap().expose_secret(),
            dek.expose_secret()
        );
        let e = kms.disable_key("alias/default", &ALICE).unwrap_err();
        assert!(
            matches!(&e, KeyError::AccessDenied { reason, .. } if reason.contains("kms:DisableKey")),
            "{e}"
        );
        assert_eq!(e.code(), "AccessDeniedException");
        assert_eq!(
            kms.create_key("x", &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        assert_eq!(
            kms.describe_key("alias/default").unwrap().state,
            crate::KeyState::Enabled
        );
    }

    #[test]
    fn policy_denial_is_access_denied_and_lockout_is_refused() {
        let kms = LocalKms::in_memory_for_tests();
        let (_, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ALICE)
            .unwrap();
        let deny = r#"{"Statement": [
            {"Sid": "Enable administrator", "Effect": "Allow", "Principal": {"Admin": true}, "Action": "kms:*"},
            {"Effect": "Allow", "Principal": "*", "Action": ["kms:Decrypt", "kms:GenerateDataKey*"]},
            {"Sid": "NotAlice", "Effect": "Deny", "Principal": {"User": "4242"}, "Action": "kms:Decrypt"}]}"#;
        kms.put_key_policy("alias/default", deny, &admin()).unwrap();
        let e = kms.decrypt(&w, &ctx(1), &ALICE).unwrap_err();
        assert!(
            matches!(&e, KeyError::AccessDenied { reason, .. } if reason.contains("NotAlice")),
            "{e}"
        );
        kms.generate_data_key("alias/default", &ctx(1), &ALICE)
            .unwrap();
        kms.decrypt(&w, &ctx(1), &admin()).unwrap();
        let got = kms.get_key_policy("alias/default", &admin()).unwrap();
        assert_eq!(got.statement.len(), 3);
        // A policy that would lock the administrator out, or is malformed, is refused.
        let lockout =
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt"}]}"#;
        let e = kms
            .put_key_policy("alias/default", lockout, &admin())
            .unwrap_err();
        assert_eq!(e.code(), "MalformedPolicyDocumentException", "{e}");
        let e = kms
            .put_key_policy("alias/default", "{\"Statement\": 3}", &admin())
            .unwrap_err();
        assert_eq!(e.code(), "MalformedPolicyDocumentException", "{e}");
        assert_eq!(
            kms.put_key_policy("alias/default", ADMIN_ONLY, &ALICE)
                .unwrap_err()
                .code(),
            "AccessDeniedException"
        );
    }

    #[test]
    fn grant_allows_until_revoked_or_retired() {
        let kms = LocalKms::in_memory_for_tests();
        kms.put_key_policy("alias/default", ADMIN_ONLY, &admin())
            .unwrap();
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx(1), &admin())
            .unwrap();
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        let grant = Grant::new(
            PrincipalSpec::user("4242"),
            &["Decrypt", "GenerateDataKey"],
            None,
            None,
            Some("alice".into()),
        )
        .unwrap();
        let gid = kms.create_grant("alias/default", grant, &admin()).unwrap();
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ALICE).unwrap().expose_secret(),
            dek.expose_secret()
        );
        kms.generate_data_key("alias/default", &ctx(2), &ALICE)
            .unwrap();
        assert_eq!(kms.list_grants("alias/default", &admin()).unwrap().len(), 1);
        // Alice may not revoke (admin only by policy), nor retire without RetireGrant.
        assert_eq!(
            kms.revoke_grant("alias/default", &gid, &ALICE)
                .unwrap_err()
                .code(),
            "AccessDeniedException"
        );
        assert_eq!(
            kms.retire_grant(&gid, &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        kms.revoke_grant("alias/default", &gid, &admin()).unwrap();
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        assert_eq!(
            kms.revoke_grant("alias/default", &gid, &admin())
                .unwrap_err()
                .code(),
            "InvalidGrantIdException"
        );

        // A constrained grant, retired by its retiring principal.
        let only_file_1 = GrantConstraints {
            encryption_context_subset: Some(
                ctx(1)
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            encryption_context_equals: None,
        };
        let grant = Grant::new(
            PrincipalSpec::user("4242"),
            &["Decrypt"],
            Some(PrincipalSpec::user("4242")),
            Some(only_file_1),
            None,
        )
        .unwrap();
        let gid = kms.create_grant("alias/default", grant, &admin()).unwrap();
        kms.decrypt(&w, &ctx(1), &ALICE).unwrap();
        let (_, w2) = kms
            .generate_data_key("alias/default", &ctx(2), &admin())
            .unwrap();
        assert_eq!(
            kms.decrypt(&w2, &ctx(2), &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        assert_eq!(
            kms.retire_grant(&gid, &ALICE).unwrap(),
            kms.describe_key("alias/default").unwrap().key_id
        );
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ALICE).unwrap_err().code(),
            "AccessDeniedException"
        );
        assert_eq!(
            kms.retire_grant(&gid, &admin()).unwrap_err().code(),
            "InvalidGrantIdException"
        );
    }
}
