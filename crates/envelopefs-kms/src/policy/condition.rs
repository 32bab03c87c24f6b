//! A statement's `Condition` block: operators, condition keys, their JSON form, and testing
//! them against a request's encryption context.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::OneOrMany;
use super::evaluation::glob_match;
use envelopefs_format::context::EncryptionContext;

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
