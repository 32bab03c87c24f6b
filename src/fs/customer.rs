//! Customer-provided keys (SSE-C) of a live mount: per user, the keys they gave the daemon
//! (`envelopefs ssec add`), held in memory only, never written anywhere. A file created by a
//! user who opted in (`--default`) gets its data key wrapped under their key in a
//! customer-key slot (docs/FORMAT.md §4.6), without a CMK slot unless they asked for a
//! recovery slot. Opening such a file needs the opener's own key: a user without one gets
//! EACCES, a wrong key gets EACCES and an audit record, and root is no exception.
//!
//! Every use is an audit record naming the user and the key's public id, never the key.
//! Adding or forgetting a key moves [`CustomerTable::generation`], so open handles decide
//! again on their next read or write: `ssec forget` cuts access at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::format::context::EncryptionContext;
use crate::format::customer::{CustomerKey, CustomerSlot};
use crate::keys::{Caller, DataKey, KeyError, KeyService};
use crate::store::file_header::CustomerKeys;

/// One loaded key.
struct Loaded {
    key: CustomerKey,
    last_used: Instant,
    idle: Option<Duration>,
}

/// One user's keys and choices.
#[derive(Default)]
struct User {
    /// Newest last: new files are wrapped under the newest key.
    keys: Vec<Loaded>,
    /// New files of this user get a customer-key slot.
    default: bool,
    /// ... and a CMK slot too (recoverable by whoever the key policy allows).
    recovery: bool,
}

/// What `ssec status` shows of one key.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyStatus {
    /// The key's public id.
    pub id: String,
    /// Seconds until it is dropped for being idle, if it has an idle expiry.
    pub idle_expires_in: Option<u64>,
}

/// A user's state as `ssec status` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UserStatus {
    /// Loaded keys, oldest first.
    pub keys: Vec<KeyStatus>,
    /// New files get a customer-key slot.
    pub default: bool,
    /// New files also get a CMK slot.
    pub recovery: bool,
}

/// The table of every user's customer keys.
pub struct CustomerTable {
    /// Guards every user's keys and choices; held only for in-memory work (a wrap, an
    /// unwrap, a comparison), never across I/O.
    users: Mutex<HashMap<u32, User>>,
    generation: AtomicU64,
    audit: Arc<dyn KeyService>,
}

impl std::fmt::Debug for CustomerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerTable")
    }
}

fn denied(uid: u32, reason: impl Into<String>) -> KeyError {
    KeyError::AccessDenied {
        key_id: format!("sse-c:{uid}"),
        reason: reason.into(),
    }
}

impl CustomerTable {
    /// An empty table; uses are recorded through `audit`'s trail.
    pub(crate) fn new(audit: Arc<dyn KeyService>) -> Self {
        CustomerTable {
            users: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            audit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, User>> {
        self.users.lock().expect("customer keys poisoned")
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves whenever a user's keys change (open handles compare it to decide again).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Loads customer key `k` for `caller` (the key bytes are not kept). `default`: their new
    /// files get a customer-key slot; `recovery`: also a CMK slot. Returns the key's id.
    pub fn add(
        &self,
        caller: &Caller,
        k: &[u8; 32],
        default: bool,
        recovery: bool,
        idle: Option<Duration>,
    ) -> String {
        let key = CustomerKey::new(k);
        let id = key.id().to_owned();
        {
            let mut users = self.lock();
            let u = users.entry(caller.uid).or_default();
            u.keys.retain(|l| l.key.id() != id);
            u.keys.push(Loaded {
                key,
                last_used: Instant::now(),
                idle,
            });
            if default {
                u.default = true;
                u.recovery = recovery;
            }
        }
        self.bump();
        self.audit
            .audit_customer_key("SseCAddKey", &id, None, caller, None);
        id
    }

    /// Drops every key of `caller` (or only the one with id `only`); returns how many went.
    /// Their choice of `--default` stays, so new files are refused rather than made without
    /// their key.
    pub fn forget(&self, caller: &Caller, only: Option<&str>) -> usize {
        let gone: Vec<String> = {
            let mut users = self.lock();
            let Some(u) = users.get_mut(&caller.uid) else {
                return 0;
            };
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut u.keys)
                .into_iter()
                .partition(|l| only.is_none_or(|id| l.key.id() == id));
            u.keys = kept;
            gone.iter().map(|l| l.key.id().to_owned()).collect()
        };
        self.bump();
        for id in &gone {
            self.audit
                .audit_customer_key("SseCForgetKey", id, None, caller, None);
        }
        gone.len()
    }

    /// `caller`'s keys and choices.
    pub fn status(&self, caller: &Caller) -> UserStatus {
        let users = self.lock();
        let Some(u) = users.get(&caller.uid) else {
            return UserStatus::default();
        };
        let now = Instant::now();
        UserStatus {
            keys: u
                .keys
                .iter()
                .map(|l| KeyStatus {
                    id: l.key.id().to_owned(),
                    idle_expires_in: l
                        .idle
                        .map(|d| d.saturating_sub(now - l.last_used).as_secs()),
                })
                .collect(),
            default: u.default,
            recovery: u.recovery,
        }
    }

    /// Drops keys idle for longer than their expiry (called by the daemon every few seconds,
    /// and before every use). Returns how many went.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut users = self.lock();
            for (uid, u) in users.iter_mut() {
                u.keys.retain(|l| {
                    let keep = l.idle.is_none_or(|d| now - l.last_used < d);
                    if !keep {
                        gone.push((*uid, l.key.id().to_owned()));
                    }
                    keep
                });
            }
        }
        if !gone.is_empty() {
            self.bump();
            for (uid, id) in &gone {
                log::info!("customer key {id} of uid {uid} was idle too long: dropped");
                let c = Caller {
                    uid: *uid,
                    gid: 0,
                    pid: 0,
                };
                self.audit
                    .audit_customer_key("SseCExpireKey", id, None, &c, None);
            }
        }
        gone.len()
    }

    /// Whether `caller`'s new files get a customer-key slot (they chose `--default`), and if
    /// so whether a CMK slot too (`--recovery`).
    pub(crate) fn choice(&self, caller: &Caller) -> Option<bool> {
        let users = self.lock();
        users
            .get(&caller.uid)
            .filter(|u| u.default)
            .map(|u| u.recovery)
    }

    /// A customer-key slot wrapping `dek` of a new file of `caller` under their newest key
    /// (EACCES when it is not loaded).
    pub(crate) fn wrap_new(
        &self,
        caller: &Caller,
        dek: &DataKey,
        context: &EncryptionContext,
    ) -> Result<CustomerSlot, KeyError> {
        self.expire();
        let mut users = self.lock();
        let Some(l) = users.get_mut(&caller.uid).and_then(|u| u.keys.last_mut()) else {
            drop(users);
            let e = denied(
                caller.uid,
                "this user's new files are wrapped under their customer key, which is not loaded: \
                 run `envelopefs ssec add MOUNTPOINT`",
            );
            self.audit.audit_customer_key(
                "SseCGenerateDataKey",
                "-",
                Some(context),
                caller,
                Some(&e),
            );
            return Err(e);
        };
        l.last_used = Instant::now();
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut salt).expect("the OS random number generator failed");
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let slot = l.key.wrap(
            caller.uid,
            dek.expose_secret(),
            &context.encode(),
            salt,
            nonce,
        );
        let id = l.key.id().to_owned();
        drop(users);
        self.audit
            .audit_customer_key("SseCGenerateDataKey", &id, Some(context), caller, None);
        Ok(slot)
    }

    /// Re-wraps `dek` (of a slot made with one of `caller`'s keys) under their newest key.
    pub(crate) fn rewrap_to_newest(
        &self,
        caller: &Caller,
        dek: &DataKey,
        context: &EncryptionContext,
    ) -> Option<(CustomerSlot, String)> {
        let users = self.lock();
        let l = users.get(&caller.uid)?.keys.last()?;
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut salt).expect("the OS random number generator failed");
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        Some((
            l.key.wrap(
                caller.uid,
                dek.expose_secret(),
                &context.encode(),
                salt,
                nonce,
            ),
            l.key.id().to_owned(),
        ))
    }

    /// Whether `slot` was made with `caller`'s loaded key whose id is `id`.
    pub(crate) fn made_with(&self, caller: &Caller, slot: &CustomerSlot, id: &str) -> bool {
        let users = self.lock();
        users
            .get(&caller.uid)
            .and_then(|u| u.keys.iter().find(|l| l.key.id() == id))
            .is_some_and(|l| l.key.matches(slot))
    }
}

impl CustomerKeys for CustomerTable {
    fn open(
        &self,
        slot: &CustomerSlot,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<DataKey, KeyError> {
        if slot.uid != caller.uid {
            return Err(denied(
                slot.uid,
                format!("the file is wrapped under uid {}'s customer key", slot.uid),
            ));
        }
        self.expire();
        let mut users = self.lock();
        let keys = users
            .get_mut(&caller.uid)
            .map(|u| &mut u.keys[..])
            .unwrap_or(&mut []);
        if keys.is_empty() {
            drop(users);
            // A missing key is the ordinary answer (EACCES), not an attack: logged, not audited.
            return Err(denied(
                caller.uid,
                "the file is wrapped under this user's customer key, which is not loaded: run \
                 `envelopefs ssec add MOUNTPOINT`",
            ));
        }
        let Some(l) = keys.iter_mut().find(|l| l.key.matches(slot)) else {
            drop(users);
            let e = denied(
                caller.uid,
                "none of this user's loaded customer keys is the one this file is wrapped under",
            );
            self.audit
                .audit_customer_key("SseCDecrypt", "-", Some(context), caller, Some(&e));
            return Err(e);
        };
        l.last_used = Instant::now();
        let id = l.key.id().to_owned();
        let result = l.key.unwrap(slot, &context.encode());
        drop(users);
        match result {
            Ok(dek) => {
                self.audit
                    .audit_customer_key("SseCDecrypt", &id, Some(context), caller, None);
                Ok(DataKey::from_bytes(*dek))
            }
            Err(_) => {
                let e = KeyError::InvalidCiphertext;
                self.audit
                    .audit_customer_key("SseCDecrypt", &id, Some(context), caller, Some(&e));
                Err(e)
            }
        }
    }
}

/// What `ssec rotate` did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RotateSummary {
    /// Files whose customer-key slot now uses the caller's newest key.
    pub rewrapped: u64,
    /// Files of the caller that could not be re-wrapped (logged).
    pub failed: u64,
}

impl super::EncFs {
    /// A fresh data key for a file with context `ctx` and its header slots: one wrapped under
    /// `caller`'s newest customer key when `customer` (EACCES when it is not loaded), then one
    /// under CMK `cmk` when given. With no CMK the key comes from the OS random generator,
    /// otherwise from the key service (GenerateDataKey, with the caller's rights).
    pub(crate) fn new_data_key(
        &self,
        ctx: &EncryptionContext,
        caller: &Caller,
        cmk: Option<&str>,
        customer: bool,
    ) -> super::FsResult<(DataKey, Vec<crate::format::header::KeySlot>)> {
        use crate::format::header::KeySlot;
        let (dek, cmk_slot) = match cmk {
            Some(k) => {
                let (dek, wrapped) = self.keys.generate_data_key(k, ctx, caller)?;
                (dek, Some(crate::store::file_header::cmk_slot(wrapped)))
            }
            None => (DataKey::random(), None),
        };
        let mut slots = Vec::with_capacity(2);
        if customer {
            slots.push(KeySlot::Customer(
                self.customer.wrap_new(caller, &dek, ctx)?,
            ));
        }
        slots.extend(cmk_slot);
        Ok((dek, slots))
    }

    /// Lists the `sse-c` feature in the volume config (atomically rewritten) if it is not
    /// there yet: called before the first customer-key slot is written.
    pub fn enable_customer_keys(&self) -> Result<(), crate::store::volume::VolumeError> {
        use crate::store::volume as vol;
        let mut cfg = vol::read_config(&self.backing_root)?;
        if cfg
            .features
            .iter()
            .any(|f| f == crate::format::volume::SSE_C)
        {
            return Ok(());
        }
        cfg.features.push(crate::format::volume::SSE_C.to_owned());
        vol::write_config(&self.backing_root, &cfg)?;
        log::info!("volume config: feature `sse-c` added (files wrapped under customer keys)");
        Ok(())
    }

    /// Re-wraps every file of `caller` wrapped under their loaded customer key `from` (an id)
    /// under their newest one (`ssec rotate`): headers only, two-copy crash-safe rewrites as
    /// `rewrap` does (docs/FORMAT.md §4.2). Other users' files, and the caller's files under
    /// other keys, are not touched.
    pub fn rotate_customer_key(
        &self,
        caller: &Caller,
        from: &str,
    ) -> super::FsResult<RotateSummary> {
        let data = self.backing_root.join(crate::store::volume::DATA_DIR);
        let mut sum = RotateSummary::default();
        for path in crate::store::walk::regular_files(&data)? {
            match self.rotate_one(&path, caller, from) {
                Ok(true) => sum.rewrapped += 1,
                Ok(false) => {}
                Err(e) => {
                    sum.failed += 1;
                    log::warn!("ssec rotate of uid {}: {}: {e}", caller.uid, path.display());
                }
            }
        }
        Ok(sum)
    }

    fn rotate_one(
        &self,
        path: &std::path::Path,
        caller: &Caller,
        from: &str,
    ) -> Result<bool, crate::store::file_header::HeaderError> {
        use crate::format::header::KeySlot;
        use crate::store::file_header;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let _lock = crate::store::sys::FileLock::exclusive(&file)?;
        if file.metadata()?.len() == 0 {
            return Ok(false);
        }
        let region = file_header::read_region(&file)?;
        let mine = |h: &crate::format::header::FileHeader| {
            h.slots
                .iter()
                .any(|s| matches!(s, KeySlot::Customer(c) if c.uid == caller.uid))
        };
        if !crate::format::header::candidates(&region)?
            .iter()
            .any(|c| mine(&c.header))
        {
            return Ok(false);
        }
        let u = file_header::unlock(
            self.keys.as_ref(),
            self.customer.as_ref(),
            &self.volume_id,
            self.block_size,
            &region,
            caller,
        )?;
        let ctx = self.file_context(&u.header.file_id);
        let mut h = u.header.clone();
        let mut changed = false;
        for slot in &mut h.slots {
            if let KeySlot::Customer(c) = slot
                && c.uid == caller.uid
                && self.customer.made_with(caller, c, from)
                && let Some((new, _)) = self.customer.rewrap_to_newest(caller, &u.dek, &ctx)
            {
                *c = new;
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        let (_, conv) = file_header::rewrite(&file, h, &u.dek, u.copy, u.max_seq)?;
        file.sync_data()?;
        file_header::converge(&file, &conv)?;
        file.sync_data()?;
        Ok(true)
    }
}
