//! Grants: standing permissions on one CMK for one grantee, with optional encryption-context
//! constraints, as in AWS KMS (the grant part of the parent module's documentation).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    GRANT_OPERATIONS, MAX_CONSTRAINT_PAIRS, MAX_CONSTRAINT_VALUE_CHARS, MAX_GRANT_NAME_CHARS,
    PrincipalSpec, UNCONSTRAINED_GRANT_OPERATIONS,
};
use crate::KeyError;
use crate::principal::Principal;
use envelopefs_format::context::{EncryptionContext, hex};

/// Encryption-context constraints of a grant (at most one of the two, as in KMS).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantConstraints {
    /// Every pair listed must be in the request's context (which may have more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
    /// The request's context must be exactly these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
}

/// True when `ctx` has a pair whose key equals `k` ignoring ASCII case and whose value is `v`.
fn ctx_has_pair(ctx: &EncryptionContext, k: &str, v: &str) -> bool {
    ctx.iter()
        .any(|(ck, cv)| ck.eq_ignore_ascii_case(k) && cv == v)
}

/// True when every pair of `sub` is in `sup` (keys ignoring ASCII case, values exactly).
fn map_contains(sup: &BTreeMap<String, String>, sub: &BTreeMap<String, String>) -> bool {
    sub.iter().all(|(k, v)| {
        sup.iter()
            .any(|(sk, sv)| sk.eq_ignore_ascii_case(k) && sv == v)
    })
}

impl GrantConstraints {
    /// True when `ctx` satisfies the constraints.
    pub(crate) fn satisfied_by(&self, ctx: &EncryptionContext) -> bool {
        if let Some(sub) = &self.encryption_context_subset
            && !sub.iter().all(|(k, v)| ctx_has_pair(ctx, k, v))
        {
            return false;
        }
        if let Some(eq) = &self.encryption_context_equals {
            let all_listed = eq.iter().all(|(k, v)| ctx_has_pair(ctx, k, v));
            let nothing_else = ctx.iter().all(|(ck, cv)| {
                eq.iter()
                    .any(|(k, v)| ck.eq_ignore_ascii_case(k) && cv == v)
            });
            if !(all_listed && nothing_else) {
                return false;
            }
        }
        true
    }

    /// True when every context that satisfies `self` also satisfies `parent`, i.e. `self` is
    /// at least as strict (what KMS requires of a grant made through a grant's CreateGrant).
    pub(crate) fn at_least_as_strict_as(&self, parent: Option<&GrantConstraints>) -> bool {
        let Some(parent) = parent else { return true };
        let (mine_sub, mine_eq) = (
            self.encryption_context_subset.as_ref(),
            self.encryption_context_equals.as_ref(),
        );
        if let Some(p_eq) = &parent.encryption_context_equals {
            // Only the very same context satisfies an equals constraint.
            return mine_eq.is_some_and(|e| map_contains(e, p_eq) && map_contains(p_eq, e));
        }
        if let Some(p_sub) = &parent.encryption_context_subset {
            return mine_eq.is_some_and(|e| map_contains(e, p_sub))
                || mine_sub.is_some_and(|s| map_contains(s, p_sub));
        }
        true
    }

    fn validate(&self) -> Result<(), String> {
        if self.encryption_context_subset.is_some() && self.encryption_context_equals.is_some() {
            return Err("a grant may have an encryption_context_subset or an \
                 encryption_context_equals constraint, not both"
                .into());
        }
        for map in [
            &self.encryption_context_subset,
            &self.encryption_context_equals,
        ]
        .into_iter()
        .flatten()
        {
            if map.is_empty() || map.len() > MAX_CONSTRAINT_PAIRS {
                return Err(format!(
                    "a grant constraint must list 1 to {MAX_CONSTRAINT_PAIRS} encryption \
                     context pairs"
                ));
            }
            if let Some((k, _)) = map
                .iter()
                .find(|(k, v)| k.is_empty() || v.chars().count() > MAX_CONSTRAINT_VALUE_CHARS)
            {
                return Err(format!(
                    "grant constraint pair {k:?}: keys must be non-empty and values at most \
                     {MAX_CONSTRAINT_VALUE_CHARS} characters"
                ));
            }
        }
        Ok(())
    }
}

/// A grant on one key. Stored by the key service beside the key (snake_case JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// 64 lowercase hex digits ([`new_grant_id`]).
    pub grant_id: String,
    /// Optional friendly name (1–256 of `[a-zA-Z0-9:/_-]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The one user or group the grant is for.
    pub grantee: PrincipalSpec,
    /// Who may retire the grant besides a grantee holding `RetireGrant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<PrincipalSpec>,
    /// Grant operations ([`GRANT_OPERATIONS`]).
    pub operations: Vec<String>,
    /// Encryption-context constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
    /// Seconds since the Unix epoch.
    pub creation_date: u64,
}

/// A fresh random grant id: 32 random bytes as 64 lowercase hex digits.
///
/// # Panics
/// If the operating system cannot provide randomness.
pub fn new_grant_id() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the system random generator failed");
    hex(&b)
}

impl Grant {
    /// Builds and checks a new grant: operation names are accepted in any case and with or
    /// without `kms:`, and stored canonically without duplicates; empty constraints are
    /// dropped. Errors are `InvalidArgument` naming the problem.
    pub fn new(
        grantee: PrincipalSpec,
        operations: &[&str],
        retiring_principal: Option<PrincipalSpec>,
        constraints: Option<GrantConstraints>,
        name: Option<String>,
    ) -> Result<Grant, KeyError> {
        let mut ops: Vec<String> = Vec::new();
        for op in operations {
            let bare = op
                .get(..4)
                .filter(|p| p.eq_ignore_ascii_case("kms:"))
                .map_or(*op, |_| &op[4..]);
            let canonical = GRANT_OPERATIONS
                .iter()
                .find(|g| g.eq_ignore_ascii_case(bare))
                .ok_or_else(|| {
                    KeyError::InvalidArgument(format!(
                        "grant operation {op:?} is not one of {}",
                        GRANT_OPERATIONS.join(", ")
                    ))
                })?;
            if !ops.iter().any(|o| o == canonical) {
                ops.push((*canonical).to_owned());
            }
        }
        let constraints = constraints.and_then(|mut c| {
            c.encryption_context_subset = c.encryption_context_subset.filter(|m| !m.is_empty());
            c.encryption_context_equals = c.encryption_context_equals.filter(|m| !m.is_empty());
            (c != GrantConstraints::default()).then_some(c)
        });
        let grant = Grant {
            grant_id: new_grant_id(),
            name,
            grantee,
            retiring_principal,
            operations: ops,
            constraints,
            creation_date: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        grant.validate()?;
        Ok(grant)
    }

    /// Checks a grant (as built by [`Grant::new`] or read back from storage).
    pub(crate) fn validate(&self) -> Result<(), KeyError> {
        let bad = |m: String| Err(KeyError::InvalidArgument(m));
        if self.grant_id.len() != 64
            || !self
                .grant_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return bad(format!(
                "grant id {:?} is not 64 lowercase hex digits",
                self.grant_id
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || n.chars().count() > MAX_GRANT_NAME_CHARS
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b)))
        {
            return bad(format!(
                "grant name {n:?}: use 1 to {MAX_GRANT_NAME_CHARS} of a-z A-Z 0-9 : / _ -"
            ));
        }
        for (what, p) in [
            ("grantee", Some(&self.grantee)),
            ("retiring principal", self.retiring_principal.as_ref()),
        ] {
            let Some(p) = p else { continue };
            if !p.is_single() {
                return bad(format!(
                    "the grant's {what} must be one user, one group or admin, not {p}"
                ));
            }
            p.validate().map_err(KeyError::InvalidArgument)?;
        }
        if self.operations.is_empty() {
            return bad("a grant must allow at least one operation".into());
        }
        for (i, op) in self.operations.iter().enumerate() {
            if !GRANT_OPERATIONS.contains(&op.as_str()) || self.operations[..i].contains(op) {
                return bad(format!(
                    "grant operation {op:?} is unknown or repeated; use {}",
                    GRANT_OPERATIONS.join(", ")
                ));
            }
        }
        if let Some(c) = &self.constraints {
            c.validate().map_err(KeyError::InvalidArgument)?;
        }
        Ok(())
    }

    /// The grant operation that `action` (`kms:Decrypt`, …) corresponds to, if listed.
    fn operation_for(&self, action: &str) -> Option<&str> {
        let bare = action
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("kms:"))
            .map(|_| &action[4..])?;
        self.operations
            .iter()
            .map(String::as_str)
            .find(|op| op.eq_ignore_ascii_case(bare))
    }

    /// True when this grant lets `who` perform `action` with context `ctx`.
    pub(crate) fn allows(&self, who: &Principal, action: &str, ctx: &EncryptionContext) -> bool {
        let Some(op) = self.operation_for(action) else {
            return false;
        };
        self.grantee.matches(who)
            && (UNCONSTRAINED_GRANT_OPERATIONS.contains(&op)
                || self
                    .constraints
                    .as_ref()
                    .is_none_or(|c| c.satisfied_by(ctx)))
    }

    /// True when `who` may retire this grant through the grant itself: it is the retiring
    /// principal, or the grantee and the grant lists `RetireGrant`. (A principal the key
    /// policy allows `kms:RetireGrant` may retire any grant of the key as well; the key
    /// service checks that with [`evaluate`](super::evaluate).)
    pub(crate) fn may_retire(&self, who: &Principal) -> bool {
        self.retiring_principal
            .as_ref()
            .is_some_and(|r| r.matches(who))
            || (self.grantee.matches(who) && self.operations.iter().any(|o| o == "RetireGrant"))
    }

    /// `grant 3f2a…c9 ("name")`: for reasons and audit records.
    pub(crate) fn label(&self) -> String {
        let short = self.grant_id.get(..12).unwrap_or(&self.grant_id);
        match &self.name {
            Some(n) => format!("grant {short}… ({n:?})"),
            None => format!("grant {short}…"),
        }
    }
}
