//! Crypto users (CloudHSM's CUs) of a keystore whose CMKs live in a PKCS#11 token
//! (docs/KEYS.md §2b), enforced by envelopefs in front of the token.
//!
//! The token knows two logins: its security officer (SO, the *crypto officer* here) and its
//! user. Crypto users are envelopefs's: each is a record in the keystore body (member
//! `crypto_users`, under the keystore MAC) holding the token user PIN sealed under a key
//! derived from the CU's own password:
//!
//! ```text
//! {"name": "alice", "created": <secs>, "shared": ["<key id>", ...],
//!  "failed_logins": <u32>, "locked": <bool>,
//!  "salt": "<hex 16 B>", "m_kib": 65536, "t": 3, "p": 1,
//!  "sealed_pin": "<hex: nonce 12 B ‖ AES-256-GCM-SIV(K, token user PIN) ‖ tag 16 B>"}
//! K   = Argon2id(password, salt, m_kib, t, p), 32 B
//! AAD = "envelopefs crypto user pin v1" ‖ name (UTF-8)
//! ```
//!
//! A CU logs in with the PIN `NAME:PASSWORD` (CloudHSM's PKCS#11 PIN format). Its session may
//! wrap and unwrap data keys only under the keys shared with it, and manage nothing.
//!
//! **Lockout.** [`MAX_FAILED_LOGINS`] wrong passwords in a row lock the CU until the officer
//! unlocks it. A process with a wrong password cannot unlock the keystore, so it cannot write
//! the count into it: it appends a line to `failed-logins.jsonl` in the keystore's audit
//! directory (and a failed-unlock note, which the next unlock moves into the audit trail).
//! Every login counts the CU's recorded failures plus those lines before it tries the
//! password; the next successful login (of anyone) folds the lines into the MAC-protected
//! counters and empties the file, under the file's lock. A CU whose counter reaches the limit
//! is `locked` in the keystore; the right password no longer opens it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keystore::{Keystore, now_secs};
use crate::local::Op;
use crate::secret::{open_bytes, random_bytes, seal_bytes, unhex};
use crate::{Caller, KeyError, KeyId};
use envelopefs_format::context::hex;

/// Wrong passwords in a row that lock a crypto user (CloudHSM's limit).
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The file of failed logins not yet folded into the keystore, in the audit directory.
pub const FAILED_LOGINS_FILE: &str = "failed-logins.jsonl";
/// The keystore body member holding the crypto users.
const FIELD: &str = "crypto_users";
const PIN_AAD: &[u8] = b"envelopefs crypto user pin v1";
/// Most crypto users a keystore lists.
const MAX_USERS: usize = 256;

/// One crypto user, as the keystore records it.
#[derive(Clone, Serialize, Deserialize)]
pub struct CryptoUser {
    /// Its name (`[A-Za-z0-9_.-]`, 1 to 32 characters).
    pub name: String,
    /// When the officer created it (Unix seconds).
    pub created: u64,
    /// The key ids it may use.
    #[serde(default)]
    pub shared: Vec<String>,
    /// Wrong passwords in a row, as last folded into the keystore.
    #[serde(default)]
    pub failed_logins: u32,
    /// Locked by [`MAX_FAILED_LOGINS`] failures; only the officer unlocks it.
    #[serde(default)]
    pub locked: bool,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    sealed_pin: String,
}

/// Argon2id costs of a CU's password (the keystore passphrase's).
const M_KIB: u32 = 65536;
const T: u32 = 3;
const P: u32 = 1;

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidArgument(format!(
            "crypto user name {name:?}: use 1 to 32 letters, digits, '_', '.' or '-'"
        )))
    }
}

fn password_key(u: &CryptoUser, password: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if u.m_kib > 1 << 21 || u.t > 16 || u.p > 16 {
        return Err(KeyError::InvalidArgument(format!(
            "crypto user {}: unreasonable Argon2id costs; the keystore was probably modified",
            u.name
        )));
    }
    let salt: [u8; 16] = unhex(&u.salt)
        .ok_or_else(|| KeyError::InvalidArgument(format!("crypto user {}: bad salt", u.name)))?;
    let params = argon2::Params::new(u.m_kib, u.t, u.p, Some(32))
        .map_err(|e| KeyError::Internal(format!("argon2: {e}")))?;
    let mut k = Zeroizing::new([0u8; 32]);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(password, &salt, &mut k[..])
        .map_err(|e| KeyError::Internal(format!("argon2: {e}")))?;
    Ok(k)
}

fn seal_pin(name: &str, password: &[u8], token_pin: &[u8]) -> Result<CryptoUser, KeyError> {
    let mut u = CryptoUser {
        name: name.to_owned(),
        created: now_secs(),
        shared: Vec::new(),
        failed_logins: 0,
        locked: false,
        salt: hex(&random_bytes::<16>()?),
        m_kib: M_KIB,
        t: T,
        p: P,
        sealed_pin: String::new(),
    };
    let k = password_key(&u, password)?;
    let aad = [PIN_AAD, name.as_bytes()].concat();
    u.sealed_pin = hex(&seal_bytes(&k, &aad, token_pin)?);
    Ok(u)
}

/// The crypto users of a keystore body member (empty when there is none).
fn users_of(v: Option<&serde_json::Value>) -> Vec<CryptoUser> {
    v.and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

impl Keystore {
    /// The crypto users recorded in the (verified) keystore.
    pub fn crypto_users(&self) -> Vec<CryptoUser> {
        users_of(self.body.extra.get(FIELD))
    }

    fn put_crypto_users(&mut self, users: &[CryptoUser]) -> Result<(), KeyError> {
        let v = serde_json::to_value(users)
            .map_err(|e| KeyError::Internal(format!("crypto users: {e}")))?;
        self.body.extra.insert(FIELD.to_owned(), v);
        Ok(())
    }

    /// Refuses what the crypto user of this session may not do: anything but using (and
    /// describing) the keys shared with it. Other sessions are not restricted here.
    pub(crate) fn check_crypto_user(&self, op: Op, key: Option<&KeyId>) -> Result<(), KeyError> {
        let Some(name) = &self.session_user else {
            return Ok(());
        };
        let deny = |key_id: String, reason: String| {
            let e = KeyError::AccessDenied { key_id, reason };
            log::warn!("{e}");
            Err(e)
        };
        let usage = matches!(
            op,
            Op::GenerateDataKey
                | Op::Decrypt
                | Op::ReEncryptFrom
                | Op::ReEncryptTo
                | Op::DescribeKey
        );
        let key_id = key.map_or_else(|| "(none)".to_owned(), KeyId::to_string);
        if !usage {
            return deny(
                key_id,
                format!(
                    "crypto user {name} may only use the keys shared with it, not {}; ask \
                     the crypto officer, or use the token user's PIN",
                    op.action()
                ),
            );
        }
        let users = self.crypto_users();
        let Some(u) = users.iter().find(|u| &u.name == name) else {
            return deny(key_id, format!("crypto user {name} was deleted"));
        };
        if u.locked {
            return deny(key_id, format!("crypto user {name} is locked"));
        }
        if key.is_some_and(|k| !u.shared.contains(&k.to_string())) {
            return deny(
                key_id,
                format!(
                    "the key is not shared with crypto user {name}; the crypto officer shares \
                     it with `envelopefs hsm user share BACKING {name} KEY`"
                ),
            );
        }
        Ok(())
    }
}

/// A crypto user's login state, for `envelopefs hsm login-status` and `hsm user list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginStatus {
    /// The CU.
    pub name: String,
    /// Failed logins in a row: recorded in the keystore plus pending in the notes file.
    pub failed_logins: u32,
    /// Whether it is locked (or will be at the next login: failures reached the limit).
    pub locked: bool,
    /// The key ids shared with it.
    pub shared: Vec<String>,
}

fn statuses(users: &[CryptoUser], pending: &BTreeMap<String, u32>) -> Vec<LoginStatus> {
    users
        .iter()
        .map(|u| {
            let failed = u.failed_logins + pending.get(&u.name).copied().unwrap_or(0);
            LoginStatus {
                name: u.name.clone(),
                failed_logins: failed,
                locked: u.locked || failed >= MAX_FAILED_LOGINS,
                shared: u.shared.clone(),
            }
        })
        .collect()
}

/// The crypto users of the keystore at `path` and their login state, read **without
/// verifying the keystore** (no PIN is needed): what a login would see.
pub fn login_status_unverified(path: &Path) -> Result<Vec<LoginStatus>, KeyError> {
    Ok(statuses(&users_unverified(path)?, &pending_failures(path)?))
}

fn users_unverified(path: &Path) -> Result<Vec<CryptoUser>, KeyError> {
    let io = |e: std::io::Error| KeyError::Io {
        path: path.to_owned(),
        source: e,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let body = (|| {
        let top: serde_json::Value = serde_json::from_str(&text).ok()?;
        serde_json::from_str::<serde_json::Value>(top.get("body")?.as_str()?).ok()
    })()
    .ok_or_else(|| KeyError::corrupt(path, "not a keystore file"))?;
    Ok(users_of(body.get(FIELD)))
}

fn failures_file(keystore: &Path) -> PathBuf {
    crate::events::audit_dir(keystore).join(FAILED_LOGINS_FILE)
}

#[derive(Serialize, Deserialize)]
struct FailureLine {
    time: u64,
    user: String,
    uid: u32,
    pid: u32,
}

/// Failed logins per CU noted in the failures file and not yet folded into the keystore.
fn pending_failures(keystore: &Path) -> Result<BTreeMap<String, u32>, KeyError> {
    let path = failures_file(keystore);
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Ok(f) => {
            f.lock_shared().map_err(|e| KeyError::Io {
                path: path.clone(),
                source: e,
            })?;
            (&f).take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| KeyError::Io {
                    path: path.clone(),
                    source: e,
                })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(KeyError::Io { path, source: e }),
    }
    Ok(count_lines(&text))
}

fn count_lines(text: &str) -> BTreeMap<String, u32> {
    let mut n = BTreeMap::new();
    for line in text.lines() {
        if let Ok(l) = serde_json::from_str::<FailureLine>(line) {
            *n.entry(l.user).or_insert(0u32) += 1;
        }
    }
    n
}

/// Records a failed login of `name` (see the module docs); never contains the password.
fn note_failure(keystore: &Path, name: &str, e: &KeyError) -> Result<(), KeyError> {
    let path = failures_file(keystore);
    let caller = Caller::current();
    let line = FailureLine {
        time: now_secs(),
        user: name.to_owned(),
        uid: caller.uid,
        pid: caller.pid,
    };
    let mut text = serde_json::to_vec(&line).map_err(|e| KeyError::Internal(e.to_string()))?;
    text.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        f.lock()?;
        f.write_all(&text)?;
        f.sync_data()
    };
    write().map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    crate::audit::note_failed_unlock(&crate::events::audit_dir(keystore), &caller, e)
        .unwrap_or_else(|err| log::warn!("cannot note a failed login in the audit dir: {err}"));
    Ok(())
}

fn locked_error(name: &str, keystore: &Path) -> KeyError {
    KeyError::AccessDenied {
        key_id: format!("(crypto user {name})"),
        reason: format!(
            "crypto user {name} is locked after {MAX_FAILED_LOGINS} failed logins; the crypto \
             officer unlocks it with `envelopefs hsm user unlock {} {name}`",
            keystore
                .parent()
                .map_or_else(|| "BACKING".into(), |p| p.display().to_string())
        ),
    }
}

/// Logs crypto user `name` in with `password` against the keystore at `path`, before the
/// keystore can be verified: refuses a locked CU, checks the password (Argon2id) and returns
/// the token user PIN it seals. A wrong password is noted (see the module docs) and is
/// [`KeyError::AccessDenied`]. `None` when the keystore has no CU of that name (the PIN is
/// then the token user's).
pub fn unseal_token_pin(
    path: &Path,
    name: &str,
    password: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let users = users_unverified(path)?;
    let Some(u) = users.iter().find(|u| u.name == name) else {
        return Ok(None);
    };
    let pending = pending_failures(path)?;
    let st = &statuses(std::slice::from_ref(u), &pending)[0];
    if st.locked {
        let e = locked_error(name, path);
        let _ = crate::audit::note_failed_unlock(
            &crate::events::audit_dir(path),
            &Caller::current(),
            &e,
        );
        return Err(e);
    }
    let k = password_key(u, password)?;
    let aad = [PIN_AAD, name.as_bytes()].concat();
    let sealed = crate::secret::unhex_vec(&u.sealed_pin)
        .ok_or_else(|| KeyError::corrupt(path, format!("crypto user {name}: bad sealed_pin")))?;
    match open_bytes(&k, &aad, &sealed) {
        Ok(pin) => Ok(Some(pin)),
        Err(_) => {
            let failed = st.failed_logins + 1;
            let e = KeyError::AccessDenied {
                key_id: format!("(crypto user {name})"),
                reason: format!(
                    "wrong password for crypto user {name} ({failed} failed login(s) in a row; \
                     {MAX_FAILED_LOGINS} lock it)"
                ),
            };
            note_failure(path, name, &e).map_err(|io| {
                KeyError::Unavailable(format!(
                    "{e}; and the failure could not be recorded ({io}), so logins of {name} \
                     are refused until it can be: make the audit directory writable"
                ))
            })?;
            Err(e)
        }
    }
}

#[path = "cusers_ops.rs"]
mod ops;
