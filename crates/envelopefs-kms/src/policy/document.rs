//! The key policy document: its JSON types, their checks beyond serde, parsing, and the
//! default policy of a new key.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{
    ACCEPTED_VERSIONS, Condition, MAX_POLICY_BYTES, POLICY_VERSION, PrincipalSpec, action,
    action_matches,
};
use crate::KeyError;
use crate::principal::Principal;
use envelopefs_format::context::EncryptionContext;

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
    pub(super) fn label(&self, index: usize) -> String {
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
    /// The statements, evaluated as described in the [`policy`](super) module docs.
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
