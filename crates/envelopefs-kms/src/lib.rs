//! The key service: the only holder of customer master keys (CMKs).
//!
//! The filesystem talks to keys only through [`KeyService`]. Today the implementation is
//! [`local::LocalKms`], an embedded service modelled on AWS KMS whose CMK material lives in an
//! encrypted keystore file; a soft-HSM, a PKCS#11 HSM or a remote KMS can implement the same
//! trait later. CMK material never leaves an implementation in plaintext; data keys leave it
//! only as [`DataKey`], which zeroizes itself on drop.

pub mod access;
pub mod admins;
pub mod audit;
pub mod cusers;
pub mod custody;
pub mod error;
pub mod events;
pub mod import;
mod kdf;
pub mod keystore;
mod keystore_ops;
pub mod lifecycle;
pub mod local;
pub mod policy;
pub mod principal;
pub mod record;
pub mod rotation;
pub mod secret;
pub mod timefmt;

pub use error::KeyError;
pub use record::Origin;
pub use secret::{DATA_KEY_LEN, DataKey};

use envelopefs_format::context::EncryptionContext;

/// Length of a CMK id (a UUID, as raw bytes).
pub const KEY_ID_LEN: usize = 16;

/// A CMK id: a random (v4) UUID. Displayed hyphenated, as KMS key ids are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).hyphenated())
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        uuid::Uuid::parse_str(s)
            .map(|u| KeyId(*u.as_bytes()))
            .map_err(|_| KeyError::NotFound(s.to_owned()))
    }
}

/// A data key wrapped under one version of one CMK: what a file header's key slot stores.
///
/// `blob` is opaque to everyone but the key service that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// The CMK that wrapped the data key.
    pub key_id: KeyId,
    /// The key-material version of that CMK (1 = original material; each rotation adds one).
    pub version: u32,
    /// The key service's ciphertext (for [`local::LocalKms`]: nonce ‖ ciphertext ‖ tag).
    pub blob: Vec<u8>,
}

/// Who is asking: the process behind a filesystem request, or the CLI user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id (0 when unknown).
    pub pid: u32,
}

impl Caller {
    /// The current process, for CLI commands.
    pub fn current() -> Self {
        let (uid, gid, pid) = envelopefs_sys::current_ids();
        Caller { uid, gid, pid }
    }
}

/// The lifecycle state of a CMK (the subset of KMS key states envelopefs uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyState {
    /// Usable for every operation.
    Enabled,
    /// Cannot wrap or unwrap until enabled again.
    Disabled,
    /// Scheduled for deletion; cannot wrap or unwrap; material destroyed when the window ends.
    PendingDeletion,
    /// Created with external origin; has no material until imported.
    PendingImport,
}

impl KeyState {
    /// The KMS name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Non-secret facts about a CMK, as KMS's DescribeKey returns them (plus its aliases, tags
/// and rotation status, which KMS spreads over other calls).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyMetadata {
    /// The key id, hyphenated UUID.
    pub key_id: String,
    /// Aliases that point at this key (`alias/...`).
    pub aliases: Vec<String>,
    /// Free text.
    pub description: String,
    /// Creation time, seconds since the Unix epoch.
    pub creation_date: u64,
    /// Lifecycle state.
    pub state: KeyState,
    /// The newest key-material version (new wraps use it).
    pub current_version: u32,
    /// How many material versions the key has (all of them still decrypt).
    pub versions: u32,
    /// Where the material came from.
    pub origin: Origin,
    /// When a PendingDeletion key's material will be destroyed (seconds since the epoch).
    pub deletion_date: Option<u64>,
    /// The waiting period chosen when the deletion was scheduled, in days.
    pub pending_window_days: Option<u32>,
    /// When imported material expires (seconds since the epoch); `None` = never.
    pub valid_to: Option<u64>,
    /// Whether automatic rotation is on.
    pub rotation_enabled: bool,
    /// The automatic rotation period, in days.
    pub rotation_period_days: Option<u32>,
    /// When automatic rotation is next due (seconds since the epoch).
    pub next_rotation_date: Option<u64>,
    /// KMS-style tags.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The key-service interface the filesystem uses.
///
/// `key` arguments accept a key id (hyphenated UUID) or an alias (`alias/name`).
pub trait KeyService: Send + Sync {
    /// Makes a fresh random 256-bit data key and wraps it under the newest version of `key`,
    /// binding `context` as associated data. Returns both; the plaintext half must be dropped
    /// (and so zeroized) as soon as it is no longer needed.
    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<(DataKey, WrappedKey), KeyError>;

    /// Unwraps a data key. Fails with [`KeyError::InvalidCiphertext`] when the blob or the
    /// context was altered, and with a state error when the CMK is not Enabled.
    fn decrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<DataKey, KeyError>;

    /// Re-wraps a data key under the newest version of `destination` (which may be the same
    /// CMK) without the plaintext leaving the service.
    fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        destination: &str,
        caller: &Caller,
    ) -> Result<WrappedKey, KeyError>;

    /// Describes one CMK.
    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KeyError>;

    /// A number that changes whenever a key decision may have changed (a key's state, policy
    /// or grants; another process's write included): holders of data keys compare it to decide
    /// again. Cheap enough to call on every read (the embedded service looks at the keystore
    /// file at most every [`GENERATION_CHECK_MS`] ms). A service whose decisions never change
    /// returns 0.
    fn generation(&self) -> u64 {
        0
    }

    /// Records a use of a customer-provided key (SSE-C; the keys live in the mounted daemon,
    /// not in the key service) in the service's audit trail: `event` (`SseCDecrypt`, …), the
    /// key's public id (never the key), the file's context, the caller and the refusal. A
    /// service without an audit trail ignores it.
    fn audit_customer_key(
        &self,
        _event: &str,
        _key_id: &str,
        _context: Option<&EncryptionContext>,
        _caller: &Caller,
        _error: Option<&KeyError>,
    ) {
    }
}

/// How often [`KeyService::generation`] of the embedded service looks for another process's
/// change to the keystore, in milliseconds: the longest a revocation takes to reach open files.
pub const GENERATION_CHECK_MS: u64 = 200;

/// The test vectors of docs/FORMAT.md, for the unit tests that check them.
#[cfg(test)]
pub(crate) mod doc_vectors {
    use std::collections::BTreeMap;

    /// The `key = value` lines of the block `vector NAME` … `end` in docs/FORMAT.md (the values
    /// of a repeated key are concatenated). Panics if there is no such vector.
    pub(crate) fn get(name: &str) -> BTreeMap<String, String> {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md"))
                .expect("docs/FORMAT.md");
        let mut lines = doc.lines().map(str::trim);
        lines
            .find(|l| l.strip_prefix("vector ").map(str::trim) == Some(name))
            .unwrap_or_else(|| panic!("docs/FORMAT.md lacks vector {name}"));
        let mut out = BTreeMap::new();
        for line in lines.take_while(|l| *l != "end") {
            if let Some((k, v)) = line.split_once('=') {
                out.entry(k.trim().to_owned())
                    .or_insert_with(String::new)
                    .push_str(v.trim());
            }
        }
        out
    }
}
