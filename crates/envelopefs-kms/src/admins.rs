//! The volume administrators of [`LocalKms`]: the uids recorded in the MAC-protected keystore
//! body (`admins`), never inferred from who owns the file. `envelopefs init` records the user
//! who runs it (plus any `--admin-uid`); afterwards only an administrator may add or remove
//! one, and the last one cannot be removed. Root is an administrator without being listed.
//! Administrators may create keys and, under the default key policy, manage every key
//! (docs/KEYS.md §Access control).

use crate::local::{Event, LocalKms, Op};
use crate::principal::user_name;
use crate::{Caller, KeyError};
use envelopefs_format::context::EncryptionContext;

/// Most administrators a keystore lists.
pub(crate) const MAX_ADMINS: usize = 64;

impl LocalKms {
    /// The administrators' uids, as recorded in the keystore (anyone who can unlock it may
    /// list them).
    pub fn list_admins(&self, caller: &Caller) -> Result<Vec<u32>, KeyError> {
        self.refresh_quietly();
        let admins = self.admins();
        self.record(Op::ListAdministrators, Event::default(), caller, Ok(()));
        Ok(admins)
    }

    /// Adds `uid` to the administrators (an administrator only). Adding one already listed
    /// changes nothing.
    pub fn add_admin(&self, uid: u32, caller: &Caller) -> Result<Vec<u32>, KeyError> {
        self.change_admins(Op::AddAdministrator, uid, caller, |admins| {
            if !admins.contains(&uid) {
                if admins.len() >= MAX_ADMINS {
                    return Err(KeyError::LimitExceeded(format!(
                        "the keystore already lists {MAX_ADMINS} administrators; remove one first"
                    )));
                }
                admins.push(uid);
            }
            Ok(())
        })
    }

    /// Removes `uid` from the administrators (an administrator only; an administrator may
    /// remove themself). The last administrator cannot be removed.
    pub fn remove_admin(&self, uid: u32, caller: &Caller) -> Result<Vec<u32>, KeyError> {
        self.change_admins(Op::RemoveAdministrator, uid, caller, |admins| {
            if !admins.contains(&uid) {
                return Err(KeyError::NotFound(format!(
                    "administrator uid {uid} (see `envelopefs key admin list`)"
                )));
            }
            if admins.len() == 1 {
                return Err(KeyError::InvalidArgument(format!(
                    "uid {uid} is the last administrator; add another one first \
                     (`envelopefs key admin add BACKING UID`)"
                )));
            }
            admins.retain(|&a| a != uid);
            Ok(())
        })
    }

    /// Authorizes `caller` as an administrator, applies `f` to the list and saves (one
    /// keystore write), and records the outcome in the audit trail.
    fn change_admins(
        &self,
        op: Op,
        uid: u32,
        caller: &Caller,
        f: impl Fn(&mut Vec<u32>) -> Result<(), KeyError>,
    ) -> Result<Vec<u32>, KeyError> {
        self.refresh_quietly();
        let label = match user_name(uid) {
            Some(n) => format!("uid {uid} ({n})"),
            None => format!("uid {uid}"),
        };
        let by = std::cell::RefCell::new(None);
        let result = self.mutate_store(|ks| {
            *by.borrow_mut() = self.authorize(ks, op, None, caller, &EncryptionContext::new())?;
            let mut admins = ks.admins().to_vec();
            f(&mut admins)?;
            ks.body.admins = Some(admins.clone());
            Ok(admins)
        });
        let ev = Event {
            detail: Some(format!("administrator {label}")),
            authorized_by: by.into_inner(),
            ..Event::default()
        };
        self.record(op, ev, caller, result.as_ref().map(|_| ()));
        if result.is_ok() {
            log::info!("{}: {label} by uid {}", op.name(), caller.uid);
        }
        result
    }
}
