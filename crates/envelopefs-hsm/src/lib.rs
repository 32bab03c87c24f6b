//! PKCS#11 custody of envelopefs CMKs (docs/KEYS.md §HSM custody).
//!
//! [`Token`] is one logged-in PKCS#11 token (SoftHSM2 in the tests; CloudHSM, YubiHSM,
//! Thales, ... through their modules), found by label. It implements
//! [`envelopefs_kms::custody::Custody`]:
//!
//! - each CMK version is an AES-256 secret key generated in the token with `CKA_TOKEN`,
//!   `CKA_PRIVATE`, `CKA_SENSITIVE` = true, `CKA_EXTRACTABLE` = false, `CKA_ENCRYPT` and
//!   `CKA_DECRYPT` only, labelled `envelopefs cmk <key id> v<version>`;
//! - a data key is wrapped as `C_Encrypt(CKM_AES_GCM, IV = 12 random bytes from the token,
//!   AAD = the encryption-context binding, 128-bit tag)`: the blob is IV ‖ ciphertext (32 B)
//!   ‖ tag (16 B), 60 bytes, as the software custody's;
//! - the keystore's root key comes from the token's keystore object (AES-256, `CKA_ENCRYPT`
//!   only, label `envelopefs keystore <salt hex>`) by `C_Encrypt(CKM_AES_ECB, salt ‖ ¬salt)`.
//!
//! [`open_kms`] and [`create_kms`] put a [`LocalKms`] over such a token; everything but the
//! key material (policies, grants, states, rotation, audit) is the embedded service's.

mod token;

pub mod backup;
pub mod backup_file;

pub mod softhsm;

pub use token::{Pin, Token};

use std::path::{Path, PathBuf};

use envelopefs_kms::cusers;
use std::sync::Arc;

use envelopefs_kms::KeyError;
use envelopefs_kms::keystore::Keystore;
use envelopefs_kms::local::LocalKms;

/// Opens the keystore at `path`, whose CMKs live in a PKCS#11 token, logging in with `pin`:
/// the token user's PIN, or `NAME:PASSWORD` of a crypto user recorded in the keystore
/// (`envelopefs_kms::cusers`: its password unseals the token PIN, five wrong ones lock it,
/// and the service may then only use the keys shared with it).
/// The module and token label come from the keystore (unverified until the token has
/// computed the root key and the MAC checks); `module` overrides the recorded module path
/// (the same token, reached through a module installed elsewhere).
pub fn open_kms(path: &Path, module: Option<&Path>, pin: Pin) -> Result<LocalKms, KeyError> {
    let (pin, user) = match pin.crypto_user() {
        Some((name, password)) => match cusers::unseal_token_pin(path, name, password)? {
            Some(token_pin) => (Pin::from_bytes(token_pin)?, Some(name.to_owned())),
            None => (pin, None),
        },
        None => (pin, None),
    };
    let kms = open_token_kms(path, module, pin)?;
    if let Some(name) = user {
        kms.begin_crypto_user_session(&name, &envelopefs_kms::Caller::current())?;
    }
    Ok(kms)
}

/// The module and token label recorded in the keystore at `path` (unverified).
pub fn token_of(path: &Path) -> Result<(PathBuf, String), KeyError> {
    let info = Keystore::custody_unverified(path)?.ok_or_else(|| not_hsm(path))?;
    Ok((PathBuf::from(info.module), info.token_label))
}

fn not_hsm(path: &Path) -> KeyError {
    KeyError::InvalidArgument(format!(
        "keystore {} is protected by a passphrase or key file, not a PKCS#11 token; open it \
         without --hsm-module / a PIN",
        path.display()
    ))
}

fn open_token_kms(path: &Path, module: Option<&Path>, pin: Pin) -> Result<LocalKms, KeyError> {
    let info = Keystore::custody_unverified(path)?.ok_or_else(|| {
        KeyError::InvalidArgument(format!(
            "keystore {} is protected by a passphrase or key file, not a PKCS#11 token; open \
             it without --hsm-module / a PIN",
            path.display()
        ))
    })?;
    let module = module.map_or_else(|| Path::new(&info.module).to_owned(), Path::to_owned);
    let token = Token::open(&module, &info.token_label, pin)?;
    LocalKms::open_with_custody(path, Arc::new(token))
}

/// Creates a keystore at `path` whose CMKs live in the token labelled `token_label` of
/// `module`, logging in with `pin`; its default CMK is generated in the token. With
/// `backup_capable`, its keys may leave the token wrapped by a trusted key ([`backup`]).
pub fn create_kms(
    path: &Path,
    module: &Path,
    token_label: &str,
    pin: Pin,
    backup_capable: bool,
) -> Result<LocalKms, KeyError> {
    let token = Token::open(module, token_label, pin)?;
    token.set_backup_capable(backup_capable);
    LocalKms::create_with_custody(path, Arc::new(token))
}
