//! The keystore file: every CMK's material, encrypted under a key derived from a passphrase
//! or a key file, plus non-secret key records and aliases, authenticated by a MAC.
//!
//! # File layout (version 2; docs/FORMAT.md §6 is the contract)
//!
//! A UTF-8 JSON object (written pretty-printed, mode 0600 when new, by atomic replace that
//! keeps an existing file's mode and, where allowed, owner):
//!
//! ```text
//! {
//!   "format":  "envelopefs-keystore",
//!   "version": 2,
//!   "kdf":     {"alg":"argon2id","salt":"<hex 16 B>","m_kib":65536,"t":3,"p":1}
//!            | {"alg":"keyfile","salt":"<hex 16 B>"},
//!   "body":    "<string: the JSON text of the body, see below>",
//!   "mac":     "<hex 32 B: blake3::keyed_hash(mac_key, kdf_bytes ‖ UTF-8 bytes of the body)>"
//! }
//! ```
//!
//! `kdf_bytes` is [`Kdf::canonical`](crate::kdf). Version 1 (still read, rewritten as 2
//! at the next change) has no `kdf_bytes` in its MAC and no `kdf` copy in its body.
//!
//! Readers check `format`, then `version` (1 or 2; a larger one is refused as written by a
//! newer envelopefs), then that the body's copy of `kdf` equals the top-level one (version 2),
//! then derive the keys, then verify `mac`, and only then trust `body`.
//!
//! # Keys
//!
//! The root key and the keys derived from it are described in `crate::kdf`: `wrap_key`
//! seals CMK material, `mac_key` authenticates the body, `check` tells a wrong secret from a
//! modified file.
//!
//! `check` is stored in the body. When the MAC fails, a reader compares the (unauthenticated)
//! stored `check` with its own: equal means the passphrase is right and the file was modified
//! ([`KeyError::Corrupt`]); different means [`KeyError::WrongPassphrase`]. Nothing is written in
//! either case.
//!
//! # Body (the string in `body`)
//!
//! ```text
//! {"created": <u64 secs>, "check": "<hex 16 B>",
//!  "admins": [<uid>, ...],                             (crate::admins)
//!  "kdf": <copy of the top-level kdf>,                 (version 2)
//!  "keys": [ <key record>, ... ],                      (layout in crate::record)
//!  "aliases": {"alias/default": "<key id>", ...},
//!  "deleted": [ {"key_id": "<uuid>", "deletion_date": <secs>, "description": "<text>"} ] }
//! ```
//!
//! Versions are numbered 1, 2, ...; the last is the current one. Unknown fields of the body,
//! of key records and of version records are kept verbatim on rewrite.
//!
//! # Writers and readers
//!
//! Every change ([`Keystore::transact`]) holds an advisory lock (`flock`) on
//! `<keystore>.lock` while it re-reads the file if another process changed it, applies the
//! change and writes the file (atomic replace); a file changed by something that does not take
//! the lock is a [`KeyError::Conflict`], nothing written. A long-lived reader (the mount daemon)
//! notices another process's write with one `stat` (device, inode, size, mtime, ctime: every
//! write is a new inode) and re-reads the file with [`Keystore::reload_if_changed`], which
//! verifies the MAC with the keys derived at open: no second Argon2 run.
//!
//! `material` of version `v` of key `K` (the 32-byte CMK material `M`):
//!
//! ```text
//! nonce (12 B, random) ‖ AES-256-GCM-SIV_wrap_key(M) (32 B) ‖ tag (16 B)
//! associated data = "envelopefs cmk material v1" (26 B ASCII) ‖ K (16 raw UUID bytes) ‖ v (u32 BE)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::custody::{Custody, VersionKey};
use crate::kdf::{Kdf, Keys, SALT_LEN, derive_root};
pub use crate::record::{DeletedKey, KeyRecord, Origin, RotationType, VersionRecord};
use crate::secret::{KeyMaterial, Unlock, random_bytes};
use crate::{KeyError, KeyId};
use envelopefs_format::context::hex;

mod disk;

use disk::FileStamp;

/// The `format` field.
pub(crate) const FORMAT_NAME: &str = "envelopefs-keystore";
/// The keystore version this build writes; it reads this one and version 1 (whose MAC does
/// not cover `kdf`), which it rewrites as this one at the next change.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Argon2id memory cost of new keystores, KiB (64 MiB).
pub(crate) const DEFAULT_M_KIB: u32 = 65536;
/// Argon2id passes of new keystores.
pub(crate) const DEFAULT_T: u32 = 3;
/// Argon2id lanes of new keystores.
pub(crate) const DEFAULT_P: u32 = 1;
/// The alias of the key [`Keystore::create`] makes.
pub(crate) const DEFAULT_ALIAS: &str = "alias/default";
/// The description of the key [`Keystore::create`] makes.
pub(crate) const DEFAULT_DESCRIPTION: &str = "default key created by envelopefs init";

const MATERIAL_AAD: &[u8] = b"envelopefs cmk material v1";
/// The body member holding the audit trail's checkpoint (docs/FORMAT.md §9).
const AUDIT_CHECKPOINT_FIELD: &str = "audit_checkpoint";

#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct Body {
    created: u64,
    check: String,
    #[serde(default)]
    pub(super) keys: Vec<KeyRecord>,
    #[serde(default)]
    pub(super) aliases: BTreeMap<String, String>,
    /// Tombstones of keys whose deletion window passed.
    #[serde(default)]
    pub(super) deleted: Vec<DeletedKey>,
    /// The volume administrators' uids: recorded at creation (the creating user), changed
    /// only by an administrator. Absent in keystores written by envelopefs before 0.2 (see
    /// [`Keystore::open`] for how those are migrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) admins: Option<Vec<u32>>,
    /// A copy of the top-level `kdf` (version 2): the MAC covers it, and comparing it with
    /// the top-level one before deriving tells a modified kdf from a wrong passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<Kdf>,
    /// Fields a later version added; kept verbatim on rewrite.
    #[serde(flatten)]
    pub(super) extra: BTreeMap<String, serde_json::Value>,
}

/// An open keystore: key records, aliases and the decrypted material of every CMK version.
pub struct Keystore {
    /// The file; `None` for an in-memory keystore (tests), whose writes are no-ops.
    path: Option<PathBuf>,
    kdf: Kdf,
    pub(super) keys: Keys,
    pub(super) body: Body,
    /// Decrypted CMK material by (key, version); zeroized on drop.
    pub(super) materials: BTreeMap<(KeyId, u32), KeyMaterial>,
    /// A hash of the whole file as last read or written, to notice another writer (the
    /// `mac` alone would not do: a file edited by hand may keep it).
    disk_digest: Option<blake3::Hash>,
    /// The identity of a file version that failed to verify, so it is reported once, not at
    /// every operation ([`Keystore::changed_on_disk`] is false for it).
    /// (`Some(None)`: the file was missing or could not be examined.)
    rejected: Option<Option<FileStamp>>,
    /// The file's identity as last read or written, to notice a change with one `stat`.
    stamp: Option<FileStamp>,
    /// The token holding this keystore's CMK versions (kdf `pkcs11`); `None` when the
    /// keystore holds them itself (software custody).
    pub(super) custody: Option<std::sync::Arc<dyn Custody>>,
    /// The crypto user this process logged in as (`crate::cusers`), which restricts it to the
    /// keys shared with it; `None` for the token user or a passphrase keystore.
    pub(crate) session_user: Option<String>,
}

impl Keystore {
    /// Creates a keystore file at `path` holding one CMK aliased `alias/default`. Passphrases
    /// are stretched with Argon2id at 64 MiB, t = 3, p = 1. Refuses to overwrite a file.
    pub fn create(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        Self::create_with_params(path, unlock, DEFAULT_M_KIB, DEFAULT_T, DEFAULT_P)
    }

    /// [`Keystore::create`] with chosen Argon2id costs, for tests (real keystores use the
    /// defaults). The costs are stored in the file and used by every open.
    pub(crate) fn create_with_params(
        path: &Path,
        unlock: &Unlock,
        m_kib: u32,
        t: u32,
        p: u32,
    ) -> Result<Self, KeyError> {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::AlreadyExists(format!(
                "keystore {}",
                path.display()
            )));
        }
        let salt = hex(&random_bytes::<SALT_LEN>()?);
        let kdf = match unlock {
            Unlock::Passphrase(_) => Kdf::Argon2id { salt, m_kib, t, p },
            Unlock::KeyFile(_) => Kdf::KeyFile { salt },
            Unlock::HsmPin(_) => {
                return Err(KeyError::InvalidArgument(
                    "a keystore held by a PKCS#11 token is created through the envelopefs-hsm \
                     crate (envelopefs init --hsm-module)"
                        .into(),
                ));
            }
        };
        let root = derive_root(&kdf, unlock, path, true)?;
        let mut ks = Self::new_with_default_key(Some(path.to_owned()), kdf, &root, None)?;
        ks.save()?;
        log::debug!("created keystore {}", path.display());
        Ok(ks)
    }

    /// Creates a keystore file at `path` whose CMK versions live in `custody` (a PKCS#11
    /// token) and whose root key the token computes: no passphrase. Holds one CMK aliased
    /// `alias/default`, generated in the token. Refuses to overwrite a file.
    pub fn create_with_custody(
        path: &Path,
        custody: std::sync::Arc<dyn Custody>,
    ) -> Result<Self, KeyError> {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::AlreadyExists(format!(
                "keystore {}",
                path.display()
            )));
        }
        let salt = random_bytes::<SALT_LEN>()?;
        let info = custody.info();
        let root_object = format!("envelopefs keystore {}", hex(&salt));
        let secret = custody.keystore_secret(&root_object, &salt, true)?;
        let root = crate::kdf::root_from_token(&secret, &salt);
        let kdf = Kdf::Pkcs11 {
            salt: hex(&salt),
            module: info.module,
            token_label: info.token_label,
            root_object,
        };
        let mut ks = Self::new_with_default_key(Some(path.to_owned()), kdf, &root, Some(custody))?;
        ks.save()?;
        log::debug!(
            "created keystore {} (CMKs in a PKCS#11 token)",
            path.display()
        );
        Ok(ks)
    }

    /// The token objects this keystore names: its root object (first, `true`), then every
    /// CMK version's (`false`), for a backup of the token. Empty without a token.
    pub fn token_objects(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        if let Kdf::Pkcs11 { root_object, .. } = &self.kdf {
            out.push((true, root_object.clone()));
        }
        for k in &self.body.keys {
            for v in k.versions() {
                if let Some(label) = &v.token_object {
                    out.push((false, label.clone()));
                }
            }
        }
        out
    }

    /// Whether the CMK versions live in a token (PKCS#11 custody).
    pub fn has_custody(&self) -> bool {
        self.custody.is_some()
    }

    /// The key of version `version` of `id`, in whichever custody holds it; `None` when the
    /// version is unknown or has no material.
    pub(crate) fn version_key(&self, id: &KeyId, version: u32) -> Option<VersionKey<'_>> {
        let rec = self.key(id)?;
        let v = rec.versions().iter().find(|v| v.version == version)?;
        match (&v.token_object, &self.custody) {
            (Some(label), Some(c)) => Some(VersionKey::Held(c.as_ref(), label)),
            (Some(_), None) => None,
            (None, _) => self.material(id, version).map(VersionKey::Software),
        }
    }

    /// An in-memory keystore with a random root key and one Enabled CMK aliased
    /// `alias/default`. Never written; no Argon2, so it is fast.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn in_memory() -> Self {
        let kdf = Kdf::KeyFile {
            salt: hex(&[0; SALT_LEN]),
        };
        Self::new_with_default_key(None, kdf, &KeyMaterial::random(), None)
            .expect("BUG: in-memory keystore")
    }

    /// An in-memory keystore like [`Keystore::in_memory`] whose CMK versions live in
    /// `custody` (tests of a custody provider).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn in_memory_with_custody(
        custody: std::sync::Arc<dyn Custody>,
    ) -> Result<Self, KeyError> {
        let kdf = Kdf::KeyFile {
            salt: hex(&[0; SALT_LEN]),
        };
        Self::new_with_default_key(None, kdf, &KeyMaterial::random(), Some(custody))
    }

    fn new_with_default_key(
        path: Option<PathBuf>,
        kdf: Kdf,
        root: &KeyMaterial,
        custody: Option<std::sync::Arc<dyn Custody>>,
    ) -> Result<Self, KeyError> {
        let keys = Keys::from_root(root);
        let body = Body {
            created: now_secs(),
            check: keys.check.clone(),
            admins: Some(vec![crate::Caller::current().uid]),
            ..Body::default()
        };
        let mut ks = Keystore {
            path,
            kdf,
            keys,
            body,
            materials: BTreeMap::new(),
            disk_digest: None,
            rejected: None,
            stamp: None,
            custody,
            session_user: None,
        };
        let id = ks.add_key(DEFAULT_DESCRIPTION, Origin::AwsKms, now_secs())?;
        ks.body
            .aliases
            .insert(DEFAULT_ALIAS.to_owned(), id.to_string());
        Ok(ks)
    }

    /// A keystore written before administrators were recorded in it: its administrator is
    /// the file's owner, read this once, at open (with a warning), and kept in memory, so the
    /// next write by this process records it in the body. Later changes of the file's owner
    /// (a rewrite by another user) never change who the administrator is.
    fn adopt_legacy_admin(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.body.admins.is_some() {
            return;
        }
        let Some(path) = &self.path else { return };
        let Ok(owner) = std::fs::metadata(path).map(|m| m.uid()) else {
            return;
        };
        log::warn!(
            "keystore {} records no administrator (written by an older envelopefs); taking its \
             owner, uid {owner}, as the administrator; the next change to the keystore records \
             it (check with `envelopefs key admin list`)",
            path.display()
        );
        self.body.admins = Some(vec![owner]);
    }

    /// The volume administrators' uids (root is an administrator too, without being listed).
    pub fn admins(&self) -> &[u32] {
        self.body.admins.as_deref().unwrap_or(&[])
    }

    /// The keystore file (`None` when in memory).
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The key of the keystore's audit log (`blake3::derive_key("envelopefs audit key v1", root)`).
    pub fn audit_key(&self) -> [u8; 32] {
        *self.keys.audit.expose_secret()
    }

    /// The audit trail's head as of this keystore's last write (the body's `audit_checkpoint`,
    /// kept among the body's other fields; see `crate::audit::checkpoint`), if any.
    pub fn audit_checkpoint(&self) -> Option<crate::audit::Checkpoint> {
        let v = self.body.extra.get(AUDIT_CHECKPOINT_FIELD)?;
        serde_json::from_value(v.clone()).ok()
    }

    /// Records the audit trail's head in the body, in memory (saved with the next write).
    pub(super) fn set_audit_checkpoint(&mut self, cp: &crate::audit::Checkpoint) {
        if let Ok(v) = serde_json::to_value(cp) {
            self.body.extra.insert(AUDIT_CHECKPOINT_FIELD.to_owned(), v);
        }
    }

    /// All key records, in creation order.
    pub(crate) fn keys(&self) -> &[KeyRecord] {
        &self.body.keys
    }

    /// One key record.
    pub(crate) fn key(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.body.keys.iter().find(|k| k.key_id == *id)
    }

    /// Tombstones of deleted keys.
    #[cfg(test)]
    pub(crate) fn deleted_keys(&self) -> &[DeletedKey] {
        &self.body.deleted
    }

    /// All aliases: name → key id (hyphenated).
    pub(crate) fn aliases(&self) -> &BTreeMap<String, String> {
        &self.body.aliases
    }

    /// The aliases that point at `id`, sorted.
    pub(crate) fn aliases_of(&self, id: &KeyId) -> Vec<String> {
        let id = id.to_string();
        self.body
            .aliases
            .iter()
            .filter(|(_, t)| **t == id)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Resolves a key id (hyphenated UUID) or an alias (`alias/...`) to an existing key. A
    /// deleted key is [`KeyError::Deleted`], which says when.
    pub(crate) fn resolve(&self, key: &str) -> Result<KeyId, KeyError> {
        let not_found = || KeyError::NotFound(key.to_owned());
        let id: KeyId = match key.starts_with("alias/") {
            true => self.body.aliases.get(key).ok_or_else(not_found)?.parse()?,
            false => key.parse()?,
        };
        self.require_exists(&id)?;
        Ok(id)
    }

    /// Fails with NotFound (or Deleted, for a tombstone) unless `id` exists.
    pub(crate) fn require_exists(&self, id: &KeyId) -> Result<(), KeyError> {
        if self.key(id).is_some() {
            return Ok(());
        }
        let s = id.to_string();
        Err(match self.body.deleted.iter().find(|d| d.key_id == s) {
            Some(d) => KeyError::Deleted {
                key_id: s,
                deletion_date: d.deletion_date,
            },
            None => KeyError::NotFound(s),
        })
    }

    /// The decrypted material of one version of one key. Never leaves the `keys` module.
    pub(crate) fn material(&self, id: &KeyId, version: u32) -> Option<&KeyMaterial> {
        self.materials.get(&(*id, version))
    }

    /// Creates an Enabled CMK with fresh material, and saves.
    pub fn create_key(&mut self, description: &str) -> Result<KeyId, KeyError> {
        self.transact(|ks| ks.add_key(description, Origin::AwsKms, now_secs()))
    }

    /// Adds a material version to `id` (rotation), and saves. Returns the new version.
    #[cfg(test)]
    pub(crate) fn add_version(&mut self, id: &KeyId, how: RotationType) -> Result<u32, KeyError> {
        self.transact(|ks| ks.push_version(id, how, now_secs()))
    }

    /// Changes the non-secret fields of one key record through `f`, and saves.
    #[cfg(test)]
    pub(crate) fn update_key<F>(&mut self, id: &KeyId, f: F) -> Result<(), KeyError>
    where
        F: FnOnce(&mut KeyRecord) -> Result<(), KeyError>,
    {
        self.transact(|ks| f(ks.record_mut(id)?))
    }

    /// Points `alias` at `target` (or removes it when `None`), and saves.
    #[cfg(test)]
    pub(crate) fn set_alias(
        &mut self,
        alias: &str,
        target: Option<&KeyId>,
    ) -> Result<(), KeyError> {
        self.transact(|ks| {
            match target {
                Some(id) => ks.body.aliases.insert(alias.to_owned(), id.to_string()),
                None => ks.body.aliases.remove(alias),
            };
            Ok(())
        })
    }

    pub(super) fn record_mut(&mut self, id: &KeyId) -> Result<&mut KeyRecord, KeyError> {
        self.require_exists(id)?;
        Ok(self
            .body
            .keys
            .iter_mut()
            .find(|k| k.key_id == *id)
            .expect("checked above"))
    }
}

pub(super) fn material_aad(id: &KeyId, version: u32) -> Vec<u8> {
    [MATERIAL_AAD, &id.0, &version.to_be_bytes()].concat()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Key states and aliases of the keystore file at `path`, read without the passphrase: **not
/// authenticated**, for display next to information that needs no key (`envelopefs scan`).
/// Empty when the file cannot be read or parsed.
pub fn labels_unverified(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    let read = || -> Option<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(path).ok()?;
        let top: serde_json::Value = serde_json::from_str(&text).ok()?;
        let body: serde_json::Value = serde_json::from_str(top.get("body")?.as_str()?).ok()?;
        let mut labels = BTreeMap::new();
        for k in body.get("keys")?.as_array()? {
            let id = k.get("key_id")?.as_str()?.to_owned();
            let state = k.get("state").and_then(|s| s.as_str()).unwrap_or("?");
            labels.insert(id, state.to_owned());
        }
        for (alias, target) in body.get("aliases")?.as_object()? {
            if let Some(label) = target.as_str().and_then(|t| labels.get_mut(t)) {
                label.push_str(&format!(", {alias}"));
            }
        }
        for d in body
            .get("deleted")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(id) = d.get("key_id").and_then(|i| i.as_str()) {
                labels.insert(id.to_owned(), "DELETED".into());
            }
        }
        Some(labels)
    };
    read().unwrap_or_default()
}

#[cfg(test)]
#[path = "keystore_tests.rs"]
mod tests;
