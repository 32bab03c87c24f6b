//! Whom a statement or grant is about ([`PrincipalSpec`]): its JSON form, its command-line
//! form, its checks, and matching a caller against it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::{KeyPolicy, OneOrMany};
use crate::KeyError;
use crate::principal::Principal;

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
    pub(super) fn validate(&self) -> Result<(), String> {
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
