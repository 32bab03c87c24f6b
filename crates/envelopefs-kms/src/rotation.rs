//! Key rotation of [`LocalKms`], with KMS semantics (docs/KEYS.md §Rotation).
//!
//! Rotation adds a key-material version; new wraps use the newest one and every older version
//! keeps decrypting until the key is deleted (files are moved to the newest version, without
//! re-encrypting data, by `envelopefs rewrap`). On demand: at most 25 per key. Automatic:
//! every `period` days (90..=2560, default 365), done by [`LocalKms::rotate_due_keys`], which
//! the mount calls at start and periodically, and every CLI command calls too. Rotation of a
//! key that is not Enabled waits (KMS pauses it too); a late rotation happens once, at the
//! next check, not once per missed period.
//!
//! Imported (EXTERNAL) keys rotate on demand only, and only to material imported beforehand
//! with `key import --new-material` (KMS's PENDING_ROTATION material).

use crate::keystore::{self, Keystore, RotationType};
use crate::local::{DAY, Event, LocalKms, Op, is_external, require_usable};
use crate::{Caller, KeyError, KeyId, KeyState, Origin};

/// Most on-demand rotations per key, as KMS.
pub(crate) const MAX_ON_DEMAND_ROTATIONS: u32 = 25;
/// Shortest automatic rotation period (days), as KMS.
pub(crate) const MIN_PERIOD_DAYS: u32 = 90;
/// Longest automatic rotation period (days), as KMS.
pub(crate) const MAX_PERIOD_DAYS: u32 = 2560;
/// Default automatic rotation period (days), as KMS.
pub const DEFAULT_PERIOD_DAYS: u32 = 365;

/// KMS GetKeyRotationStatus, plus the on-demand count.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RotationStatus {
    /// The key.
    pub key_id: String,
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// Its period in days.
    pub rotation_period_days: Option<u32>,
    /// When it is next due (seconds since the epoch).
    pub next_rotation_date: Option<u64>,
    /// On-demand rotations done so far.
    pub on_demand_rotations: u32,
    /// On-demand rotations left (of 25).
    pub on_demand_rotations_left: u32,
}

/// One key-material version, as `key rotation list` shows it (KMS ListKeyRotations).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RotationEntry {
    /// The key.
    pub key_id: String,
    /// The version number (1 = original material).
    pub version: u32,
    /// When the version was made (seconds since the epoch).
    pub rotation_date: u64,
    /// `AUTOMATIC`, `ON_DEMAND`, or `None` for the original material.
    pub rotation_type: Option<&'static str>,
    /// `CURRENT` (new wraps use it), `NON_CURRENT` (decrypts only), `PENDING_ROTATION`
    /// (imported, becomes current at the next `key rotate`), or `DELETED` (imported material
    /// deleted or expired; import it again).
    pub key_material_state: &'static str,
}

/// Checks a rotation period, with KMS's ValidationException wording.
pub(crate) fn check_period_days(days: u32) -> Result<(), KeyError> {
    let (bound, limit) = match days {
        d if d < MIN_PERIOD_DAYS => ("greater than or equal to", MIN_PERIOD_DAYS),
        d if d > MAX_PERIOD_DAYS => ("less than or equal to", MAX_PERIOD_DAYS),
        _ => return Ok(()),
    };
    Err(KeyError::InvalidArgument(format!(
        "1 validation error detected: Value '{days}' at 'rotationPeriodInDays' failed to satisfy \
         constraint: Member must have value {bound} {limit}"
    )))
}

fn external_unsupported(id: &KeyId, what: &str) -> KeyError {
    KeyError::Unsupported(format!(
        "key {id} has imported key material, which cannot {what}; rotate it on demand after \
         importing new material with `envelopefs key import ... --new-material`"
    ))
}

impl LocalKms {
    /// Rotates `key` on demand (KMS RotateKeyOnDemand): adds a material version that new
    /// wraps use. Returns the new version number. At most 25 times per key.
    pub fn rotate(&self, key: &str, caller: &Caller) -> Result<u32, KeyError> {
        let v = self.mutate(Op::RotateKeyOnDemand, key, caller, None, |ks, id| {
            let rec = ks.record_mut(&id)?;
            require_usable(rec.state, &id)?;
            if rec.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KeyError::LimitExceeded(format!(
                    "key {id} was already rotated on demand {MAX_ON_DEMAND_ROTATIONS} times, the \
                     most allowed; use automatic rotation (`envelopefs key rotation enable`) or a new key"
                )));
            }
            rec.on_demand_rotations += 1;
            match rec.origin {
                Origin::AwsKms => ks.push_version(&id, RotationType::OnDemand, keystore::now_secs()),
                Origin::External => crate::import::promote_pending_material(ks, &id),
            }
        })?;
        log::info!("rotated key {key} on demand to version {v}");
        Ok(v)
    }

    /// Turns on automatic rotation every `period_days` (90..=2560, default 365) days (KMS
    /// EnableKeyRotation). The first rotation is due one period from now; changing the period
    /// of an enabled key moves the next date by the difference.
    pub fn enable_key_rotation(
        &self,
        key: &str,
        period_days: Option<u32>,
        caller: &Caller,
    ) -> Result<RotationStatus, KeyError> {
        let days = period_days.unwrap_or(DEFAULT_PERIOD_DAYS);
        if let Err(e) = check_period_days(days) {
            self.record(Op::EnableKeyRotation, Event::key(key), caller, Err(&e));
            return Err(e);
        }
        let detail = Some(format!("rotationPeriodInDays {days}"));
        self.mutate(Op::EnableKeyRotation, key, caller, detail, |ks, id| {
            if is_external(ks, &id) {
                return Err(external_unsupported(&id, "rotate automatically"));
            }
            let rec = ks.record_mut(&id)?;
            require_usable(rec.state, &id)?;
            let now = keystore::now_secs();
            let next = match (rec.rotation_period_days, rec.next_rotation_date) {
                (Some(old), Some(next)) => {
                    let base = next.saturating_sub(u64::from(old) * DAY);
                    (base + u64::from(days) * DAY).max(now)
                }
                _ => now + u64::from(days) * DAY,
            };
            rec.rotation_period_days = Some(days);
            rec.next_rotation_date = Some(next);
            Ok(status(ks, &id))
        })
    }

    /// Turns off automatic rotation (KMS DisableKeyRotation). Existing versions stay.
    pub fn disable_key_rotation(
        &self,
        key: &str,
        caller: &Caller,
    ) -> Result<RotationStatus, KeyError> {
        self.mutate(Op::DisableKeyRotation, key, caller, None, |ks, id| {
            if is_external(ks, &id) {
                return Err(external_unsupported(&id, "rotate automatically"));
            }
            let rec = ks.record_mut(&id)?;
            if rec.state == KeyState::PendingDeletion {
                return Err(KeyError::PendingDeletion {
                    key_id: id.to_string(),
                });
            }
            rec.rotation_period_days = None;
            rec.next_rotation_date = None;
            Ok(status(ks, &id))
        })
    }

    /// KMS GetKeyRotationStatus.
    pub fn key_rotation_status(
        &self,
        key: &str,
        caller: &Caller,
    ) -> Result<RotationStatus, KeyError> {
        self.view(Op::GetKeyRotationStatus, key, caller, |ks, id| {
            Ok(status(ks, &id))
        })
    }

    /// Every material version of `key`, oldest first (KMS ListKeyRotations, plus the original
    /// material and any imported material waiting for rotation).
    pub fn list_key_rotations(
        &self,
        key: &str,
        caller: &Caller,
    ) -> Result<Vec<RotationEntry>, KeyError> {
        self.view(Op::ListKeyRotations, key, caller, |ks, id| {
            let rec = ks.key(&id).expect("resolved");
            let current = rec.current_version();
            let entry = |v: &keystore::VersionRecord, state| RotationEntry {
                key_id: id.to_string(),
                version: v.version,
                rotation_date: v.created,
                rotation_type: v.rotation_type.map(RotationType::as_str),
                key_material_state: state,
            };
            let mut list: Vec<RotationEntry> = rec
                .versions()
                .iter()
                .map(|v| match (v.has_material(), v.version == current) {
                    (false, _) => entry(v, "DELETED"),
                    (true, true) => entry(v, "CURRENT"),
                    (true, false) => entry(v, "NON_CURRENT"),
                })
                .collect();
            list.extend(
                rec.pending_material
                    .iter()
                    .map(|v| entry(v, "PENDING_ROTATION")),
            );
            Ok(list)
        })
    }

    /// Rotates every Enabled key whose automatic rotation is due by `now`; the next rotation
    /// is then due one period after `now`. Returns the keys rotated and their new versions.
    /// Each rotation is audited as a `RotateKey` service event and logged.
    pub(crate) fn rotate_due_keys(&self, now: u64) -> Result<Vec<(KeyId, u32)>, KeyError> {
        self.refresh_quietly();
        let due = |ks: &Keystore| -> Vec<KeyId> {
            ks.keys()
                .iter()
                .filter(|r| r.state == KeyState::Enabled && r.origin == Origin::AwsKms)
                .filter(|r| r.next_rotation_date.is_some_and(|d| d <= now))
                .map(|r| r.key_id())
                .collect()
        };
        if due(&self.read()).is_empty() {
            return Ok(Vec::new());
        }
        let rotated = self.mutate_store(|ks| {
            let mut done = Vec::new();
            for id in due(ks) {
                let v = ks.push_version(&id, RotationType::Automatic, now)?;
                let rec = ks.record_mut(&id)?;
                let period = u64::from(rec.rotation_period_days.unwrap_or(DEFAULT_PERIOD_DAYS));
                rec.next_rotation_date = Some(now + period * DAY);
                done.push((id, v));
            }
            Ok(done)
        })?;
        let me = Caller::current();
        for (id, v) in &rotated {
            log::info!("key {id} rotated automatically to version {v}");
            let ev = Event {
                key: Some(id.to_string()),
                version: Some(*v),
                ..Event::default()
            };
            self.record(Op::RotateKey, ev, &me, Ok(()));
        }
        Ok(rotated)
    }
}

fn status(ks: &Keystore, id: &KeyId) -> RotationStatus {
    let rec = ks.key(id).expect("resolved");
    RotationStatus {
        key_id: id.to_string(),
        key_rotation_enabled: rec.rotation_period_days.is_some(),
        rotation_period_days: rec.rotation_period_days,
        next_rotation_date: rec.next_rotation_date,
        on_demand_rotations: rec.on_demand_rotations,
        on_demand_rotations_left: MAX_ON_DEMAND_ROTATIONS.saturating_sub(rec.on_demand_rotations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyService;
    use envelopefs_format::context::EncryptionContext;

    /// The caller of these tests: the current process, which is the administrator
    /// (it created the keystore, so the keystore lists it as administrator).
    fn me() -> Caller {
        Caller::current()
    }

    fn ctx(i: u8) -> EncryptionContext {
        EncryptionContext::for_file("vol-1", &[i; 16])
    }

    #[test]
    fn on_demand_rotation_keeps_old_versions_and_is_limited() {
        let kms = LocalKms::in_memory_for_tests();
        let k = "alias/default";
        let mut wraps = vec![kms.generate_data_key(k, &ctx(0), &me()).unwrap()];
        for i in 1..=MAX_ON_DEMAND_ROTATIONS {
            assert_eq!(kms.rotate(k, &me()).unwrap(), i + 1);
            wraps.push(kms.generate_data_key(k, &ctx(i as u8), &me()).unwrap());
        }
        let e = kms.rotate(k, &me()).unwrap_err();
        assert_eq!(e.code(), "LimitExceededException", "{e}");
        for (i, (dek, w)) in wraps.iter().enumerate() {
            assert_eq!(w.version, i as u32 + 1);
            let back = kms.decrypt(w, &ctx(i as u8), &me()).unwrap();
            assert_eq!(
                back.expose_secret(),
                dek.expose_secret(),
                "version {}",
                w.version
            );
        }
        let list = kms.list_key_rotations(k, &me()).unwrap();
        assert_eq!(list.len(), 26);
        assert_eq!(
            (list[0].rotation_type, list[0].key_material_state),
            (None, "NON_CURRENT")
        );
        assert_eq!(
            (list[25].rotation_type, list[25].key_material_state),
            (Some("ON_DEMAND"), "CURRENT")
        );
        let st = kms.key_rotation_status(k, &me()).unwrap();
        assert_eq!(
            (st.on_demand_rotations, st.on_demand_rotations_left),
            (25, 0)
        );
        // Disabled keys do not rotate.
        let other = kms.create_key("x", &me()).unwrap();
        kms.disable_key(&other.key_id, &me()).unwrap();
        assert_eq!(
            kms.rotate(&other.key_id, &me()).unwrap_err().code(),
            "DisabledException"
        );
    }

    #[test]
    fn automatic_rotation_when_due() {
        let kms = LocalKms::in_memory_for_tests();
        let k = "alias/default";
        for bad in [89, 2561] {
            let e = kms.enable_key_rotation(k, Some(bad), &me()).unwrap_err();
            assert!(
                e.code() == "ValidationException" && e.to_string().contains("rotationPeriodInDays")
            );
        }
        let st = kms.enable_key_rotation(k, None, &me()).unwrap();
        let now = keystore::now_secs();
        assert_eq!(st.rotation_period_days, Some(365));
        let next = st.next_rotation_date.unwrap();
        assert!(next.abs_diff(now + 365 * DAY) < 5);
        // Changing the period moves the date by the difference.
        let st = kms.enable_key_rotation(k, Some(90), &me()).unwrap();
        assert!(st.next_rotation_date.unwrap().abs_diff(now + 90 * DAY) < 5);
        let (dek, w1) = kms.generate_data_key(k, &ctx(1), &me()).unwrap();
        assert!(kms.rotate_due_keys(now + 89 * DAY).unwrap().is_empty());
        let later = now + 91 * DAY;
        let done = kms.rotate_due_keys(later).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1, 2);
        assert!(
            kms.rotate_due_keys(later).unwrap().is_empty(),
            "once per period"
        );
        let st = kms.key_rotation_status(k, &me()).unwrap();
        assert_eq!(st.next_rotation_date, Some(later + 90 * DAY));
        assert_eq!(
            st.on_demand_rotations, 0,
            "automatic rotations are not counted"
        );
        let list = kms.list_key_rotations(k, &me()).unwrap();
        assert_eq!(list[1].rotation_type, Some("AUTOMATIC"));
        assert_eq!(
            kms.generate_data_key(k, &ctx(2), &me()).unwrap().1.version,
            2
        );
        assert_eq!(
            kms.decrypt(&w1, &ctx(1), &me()).unwrap().expose_secret(),
            dek.expose_secret()
        );
        // Paused while not Enabled; disable turns it off.
        kms.disable_key(k, &me()).unwrap();
        assert!(kms.rotate_due_keys(later + 1000 * DAY).unwrap().is_empty());
        kms.enable_key(k, &me()).unwrap();
        let st = kms.disable_key_rotation(k, &me()).unwrap();
        assert!(!st.key_rotation_enabled && st.next_rotation_date.is_none());
        assert!(kms.rotate_due_keys(later + 1000 * DAY).unwrap().is_empty());
    }
}
