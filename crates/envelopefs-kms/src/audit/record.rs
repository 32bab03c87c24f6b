//! What one audit record holds: the JSON record as written and read back ([`AuditRecord`]),
//! the event a key-service call hands to the trail ([`AuditEvent`]), and the record's time
//! format. The line layout and the chain are described in the parent module.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::principal::Principal;
use crate::timefmt;
use crate::{Caller, KeyError};
use envelopefs_format::context::EncryptionContext;

/// Who made the call.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    /// Effective user id.
    pub uid: u32,
    /// User name, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Process id (0 when unknown).
    pub pid: u32,
    /// Process name (`/proc/<pid>/comm`), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
}

/// The request's non-secret parameters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestParameters {
    /// The CMK (hyphenated id) the call was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Its key-material version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// ReEncrypt / rewrap: the destination CMK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_key_id: Option<String>,
    /// ReEncrypt / rewrap: the destination key-material version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_key_version: Option<u32>,
    /// The encryption context (non-secret by definition).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encryption_context: BTreeMap<String, String>,
    /// The file's path in the volume, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Other request parameters (pendingWindowInDays, aliasName, grantId, …).
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

/// Facts about the call beyond the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalEventData {
    /// The key policy statement or grant that allowed the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_by: Option<String>,
}

/// One line of the audit trail, as read back (see the module docs for the layout).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// `2026-11-23T10:00:00.123Z`.
    pub event_time: String,
    /// The KMS operation.
    pub event_name: String,
    /// [`EVENT_SOURCE`](super::EVENT_SOURCE).
    pub event_source: String,
    /// The caller.
    pub user_identity: UserIdentity,
    /// The request.
    pub request_parameters: RequestParameters,
    /// Which statement or grant allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<AdditionalEventData>,
    /// KMS exception name when the call failed or was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Error text when the call failed or was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// True for calls that change no key state.
    pub read_only: bool,
    /// Hex of the previous record's hash.
    pub prev: String,
    /// Hex of this record's hash. Must stay the last field: the writer serializes the record
    /// with an empty hash (so the member is left out) to get the hashed text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// True for operations that change no key state (CloudTrail's `readOnly`).
pub fn is_read_only_event(event_name: &str) -> bool {
    let n = event_name.strip_prefix("kms:").unwrap_or(event_name);
    matches!(
        n,
        "Decrypt" | "Encrypt" | "ReEncrypt" | "DescribeKey" | "GenerateRandom"
    ) || n.starts_with("GenerateDataKey")
        || n.starts_with("List")
        || n.starts_with("Get")
}

/// What the key service reports about one call; [`AuditLog::append`](super::AuditLog::append)
/// turns it into a record.
///
/// Every field is text or a number: there is nowhere to put key material or plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// The KMS operation (`Decrypt`, `GenerateDataKey`, `ReEncrypt`, `DisableKey`, …).
    pub event_name: String,
    /// Caller's effective uid.
    pub uid: u32,
    /// Caller's pid (0 when unknown).
    pub pid: u32,
    /// Caller's user name; looked up (cached) when `None`.
    pub user_name: Option<String>,
    /// Caller's process name; read from `/proc/<pid>/comm` (cached) when `None`.
    pub process_name: Option<String>,
    /// CMK id.
    pub key_id: Option<String>,
    /// Key-material version.
    pub key_version: Option<u32>,
    /// Destination CMK id (ReEncrypt).
    pub destination_key_id: Option<String>,
    /// Destination key-material version (ReEncrypt).
    pub destination_key_version: Option<u32>,
    /// Encryption context.
    pub encryption_context: BTreeMap<String, String>,
    /// Path of the file, where known.
    pub path: Option<String>,
    /// Other non-secret request parameters; names must not be those of the fields above.
    pub parameters: BTreeMap<String, String>,
    /// The statement or grant that allowed the call.
    pub authorized_by: Option<String>,
    /// KMS exception name, on failure.
    pub error_code: Option<String>,
    /// Error text, on failure (never secrets: [`KeyError`] messages hold none).
    pub error_message: Option<String>,
    /// CloudTrail's readOnly; [`AuditEvent::new`] presets it from the event name.
    pub read_only: bool,
}

impl AuditEvent {
    /// An event for `caller` calling `event_name` (a `kms:` prefix is dropped).
    pub(crate) fn new(event_name: &str, caller: &Caller) -> Self {
        let name = event_name.strip_prefix("kms:").unwrap_or(event_name);
        AuditEvent {
            event_name: name.to_owned(),
            uid: caller.uid,
            pid: caller.pid,
            read_only: is_read_only_event(name),
            ..Default::default()
        }
    }

    /// Takes the user name from an already resolved principal.
    #[cfg(test)]
    pub(crate) fn principal(mut self, p: &Principal) -> Self {
        self.user_name = p.user_name.clone();
        self
    }

    /// Sets the CMK and its version.
    pub(crate) fn key(mut self, key_id: impl Into<String>, version: Option<u32>) -> Self {
        self.key_id = Some(key_id.into());
        self.key_version = version;
        self
    }

    /// Sets the destination CMK and version (ReEncrypt, rewrap).
    pub(crate) fn destination(mut self, key_id: impl Into<String>, version: Option<u32>) -> Self {
        self.destination_key_id = Some(key_id.into());
        self.destination_key_version = version;
        self
    }

    /// Copies the encryption context.
    pub(crate) fn context(mut self, ctx: &EncryptionContext) -> Self {
        self.encryption_context = ctx
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self
    }

    /// Sets the file's path.
    #[cfg(test)]
    pub(crate) fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Adds one other request parameter (`pendingWindowInDays` = `"7"`, …).
    pub(crate) fn param(mut self, name: &str, value: impl Into<String>) -> Self {
        self.parameters.insert(name.to_owned(), value.into());
        self
    }

    /// Records what allowed the call.
    pub(crate) fn authorized_by(mut self, by: impl Into<String>) -> Self {
        self.authorized_by = Some(by.into());
        self
    }

    /// Records a failure: the KMS exception name and the message.
    pub(crate) fn error(mut self, e: &KeyError) -> Self {
        self.error_code = Some(e.code().to_owned());
        self.error_message = Some(e.to_string());
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// `2026-11-23T10:00:00.123Z` for `t` (UTC, milliseconds; times before 1970 print as 1970).
pub fn format_event_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = timefmt::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`, `YYYY-MM-DDTHH:MM:SS` or with `.fff`, each
/// optionally followed by `Z` (always UTC), into a time (for `audit show --since`).
pub fn parse_event_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || day < 1
        || day > timefmt::days_in_month(y, m)
    {
        return None;
    }
    let (mut hh, mut mm, mut ss, mut ms) = (0u64, 0u64, 0u64, 0u64);
    if !time.is_empty() {
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut t = hms.split(':');
        hh = t.next()?.parse().ok()?;
        mm = t.next()?.parse().ok()?;
        ss = t.next().map_or(Some(0), |x| x.parse().ok())?;
        if t.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        if !frac.is_empty() {
            if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            ms = format!("{frac:0<3}").parse().ok()?;
        }
    }
    let days = u64::try_from(timefmt::days_from_civil(y, m, day)).ok()?;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms))
}
