//! Encrypted backup of a token's envelopefs keys, as CloudHSM does it (docs/KEYS.md §2c):
//! every object is wrapped (C_WrapKey, CKM_AES_KEY_WRAP_PAD) under a fresh ephemeral AES-256
//! key (EBK) made in the token, and the EBK under the officer's backup key (BK).
//!
//! Backup-capable keys (`init --hsm-backup`) are `CKA_EXTRACTABLE` with
//! `CKA_WRAP_WITH_TRUSTED`: only a key with `CKA_TRUSTED` may wrap them, and only the
//! security officer can give a key that attribute. So a backup logs in as the SO to import BK
//! and make the EBK (both public session objects, trusted, gone when the session closes),
//! logs out, logs in as the user (whose private objects the SO cannot see) and wraps. A
//! restore mirrors it: SO imports BK and unwraps the EBK; the user unwraps every object into
//! the token with the attributes it had. PKCS#11 logs a whole process in as one user at a
//! time: call these with no other session of the module open.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use crate::backup_file::{BackupFile, Entry, Kind};
use crate::{Pin, Token};
use envelopefs_kms::KeyError;

/// The officer's 32-byte backup key; zeroized on drop.
pub struct BackupKey(Zeroizing<[u8; 32]>);

impl BackupKey {
    /// Takes exactly 32 bytes (a file made with `head -c 32 /dev/urandom`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| {
            KeyError::InvalidArgument(format!(
                "a backup key is exactly 32 bytes, not {}; make one with `head -c 32 \
                 /dev/urandom > FILE`",
                bytes.len()
            ))
        })?;
        Ok(BackupKey(Zeroizing::new(k)))
    }

    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn secret_template(token: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(token),
        Attribute::Sensitive(true),
    ]
}

/// Imports BK as a public, trusted session object (the SO is logged in).
fn import_bk(s: &Session, bk: &BackupKey) -> Result<ObjectHandle, CkError> {
    let mut t = secret_template(false);
    t.extend([
        Attribute::Value(bk.bytes().to_vec()),
        Attribute::Private(false),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Trusted(true),
    ]);
    s.create_object(&t)
}

/// The SO's half, then the user's: runs `so` logged in as the SO and `user` as the user.
fn as_officer_then_user<A, B>(
    token: &Token,
    session: &Session,
    so_pin: &Pin,
    user_pin: &Pin,
    so: impl FnOnce(&Session) -> Result<A, CkError>,
    user: impl FnOnce(&Session, &A) -> Result<B, KeyError>,
) -> Result<B, KeyError> {
    token.login_so(session, so_pin)?;
    let a = so(session).map_err(|e| token.error("officer's half of the backup", &e));
    let _ = session.logout();
    let a = a?;
    token.login_user(session, user_pin)?;
    let b = user(session, &a);
    let _ = session.logout();
    b
}

fn find(s: &Session, label: &str) -> Result<Option<ObjectHandle>, CkError> {
    Ok(s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?
    .first()
    .copied())
}

/// Wraps the objects `labels` of the token (CMK versions and the keystore object) into a
/// backup under `bk`; the file's bytes.
pub fn backup(
    module: &std::path::Path,
    token_label: &str,
    user_pin: &Pin,
    so_pin: &Pin,
    bk: &BackupKey,
    labels: &[(Kind, String)],
    created: u64,
) -> Result<Vec<u8>, KeyError> {
    let (token, s) = Token::bare_session(module, token_label)?;
    let mut wrapped_ebk = Vec::new();
    let entries = as_officer_then_user(
        &token,
        &s,
        so_pin,
        user_pin,
        |s| {
            let bk_h = import_bk(s, bk)?;
            let mut t = secret_template(false);
            t.extend([
                Attribute::ValueLen(32.into()),
                Attribute::Private(false),
                Attribute::Extractable(true),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Trusted(true),
            ]);
            let ebk = s.generate_key(&Mechanism::AesKeyGen, &t)?;
            wrapped_ebk = s.wrap_key(&Mechanism::AesKeyWrapPad, bk_h, ebk)?;
            s.destroy_object(bk_h)?;
            Ok(ebk)
        },
        |s, ebk| {
            let mut entries = Vec::with_capacity(labels.len());
            for (kind, label) in labels {
                let h = find(s, label)
                    .map_err(|e| token.error("cannot list objects", &e))?
                    .ok_or_else(|| KeyError::InvalidState {
                        key_id: label.clone(),
                        state: format!("missing from token {token_label:?}; nothing was backed up"),
                    })?;
                let w = match s.wrap_key(&Mechanism::AesKeyWrapPad, *ebk, h) {
                    Ok(w) => w,
                    Err(CkError::Pkcs11(
                        RvError::KeyUnextractable | RvError::KeyNotWrappable,
                        _,
                    )) => {
                        return Err(KeyError::InvalidState {
                            key_id: label.clone(),
                            state: "never extractable (the volume was made without \
                                    --hsm-backup); it cannot leave the token, so back up the \
                                    token itself with its vendor's tools"
                                .into(),
                        });
                    }
                    Err(e) => return Err(token.error("cannot wrap a key for the backup", &e)),
                };
                entries.push(Entry {
                    kind: *kind,
                    label: label.clone(),
                    wrapped: forty(&w)?,
                });
            }
            let _ = s.destroy_object(*ebk);
            Ok(entries)
        },
    )?;
    BackupFile {
        created,
        wrapped_ebk: forty(&wrapped_ebk)?,
        entries,
    }
    .encode(bk.bytes())
}

fn forty(w: &[u8]) -> Result<[u8; 40], KeyError> {
    w.try_into().map_err(|_| {
        KeyError::Internal(format!(
            "the token wrapped a 32-byte key into {} bytes, not 40",
            w.len()
        ))
    })
}

/// Checks and restores the backup `bytes` into the token: every object is unwrapped into
/// it with the attributes it had. Refuses a backup that does not verify under `bk` before
/// touching the token, and a token that already holds one of the objects. Returns the
/// restored labels.
pub fn restore(
    module: &std::path::Path,
    token_label: &str,
    user_pin: &Pin,
    so_pin: &Pin,
    bk: &BackupKey,
    bytes: &[u8],
) -> Result<Vec<String>, KeyError> {
    let file = BackupFile::decode(bytes, bk.bytes())?;
    let (token, s) = Token::bare_session(module, token_label)?;
    as_officer_then_user(
        &token,
        &s,
        so_pin,
        user_pin,
        |s| {
            let bk_h = import_bk(s, bk)?;
            let mut t = secret_template(false);
            t.extend([
                Attribute::Private(false),
                Attribute::Extractable(false),
                Attribute::Unwrap(true),
            ]);
            let ebk = s.unwrap_key(&Mechanism::AesKeyWrapPad, bk_h, &file.wrapped_ebk, &t);
            s.destroy_object(bk_h)?;
            ebk
        },
        |s, ebk| {
            for e in &file.entries {
                if find(s, &e.label)
                    .map_err(|err| token.error("cannot list objects", &err))?
                    .is_some()
                {
                    return Err(KeyError::AlreadyExists(format!(
                        "token object {:?} in token {token_label:?}: restore into an empty \
                         (freshly initialised) token; nothing was restored",
                        e.label
                    )));
                }
            }
            let mut restored: Vec<String> = Vec::new();
            for e in &file.entries {
                let mut t = secret_template(true);
                t.extend([
                    Attribute::Private(true),
                    Attribute::Extractable(true),
                    Attribute::WrapWithTrusted(true),
                    Attribute::Label(e.label.as_bytes().to_vec()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(e.kind == Kind::Cmk),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ]);
                if let Err(err) = s.unwrap_key(&Mechanism::AesKeyWrapPad, *ebk, &e.wrapped, &t) {
                    // Undo: a half-restored token would look restored.
                    for label in &restored {
                        if let Ok(Some(h)) = find(s, label) {
                            let _ = s.destroy_object(h);
                        }
                    }
                    return Err(token.error(
                        &format!("cannot restore {:?} (nothing was restored)", e.label),
                        &err,
                    ));
                }
                restored.push(e.label.clone());
            }
            let _ = s.destroy_object(*ebk);
            Ok(restored)
        },
    )
}
