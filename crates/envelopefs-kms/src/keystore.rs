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

use crate::kdf::{Kdf, Keys, SALT_LEN, derive_root};
pub use crate::record::{DeletedKey, KeyRecord, Origin, RotationType, VersionRecord};
use crate::secret::{KeyMaterial, SEALED_LEN, Unlock, open32, random_bytes, unhex};
use crate::{KeyError, KeyId};
use envelopefs_format::context::hex;

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

#[derive(Serialize, Deserialize)]
struct FileTop {
    format: String,
    version: u64,
    kdf: serde_json::Value,
    body: String,
    mac: String,
}

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
    extra: BTreeMap<String, serde_json::Value>,
}

/// What identifies one version of the keystore file on disk, cheaply (one `stat`): every
/// rewrite is an atomic rename of a new file, so the inode changes with each write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
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
        };
        let root = derive_root(&kdf, unlock, path, true)?;
        let mut ks = Self::new_with_default_key(Some(path.to_owned()), kdf, &root)?;
        ks.save()?;
        log::debug!("created keystore {}", path.display());
        Ok(ks)
    }

    /// An in-memory keystore with a random root key and one Enabled CMK aliased
    /// `alias/default`. Never written; no Argon2, so it is fast.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn in_memory() -> Self {
        let kdf = Kdf::KeyFile {
            salt: hex(&[0; SALT_LEN]),
        };
        Self::new_with_default_key(None, kdf, &KeyMaterial::random())
            .expect("BUG: in-memory keystore")
    }

    fn new_with_default_key(
        path: Option<PathBuf>,
        kdf: Kdf,
        root: &KeyMaterial,
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
        };
        let id = ks.add_key(DEFAULT_DESCRIPTION, Origin::AwsKms, now_secs())?;
        ks.body
            .aliases
            .insert(DEFAULT_ALIAS.to_owned(), id.to_string());
        Ok(ks)
    }

    /// Opens and authenticates the keystore at `path`. Runs the KDF once; never writes.
    pub fn open(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        let bad = |why: String| KeyError::corrupt(path, why);
        let stamp = FileStamp::of(path);
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        let top = parse_top(path, &text)?;
        let kdf: Kdf =
            serde_json::from_value(top.kdf.clone()).map_err(|e| bad(format!("bad kdf: {e}")))?;
        check_kdf_copy(path, &top, &kdf)?;
        let keys = Keys::from_root(&derive_root(&kdf, unlock, path, false)?);
        let mut ks = Keystore {
            path: Some(path.to_owned()),
            kdf,
            keys,
            body: Body::default(),
            materials: BTreeMap::new(),
            disk_digest: None,
            rejected: None,
            stamp,
        };
        ks.load_top(top, blake3::hash(text.as_bytes()))?;
        ks.adopt_legacy_admin();
        warn_if_readable_by_others(path);
        log::debug!(
            "opened keystore {} ({} keys)",
            path.display(),
            ks.body.keys.len()
        );
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

    /// Verifies `top` with the derived keys and, only if everything checks, replaces the body
    /// and the decrypted material. On error nothing in `self` changes. A body that records
    /// no administrators (an older writer) keeps the administrators known so far.
    fn load_top(&mut self, top: FileTop, digest: blake3::Hash) -> Result<(), KeyError> {
        let path = self.path.clone().unwrap_or_default();
        let bad = |why: String| KeyError::corrupt(&path, why);
        let stored = unhex::<32>(&top.mac).ok_or_else(|| bad("bad mac field".into()))?;
        let kdf_bytes = self
            .kdf
            .canonical()
            .ok_or_else(|| bad("bad kdf salt".into()))?;
        if self.keys.mac(top.version, &kdf_bytes, &top.body) != blake3::Hash::from_bytes(stored) {
            // Tell a wrong secret from a modified file by the (unauthenticated) check value.
            #[derive(Deserialize)]
            struct CheckOnly {
                check: String,
            }
            let right_secret = serde_json::from_str::<CheckOnly>(&top.body)
                .is_ok_and(|c| c.check == self.keys.check);
            return Err(match right_secret {
                true => {
                    bad("it was modified after it was written (its MAC does not verify)".into())
                }
                false => KeyError::WrongPassphrase { path },
            });
        }
        let mut body: Body =
            serde_json::from_str(&top.body).map_err(|e| bad(format!("bad body: {e}")))?;
        let materials = self.check_and_decrypt(&body).map_err(bad)?;
        if top.version >= 2 && body.kdf.as_ref() != Some(&self.kdf) {
            return Err(bad(
                "its body does not record the kdf it was written with".into()
            ));
        }
        if body.admins.is_none() {
            body.admins = self.body.admins.clone();
        }
        self.body = body;
        self.materials = materials;
        self.disk_digest = Some(digest);
        Ok(())
    }

    /// Validates an authenticated body and decrypts every material version.
    fn check_and_decrypt(
        &self,
        body: &Body,
    ) -> Result<BTreeMap<(KeyId, u32), KeyMaterial>, String> {
        if body.check != self.keys.check {
            return Err("its check value does not match".into());
        }
        if body.admins.as_ref().is_some_and(Vec::is_empty) {
            return Err("it lists no administrator".into());
        }
        let mut materials = BTreeMap::new();
        for (i, k) in body.keys.iter().enumerate() {
            let dup = body.keys[..i].iter().any(|o| o.key_id == k.key_id);
            if let Some(why) = k.problem().or(dup.then_some("it appears twice")) {
                return Err(format!("key {}: {why}", k.key_id));
            }
            for v in &k.versions {
                let Some(sealed) = &v.material else { continue };
                let m = self
                    .open_material(&k.key_id, v.version, sealed)
                    .ok_or_else(|| {
                        format!(
                            "material of key {} version {} is damaged",
                            k.key_id, v.version
                        )
                    })?;
                materials.insert((k.key_id, v.version), m);
            }
        }
        for (alias, target) in &body.aliases {
            if !alias.starts_with("alias/")
                || !body.keys.iter().any(|k| k.key_id.to_string() == *target)
            {
                return Err(format!(
                    "alias {alias} is malformed or points at a missing key"
                ));
            }
        }
        Ok(materials)
    }

    /// Decrypts one sealed material (hex).
    pub(super) fn open_material(
        &self,
        id: &KeyId,
        version: u32,
        sealed: &str,
    ) -> Option<KeyMaterial> {
        let blob = unhex::<SEALED_LEN>(sealed)?;
        let mut m = KeyMaterial::zeroed();
        let wrap = self.keys.wrap.expose_secret();
        open32(
            wrap,
            &material_aad(id, version),
            &blob,
            m.expose_secret_mut(),
        )
        .ok()?;
        Some(m)
    }

    /// Whether the file on disk is no longer the one this keystore last read or wrote, nor
    /// one that already failed to verify (one `stat`). Always false in memory; true when the
    /// file cannot be examined.
    pub(super) fn changed_on_disk(&self) -> bool {
        match &self.path {
            None => false,
            Some(p) => {
                let now = FileStamp::of(p);
                now != self.stamp && self.rejected != Some(now)
            }
        }
    }

    /// Re-reads the file if it changed on disk, re-verifying its MAC with the keys derived at
    /// open (no second KDF run). Returns whether the contents changed. On any error the
    /// in-memory state is left as it was, and the file version is remembered as rejected
    /// (see [`Keystore::changed_on_disk`]); this still re-reads it and fails again.
    pub(crate) fn reload_if_changed(&mut self) -> Result<bool, KeyError> {
        let Some(path) = self.path.clone() else {
            return Ok(false);
        };
        let stamp = FileStamp::of(&path);
        if stamp == self.stamp {
            return Ok(false);
        }
        let result = self.reload(&path, stamp);
        self.rejected = match &result {
            Err(_) => Some(stamp),
            Ok(_) => None,
        };
        result
    }

    fn reload(&mut self, path: &Path, stamp: Option<FileStamp>) -> Result<bool, KeyError> {
        let path = path.to_owned();
        let text = std::fs::read_to_string(&path).map_err(|e| KeyError::io(&path, e))?;
        let digest = blake3::hash(text.as_bytes());
        if Some(digest) == self.disk_digest {
            self.stamp = stamp;
            return Ok(false);
        }
        let top = parse_top(&path, &text)?;
        let kdf = serde_json::from_value::<Kdf>(top.kdf.clone())
            .map_err(|e| KeyError::corrupt(&path, format!("bad kdf: {e}")))?;
        check_kdf_copy(&path, &top, &kdf)?;
        if kdf != self.kdf {
            return Err(KeyError::corrupt(
                &path,
                "its passphrase or key file was changed by another process; restart to unlock it again",
            ));
        }
        self.load_top(top, digest)?;
        self.stamp = stamp;
        log::info!("reloaded keystore {} (changed on disk)", path.display());
        Ok(true)
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

    /// Writes the current state to the file: atomic replace, fresh MAC, the file's mode and
    /// owner kept (docs/FORMAT.md §6). Fails with [`KeyError::Conflict`], writing nothing, if
    /// the file is no longer the one this process last read or wrote. Writers serialize on an
    /// advisory lock on `<keystore>.lock`, so the check and the replace are one step for
    /// every envelopefs process.
    pub(crate) fn save(&mut self) -> Result<(), KeyError> {
        let _lock = self.lock_writers()?;
        self.write_locked()
    }

    /// Takes the writers' lock (`<keystore>.lock`), held until the returned file is dropped;
    /// `None` for an in-memory keystore. A lock file this user may not write (a keystore
    /// shared through group permissions) is locked through a read-only descriptor: `flock`
    /// needs no write access.
    fn lock_writers(&self) -> Result<Option<std::fs::File>, KeyError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let lock_path = lock_path(path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => std::fs::File::open(&lock_path),
                _ => Err(e),
            })
            .map_err(|e| KeyError::io(&lock_path, e))?;
        lock.lock().map_err(|e| KeyError::io(&lock_path, e))?;
        Ok(Some(lock))
    }

    /// [`Keystore::save`] with the writers' lock already held.
    fn write_locked(&mut self) -> Result<(), KeyError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if let Some(expected) = self.disk_digest {
            let text = std::fs::read(&path).map_err(|e| KeyError::io(&path, e))?;
            if blake3::hash(&text) != expected {
                return Err(KeyError::Conflict { path });
            }
        }
        let json = |r: serde_json::Result<String>| {
            r.map_err(|e| KeyError::Internal(format!("serialize keystore: {e}")))
        };
        self.body.kdf = Some(self.kdf.clone());
        let body = json(serde_json::to_string(&self.body))?;
        let kdf_bytes = self
            .kdf
            .canonical()
            .ok_or_else(|| KeyError::Internal("bad kdf salt".into()))?;
        let mac = self
            .keys
            .mac(FORMAT_VERSION.into(), &kdf_bytes, &body)
            .to_hex()
            .to_string();
        let kdf = serde_json::to_value(&self.kdf)
            .map_err(|e| KeyError::Internal(format!("serialize kdf: {e}")))?;
        let top = FileTop {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION.into(),
            kdf,
            body,
            mac,
        };
        let text = json(serde_json::to_string_pretty(&top))? + "\n";
        let digest = blake3::hash(text.as_bytes());
        let kept = envelopefs_sys::atomic::atomic_write_preserving(&path, text.as_bytes(), 0o600)
            .map_err(|e| KeyError::io(&path, e))?;
        if let envelopefs_sys::atomic::Kept::ModeOnly { uid } = kept {
            log::warn!(
                "keystore {} was owned by uid {uid}; only root may give a file away, so it is \
                 now owned by uid {} (its mode is kept; who administers the keys is recorded \
                 inside it and did not change); to restore the owner run `chown {uid} {}` as root",
                path.display(),
                crate::Caller::current().uid,
                path.display()
            );
        }
        self.disk_digest = Some(digest);
        self.rejected = None;
        // Still under the lock: no other envelopefs process can have replaced the file since.
        self.stamp = FileStamp::of(&path);
        Ok(())
    }

    /// Runs `f` on the keystore, then saves; if either fails, the in-memory state is rolled
    /// back, so memory and file never disagree. The whole step holds the writers' lock, and
    /// first re-reads the file if another process changed it: `f` always sees the newest
    /// state, so concurrent envelopefs writers serialize instead of conflicting, and what `f`
    /// does lands in one write or not at all.
    pub(super) fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let _lock = self.lock_writers()?;
        self.reload_if_changed()?;
        let before = self.body.clone();
        let known: Vec<(KeyId, u32)> = self.materials.keys().copied().collect();
        let result = f(self).and_then(|t| self.write_locked().map(|()| t));
        if result.is_err() {
            self.body = before;
            self.materials.retain(|k, _| known.contains(k));
        }
        result
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

/// The advisory lock file that serializes keystore writers.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Parses the top-level object, checking `format` and `version` before anything else.
fn parse_top(path: &Path, text: &str) -> Result<FileTop, KeyError> {
    #[derive(Deserialize)]
    struct Head {
        format: Option<String>,
        version: Option<u64>,
    }
    let bad = |why: String| KeyError::corrupt(path, why);
    let head: Head = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if head.format.as_deref() != Some(FORMAT_NAME) {
        return Err(bad(format!(
            "not an envelopefs keystore (no \"format\": \"{FORMAT_NAME}\")"
        )));
    }
    match head.version {
        Some(v) if v == 1 || v == u64::from(FORMAT_VERSION) => {}
        Some(v) if v > u64::from(FORMAT_VERSION) => {
            let why = format!(
                "keystore version {v} was written by a newer envelopefs (this one reads version {FORMAT_VERSION}); upgrade envelopefs"
            );
            return Err(bad(why));
        }
        _ => return Err(bad("missing or invalid keystore version".into())),
    }
    serde_json::from_str(text).map_err(|e| bad(format!("bad keystore fields: {e}")))
}

/// Version 2: the body's copy of `kdf` (read before the MAC can be checked) must equal the
/// top-level one, else the file was modified; checked before the KDF runs, so an edited
/// cost is reported as such instead of being run, and instead of looking like a wrong
/// passphrase. (Whoever edits both copies gets a MAC failure after the KDF: a wrong
/// passphrase or a modified file, which cannot be told apart.)
fn check_kdf_copy(path: &Path, top: &FileTop, kdf: &Kdf) -> Result<(), KeyError> {
    if top.version < 2 {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct KdfOnly {
        kdf: Option<Kdf>,
    }
    let copy = serde_json::from_str::<KdfOnly>(&top.body)
        .ok()
        .and_then(|b| b.kdf);
    if copy.as_ref() == Some(kdf) {
        return Ok(());
    }
    Err(KeyError::corrupt(
        path,
        format!(
            "it was modified after it was written: its kdf ({}) is not the one recorded in its \
             body ({}); nothing was derived or written",
            kdf.describe(),
            copy.map_or_else(|| "none".into(), |k| k.describe())
        ),
    ))
}

pub(super) fn material_aad(id: &KeyId, version: u32) -> Vec<u8> {
    [MATERIAL_AAD, &id.0, &version.to_be_bytes()].concat()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if path
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    {
        log::warn!(
            "keystore {} is accessible by other users; run `chmod 600` on it",
            path.display()
        );
    }
}
#[cfg(test)]
#[path = "keystore_tests.rs"]
mod tests;
