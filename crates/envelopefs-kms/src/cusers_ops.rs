//! The crypto officer's operations on crypto users and a CU's login on the opened keystore
//! (`crate::cusers` has the model). Each is one keystore write and one audit record.

use std::io::{Read, Seek};

use super::{
    CryptoUser, FAILED_LOGINS_FILE, LoginStatus, MAX_FAILED_LOGINS, MAX_USERS, check_name,
    count_lines, locked_error, seal_pin, statuses,
};
use crate::keystore::Keystore;
use crate::local::{Event, LocalKms, Op};
use crate::{Caller, KeyError};

impl LocalKms {
    /// Runs `f` on the crypto users (an officer operation: refused in a CU's session), saves,
    /// and records `op` naming `detail`.
    fn change_users<T>(
        &self,
        op: Op,
        detail: String,
        caller: &Caller,
        f: impl Fn(&Keystore, &mut Vec<CryptoUser>) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        self.refresh_quietly();
        let result = self.mutate_store(|ks| {
            if let Some(name) = &ks.session_user {
                return Err(KeyError::AccessDenied {
                    key_id: "(none)".into(),
                    reason: format!(
                        "crypto user {name} cannot manage crypto users; that is the crypto \
                         officer's (the token SO PIN)"
                    ),
                });
            }
            if !ks.has_custody() {
                return Err(KeyError::InvalidArgument(
                    "crypto users exist only for keystores held by a PKCS#11 token (envelopefs \
                     init --hsm-module)"
                        .into(),
                ));
            }
            let mut users = ks.crypto_users();
            let t = f(ks, &mut users)?;
            ks.put_crypto_users(&users)?;
            Ok(t)
        });
        let ev = Event {
            detail: Some(detail.clone()),
            ..Event::default()
        };
        self.record(op, ev, caller, result.as_ref().map(|_| ()));
        if result.is_ok() {
            log::info!("{}: {detail} by uid {}", op.name(), caller.uid);
        }
        result
    }

    /// Creates crypto user `name` with `password`, sealing `token_pin` (the token user PIN
    /// this keystore was opened with) for it. The officer checks the SO PIN first.
    pub fn create_crypto_user(
        &self,
        name: &str,
        password: &[u8],
        token_pin: &[u8],
        caller: &Caller,
    ) -> Result<(), KeyError> {
        check_name(name)?;
        if password.len() < 8 {
            return Err(KeyError::InvalidArgument(
                "a crypto user's password has at least 8 characters".into(),
            ));
        }
        // Argon2id runs once, outside the keystore lock.
        let new = seal_pin(name, password, token_pin)?;
        self.change_users(
            Op::CreateCryptoUser,
            format!("crypto user {name}"),
            caller,
            |_, users| {
                if users.iter().any(|u| u.name == new.name) {
                    return Err(KeyError::AlreadyExists(format!("crypto user {name}")));
                }
                if users.len() >= MAX_USERS {
                    return Err(KeyError::LimitExceeded(format!(
                        "the keystore already lists {MAX_USERS} crypto users"
                    )));
                }
                users.push(new.clone());
                Ok(())
            },
        )
    }

    /// Deletes crypto user `name`.
    pub fn delete_crypto_user(&self, name: &str, caller: &Caller) -> Result<(), KeyError> {
        self.change_users(
            Op::DeleteCryptoUser,
            format!("crypto user {name}"),
            caller,
            |_, users| {
                let before = users.len();
                users.retain(|u| u.name != name);
                match users.len() < before {
                    true => Ok(()),
                    false => Err(not_found(name)),
                }
            },
        )
    }

    /// Unlocks crypto user `name`: its failure count goes back to 0 (pending failures are
    /// folded in first, so they do not lock it again).
    pub fn unlock_crypto_user(&self, name: &str, caller: &Caller) -> Result<(), KeyError> {
        self.fold_failures(None, caller)?;
        self.change_users(
            Op::UnlockCryptoUser,
            format!("crypto user {name}"),
            caller,
            |_, users| {
                let u = find(users, name)?;
                u.failed_logins = 0;
                u.locked = false;
                Ok(())
            },
        )
    }

    /// Shares (`share`) or unshares key `key` (an id or alias) with crypto user `name`.
    pub fn share_key(
        &self,
        name: &str,
        key: &str,
        share: bool,
        caller: &Caller,
    ) -> Result<(), KeyError> {
        let op = if share { Op::ShareKey } else { Op::UnshareKey };
        self.change_users(
            op,
            format!("key {key} with crypto user {name}"),
            caller,
            |ks, users| {
                let id = ks.resolve(key)?.to_string();
                let u = find(users, name)?;
                u.shared.retain(|k| *k != id);
                if share {
                    u.shared.push(id);
                }
                Ok(())
            },
        )
    }

    /// The crypto users and their login state (failures still pending in the notes file
    /// counted).
    pub fn crypto_user_status(&self) -> Result<Vec<LoginStatus>, KeyError> {
        self.refresh_quietly();
        let path = self.keystore_path();
        let pending = match &path {
            Some(p) => super::pending_failures(p)?,
            None => Default::default(),
        };
        Ok(statuses(&self.read().crypto_users(), &pending))
    }

    /// After crypto user `name`'s password opened the keystore: folds the pending failures
    /// into the keystore, refuses a locked CU, resets its count and restricts this service to
    /// its shared keys. Recorded in the audit trail either way.
    pub fn begin_crypto_user_session(&self, name: &str, caller: &Caller) -> Result<(), KeyError> {
        let result = self.fold_failures(Some(name), caller);
        let ev = Event {
            detail: Some(format!("crypto user {name}")),
            ..Event::default()
        };
        self.record(Op::LoginCryptoUser, ev, caller, result.as_ref().map(|_| ()));
        result?;
        self.write().session_user = Some(name.to_owned());
        log::info!("logged in as crypto user {name}");
        Ok(())
    }

    /// Moves the failures noted in the audit directory into the keystore's counters (locking
    /// the CUs that reach the limit) and empties the notes, under the notes file's lock; with
    /// `login`, also checks and resets that CU's count.
    fn fold_failures(&self, login: Option<&str>, _caller: &Caller) -> Result<(), KeyError> {
        let Some(path) = self.keystore_path() else {
            return Ok(());
        };
        let file = crate::events::audit_dir(&path).join(FAILED_LOGINS_FILE);
        let io = |source| KeyError::Io {
            path: file.clone(),
            source,
        };
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
        {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        if let Some(f) = &mut f {
            f.lock().map_err(io)?;
            f.take(1 << 20).read_to_string(&mut text).map_err(io)?;
        }
        let pending = count_lines(&text);
        if pending.is_empty() && login.is_none() {
            return Ok(());
        }
        let locked = std::cell::Cell::new(false);
        self.mutate_store(|ks| {
            let mut users = ks.crypto_users();
            for u in &mut users {
                u.failed_logins += pending.get(&u.name).copied().unwrap_or(0);
                if u.failed_logins >= MAX_FAILED_LOGINS {
                    u.locked = true;
                }
                if Some(u.name.as_str()) == login {
                    locked.set(u.locked);
                    if !u.locked {
                        u.failed_logins = 0;
                    }
                }
            }
            if login.is_some_and(|n| !users.iter().any(|u| u.name == n)) {
                return Err(not_found(login.unwrap_or_default()));
            }
            ks.put_crypto_users(&users)?;
            Ok(())
        })?;
        if let Some(f) = &mut f {
            f.set_len(0).map_err(io)?;
            f.rewind().map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        match (login, locked.get()) {
            (Some(name), true) => Err(locked_error(name, &path)),
            _ => Ok(()),
        }
    }
}

fn not_found(name: &str) -> KeyError {
    KeyError::NotFound(format!(
        "crypto user {name} (see `envelopefs hsm user list BACKING`)"
    ))
}

fn find<'a>(users: &'a mut [CryptoUser], name: &str) -> Result<&'a mut CryptoUser, KeyError> {
    users
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| not_found(name))
}
