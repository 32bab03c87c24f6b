//! [`LocalKms`]: the embedded key service, modelled on AWS KMS, over a [`Keystore`] file.
//!
//! # Wrapped data key (the `blob` of a [`WrappedKey`]), version 1
//!
//! For a data key `DEK` (32 B) wrapped under version `v` of CMK `K` (material `M`, 32 B):
//!
//! ```text
//! kek   = blake3::derive_key("envelopefs cmk wrap v1", M)               (32 B)
//! blob  = nonce (12 B, random) ‖ AES-256-GCM-SIV_kek(DEK) (32 B) ‖ tag (16 B)    = 60 B
//! associated data = "envelopefs wrapped dek v1" (25 B ASCII)
//!                 ‖ K (16 raw UUID bytes) ‖ v (u32 BE) ‖ EncryptionContext::encode()
//! ```
//!
//! `K` and `v` travel beside the blob (in [`WrappedKey`], i.e. in the file header's key slot);
//! being in the associated data, a blob moved to another key, version or context fails to open.
//!
//! # Errors, in the order they are checked (as KMS does)
//!
//! unknown key or alias → `NotFound` (a deleted key → `Deleted`); caller not allowed →
//! `AccessDenied`; key Disabled → `Disabled`; PendingDeletion → `PendingDeletion`;
//! PendingImport → `InvalidState`; unknown version, blob length ≠ 60, or authentication
//! failure → `InvalidCiphertext`.
//!
//! # One service, several processes
//!
//! A mounted daemon holds a `LocalKms` for hours while `envelopefs key ...` (another process)
//! changes the keystore file. Every operation starts with [`LocalKms::refresh_if_changed`]
//! (one `stat`), so a `key disable` cuts access on a live mount at once and a `key rotate` is
//! seen by the next wrap. A mutation that finds the file changed under it
//! ([`KeyError::Conflict`]) re-reads it and retries once, so no process clobbers another's
//! change. Time-driven work (a deletion window ending, imported material expiring, automatic
//! rotation) happens lazily when the keystore is opened or re-read, and in
//! [`LocalKms::maintain`], which the daemon calls periodically.
//!
//! The lifecycle operations are in [`crate::lifecycle`], rotation in
//! [`crate::rotation`], import in [`crate::import`].
//!
//! [`WrappedKey`]: crate::WrappedKey

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::audit::AuditLog;
pub(super) use crate::events::Event;
pub use crate::events::{Op, audit_dir};
use crate::keystore::{self, Keystore};
use crate::policy::{self, KeyPolicy};
use crate::principal::Principal;
use crate::secret::Unlock;
use crate::{Caller, KeyError, KeyId, KeyMetadata, KeyState, Origin};
use envelopefs_format::context::EncryptionContext;

mod service;

pub(crate) use service::kek;
pub(super) use service::require_usable;

/// The policy of keys that have none of their own.
pub(super) static DEFAULT_POLICY: std::sync::LazyLock<KeyPolicy> =
    std::sync::LazyLock::new(policy::default_policy);
/// Seconds in a day.
pub(super) const DAY: u64 = 86_400;

/// The embedded key service. `Send + Sync`; share it behind an `Arc`.
pub struct LocalKms {
    /// Guards the keystore: key records, aliases and decrypted CMK material. Wrap, unwrap,
    /// describe and list hold it shared; mutations and reloads hold it exclusively across the
    /// keystore's atomic save, so no operation sees a state that is not also on disk.
    store: RwLock<Keystore>,
    /// The audit trail (`<keystore>.audit/`), when there is one; it has its own lock.
    pub(super) audit: Option<AuditLog>,
    /// Bumped after every change of the keystore, ours or re-read
    /// ([`KeyService::generation`](crate::KeyService::generation)).
    generation: std::sync::atomic::AtomicU64,
    /// When [`KeyService::generation`](crate::KeyService::generation) last looked at the
    /// keystore file (ms since the epoch).
    generation_checked_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("keystore", &self.read().path().map(Path::to_owned))
            .finish()
    }
}

impl LocalKms {
    /// Opens the keystore at `path` (runs the passphrase KDF once), then applies what time
    /// has made due: ended deletion windows, expired imported material.
    /// Records go to the audit trail beside the keystore ([`audit_dir`]).
    pub fn open(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        let ks = Keystore::open(path, unlock)
            .inspect_err(|e| crate::events::note_failed_unlock(path, e))?;
        let kms = Self::from_keystore(ks).with_default_audit_log();
        kms.purge_expired_quietly(keystore::now_secs());
        Ok(kms)
    }

    /// Creates a new keystore at `path` with one CMK aliased `alias/default`, and its audit
    /// trail.
    pub fn create(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        let kms = Self::from_keystore(Keystore::create(path, unlock)?).with_default_audit_log();
        // The keystore vouches from the start that the trail exists (docs/FORMAT.md §9).
        if kms.audit.is_some() {
            kms.mutate_store(|_| Ok(()))?;
        }
        Ok(kms)
    }

    /// Opens a keystore whose CMKs live in `custody` (a PKCS#11 token, which also computes
    /// the keystore's root key), then applies what time has made due, as [`LocalKms::open`].
    pub fn open_with_custody(
        path: &Path,
        custody: std::sync::Arc<dyn crate::custody::Custody>,
    ) -> Result<Self, KeyError> {
        let ks = Keystore::open_with_custody(path, custody)
            .inspect_err(|e| crate::events::note_failed_unlock(path, e))?;
        let kms = Self::from_keystore(ks).with_default_audit_log();
        kms.purge_expired_quietly(keystore::now_secs());
        Ok(kms)
    }

    /// Creates a keystore at `path` whose CMKs live in `custody`, with one CMK aliased
    /// `alias/default` generated in the token, and its audit trail.
    pub fn create_with_custody(
        path: &Path,
        custody: std::sync::Arc<dyn crate::custody::Custody>,
    ) -> Result<Self, KeyError> {
        let ks = Keystore::create_with_custody(path, custody)?;
        let kms = Self::from_keystore(ks).with_default_audit_log();
        if kms.audit.is_some() {
            kms.mutate_store(|_| Ok(()))?;
        }
        Ok(kms)
    }

    /// An in-memory service like [`LocalKms::in_memory_for_tests`] whose CMKs live in
    /// `custody`: for the tests of a custody provider.
    #[cfg(any(test, feature = "testing"))]
    pub fn in_memory_with_custody_for_tests(
        custody: std::sync::Arc<dyn crate::custody::Custody>,
    ) -> Result<Self, KeyError> {
        Ok(Self::from_keystore(Keystore::in_memory_with_custody(
            custody,
        )?))
    }

    /// The token objects the keystore names ([`Keystore::token_objects`]).
    pub fn token_objects(&self) -> Vec<(bool, String)> {
        self.read().token_objects()
    }

    /// Whether this service's CMKs live in a token (PKCS#11 custody).
    pub fn has_custody(&self) -> bool {
        self.read().has_custody()
    }

    /// Sends audit records to `log` (replacing any other trail).
    pub fn with_audit_log(mut self, log: AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Opens the audit trail beside the keystore file ([`audit_dir`]); if that fails (for
    /// example a read-only directory), logs why and goes on without one.
    fn with_default_audit_log(self) -> Self {
        let Some(path) = self.keystore_path() else {
            return self;
        };
        let dir = audit_dir(&path);
        let key = self.read().audit_key();
        match AuditLog::open(&dir, key, 0) {
            Ok(log) => {
                let kms = self.with_audit_log(log);
                kms.check_audit_against_keystore();
                kms
            }
            Err(e) => {
                log::error!(
                    "cannot open the audit log {}: {e}; key use is NOT being recorded",
                    dir.display()
                );
                self
            }
        }
    }

    /// The audit trail, if any.
    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// Flushes the audit trail to stable storage (records are written at once but not
    /// fsynced): call at unmount, after CLI commands, and periodically in the daemon.
    pub fn sync_audit(&self) -> std::io::Result<()> {
        self.audit.as_ref().map_or(Ok(()), AuditLog::sync)
    }

    /// Serves an already opened keystore. The administrators are those recorded in it
    /// ([`Keystore::admins`]), never the file's owner.
    pub(crate) fn from_keystore(keystore: Keystore) -> Self {
        LocalKms {
            store: RwLock::new(keystore),
            audit: None,
            generation: std::sync::atomic::AtomicU64::new(1),
            generation_checked_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// An in-memory service with a random root key and one Enabled CMK aliased
    /// `alias/default`; nothing touches the disk and no KDF runs. For tests (this crate's, and
    /// others' through the `testing` feature).
    #[cfg(any(test, feature = "testing"))]
    pub fn in_memory_for_tests() -> Self {
        Self::from_keystore(Keystore::in_memory())
    }

    /// The volume administrators' uids, as recorded in the keystore (root is one too).
    pub fn admins(&self) -> Vec<u32> {
        self.read().admins().to_vec()
    }

    /// The keystore file, if any.
    pub(crate) fn keystore_path(&self) -> Option<std::path::PathBuf> {
        self.read().path().map(Path::to_owned)
    }

    /// Re-reads the keystore file if another process changed it (one `stat` when it did not;
    /// about 1 µs, so every operation calls it). The MAC is re-verified with the keys derived
    /// at open; no KDF runs. After a re-read, expired deletions and imports are applied.
    /// Returns whether anything was re-read. On error (the file is unreadable or fails to
    /// verify) the last good state stays in force, and the error is returned once for that
    /// version of the file: later calls see no change until the file changes again.
    pub(crate) fn refresh_if_changed(&self) -> Result<bool, KeyError> {
        if !self.read().changed_on_disk() {
            return Ok(false);
        }
        let changed = self.write().reload_if_changed()?;
        if changed {
            self.bump_generation();
            self.purge_expired_quietly(keystore::now_secs());
        }
        Ok(changed)
    }

    /// [`LocalKms::refresh_if_changed`], logging a failure (once per change of the file)
    /// instead of returning it: the operation goes on with the last good state, which stays
    /// in force until the file verifies again (docs/KEYS.md §One keystore, several processes).
    pub(super) fn refresh_quietly(&self) {
        if let Err(e) = self.refresh_if_changed() {
            log::error!(
                "{e}; still using the keystore as last verified; key changes made since cannot                  take effect until the file is repaired (restore it, or undo the edit)"
            );
        }
    }

    /// The periodic work of a long-running service: destroys the material of keys whose
    /// deletion window ended, deletes expired imported material, and rotates keys whose
    /// automatic rotation is due. The mount daemon calls it at mount and then every few
    /// minutes; every CLI command calls it too. Returns what it did, one line each.
    pub fn maintain(&self, now: u64) -> Vec<String> {
        self.refresh_quietly();
        let mut done = self.purge_expired(now).unwrap_or_else(|e| {
            log::error!("cannot apply ended deletion windows: {e}");
            Vec::new()
        });
        match self.rotate_due_keys(now) {
            Ok(rotated) => done.extend(
                rotated
                    .into_iter()
                    .map(|(id, v)| format!("key {id} rotated automatically to version {v}")),
            ),
            Err(e) => log::error!("automatic key rotation failed: {e}"),
        }
        done
    }

    fn purge_expired_quietly(&self, now: u64) {
        if let Err(e) = self.purge_expired(now) {
            log::error!("cannot apply ended deletion windows or expired imports: {e}");
        }
    }

    /// Destroys the material of every key whose deletion window ended by `now` (the key and
    /// its aliases are removed; a tombstone remembers when), and deletes imported material
    /// whose valid-to time passed (the key returns to PendingImport). Returns one line per
    /// change, each also logged at warn level and audited.
    pub(crate) fn purge_expired(&self, now: u64) -> Result<Vec<String>, KeyError> {
        let due = |ks: &Keystore| {
            ks.keys().iter().any(|r| {
                r.state == KeyState::PendingDeletion && r.deletion_date.is_some_and(|d| d <= now)
                    || r.valid_to.is_some_and(|t| t <= now)
            })
        };
        if !due(&self.read()) {
            return Ok(Vec::new());
        }
        let me = Caller::current();
        let events = self.mutate_store(|ks| {
            let mut events = Vec::new();
            let ids: Vec<KeyId> = ks.keys().iter().map(|r| r.key_id()).collect();
            for id in ids {
                let rec = ks.key(&id).expect("listed");
                if rec.state == KeyState::PendingDeletion && rec.deletion_date.is_some_and(|d| d <= now) {
                    ks.destroy_key(&id, now)?;
                    events.push((Op::DeleteKey, id, format!(
                        "key {id}: its deletion window ended; its material is destroyed and its aliases deleted"
                    )));
                } else if rec.valid_to.is_some_and(|t| t <= now) {
                    crate::import::drop_imported_material(ks, &id)?;
                    events.push((Op::DeleteExpiredKeyMaterial, id, format!(
                        "key {id}: its imported material expired and was deleted; it is PendingImport until the same material is imported again"
                    )));
                }
            }
            Ok(events)
        })?;
        Ok(events
            .into_iter()
            .map(|(op, id, line)| {
                log::warn!("{line}");
                self.record(op, Event::key(id), &me, Ok(()));
                line
            })
            .collect())
    }

    /// Runs `f` on the keystore under the write lock and saves (all or nothing). If another
    /// process changed the file meanwhile (`Conflict`), re-reads it and runs `f` once more.
    pub(super) fn mutate_store<T>(
        &self,
        f: impl Fn(&mut Keystore) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let result = self.mutate_store_once(f);
        if result.is_ok() {
            self.bump_generation();
        }
        result
    }

    /// Marks every key decision taken so far as possibly stale.
    fn bump_generation(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The current generation, looking at the keystore file first when the last look is
    /// older than [`super::GENERATION_CHECK_MS`].
    pub(super) fn current_generation(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.generation_checked_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= super::GENERATION_CHECK_MS
            && self
                .generation_checked_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.refresh_quietly();
        }
        self.generation.load(Ordering::Acquire)
    }

    fn mutate_store_once<T>(
        &self,
        f: impl Fn(&mut Keystore) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        // Every keystore write also records the audit trail's checkpoint.
        let f = |ks: &mut Keystore| {
            let t = f(ks)?;
            self.stamp_audit_checkpoint(ks);
            Ok(t)
        };
        let mut ks = self.write();
        match ks.transact(f) {
            Err(KeyError::Conflict { path }) => {
                log::info!(
                    "keystore {} changed under us; re-reading and retrying",
                    path.display()
                );
                ks.reload_if_changed()?;
                ks.transact(f)
            }
            r => r,
        }
    }

    /// One administrative operation: refresh, resolve `key`, authorize `op`, run `f` and save
    /// (retrying once on a concurrent write), and record the outcome in the audit log.
    pub(super) fn mutate<T>(
        &self,
        op: Op,
        key: &str,
        caller: &Caller,
        detail: Option<String>,
        f: impl Fn(&mut Keystore, KeyId) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        self.refresh_quietly();
        let resolved = std::cell::Cell::new(None);
        let by = std::cell::RefCell::new(None);
        let result = self.mutate_store(|ks| {
            let id = ks.resolve(key)?;
            resolved.set(Some(id));
            *by.borrow_mut() =
                self.authorize(ks, op, Some(&id), caller, &EncryptionContext::new())?;
            f(ks, id)
        });
        let ev = Event {
            key: Some(
                resolved
                    .get()
                    .map_or_else(|| key.to_owned(), |id| id.to_string()),
            ),
            detail,
            authorized_by: by.into_inner(),
            ..Event::default()
        };
        self.record(op, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    /// One read-only operation on `key`: refresh, resolve, authorize, run `f`, audit.
    pub(super) fn view<T>(
        &self,
        op: Op,
        key: &str,
        caller: &Caller,
        f: impl FnOnce(&Keystore, KeyId) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        self.refresh_quietly();
        let ks = self.read();
        let id = ks.resolve(key);
        let mut ev = Event::key(
            id.as_ref()
                .map_or_else(|_| key.to_owned(), |id| id.to_string()),
        );
        let result = id.as_ref().map_err(clone_err).and_then(|id| {
            ev.authorized_by =
                self.authorize(&ks, op, Some(id), caller, &EncryptionContext::new())?;
            f(&ks, *id)
        });
        drop(ks);
        self.record(op, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    /// Runs `f` on the keystore as it is now (after a refresh), with no authorization or
    /// audit: for the lifecycle modules' own checks.
    pub(super) fn peek<T>(&self, f: impl FnOnce(&Keystore) -> T) -> T {
        f(&self.read())
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Keystore> {
        // A panic while holding the lock cannot leave the keystore half-changed: every mutation
        // is transactional (Keystore::transact), so a poisoned lock is still safe to use.
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Keystore> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The single place where every operation is checked before it runs: the key policy and
    /// grants of `key` are evaluated for `caller` (docs/KEYS.md §Access control). Operations
    /// that are not about one key (CreateKey) need the volume administrator. A denial is
    /// [`KeyError::AccessDenied`] naming the key and the reason (the filesystem maps it to
    /// EACCES) and is logged at warn level. CreateGrant and RetireGrant are decided where the
    /// grant is known ([`crate::access`]); service events need no caller.
    pub(super) fn authorize(
        &self,
        ks: &Keystore,
        op: Op,
        key: Option<&KeyId>,
        caller: &Caller,
        context: &EncryptionContext,
    ) -> Result<Option<String>, KeyError> {
        // Supplementary groups cost a /proc read (~20 us, on every file create and open), so
        // they are read only when a statement or grant of the key names a group.
        if !op.is_service_event() {
            ks.check_crypto_user(op, key)?;
        }
        let mut who = Principal::from_caller_with(caller, ks.admins(), false);
        let decision = match (op, key) {
            (Op::CreateGrant | Op::RetireGrant, _) => return Ok(None),
            _ if op.is_service_event() => return Ok(None),
            (_, Some(id)) => {
                let rec = ks
                    .key(id)
                    .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
                let policy = rec.policy.as_ref().unwrap_or(&DEFAULT_POLICY);
                if policy::needs_groups(policy, &rec.grants) {
                    who = Principal::from_caller(caller, ks.admins());
                }
                policy::evaluate(policy, &rec.grants, &who, &op.action(), context)
            }
            (_, None) if who.is_admin => return Ok(Some("the volume administrator".into())),
            (_, None) => policy::Decision::Deny {
                reason: format!(
                    "{} is for the volume administrators (uid {:?}, recorded in the keystore; \
                     see `envelopefs key admin list`) and root only, not {}",
                    op.action(),
                    ks.admins(),
                    who.label()
                ),
            },
        };
        let key_id = key.map_or_else(|| "(none)".to_owned(), KeyId::to_string);
        match decision.into_result(&key_id) {
            Ok(by) => {
                log::trace!(
                    "{} on key {key_id} by {}: allowed by {by}",
                    op.name(),
                    who.label()
                );
                Ok(Some(by))
            }
            Err(e) => {
                log::warn!("{e}");
                Err(e)
            }
        }
    }
}

/// A copy of a resolve error (KeyError is not Clone because of its io::Error variant).
pub(super) fn clone_err(e: &KeyError) -> KeyError {
    match e {
        KeyError::NotFound(s) => KeyError::NotFound(s.clone()),
        KeyError::Deleted {
            key_id,
            deletion_date,
        } => KeyError::Deleted {
            key_id: key_id.clone(),
            deletion_date: *deletion_date,
        },
        other => KeyError::Internal(other.to_string()),
    }
}

/// The metadata of one existing key.
pub(super) fn metadata(ks: &Keystore, id: &KeyId) -> KeyMetadata {
    let rec = ks.key(id).expect("BUG: metadata of a resolved key");
    KeyMetadata {
        key_id: id.to_string(),
        aliases: ks.aliases_of(id),
        description: rec.description.clone(),
        creation_date: rec.creation_date,
        state: rec.state,
        current_version: rec.current_version(),
        versions: rec.versions().len() as u32,
        origin: rec.origin,
        deletion_date: rec.deletion_date,
        pending_window_days: rec.pending_window_days,
        valid_to: rec.valid_to,
        rotation_enabled: rec.rotation_period_days.is_some(),
        rotation_period_days: rec.rotation_period_days,
        next_rotation_date: rec.next_rotation_date,
        tags: rec.tags.clone(),
    }
}

/// Whether a key is imported (the checks that differ for EXTERNAL keys).
pub(super) fn is_external(ks: &Keystore, id: &KeyId) -> bool {
    ks.key(id).is_some_and(|r| r.origin == Origin::External)
}
#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
