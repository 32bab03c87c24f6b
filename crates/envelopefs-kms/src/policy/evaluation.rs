//! Evaluation: deciding a request against a key policy and the key's grants, the
//! CreateGrant and lockout checks, and action and glob matching.

use super::{Effect, Grant, KeyPolicy, action};
use crate::KeyError;
use crate::principal::Principal;
use envelopefs_format::context::EncryptionContext;

/// The outcome of an authorization check. The texts are for log lines and audit records;
/// they name statements, grants and principals, never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `by` names the statement or grant that allowed it.
    Allow {
        /// `key policy statement "Sid"` or `grant 3f2a… ("name")`.
        by: String,
    },
    /// Denied; `reason` says why.
    Deny {
        /// An explicit deny statement, or that nothing allowed it.
        reason: String,
    },
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub(crate) fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// `Ok(by)`, or `KeyError::AccessDenied` for `key_id` with the reason.
    pub(crate) fn into_result(self, key_id: &str) -> Result<String, KeyError> {
        match self {
            Decision::Allow { by } => Ok(by),
            Decision::Deny { reason } => Err(KeyError::AccessDenied {
                key_id: key_id.to_owned(),
                reason,
            }),
        }
    }
}

/// Decides whether `who` may perform `action` (a `kms:` name from [`action`]) on the key
/// governed by `policy` and `grants`, for a request with encryption context `ctx` (empty for
/// operations that take none). See the [`policy`](super) module docs for the order of
/// evaluation.
pub(crate) fn evaluate(
    policy: &KeyPolicy,
    grants: &[Grant],
    who: &Principal,
    action: &str,
    ctx: &EncryptionContext,
) -> Decision {
    debug_assert!(
        action::ALL.iter().any(|a| a.eq_ignore_ascii_case(action)),
        "BUG: evaluate called with unknown action {action:?}"
    );
    match policy_outcome(policy, who, action, ctx) {
        PolicyOutcome::Denied(reason) => return Decision::Deny { reason },
        PolicyOutcome::Allowed(by) => return Decision::Allow { by },
        PolicyOutcome::Silent => {}
    }
    if let Some(g) = grants.iter().find(|g| g.allows(who, action, ctx)) {
        return Decision::Allow { by: g.label() };
    }
    Decision::Deny {
        reason: format!("no statement or grant allows {action} for {}", who.label()),
    }
}

/// What the key policy alone says about a request.
enum PolicyOutcome {
    /// A Deny statement matched (the reason).
    Denied(String),
    /// No Deny matched and an Allow statement did (which one).
    Allowed(String),
    /// No statement matched.
    Silent,
}

fn policy_outcome(
    policy: &KeyPolicy,
    who: &Principal,
    action: &str,
    ctx: &EncryptionContext,
) -> PolicyOutcome {
    let mut allowed_by = None;
    for (i, st) in policy.statement.iter().enumerate() {
        if !st.matches(who, action, ctx) {
            continue;
        }
        match st.effect {
            Effect::Deny => {
                return PolicyOutcome::Denied(format!(
                    "{action} for {} is explicitly denied by key policy {}",
                    who.label(),
                    st.label(i)
                ));
            }
            Effect::Allow => {
                allowed_by.get_or_insert_with(|| format!("key policy {}", st.label(i)));
            }
        }
    }
    allowed_by.map_or(PolicyOutcome::Silent, PolicyOutcome::Allowed)
}

/// Decides whether `who` may create `new_grant` on the key. As in KMS: an explicit deny of
/// `kms:CreateGrant` wins; the key policy allowing `kms:CreateGrant` allows any grant; a
/// grant allows it only when the new grant's operations are a subset of that grant's and
/// its constraints are at least as strict.
pub(crate) fn evaluate_create_grant(
    policy: &KeyPolicy,
    grants: &[Grant],
    who: &Principal,
    new_grant: &Grant,
) -> Decision {
    let empty = EncryptionContext::new();
    match policy_outcome(policy, who, action::CREATE_GRANT, &empty) {
        PolicyOutcome::Allowed(by) => return Decision::Allow { by },
        PolicyOutcome::Denied(reason) => return Decision::Deny { reason },
        PolicyOutcome::Silent => {}
    }
    let parent = grants.iter().find(|g| {
        g.allows(who, action::CREATE_GRANT, &empty)
            && new_grant
                .operations
                .iter()
                .all(|op| g.operations.contains(op))
            && new_grant
                .constraints
                .clone()
                .unwrap_or_default()
                .at_least_as_strict_as(g.constraints.as_ref())
    });
    match parent {
        Some(g) => Decision::Allow { by: g.label() },
        None => Decision::Deny {
            reason: format!(
                "no statement or grant allows {} to create this grant (a grant can only \
                 pass on its own operations, with constraints at least as strict)",
                who.label()
            ),
        },
    }
}

/// KMS's policy lockout safety check for PutKeyPolicy: `Err` when `policy` would not let
/// `who` (the principal setting it) change the policy again.
pub(crate) fn check_lockout(policy: &KeyPolicy, who: &Principal) -> Result<(), KeyError> {
    match evaluate(
        policy,
        &[],
        who,
        action::PUT_KEY_POLICY,
        &EncryptionContext::new(),
    ) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { reason } => Err(KeyError::InvalidArgument(format!(
            "MalformedPolicyDocument: the new key policy would lock you out: {reason}; keep \
             a statement that allows you kms:PutKeyPolicy (such as the default \"Enable \
             administrator\" statement)"
        ))),
    }
}

/// True when action pattern `pattern` (`*`, `kms:Decrypt`, `kms:ReEncrypt*`, …) matches
/// `action`, ignoring ASCII case.
pub(crate) fn action_matches(pattern: &str, action: &str) -> bool {
    pattern == "*" || glob_match(pattern, action, true)
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters (also
/// empty) and `?` for exactly one character.
///
/// Runs on every key use (each statement's actions, and its StringLike conditions), so the
/// common cases cost no allocation: a pattern without wildcards is a plain comparison, and
/// ASCII strings are matched byte by byte (a byte is a character there).
pub(super) fn glob_match(pattern: &str, text: &str, ignore_ascii_case: bool) -> bool {
    if !pattern.contains(['*', '?']) {
        return if ignore_ascii_case {
            pattern.eq_ignore_ascii_case(text)
        } else {
            pattern == text
        };
    }
    if pattern.is_ascii() && text.is_ascii() {
        let eq = |a: u8, b: u8| a == b || (ignore_ascii_case && a.eq_ignore_ascii_case(&b));
        return glob_slices(pattern.as_bytes(), text.as_bytes(), b'*', b'?', eq);
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| a == b || (ignore_ascii_case && a.eq_ignore_ascii_case(&b));
    glob_slices(&p, &t, '*', '?', eq)
}

/// [`glob_match`] over characters of any width (`star_c` and `one` are `*` and `?`).
fn glob_slices<T: Copy + PartialEq>(
    p: &[T],
    t: &[T],
    star_c: T,
    one: T,
    eq: impl Fn(T, T) -> bool,
) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text position it is currently absorbing up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == star_c {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == one || eq(p[pi], t[ti])) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` absorb one more character and retry after it.
            star = Some((sp, st + 1));
            pi = sp + 1;
            ti = st + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star_c)
}
