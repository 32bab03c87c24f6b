//! CMK lifecycle operations of [`LocalKms`], with KMS semantics (docs/KEYS.md §States):
//!
//! ```text
//!              create                 create --origin external
//!                │                              │
//!                ▼          disable             ▼            import
//!             Enabled ◄──────────────► Disabled      PendingImport ──────► Enabled
//!                │          enable          │              │  ▲
//!                │ schedule-deletion        │              │  └── delete-material / expiry
//!                ▼                          ▼              ▼
//!          PendingDeletion ──cancel-deletion──► Disabled (PendingImport if no material)
//!                │
//!                └── window ends → material destroyed, key and aliases gone (NotFound)
//! ```
//!
//! Aliases: `alias/` + 1–250 of `[A-Za-z0-9:/_-]` (256 in all), `alias/aws/` reserved; an alias
//! points at exactly one key; a key may have many.

use std::collections::BTreeMap;

use crate::keystore::{self, Keystore};
use crate::local::{DAY, Event, LocalKms, Op, metadata};
use crate::{Caller, KeyError, KeyId, KeyMetadata, KeyState, Origin};

/// Shortest deletion window (days), as KMS.
pub(crate) const MIN_PENDING_DAYS: u32 = 7;
/// Longest deletion window (days), as KMS.
pub(crate) const MAX_PENDING_DAYS: u32 = 30;
/// Default deletion window (days), as KMS.
pub const DEFAULT_PENDING_DAYS: u32 = 30;
/// Longest description, as KMS.
pub(crate) const MAX_DESCRIPTION: usize = 8192;
/// Most tags per key, as KMS.
pub(crate) const MAX_TAGS: usize = 50;

/// What `key create` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateKeyRequest {
    /// Free text (≤ 8192 characters).
    pub description: String,
    /// Generated here (`AwsKms`) or imported later (`External`, starts PendingImport).
    pub origin: Origin,
    /// Tags (key ≤ 128, value ≤ 256 characters, ≤ 50 tags, no `aws:` prefix).
    pub tags: BTreeMap<String, String>,
    /// An alias (`alias/NAME`) made for the new key in the same keystore write: either both
    /// the key and its alias exist afterwards, or neither.
    pub alias: Option<String>,
}

/// One alias, as `alias list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AliasEntry {
    /// `alias/...`.
    pub alias_name: String,
    /// The key it points at.
    pub target_key_id: String,
}

/// Checks an alias name against KMS's rules.
pub(crate) fn check_alias_name(alias: &str) -> Result<(), KeyError> {
    let name = alias.strip_prefix("alias/").unwrap_or("");
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_-:".contains(&b));
    if name.is_empty() || alias.len() > 256 || !valid_chars || name.starts_with("aws/") {
        return Err(KeyError::InvalidAliasName(alias.to_owned()));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), KeyError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(KeyError::InvalidArgument(format!(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: \
             Member must have length less than or equal to {MAX_DESCRIPTION}"
        )));
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), KeyError> {
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(KeyError::InvalidArgument(format!(
                "tag {k:?}: keys are 1 to 128 characters, values at most 256"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(KeyError::InvalidArgument(format!(
                "tag {k:?}: the aws: prefix is reserved"
            )));
        }
    }
    Ok(())
}

/// Checks a deletion window, with KMS's ValidationException wording.
pub(crate) fn check_pending_days(days: u32) -> Result<(), KeyError> {
    let (bound, limit) = match days {
        d if d < MIN_PENDING_DAYS => ("greater than or equal to", MIN_PENDING_DAYS),
        d if d > MAX_PENDING_DAYS => ("less than or equal to", MAX_PENDING_DAYS),
        _ => return Ok(()),
    };
    Err(KeyError::InvalidArgument(format!(
        "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy \
         constraint: Member must have value {bound} {limit}"
    )))
}

fn invalid_state(id: &KeyId, state: KeyState) -> KeyError {
    KeyError::InvalidState {
        key_id: id.to_string(),
        state: state.to_string(),
    }
}

impl LocalKms {
    /// Creates an Enabled CMK with fresh material (compatibility shorthand of
    /// [`LocalKms::create_key_with`]).
    pub fn create_key(&self, description: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        let req = CreateKeyRequest {
            description: description.to_owned(),
            ..CreateKeyRequest::default()
        };
        self.create_key_with(&req, caller)
    }

    /// Creates a CMK (KMS CreateKey): Enabled with fresh material, or PendingImport for an
    /// EXTERNAL origin, and its alias if `req.alias` names one (KMS CreateAlias, recorded as
    /// its own audit event), all in one keystore write. Saves the keystore.
    pub fn create_key_with(
        &self,
        req: &CreateKeyRequest,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        self.refresh_quietly();
        let result = check_description(&req.description)
            .and_then(|()| check_tags(&req.tags))
            .and_then(|()| req.alias.as_deref().map_or(Ok(()), check_alias_name))
            .and_then(|()| {
                self.mutate_store(|ks| {
                    // Authorized on the state it changes: the administrators are in it.
                    self.authorize(ks, Op::CreateKey, None, caller, &Default::default())?;
                    if let Some(a) = &req.alias
                        && ks.aliases().contains_key(a)
                    {
                        return Err(KeyError::AlreadyExists(format!(
                            "alias {a} (no key was created; pick another alias)"
                        )));
                    }
                    let id = ks.add_key(&req.description, req.origin, keystore::now_secs())?;
                    ks.record_mut(&id)?.tags = req.tags.clone();
                    if let Some(a) = &req.alias {
                        // The new key has the default policy, which lets the administrator
                        // (already required for CreateKey) do everything, CreateAlias included.
                        ks.body.aliases.insert(a.clone(), id.to_string());
                    }
                    Ok(metadata(ks, &id))
                })
            });
        let ev = Event {
            key: result.as_ref().ok().map(|m| m.key_id.clone()),
            detail: Some(format!("origin {}", req.origin.as_str())),
            ..Event::default()
        };
        self.record(Op::CreateKey, ev, caller, result.as_ref().map(|_| ()));
        if let (Ok(m), Some(a)) = (&result, &req.alias) {
            let ev = Event {
                detail: Some(format!("alias {a}")),
                ..Event::key(&m.key_id)
            };
            self.record(Op::CreateAlias, ev, caller, Ok(()));
        }
        result
    }

    /// Metadata of every CMK, in creation order (KMS ListKeys + DescribeKey).
    pub fn list_keys(&self) -> Vec<KeyMetadata> {
        self.refresh_quietly();
        let ks = self.read();
        let list = ks
            .keys()
            .iter()
            .map(|r| metadata(&ks, &r.key_id()))
            .collect();
        drop(ks);
        self.record(Op::ListKeys, Event::default(), &Caller::current(), Ok(()));
        list
    }

    /// Describes one CMK, as `caller` (KMS DescribeKey).
    pub fn describe(&self, key: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        self.view(Op::DescribeKey, key, caller, |ks, id| Ok(metadata(ks, &id)))
    }

    /// Enables a Disabled key (KMS EnableKey). Enabling an Enabled key does nothing.
    pub fn enable_key(&self, key: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        self.mutate(Op::EnableKey, key, caller, None, |ks, id| {
            let rec = ks.record_mut(&id)?;
            match rec.state {
                KeyState::Enabled | KeyState::Disabled => rec.state = KeyState::Enabled,
                KeyState::PendingDeletion => {
                    return Err(KeyError::PendingDeletion {
                        key_id: id.to_string(),
                    });
                }
                s @ KeyState::PendingImport => return Err(invalid_state(&id, s)),
            }
            Ok(metadata(ks, &id))
        })
    }

    /// Disables an Enabled key (KMS DisableKey): it can neither wrap nor unwrap until enabled.
    pub fn disable_key(&self, key: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        self.mutate(Op::DisableKey, key, caller, None, |ks, id| {
            let rec = ks.record_mut(&id)?;
            match rec.state {
                KeyState::Enabled | KeyState::Disabled => rec.state = KeyState::Disabled,
                KeyState::PendingDeletion => {
                    return Err(KeyError::PendingDeletion {
                        key_id: id.to_string(),
                    });
                }
                s @ KeyState::PendingImport => return Err(invalid_state(&id, s)),
            }
            Ok(metadata(ks, &id))
        })
    }

    /// Schedules the key's deletion in `pending_days` (7..=30, default 30) days (KMS
    /// ScheduleKeyDeletion). Until then it is PendingDeletion: unusable, and the deletion can
    /// be cancelled. When the window ends its material is destroyed for good.
    pub fn schedule_key_deletion(
        &self,
        key: &str,
        pending_days: Option<u32>,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        let days = pending_days.unwrap_or(DEFAULT_PENDING_DAYS);
        let detail = Some(format!("pendingWindowInDays {days}"));
        if let Err(e) = check_pending_days(days) {
            self.record(Op::ScheduleKeyDeletion, Event::key(key), caller, Err(&e));
            return Err(e);
        }
        let meta = self.mutate(Op::ScheduleKeyDeletion, key, caller, detail, |ks, id| {
            let rec = ks.record_mut(&id)?;
            if rec.state == KeyState::PendingDeletion {
                return Err(KeyError::PendingDeletion {
                    key_id: id.to_string(),
                });
            }
            rec.state = KeyState::PendingDeletion;
            rec.deletion_date = Some(keystore::now_secs() + u64::from(days) * DAY);
            rec.pending_window_days = Some(days);
            Ok(metadata(ks, &id))
        })?;
        log::warn!(
            "key {} is scheduled for deletion at Unix time {}",
            meta.key_id,
            meta.deletion_date.unwrap_or(0)
        );
        Ok(meta)
    }

    /// Cancels a scheduled deletion (KMS CancelKeyDeletion): the key comes back Disabled (or
    /// PendingImport if it has no material), as in KMS.
    pub fn cancel_key_deletion(&self, key: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        self.mutate(Op::CancelKeyDeletion, key, caller, None, |ks, id| {
            let rec = ks.record_mut(&id)?;
            if rec.state != KeyState::PendingDeletion {
                return Err(invalid_state(&id, rec.state));
            }
            let has_material = rec.versions().last().is_some_and(|v| v.has_material());
            rec.state = match has_material {
                true => KeyState::Disabled,
                false => KeyState::PendingImport,
            };
            rec.deletion_date = None;
            rec.pending_window_days = None;
            Ok(metadata(ks, &id))
        })
    }

    /// Replaces the description (KMS UpdateKeyDescription).
    pub fn update_key_description(
        &self,
        key: &str,
        description: &str,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        check_description(description)?;
        self.mutate(Op::UpdateKeyDescription, key, caller, None, |ks, id| {
            ks.record_mut(&id)?.description = description.to_owned();
            Ok(metadata(ks, &id))
        })
    }

    /// Adds or replaces tags (KMS TagResource).
    pub fn tag_key(
        &self,
        key: &str,
        tags: &BTreeMap<String, String>,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        check_tags(tags)?;
        let detail = Some(format!("tag keys {:?}", tags.keys().collect::<Vec<_>>()));
        self.mutate(Op::TagResource, key, caller, detail, |ks, id| {
            let rec = ks.record_mut(&id)?;
            rec.tags.extend(tags.clone());
            if rec.tags.len() > MAX_TAGS {
                return Err(KeyError::LimitExceeded(format!(
                    "key {id} would have {} tags; at most {MAX_TAGS} are allowed",
                    rec.tags.len()
                )));
            }
            Ok(metadata(ks, &id))
        })
    }

    /// Removes tags (KMS UntagResource); absent tag keys are ignored.
    pub fn untag_key(
        &self,
        key: &str,
        tag_keys: &[String],
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        let detail = Some(format!("tag keys {tag_keys:?}"));
        self.mutate(Op::UntagResource, key, caller, detail, |ks, id| {
            let rec = ks.record_mut(&id)?;
            tag_keys.iter().for_each(|k| {
                rec.tags.remove(k);
            });
            Ok(metadata(ks, &id))
        })
    }

    /// Creates `alias` pointing at `key` (a key id or another alias) (KMS CreateAlias).
    pub fn create_alias(&self, alias: &str, key: &str, caller: &Caller) -> Result<(), KeyError> {
        self.alias_op(Op::CreateAlias, alias, key, caller, |ks, _| {
            if ks.aliases().contains_key(alias) {
                return Err(KeyError::AlreadyExists(format!("alias {alias}")));
            }
            Ok(())
        })
    }

    /// Points an existing `alias` at another key (KMS UpdateAlias).
    pub fn update_alias(&self, alias: &str, key: &str, caller: &Caller) -> Result<(), KeyError> {
        self.alias_op(Op::UpdateAlias, alias, key, caller, |ks, _| {
            if !ks.aliases().contains_key(alias) {
                return Err(KeyError::NotFound(alias.to_owned()));
            }
            Ok(())
        })
    }

    fn alias_op(
        &self,
        op: Op,
        alias: &str,
        key: &str,
        caller: &Caller,
        check: impl Fn(&Keystore, &KeyId) -> Result<(), KeyError>,
    ) -> Result<(), KeyError> {
        if let Err(e) = check_alias_name(alias) {
            self.record(op, Event::key(key), caller, Err(&e));
            return Err(e);
        }
        let detail = Some(format!("alias {alias}"));
        self.mutate(op, key, caller, detail, |ks, id| {
            check(ks, &id)?;
            ks.body.aliases.insert(alias.to_owned(), id.to_string());
            Ok(())
        })?;
        log::info!("alias {alias} now points at key {key}");
        Ok(())
    }

    /// Deletes an alias (KMS DeleteAlias); the key is unaffected. Authorized against the key
    /// the alias points at.
    pub fn delete_alias(&self, alias: &str, caller: &Caller) -> Result<(), KeyError> {
        let detail = Some(format!("alias {alias}"));
        self.mutate(Op::DeleteAlias, alias, caller, detail, |ks, _| {
            ks.body.aliases.remove(alias);
            Ok(())
        })
    }

    /// All aliases, or those of one key (KMS ListAliases).
    pub fn list_aliases(
        &self,
        key: Option<&str>,
        caller: &Caller,
    ) -> Result<Vec<AliasEntry>, KeyError> {
        self.refresh_quietly();
        let ks = self.read();
        let only = key.map(|k| ks.resolve(k)).transpose();
        let result = only.map(|only| {
            ks.aliases()
                .iter()
                .filter(|(_, t)| only.is_none_or(|id| **t == id.to_string()))
                .map(|(a, t)| AliasEntry {
                    alias_name: a.clone(),
                    target_key_id: t.clone(),
                })
                .collect()
        });
        drop(ks);
        let ev = Event {
            key: key.map(str::to_owned),
            ..Event::default()
        };
        self.record(Op::ListAliases, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    /// Moves `key` to `state` (compatibility entry point for tests and older callers):
    /// Enabled → enable, Disabled → disable (or cancel a scheduled deletion),
    /// PendingDeletion → schedule deletion with the default window.
    #[cfg(test)]
    pub(crate) fn set_state(
        &self,
        key: &str,
        state: KeyState,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        let pending = self.peek(|ks| {
            ks.resolve(key)
                .ok()
                .and_then(|id| ks.key(&id).map(|r| r.state == KeyState::PendingDeletion))
                .unwrap_or(false)
        });
        match state {
            KeyState::Enabled => self.enable_key(key, caller),
            KeyState::Disabled if pending => self.cancel_key_deletion(key, caller),
            KeyState::Disabled => self.disable_key(key, caller),
            KeyState::PendingDeletion => self.schedule_key_deletion(key, None, caller),
            KeyState::PendingImport => Err(KeyError::InvalidArgument(
                "a key cannot be put into state PendingImport".into(),
            )),
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
