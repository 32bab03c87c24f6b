//! Key custody: where the material of a CMK version lives and where data keys are wrapped
//! under it.
//!
//! Two custodies exist. The software custody keeps each version's 32-byte material sealed in
//! the keystore file and decrypted in memory ([`crate::keystore`]); it wraps a data key with
//! AES-256-GCM-SIV under a key derived from that material ([`crate::local`] has the blob
//! layout). A [`Custody`] implementation (the PKCS#11 provider in the `envelopefs-hsm` crate)
//! keeps each version as a non-extractable key inside a token and wraps data keys there; the
//! keystore then records only the token object's label in the version record
//! (`"token_object"`), and the keystore's own root key is computed by the token too
//! ([`Custody::keystore_secret`]), so the keystore's MAC cannot be verified or forged without
//! the token.
//!
//! Everything else (key records, aliases, states, rotation, policies, grants, the audit trail)
//! is the same code for both: [`VersionKey`] is the only place that tells them apart.

use zeroize::Zeroizing;

use crate::secret::{self, KeyMaterial};
use crate::{DataKey, KeyError, KeyId};

/// Length of a wrapped data key under either custody: nonce or IV (12 B) ‖ ciphertext (32 B)
/// ‖ tag (16 B).
pub const WRAPPED_LEN: usize = secret::SEALED_LEN;

/// The non-secret facts that say where a custody's keys are: recorded in the keystore (under
/// its MAC) when the keystore is created, so later opens find the same token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodyInfo {
    /// The PKCS#11 module (a shared library path).
    pub module: String,
    /// The token's label (tokens are found by label: slot numbers change).
    pub token_label: String,
}

/// A holder of CMK versions outside the keystore file (an HSM token). Labels name the token
/// objects; the implementation finds them by label.
///
/// Errors: a token that cannot be reached is [`KeyError::Unavailable`]; an object missing
/// from the token is [`KeyError::InvalidState`] naming it; a blob that does not authenticate
/// is [`KeyError::InvalidCiphertext`]. Messages never contain secrets (PINs, key bytes).
pub trait Custody: Send + Sync {
    /// Where the keys are.
    fn info(&self) -> CustodyInfo;

    /// Generates the key of version `version` of CMK `id` inside the custody (non-extractable)
    /// and returns the label of the new object, which the keystore records.
    fn generate(&self, id: &KeyId, version: u32) -> Result<String, KeyError>;

    /// Encrypts the 32-byte `dek` under the object `label`, binding `aad`; returns
    /// IV (12 B) ‖ ciphertext (32 B) ‖ tag (16 B).
    fn wrap(&self, label: &str, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Decrypts what [`Custody::wrap`] made under `label` with the same `aad`.
    fn unwrap(&self, label: &str, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Destroys the object `label` (a missing object is not an error).
    fn destroy(&self, label: &str) -> Result<(), KeyError>;

    /// A 32-byte secret computed inside the custody from `salt` by the object `label` (a PRF;
    /// the same inputs give the same output), from which the keystore's root key is derived.
    /// With `create`, makes the object first (an existing one with that label is an error).
    fn keystore_secret(
        &self,
        label: &str,
        salt: &[u8; 16],
        create: bool,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError>;
}

/// The key of one CMK version, in whichever custody holds it: the one place where the two
/// custodies differ in wrapping.
pub(crate) enum VersionKey<'a> {
    /// Material held (decrypted) by the keystore.
    Software(&'a KeyMaterial),
    /// An object in a token.
    Held(&'a dyn Custody, &'a str),
}

impl VersionKey<'_> {
    /// Wraps `dek`, binding `aad`: a [`WRAPPED_LEN`]-byte blob.
    pub(crate) fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            VersionKey::Software(m) => Ok(secret::seal32(
                crate::local::kek(m).expose_secret(),
                aad,
                dek.expose_secret(),
            )?
            .to_vec()),
            VersionKey::Held(c, label) => {
                let blob = c.wrap(label, dek.expose_secret(), aad)?;
                if blob.len() != WRAPPED_LEN {
                    return Err(KeyError::Internal(format!(
                        "the key custody returned a {}-byte wrapped key, not {WRAPPED_LEN}",
                        blob.len()
                    )));
                }
                Ok(blob)
            }
        }
    }

    /// Unwraps a blob made by [`VersionKey::wrap`] with the same `aad`.
    pub(crate) fn unwrap(&self, blob: &[u8], aad: &[u8]) -> Result<DataKey, KeyError> {
        let mut dek = DataKey::zeroed();
        match self {
            VersionKey::Software(m) => secret::open32(
                crate::local::kek(m).expose_secret(),
                aad,
                blob,
                dek.expose_secret_mut(),
            )?,
            VersionKey::Held(c, label) => {
                if blob.len() != WRAPPED_LEN {
                    return Err(KeyError::InvalidCiphertext);
                }
                let plain = c.unwrap(label, blob, aad)?;
                if plain.len() != 32 {
                    return Err(KeyError::InvalidCiphertext);
                }
                dek.expose_secret_mut().copy_from_slice(&plain);
            }
        }
        Ok(dek)
    }
}
