//! The keystore file on disk: its top-level object (format, version, kdf, MAC), reading and
//! verifying it, noticing another writer's change, and the locked, atomic write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Body, FORMAT_NAME, FORMAT_VERSION, Keystore, material_aad};
use crate::custody::{Custody, CustodyInfo};
use crate::kdf::{Kdf, Keys, derive_root, root_from_token};
use crate::secret::{KeyMaterial, SEALED_LEN, Unlock, open32, unhex};
use crate::{KeyError, KeyId};

impl Keystore {
    /// Opens and authenticates the keystore at `path`. Runs the KDF once; never writes.
    pub fn open(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        Self::open_with(path, None, |kdf| derive_root(kdf, unlock, path, false))
    }

    /// Opens and authenticates a keystore whose CMK versions live in `custody` (kdf
    /// `pkcs11`): the token computes the root key. Never writes.
    pub fn open_with_custody(
        path: &Path,
        custody: std::sync::Arc<dyn Custody>,
    ) -> Result<Self, KeyError> {
        let c = custody.clone();
        Self::open_with(path, Some(custody), move |kdf| match kdf {
            Kdf::Pkcs11 { root_object, .. } => {
                let salt = kdf
                    .salt()
                    .ok_or_else(|| KeyError::corrupt(path, "bad kdf salt"))?;
                let secret = c.keystore_secret(root_object, &salt, false)?;
                Ok(root_from_token(&secret, &salt))
            }
            other => Err(KeyError::InvalidArgument(format!(
                "keystore {} is protected by a {}, not by a PKCS#11 token; open it without \
                 --hsm-module",
                path.display(),
                other.describe()
            ))),
        })
    }

    /// Where the CMKs of the keystore at `path` live, read **without verifying** the file
    /// (the MAC is checked when it is opened): `Some` for a keystore held by a PKCS#11 token.
    pub fn custody_unverified(path: &Path) -> Result<Option<CustodyInfo>, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        let top = parse_top(path, &text)?;
        let kdf: Kdf = serde_json::from_value(top.kdf)
            .map_err(|e| KeyError::corrupt(path, format!("bad kdf: {e}")))?;
        Ok(match kdf {
            Kdf::Pkcs11 {
                module,
                token_label,
                ..
            } => Some(CustodyInfo {
                module,
                token_label,
            }),
            _ => None,
        })
    }

    fn open_with(
        path: &Path,
        custody: Option<std::sync::Arc<dyn Custody>>,
        derive: impl FnOnce(&Kdf) -> Result<KeyMaterial, KeyError>,
    ) -> Result<Self, KeyError> {
        let bad = |why: String| KeyError::corrupt(path, why);
        let stamp = FileStamp::of(path);
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        let top = parse_top(path, &text)?;
        let kdf: Kdf =
            serde_json::from_value(top.kdf.clone()).map_err(|e| bad(format!("bad kdf: {e}")))?;
        check_kdf_copy(path, &top, &kdf)?;
        let keys = Keys::from_root(&derive(&kdf)?);
        let mut ks = Keystore {
            path: Some(path.to_owned()),
            kdf,
            keys,
            body: Body::default(),
            materials: BTreeMap::new(),
            disk_digest: None,
            rejected: None,
            stamp,
            custody,
            session_user: None,
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
                if v.token_object.is_some() && self.custody.is_none() {
                    return Err(format!(
                        "key {} version {} lives in a PKCS#11 token, but the keystore was not \
                         opened through one",
                        k.key_id, v.version
                    ));
                }
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
    pub(crate) fn open_material(
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
    pub(crate) fn changed_on_disk(&self) -> bool {
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
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let _lock = self.lock_writers()?;
        self.reload_if_changed()?;
        let before = self.body.clone();
        let known: Vec<(KeyId, u32)> = self.materials.keys().copied().collect();
        let result = f(self).and_then(|t| self.write_locked().map(|()| t));
        let (gone, kept) = match result.is_ok() {
            true => (token_objects(&before), token_objects(&self.body)),
            false => (token_objects(&self.body), token_objects(&before)),
        };
        if result.is_err() {
            self.body = before;
            self.materials.retain(|k, _| known.contains(k));
        }
        // Token objects follow the file: those a saved change dropped (a destroyed key) and
        // those a failed change made are destroyed, after the file says so.
        if let Some(c) = &self.custody {
            for label in gone.difference(&kept) {
                if let Err(e) = c.destroy(label) {
                    log::error!(
                        "cannot destroy token object {label:?}: {e}; it is no longer used; \
                         delete it with pkcs11-tool --delete-object"
                    );
                }
            }
        }
        result
    }
}

/// The labels of every token object a body refers to.
fn token_objects(body: &Body) -> std::collections::BTreeSet<String> {
    body.keys
        .iter()
        .flat_map(|k| k.versions.iter().chain(k.pending_material.iter()))
        .filter_map(|v| v.token_object.clone())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct FileTop {
    format: String,
    version: u64,
    kdf: serde_json::Value,
    body: String,
    mac: String,
}

/// What identifies one version of the keystore file on disk, cheaply (one `stat`): every
/// rewrite is an atomic rename of a new file, so the inode changes with each write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> Option<Self> {
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
