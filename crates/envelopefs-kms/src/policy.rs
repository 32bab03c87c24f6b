//! Key policies and grants: who may do what with a CMK, decided the way AWS KMS decides.
//!
//! # Principals
//!
//! A policy speaks of local users and groups and of the volume administrator; the caller is
//! resolved into a [`Principal`] (uid, groups, names, administrator or not) by
//! [`crate::principal`].
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

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::KeyError;
use crate::principal::Principal;
use envelopefs_format::context::EncryptionContext;

mod grant;
pub use grant::{Grant, GrantConstraints, new_grant_id};

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

// ---------------------------------------------------------------------------------------------
// Policy document types
// ---------------------------------------------------------------------------------------------

/// A JSON member that may be written as one string or as an array of strings.
/// Serialized as a bare string when it holds exactly one element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> OneOrMany<T> {
    /// True when there are no elements.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for OneOrMany<String> {
    fn from(s: &str) -> Self {
        OneOrMany(vec![s.to_owned()])
    }
}

impl<const N: usize> From<[&str; N]> for OneOrMany<String> {
    fn from(a: [&str; N]) -> Self {
        OneOrMany(a.iter().map(|s| (*s).to_owned()).collect())
    }
}

impl Serialize for OneOrMany<String> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [one] = self.0.as_slice() {
            return s.serialize_str(one);
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in &self.0 {
            seq.serialize_element(v)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for OneOrMany<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `Allow` or `Deny`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The statement allows what it matches.
    Allow,
    /// The statement denies what it matches, overriding any allow.
    Deny,
}

/// Named local principals: `{"User": …, "Group": …, "Admin": true}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalPrincipals {
    /// User names or numeric uids.
    #[serde(rename = "User", default, skip_serializing_if = "OneOrMany::is_empty")]
    pub users: OneOrMany<String>,
    /// Group names or numeric gids (primary or supplementary membership).
    #[serde(rename = "Group", default, skip_serializing_if = "OneOrMany::is_empty")]
    pub groups: OneOrMany<String>,
    /// The volume administrator.
    #[serde(rename = "Admin", default, skip_serializing_if = "is_false")]
    pub admin: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whom a statement (or grant) is about: `"*"` or named local principals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalSpec {
    /// Every local user (`"*"`).
    Any,
    /// Users, groups and/or the administrator.
    Local(LocalPrincipals),
}

impl PrincipalSpec {
    /// One user, by name or numeric uid.
    pub(crate) fn user(name_or_uid: &str) -> Self {
        PrincipalSpec::Local(LocalPrincipals {
            users: name_or_uid.into(),
            ..Default::default()
        })
    }

    /// One group, by name or numeric gid.
    pub(crate) fn group(name_or_gid: &str) -> Self {
        PrincipalSpec::Local(LocalPrincipals {
            groups: name_or_gid.into(),
            ..Default::default()
        })
    }

    /// The volume administrator.
    pub(crate) fn admin() -> Self {
        PrincipalSpec::Local(LocalPrincipals {
            admin: true,
            ..Default::default()
        })
    }

    /// Parses the command-line form: `user:NAME|UID`, `group:NAME|GID`, `admin` or `*`.
    pub fn from_cli(s: &str) -> Result<Self, KeyError> {
        let spec = if s == "*" {
            PrincipalSpec::Any
        } else if s.eq_ignore_ascii_case("admin") {
            PrincipalSpec::admin()
        } else if let Some(u) = s.strip_prefix("user:") {
            PrincipalSpec::user(u)
        } else if let Some(g) = s.strip_prefix("group:") {
            PrincipalSpec::group(g)
        } else {
            return Err(KeyError::InvalidArgument(format!(
                "principal {s:?}: write user:NAME, user:UID, group:NAME, group:GID, admin or *"
            )));
        };
        spec.validate().map_err(KeyError::InvalidArgument)?;
        Ok(spec)
    }

    /// True for exactly one user, one group, or the administrator alone (what a grant's
    /// grantee and retiring principal must be).
    pub(crate) fn is_single(&self) -> bool {
        match self {
            PrincipalSpec::Any => false,
            PrincipalSpec::Local(l) => {
                l.users.0.len() + l.groups.0.len() + usize::from(l.admin) == 1
            }
        }
    }

    /// True when `who` is one of the principals named.
    pub(crate) fn matches(&self, who: &Principal) -> bool {
        let l = match self {
            PrincipalSpec::Any => return true,
            PrincipalSpec::Local(l) => l,
        };
        if l.admin && who.is_admin {
            return true;
        }
        let user_hit = l.users.0.iter().any(|u| match numeric_id(u) {
            Some(uid) => uid == who.uid,
            None => who.user_name.as_deref() == Some(u.as_str()),
        });
        let group_hit = || {
            l.groups.0.iter().any(|g| match numeric_id(g) {
                Some(gid) => who.groups.contains(&gid) || who.gid == gid,
                None => who.group_names.iter().any(|n| n == g),
            })
        };
        user_hit || group_hit()
    }

    /// Checks the entries; `Err` is a sentence for a MalformedPolicyDocument message.
    fn validate(&self) -> Result<(), String> {
        let PrincipalSpec::Local(l) = self else {
            return Ok(());
        };
        if l.users.is_empty() && l.groups.is_empty() && !l.admin {
            return Err("Principal names no User, Group or Admin".into());
        }
        for (kind, entries) in [("User", &l.users), ("Group", &l.groups)] {
            for e in &entries.0 {
                if e.is_empty() || e.trim() != e || e.contains(':') {
                    return Err(format!("Principal {kind} entry {e:?} is not a valid name"));
                }
                if e.bytes().all(|b| b.is_ascii_digit()) && numeric_id(e).is_none() {
                    return Err(format!("Principal {kind} id {e:?} is out of range"));
                }
            }
        }
        Ok(())
    }
}

impl PrincipalSpec {
    /// The user and group names this principal lists that the system's user and group
    /// databases do not know, as `user NAME` / `group NAME` (numeric ids are never unknown).
    /// A name no one has yet matches no one today, but would let in whoever is created with
    /// it later, so `key grant create` and `key policy put` refuse such names by default.
    pub fn unknown_names(&self) -> Vec<String> {
        let PrincipalSpec::Local(l) = self else {
            return Vec::new();
        };
        let users = l
            .users
            .0
            .iter()
            .filter(|u| numeric_id(u).is_none() && crate::principal::user_id(u).is_none())
            .map(|u| format!("user {u}"));
        let groups = l
            .groups
            .0
            .iter()
            .filter(|g| numeric_id(g).is_none() && crate::principal::group_id(g).is_none())
            .map(|g| format!("group {g}"));
        users.chain(groups).collect()
    }
}

impl KeyPolicy {
    /// [`PrincipalSpec::unknown_names`] of every statement, without repeats.
    pub fn unknown_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for st in &self.statement {
            for n in st.principal.unknown_names() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }
}

/// An all-digit principal entry as an id (`None` for names and out-of-range numbers).
fn numeric_id(s: &str) -> Option<u32> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

impl fmt::Display for PrincipalSpec {
    /// `*`, `admin`, `user:alice`, `group:100`, or `user:a,user:b,group:c,admin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self {
            PrincipalSpec::Any => return f.write_str("*"),
            PrincipalSpec::Local(l) => l,
        };
        let mut parts: Vec<String> = Vec::new();
        parts.extend(l.users.0.iter().map(|u| format!("user:{u}")));
        parts.extend(l.groups.0.iter().map(|g| format!("group:{g}")));
        if l.admin {
            parts.push("admin".into());
        }
        f.write_str(&parts.join(","))
    }
}

impl Serialize for PrincipalSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PrincipalSpec::Any => s.serialize_str("*"),
            PrincipalSpec::Local(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PrincipalSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PrincipalSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""*" or an object with "User", "Group" and/or "Admin""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "*" {
                    Ok(PrincipalSpec::Any)
                } else {
                    Err(E::custom(format!(
                        r#"Principal {v:?}: write "*" for everyone, or {{"User": [...], "Group": [...], "Admin": true}}"#
                    )))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                LocalPrincipals::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PrincipalSpec::Local)
            }
        }
        d.deserialize_any(V)
    }
}

/// A supported condition operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionOperator {
    /// Exact, case-sensitive string equality.
    StringEquals,
    /// Case-sensitive match against a pattern with `*` and `?`.
    StringLike,
}

impl ConditionOperator {
    fn name(self) -> &'static str {
        match self {
            ConditionOperator::StringEquals => "StringEquals",
            ConditionOperator::StringLike => "StringLike",
        }
    }

    fn test(self, pattern: &str, value: &str) -> bool {
        match self {
            ConditionOperator::StringEquals => pattern == value,
            ConditionOperator::StringLike => glob_match(pattern, value, false),
        }
    }
}

/// A supported condition key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    /// `kms:EncryptionContext:<key>`: the value of that encryption-context pair.
    EncryptionContext(String),
    /// `kms:EncryptionContextKeys`: the keys of the encryption context.
    EncryptionContextKeys,
}

const CK_CONTEXT_PREFIX: &str = "kms:EncryptionContext:";
const CK_CONTEXT_KEYS: &str = "kms:EncryptionContextKeys";

impl ConditionKey {
    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case(CK_CONTEXT_KEYS) {
            return Some(ConditionKey::EncryptionContextKeys);
        }
        let head = s.get(..CK_CONTEXT_PREFIX.len())?;
        let rest = &s[CK_CONTEXT_PREFIX.len()..];
        (head.eq_ignore_ascii_case(CK_CONTEXT_PREFIX) && !rest.is_empty())
            .then(|| ConditionKey::EncryptionContext(rest.to_owned()))
    }

    fn name(&self) -> String {
        match self {
            ConditionKey::EncryptionContext(k) => format!("{CK_CONTEXT_PREFIX}{k}"),
            ConditionKey::EncryptionContextKeys => CK_CONTEXT_KEYS.to_owned(),
        }
    }
}

/// One test: `operator` applied to condition `key` against any of `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionClause {
    /// How to compare.
    pub operator: ConditionOperator,
    /// What to compare.
    pub key: ConditionKey,
    /// The policy's values; any one may match.
    pub values: Vec<String>,
}

impl ConditionClause {
    fn holds(&self, ctx: &EncryptionContext) -> bool {
        let op = self.operator;
        match &self.key {
            ConditionKey::EncryptionContext(k) => ctx
                .iter()
                .filter(|(ck, _)| ck.eq_ignore_ascii_case(k))
                .any(|(_, cv)| self.values.iter().any(|v| op.test(v, cv))),
            ConditionKey::EncryptionContextKeys => ctx
                .iter()
                .any(|(ck, _)| self.values.iter().any(|v| op.test(v, ck))),
        }
    }
}

/// A statement's `Condition` block: every clause must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition(pub Vec<ConditionClause>);

impl Condition {
    /// True when every clause holds for `ctx`.
    pub fn holds(&self, ctx: &EncryptionContext) -> bool {
        self.0.iter().all(|c| c.holds(ctx))
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Group clauses by operator, keeping the order of first appearance.
        let mut groups: Vec<(ConditionOperator, Vec<&ConditionClause>)> = Vec::new();
        for c in &self.0 {
            match groups.iter_mut().find(|(op, _)| *op == c.operator) {
                Some((_, v)) => v.push(c),
                None => groups.push((c.operator, vec![c])),
            }
        }
        struct Inner<'a>(&'a [&'a ConditionClause]);
        impl Serialize for Inner<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for c in self.0 {
                    m.serialize_entry(&c.key.name(), &OneOrMany(c.values.clone()))?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(groups.len()))?;
        for (op, clauses) in &groups {
            m.serialize_entry(op.name(), &Inner(clauses))?;
        }
        m.end()
    }
}

/// The members of one JSON object, in order, rejecting duplicate names.
struct UniqueEntries<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueEntries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = UniqueEntries<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("{k:?} appears twice")));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(UniqueEntries(out))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let outer = UniqueEntries::<UniqueEntries<OneOrMany<String>>>::deserialize(d)?;
        let mut clauses = Vec::new();
        for (op_name, inner) in outer.0 {
            let operator = match op_name.as_str() {
                "StringEquals" => ConditionOperator::StringEquals,
                "StringLike" => ConditionOperator::StringLike,
                _ => {
                    return Err(de::Error::custom(format!(
                        "unsupported condition operator {op_name:?}; envelopefs supports \
                         StringEquals and StringLike"
                    )));
                }
            };
            if inner.0.is_empty() {
                return Err(de::Error::custom(format!(
                    "condition operator {op_name} names no condition key"
                )));
            }
            for (key_name, values) in inner.0 {
                let key = ConditionKey::parse(&key_name).ok_or_else(|| {
                    de::Error::custom(format!(
                        "unsupported condition key {key_name:?} under {op_name}; envelopefs \
                         supports kms:EncryptionContext:<context-key> and \
                         kms:EncryptionContextKeys"
                    ))
                })?;
                if values.is_empty() {
                    return Err(de::Error::custom(format!(
                        "condition {op_name} {key_name:?} has no values"
                    )));
                }
                clauses.push(ConditionClause {
                    operator,
                    key,
                    values: values.0,
                });
            }
        }
        Ok(Condition(clauses))
    }
}

/// One statement of a key policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Optional statement id, unique within the policy.
    #[serde(rename = "Sid", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Allow or deny.
    #[serde(rename = "Effect")]
    pub effect: Effect,
    /// Whom it is about.
    #[serde(rename = "Principal")]
    pub principal: PrincipalSpec,
    /// Action names or patterns.
    #[serde(rename = "Action")]
    pub action: OneOrMany<String>,
    /// Must be `"*"` when present.
    #[serde(rename = "Resource", default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OneOrMany<String>>,
    /// Tests on the request's encryption context.
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

impl Statement {
    /// `statement "Sid"` or `Statement[i]`.
    fn label(&self, index: usize) -> String {
        match &self.sid {
            Some(sid) => format!("statement {sid:?}"),
            None => format!("Statement[{index}]"),
        }
    }

    /// True when principal, action and condition all match.
    pub(crate) fn matches(&self, who: &Principal, action: &str, ctx: &EncryptionContext) -> bool {
        self.principal.matches(who)
            && self.action.0.iter().any(|p| action_matches(p, action))
            && self.condition.as_ref().is_none_or(|c| c.holds(ctx))
    }
}

/// A key policy document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Policy language version.
    #[serde(rename = "Version", default = "default_version")]
    pub version: String,
    /// The statements, evaluated as described in the module docs.
    #[serde(rename = "Statement")]
    pub statement: Vec<Statement>,
}

fn default_version() -> String {
    POLICY_VERSION.to_owned()
}

impl KeyPolicy {
    /// The document as indented JSON (what GetKeyPolicy returns).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a key policy always serializes")
    }

    /// Checks what serde cannot: version, unique Sids, principals, known actions, Resource.
    /// `Err` is the sentence after `MalformedPolicyDocument: `.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !ACCEPTED_VERSIONS.contains(&self.version.as_str()) {
            return Err(format!(
                "unsupported Version {:?}; use \"{POLICY_VERSION}\"",
                self.version
            ));
        }
        for (i, st) in self.statement.iter().enumerate() {
            let label = st.label(i);
            if let Some(sid) = &st.sid {
                if sid.is_empty() {
                    return Err(format!("Statement[{i}] has an empty Sid"));
                }
                if self.statement[..i]
                    .iter()
                    .any(|s| s.sid.as_ref() == Some(sid))
                {
                    return Err(format!("Sid {sid:?} is used by more than one statement"));
                }
            }
            st.principal
                .validate()
                .map_err(|e| format!("{label}: {e}"))?;
            if st.action.is_empty() {
                return Err(format!("{label}: Action is empty"));
            }
            for a in &st.action.0 {
                let well_formed =
                    a == "*" || a.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("kms:"));
                if !well_formed || !action::ALL.iter().any(|known| action_matches(a, known)) {
                    return Err(format!(
                        "{label}: action {a:?} is not a known key action (for example \
                         kms:Decrypt, kms:GenerateDataKey*, kms:*)"
                    ));
                }
            }
            if let Some(r) = &st.resource
                && (r.is_empty() || r.0.iter().any(|r| r != "*"))
            {
                return Err(format!(
                    "{label}: Resource must be \"*\" (a key policy applies to its own key)"
                ));
            }
        }
        Ok(())
    }
}

/// Parses and checks a key policy document (at most [`MAX_POLICY_BYTES`]).
///
/// Every error is `KeyError::InvalidArgument("MalformedPolicyDocument: …")` naming the
/// problem (unknown operator or condition key, bad Effect, unknown member, unknown action, …).
pub fn parse_policy(json: &str) -> Result<KeyPolicy, KeyError> {
    let malformed = |m: String| KeyError::InvalidArgument(format!("MalformedPolicyDocument: {m}"));
    if json.len() > MAX_POLICY_BYTES {
        return Err(malformed(format!(
            "the document is {} bytes; a key policy may have at most {MAX_POLICY_BYTES}",
            json.len()
        )));
    }
    let policy: KeyPolicy = serde_json::from_str(json).map_err(|e| malformed(e.to_string()))?;
    policy.validate().map_err(malformed)?;
    Ok(policy)
}

/// The key policy of a new CMK:
///
/// ```json
/// { "Version": "2012-10-17",
///   "Statement": [
///     { "Sid": "Enable administrator", "Effect": "Allow",
///       "Principal": { "Admin": true }, "Action": "kms:*" },
///     { "Sid": "Allow use of the key by local users", "Effect": "Allow", "Principal": "*",
///       "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*",
///                  "kms:ReEncrypt*", "kms:DescribeKey"] } ] }
/// ```
///
/// Why: the first statement plays the part of KMS's "Enable IAM User Permissions" statement:
/// the volume administrator (and root) can always manage the key, so a new key cannot lock
/// its owner out. The second lets every local user use the key to create and open files:
/// on a multi-user mount (`--allow-other`) who may read or write a file is already decided by
/// its mode bits and ACLs, which still apply, and a default that refused other users would
/// make a shared mount unusable. The key policy is a second gate, on the key: to restrict a
/// key to some users, replace `"*"` in the second statement by, for example,
/// `{"Group": "staff"}`, or add a `Deny` statement (`envelopefs key policy put`).
pub(crate) fn default_policy() -> KeyPolicy {
    KeyPolicy {
        version: POLICY_VERSION.to_owned(),
        statement: vec![
            Statement {
                sid: Some("Enable administrator".into()),
                effect: Effect::Allow,
                principal: PrincipalSpec::admin(),
                action: "kms:*".into(),
                resource: None,
                condition: None,
            },
            Statement {
                sid: Some("Allow use of the key by local users".into()),
                effect: Effect::Allow,
                principal: PrincipalSpec::Any,
                action: [
                    action::ENCRYPT,
                    action::DECRYPT,
                    "kms:GenerateDataKey*",
                    "kms:ReEncrypt*",
                    action::DESCRIBE_KEY,
                ]
                .into(),
                resource: None,
                condition: None,
            },
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

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
/// operations that take none). See the module docs for the order of evaluation.
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
fn glob_match(pattern: &str, text: &str, ignore_ascii_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_ascii_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text position it is currently absorbing up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || eq(p[pi], t[ti])) {
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
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
