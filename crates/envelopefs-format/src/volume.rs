//! The volume config, `BACKING/envelopefs.json` (docs/FORMAT.md §Volume config). Not secret.
//!
//! ```json
//! { "format": "envelopefs-volume", "version": 1,
//!   "volume_id": "<uuid>", "created": <unix seconds>,
//!   "block_size": 4096, "default_key": "alias/default", "keystore": "keystore.json",
//!   "features": ["header-ab-v1", "blocks-aes256gcmsiv-v1", "last-block-flag"],
//!   "volume_key": { "key_id": "<uuid>", "version": 1, "blob": "<hex>" } }
//! ```
//! Every feature listed must be known to this build, otherwise the volume refuses to mount
//! (as ext4 and gocryptfs do): a newer writer may rely on it for correctness.

use serde::{Deserialize, Serialize};

use super::FormatError;
use super::header::check_block_size;

/// `format` field value.
pub(crate) const VOLUME_FORMAT: &str = "envelopefs-volume";
/// The config version this build writes.
pub(crate) const VOLUME_VERSION: u32 = 1;
/// Features every version-1 volume lists; a config missing one is refused.
pub(crate) const REQUIRED_FEATURES: &[&str] =
    &["header-ab-v1", "blocks-aes256gcmsiv-v1", "last-block-flag"];
/// No holes: every block is sealed, an all-zero block fails authentication and an empty file
/// with a header ends in an empty sealed block (docs/FORMAT.md §4.4). Written on init since
/// wave 2; volumes without it keep their v1 behaviour.
pub const SEALED_HOLES: &str = "sealed-holes";
/// Entry names, symlink targets and `user.*` xattr names are encrypted (docs/FORMAT.md §10).
/// Written on init since wave 3 unless `--plaintext-names`; volumes without it keep names in
/// the clear.
pub const ENCRYPTED_NAMES: &str = "encrypted-names";
/// Some files may carry customer-key (SSE-C) slots (docs/FORMAT.md §4.6): added to the config
/// the first time a user asks a mount to wrap their files under their own key, so that an
/// older build refuses the volume instead of failing those files one by one.
pub const SSE_C: &str = "sse-c";
/// Features this build understands (and writes on init).
pub(crate) const KNOWN_FEATURES: &[&str] = &[
    "header-ab-v1",
    "blocks-aes256gcmsiv-v1",
    "last-block-flag",
    SEALED_HOLES,
    ENCRYPTED_NAMES,
    SSE_C,
];
/// Default plaintext block size.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// The parsed volume config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Always [`VOLUME_FORMAT`].
    pub format: String,
    /// Config version.
    pub version: u32,
    /// Random volume id (bound into every data key's encryption context).
    pub volume_id: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Plaintext block size of every file.
    pub block_size: u32,
    /// Key id or alias new files are wrapped under.
    pub default_key: String,
    /// Keystore path, relative to the backing directory unless absolute.
    pub keystore: String,
    /// Feature flags.
    pub features: Vec<String>,
    /// The volume key (encrypts xattr values), wrapped by the key service.
    pub volume_key: WrappedKeyRecord,
}

/// A wrapped key as stored in JSON: CMK id, key-material version and the hex blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKeyRecord {
    /// CMK id, hyphenated UUID.
    pub key_id: String,
    /// Key-material version.
    pub version: u32,
    /// Lowercase hex of the key service's blob.
    pub blob: String,
}

impl VolumeConfig {
    /// A new config with every known feature but `sse-c` (added when first used).
    pub fn new(
        volume_id: String,
        created: u64,
        block_size: u32,
        default_key: String,
        keystore: String,
        volume_key: WrappedKeyRecord,
    ) -> Self {
        VolumeConfig {
            format: VOLUME_FORMAT.to_owned(),
            version: VOLUME_VERSION,
            volume_id,
            created,
            block_size,
            default_key,
            keystore,
            features: KNOWN_FEATURES
                .iter()
                .filter(|f| **f != SSE_C)
                .map(|s| (*s).to_owned())
                .collect(),
            volume_key,
        }
    }

    /// Parses and validates a config.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let c: VolumeConfig =
            serde_json::from_slice(bytes).map_err(|e| FormatError::BadConfig(e.to_string()))?;
        if c.format != VOLUME_FORMAT {
            return Err(FormatError::BadConfig(format!(
                "format is '{}', expected '{VOLUME_FORMAT}'",
                c.format
            )));
        }
        if c.version != VOLUME_VERSION {
            return Err(FormatError::BadConfig(format!(
                "config version {} is not supported (this build reads {VOLUME_VERSION}); upgrade envelopefs",
                c.version
            )));
        }
        if let Some(f) = c
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(FormatError::UnknownFeature(f.clone()));
        }
        if let Some(f) = REQUIRED_FEATURES
            .iter()
            .find(|f| !c.features.iter().any(|have| have == *f))
        {
            return Err(FormatError::BadConfig(format!(
                "feature '{f}', which every version-1 volume has, is missing: \
                 the config was edited or damaged"
            )));
        }
        check_block_size(c.block_size)?;
        Ok(c)
    }

    /// True when the volume has the `sealed-holes` feature.
    pub fn sealed_holes(&self) -> bool {
        self.features.iter().any(|f| f == SEALED_HOLES)
    }

    /// True when the volume has the `encrypted-names` feature.
    pub fn encrypted_names(&self) -> bool {
        self.features.iter().any(|f| f == ENCRYPTED_NAMES)
    }

    /// Serialises the config (pretty JSON, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("BUG: config serialisation");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeConfig {
        VolumeConfig::new(
            "v".into(),
            1,
            4096,
            "alias/default".into(),
            "keystore.json".into(),
            WrappedKeyRecord {
                key_id: "k".into(),
                version: 1,
                blob: "00".into(),
            },
        )
    }

    #[test]
    fn round_trip() {
        assert_eq!(VolumeConfig::parse(&sample().to_bytes()).unwrap(), sample());
    }

    #[test]
    fn unknown_feature_refuses() {
        let mut c = sample();
        c.features.push("encrypted-names-v9".into());
        assert_eq!(
            VolumeConfig::parse(&c.to_bytes()),
            Err(FormatError::UnknownFeature("encrypted-names-v9".into()))
        );
    }

    #[test]
    fn a_missing_base_feature_refuses_and_sealed_holes_is_optional() {
        let mut c = sample();
        assert!(c.sealed_holes(), "new volumes have it");
        c.features.retain(|f| f != SEALED_HOLES);
        let parsed = VolumeConfig::parse(&c.to_bytes()).unwrap();
        assert!(!parsed.sealed_holes(), "v1 volumes without it still open");
        c.features.retain(|f| f != "last-block-flag");
        assert!(matches!(
            VolumeConfig::parse(&c.to_bytes()),
            Err(FormatError::BadConfig(m)) if m.contains("last-block-flag")
        ));
    }

    #[test]
    fn bad_block_size_refuses() {
        let mut c = sample();
        c.block_size = 3000;
        assert!(VolumeConfig::parse(&c.to_bytes()).is_err());
    }
}
