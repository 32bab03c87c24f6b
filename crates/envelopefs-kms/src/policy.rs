//! Key policies and grants: who may do what with a CMK, decided the way AWS KMS decides.
//!
//! # Principals
//!
//! A policy speaks of local users and groups and of the volume administrator; the caller is
//! resolved into a [`Principal`](crate::principal::Principal) (uid, groups, names,
//! administrator or not) by [`crate::principal`].
//!
//! # Key policy document
//!
//! Every CMK has exactly one key policy, a JSON document of at most 32 KiB in AWS's syntax:
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Statement": [
//!     { "Sid": "Enable administrator", "Effect": "Allow",
//!       "Principal": { "Admin": true }, "Action": "kms:*" },
//!     { "Sid": "Staff may decrypt files of this volume", "Effect": "Allow",
//!       "Principal": { "Group": ["staff", "1001"], "User": "alice" },
//!       "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
//!       "Condition": { "StringEquals": {
//!           "kms:EncryptionContext:envelopefs:volume-id": "0c6f…" } } },
//!     { "Sid": "Never bob", "Effect": "Deny", "Principal": { "User": "bob" },
//!       "Action": "kms:*" }
//!   ]
//! }
//! ```
//!
//! - `Version`: `2012-10-17` (default when absent) or `2008-10-17`.
//! - `Sid`: optional; unique within the policy; names the statement in denials and audit records.
//! - `Effect`: `Allow` or `Deny`.
//! - `Principal`: `"*"` (every local user), or an object with any of `User` (user names or
//!   numeric uids), `Group` (group names or numeric gids; primary or supplementary), `Admin`
//!   (`true` = the volume administrator). Each of `User`/`Group` is a string or an array. A
//!   statement matches a caller that matches any listed entry. An all-digit entry is an id.
//! - `Action`: a string or an array of key actions ([`action::ALL`]); `*` and `?` are
//!   wildcards (`kms:*`, `kms:ReEncrypt*`, `kms:Describe*`), matched case-insensitively.
//!   A name or pattern that matches no known action makes the document malformed (a typo must
//!   not silently allow or deny nothing).
//! - `Resource`: optional, and if present must be `"*"` (a key policy governs its own key).
//! - `Condition`: optional; operators `StringEquals` and `StringLike` (`*` any run of
//!   characters, `?` one character; values compared case-sensitively) over the keys
//!   `kms:EncryptionContext:<context-key>` (the value of that pair of the request's encryption
//!   context; the condition key name, including `<context-key>`, is matched case-insensitively
//!   as IAM matches condition key names) and `kms:EncryptionContextKeys` (the request's context
//!   has a key equal to / like one of the values). Several values for one condition key: any
//!   one may match. Several condition keys or operators: all must hold. A condition on a
//!   context key the request does not carry does not hold. Any other operator, condition key,
//!   or member of a statement makes the document malformed; nothing is silently ignored.
//!
//! # Grants
//!
//! A [`Grant`] lets one user or group (the grantee) perform a list of KMS grant operations on
//! one key, optionally only when the request's encryption context contains
//! (`encryption_context_subset`) or equals (`encryption_context_equals`) given pairs. As in
//! KMS, constraint keys compare case-insensitively and values case-sensitively, constraints do
//! not apply to `DescribeKey`, `RetireGrant` and `CreateGrant` (for `CreateGrant` the new grant
//! must instead be at least as strict, see [`evaluate_create_grant`]), and a grant allows but
//! never denies.
//!
//! # Evaluation ([`evaluate`]), as in KMS
//!
//! 1. A `Deny` statement whose principal, action and condition match: denied, whatever else
//!    says (the reason names the statement's Sid, or `Statement[i]` with its 0-based index).
//! 2. Else an `Allow` statement that matches, or a grant that matches: allowed.
//! 3. Else denied: nothing is allowed that the policy or a grant does not allow.
//!
//! There is no implicit power: the administrator and root can do only what the policy lets
//! them (the default policy lets the administrator do everything); [`check_lockout`] is the
//! safety check KMS runs on PutKeyPolicy.
//!
//! # Differences from KMS
//!
//! Principals are local users and groups instead of IAM ARNs; only the encryption-context
//! condition keys exist; there are no IAM policies, so the key policy alone decides (KMS
//! needs the policy to delegate to IAM first); grants take effect at once (KMS: eventually
//! consistent, up to 5 minutes) and have no grant tokens.

mod condition;
mod document;
mod evaluation;
mod grant;
mod principal_spec;
pub use condition::{Condition, ConditionClause, ConditionKey, ConditionOperator};
pub(crate) use document::default_policy;
pub use document::{Effect, KeyPolicy, OneOrMany, Statement, parse_policy};
pub use evaluation::Decision;
pub(crate) use evaluation::{action_matches, check_lockout, evaluate, evaluate_create_grant};
pub use grant::{Grant, GrantConstraints, new_grant_id};
pub use principal_spec::{LocalPrincipals, PrincipalSpec};

/// Largest key policy document accepted, in bytes (the KMS quota).
pub(crate) const MAX_POLICY_BYTES: usize = 32 * 1024;
/// The policy language version written into new policies.
pub(crate) const POLICY_VERSION: &str = "2012-10-17";
/// Policy language versions accepted on input (both mean the same here).
const ACCEPTED_VERSIONS: &[&str] = &["2012-10-17", "2008-10-17"];
/// Most grants one key may carry (the KMS quota); enforced by the key service.
pub(crate) const MAX_GRANTS_PER_KEY: usize = 50_000;
/// Most encryption-context pairs in one grant constraint (the KMS limit).
pub(crate) const MAX_CONSTRAINT_PAIRS: usize = 8;
/// Longest encryption-context value in a grant constraint, in characters (the KMS limit).
pub(crate) const MAX_CONSTRAINT_VALUE_CHARS: usize = 384;
/// Longest grant name, in characters (the KMS limit).
pub(crate) const MAX_GRANT_NAME_CHARS: usize = 256;

/// Defines one `&str` constant per key action, and [`action::ALL`] listing them.
macro_rules! key_actions {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        $($(#[$doc])* pub const $name: &str = $value;)*
        /// Every key-scoped action, in the order of this module.
        pub(crate) const ALL: &[&str] = &[$($value),*];
    };
}

/// The key-scoped actions a key policy can allow or deny (KMS names; `ListKeys` and
/// `CreateKey` are not key-scoped and so are not governed by a key policy).
pub mod action {
    key_actions! {
        /// Encrypt (envelopefs does not wrap caller plaintext today; reserved).
        ENCRYPT = "kms:Encrypt",
        /// Unwrap a data key (open a file).
        DECRYPT = "kms:Decrypt",
        /// Make and wrap a new data key (create a file).
        GENERATE_DATA_KEY = "kms:GenerateDataKey",
        /// Re-wrap: the source key's half.
        RE_ENCRYPT_FROM = "kms:ReEncryptFrom",
        /// Re-wrap: the destination key's half.
        RE_ENCRYPT_TO = "kms:ReEncryptTo",
        /// Describe the key.
        DESCRIBE_KEY = "kms:DescribeKey",
        /// Enable the key.
        ENABLE_KEY = "kms:EnableKey",
        /// Disable the key.
        DISABLE_KEY = "kms:DisableKey",
        /// Schedule the key's deletion.
        SCHEDULE_KEY_DELETION = "kms:ScheduleKeyDeletion",
        /// Cancel a scheduled deletion.
        CANCEL_KEY_DELETION = "kms:CancelKeyDeletion",
        /// Rotate now.
        ROTATE_KEY_ON_DEMAND = "kms:RotateKeyOnDemand",
        /// Turn automatic rotation on.
        ENABLE_KEY_ROTATION = "kms:EnableKeyRotation",
        /// Turn automatic rotation off.
        DISABLE_KEY_ROTATION = "kms:DisableKeyRotation",
        /// Read the rotation settings.
        GET_KEY_ROTATION_STATUS = "kms:GetKeyRotationStatus",
        /// List the key's material versions.
        LIST_KEY_ROTATIONS = "kms:ListKeyRotations",
        /// Replace the key policy.
        PUT_KEY_POLICY = "kms:PutKeyPolicy",
        /// Read the key policy.
        GET_KEY_POLICY = "kms:GetKeyPolicy",
        /// Create a grant.
        CREATE_GRANT = "kms:CreateGrant",
        /// List grants.
        LIST_GRANTS = "kms:ListGrants",
        /// Retire a grant.
        RETIRE_GRANT = "kms:RetireGrant",
        /// Revoke a grant.
        REVOKE_GRANT = "kms:RevokeGrant",
        /// Point a new alias at the key.
        CREATE_ALIAS = "kms:CreateAlias",
        /// Move an alias to or from the key.
        UPDATE_ALIAS = "kms:UpdateAlias",
        /// Delete an alias of the key.
        DELETE_ALIAS = "kms:DeleteAlias",
        /// Change the description.
        UPDATE_KEY_DESCRIPTION = "kms:UpdateKeyDescription",
        /// Add tags.
        TAG_RESOURCE = "kms:TagResource",
        /// Remove tags.
        UNTAG_RESOURCE = "kms:UntagResource",
        /// List tags.
        LIST_RESOURCE_TAGS = "kms:ListResourceTags",
        /// Import key material.
        IMPORT_KEY_MATERIAL = "kms:ImportKeyMaterial",
        /// Get a wrapping key and import token.
        GET_PARAMETERS_FOR_IMPORT = "kms:GetParametersForImport",
        /// Delete imported key material.
        DELETE_IMPORTED_KEY_MATERIAL = "kms:DeleteImportedKeyMaterial",
    }
}

/// The operations a grant can allow (KMS grant operation names, without `kms:`).
pub(crate) const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "ReEncryptFrom",
    "ReEncryptTo",
    "DescribeKey",
    "CreateGrant",
    "RetireGrant",
];

/// Grant operations to which encryption-context constraints do not apply (as in KMS).
const UNCONSTRAINED_GRANT_OPERATIONS: &[&str] = &["DescribeKey", "RetireGrant", "CreateGrant"];

// ---------------------------------------------------------------------------------------------
// Which statements need the caller's groups
// ---------------------------------------------------------------------------------------------

/// True when a statement of `policy` or one of `grants` names a group, so evaluation needs
/// the caller's supplementary groups (see [`Principal::from_caller_with`](crate::principal::Principal::from_caller_with)).
pub(crate) fn needs_groups(policy: &KeyPolicy, grants: &[Grant]) -> bool {
    let names_group =
        |p: &PrincipalSpec| matches!(p, PrincipalSpec::Local(l) if !l.groups.is_empty());
    policy.statement.iter().any(|s| names_group(&s.principal))
        || grants.iter().any(|g| {
            names_group(&g.grantee) || g.retiring_principal.as_ref().is_some_and(names_group)
        })
}

#[cfg(test)]
#[path = "policy_tests/mod.rs"]
mod tests;
