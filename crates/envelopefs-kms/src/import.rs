//! Import of external key material (KMS's EXTERNAL origin, "bring your own key"), as in KMS's
//! GetParametersForImport / ImportKeyMaterial / DeleteImportedKeyMaterial (docs/KEYS.md
//! §Import has the walkthrough with `openssl`).
//!
//! 1. `key create --origin external`: the key is PendingImport, with no material.
//! 2. `key import-params`: a fresh RSA key pair (2048, 3072 or 4096 bits). The public half is
//!    handed out as SPKI PEM; the private half (PKCS#8 DER) is kept in the key record, sealed
//!    under the keystore wrap key with associated data
//!    `"envelopefs import wrapping key v1" ‖ key id (16) ‖ params id (16)`. Valid 24 hours;
//!    asking again replaces the previous parameters.
//! 3. The user wraps 32 bytes of material with RSAES-OAEP (SHA-256 or SHA-1, MGF1 with the
//!    same hash) under the public key, and `key import` unwraps it with the private key.
//!
//! # Import token (80 bytes, binary)
//!
//! ```text
//! off len
//!   0   8  magic "EFSIMPT1"
//!   8  16  key id (raw UUID bytes)
//!  24  16  params id
//!  40   8  valid-to, seconds since the epoch (u64 BE)
//!  48  32  MAC = blake3::keyed_hash(token_key, bytes 0..48)   (token_key: crate::kdf)
//! ```
//!
//! Checked in this order: length and magic, MAC (→ InvalidImportToken), key id (→
//! InvalidImportToken), params id still current (→ InvalidImportToken), valid-to (→
//! ExpiredImportToken).
//!
//! A key's imported material is remembered by a keyed fingerprint (`digest`), so once it is
//! deleted or expired, only the same material can be imported again (IncorrectKeyMaterial
//! otherwise), as KMS requires. New material for an on-demand rotation is imported with
//! `new_material` and becomes current at the next `key rotate`.

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use zeroize::Zeroizing;

use crate::keystore::{self, Keystore, VersionRecord};
use crate::local::{DAY, Event, LocalKms, Op};
use crate::record::{ImportParams, WrappingAlgorithm, WrappingSpec};
use crate::secret::{KeyMaterial, random_bytes};
use crate::{Caller, KeyError, KeyId, KeyState, Origin};
use envelopefs_format::context::hex;

/// How long import parameters stay valid, as KMS (24 hours).
pub(crate) const PARAMS_VALID_SECS: u64 = DAY;
/// Longest valid-to of imported material, as KMS (365 days).
pub(crate) const MAX_VALID_TO_SECS: u64 = 365 * DAY;
/// Length of an import token.
pub(crate) const TOKEN_LEN: usize = 80;
const TOKEN_MAGIC: &[u8; 8] = b"EFSIMPT1";
const PRIVATE_KEY_AAD: &[u8] = b"envelopefs import wrapping key v1";

/// What `key import-params` hands out.
#[derive(Clone, Debug)]
pub struct ImportParameters {
    /// The key.
    pub key_id: String,
    /// The RSA public wrapping key, SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_pem: String,
    /// The import token to give back with the wrapped material.
    pub import_token: Vec<u8>,
    /// When both expire (seconds since the epoch).
    pub parameters_valid_to: u64,
    /// The RSA key size.
    pub wrapping_spec: WrappingSpec,
    /// The OAEP variant to wrap with.
    pub algorithm: WrappingAlgorithm,
}

/// What `key import` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportOutcome {
    /// The key.
    pub key_id: String,
    /// The version the material was imported as.
    pub version: u32,
    /// `NEW_KEY_MATERIAL` (first import), `EXISTING_KEY_MATERIAL` (re-import of the same
    /// material) or `PENDING_ROTATION` (new material for the next `key rotate`).
    pub import_type: &'static str,
    /// The key's state afterwards.
    pub key_state: KeyState,
    /// When the material expires, if it does.
    pub valid_to: Option<u64>,
}

fn private_key_aad(id: &KeyId, params_id: &[u8; 16]) -> Vec<u8> {
    [PRIVATE_KEY_AAD, &id.0, params_id].concat()
}

fn not_external(id: &KeyId) -> KeyError {
    KeyError::Unsupported(format!(
        "key {id} has origin AWS_KMS (envelopefs made its material); only keys created with \
         `--origin external` take imported material"
    ))
}

impl LocalKms {
    /// Makes import parameters for an EXTERNAL key (KMS GetParametersForImport): an RSA
    /// wrapping key pair, of which the public half is returned, and an import token; both valid
    /// 24 hours. Generating a 4096-bit key takes a few seconds; no lock is held meanwhile.
    pub fn get_parameters_for_import(
        &self,
        key: &str,
        spec: WrappingSpec,
        algorithm: WrappingAlgorithm,
        caller: &Caller,
    ) -> Result<ImportParameters, KeyError> {
        let check = |ks: &Keystore, id: KeyId| -> Result<(), KeyError> {
            let rec = ks.key(&id).expect("resolved");
            if rec.origin != Origin::External {
                return Err(not_external(&id));
            }
            if rec.state == KeyState::PendingDeletion {
                return Err(KeyError::PendingDeletion {
                    key_id: id.to_string(),
                });
            }
            Ok(())
        };
        // Check first (cheap; audited on failure), then generate outside any lock.
        self.refresh_quietly();
        let first = self.peek(|ks| {
            let id = ks.resolve(key)?;
            self.authorize(
                ks,
                Op::GetParametersForImport,
                Some(&id),
                caller,
                &Default::default(),
            )?;
            check(ks, id)
        });
        if let Err(e) = first {
            self.record(Op::GetParametersForImport, Event::key(key), caller, Err(&e));
            return Err(e);
        }
        let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
        let private = RsaPrivateKey::new(&mut rng, spec.bits())
            .map_err(|e| KeyError::Internal(format!("RSA key generation: {e}")))?;
        let der = private
            .to_pkcs8_der()
            .map_err(|e| KeyError::Internal(format!("encode RSA key: {e}")))?;
        let public_key_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Internal(format!("encode RSA public key: {e}")))?;
        let params_id: [u8; 16] = random_bytes()?;
        let valid_to = keystore::now_secs() + PARAMS_VALID_SECS;
        let detail = Some(format!("{} {}", spec.as_str(), algorithm.as_str()));
        let token = self.mutate(Op::GetParametersForImport, key, caller, detail, |ks, id| {
            check(ks, id)?;
            let sealed = ks.seal_secret(&private_key_aad(&id, &params_id), der.as_bytes())?;
            ks.record_mut(&id)?.import_params = Some(ImportParams {
                id: hex(&params_id),
                wrapping_spec: spec,
                algorithm,
                valid_to,
                private_key: sealed,
            });
            let mut token = Vec::with_capacity(TOKEN_LEN);
            token.extend_from_slice(TOKEN_MAGIC);
            token.extend_from_slice(&id.0);
            token.extend_from_slice(&params_id);
            token.extend_from_slice(&valid_to.to_be_bytes());
            let mac = ks.token_mac(&token);
            token.extend_from_slice(&mac);
            Ok((id, token))
        })?;
        Ok(ImportParameters {
            key_id: token.0.to_string(),
            public_key_pem,
            import_token: token.1,
            parameters_valid_to: valid_to,
            wrapping_spec: spec,
            algorithm,
        })
    }

    /// Imports material wrapped under the key's import parameters (KMS ImportKeyMaterial).
    /// The first import makes the key Enabled; a re-import after deletion or expiry must be the
    /// same material; `new_material` stores new material for the next on-demand rotation.
    /// `valid_to` (≤ 365 days ahead) makes the material expire: then it is deleted and the key
    /// returns to PendingImport.
    pub fn import_key_material(
        &self,
        key: &str,
        import_token: &[u8],
        encrypted_material: &[u8],
        valid_to: Option<u64>,
        new_material: bool,
        caller: &Caller,
    ) -> Result<ImportOutcome, KeyError> {
        let now = keystore::now_secs();
        let detail = Some(format!(
            "importType {}, validTo {valid_to:?}",
            if new_material {
                "NEW_KEY_MATERIAL"
            } else {
                "EXISTING_KEY_MATERIAL"
            }
        ));
        self.mutate(Op::ImportKeyMaterial, key, caller, detail, |ks, id| {
            if ks.key(&id).is_some_and(|r| r.origin != Origin::External) {
                return Err(not_external(&id));
            }
            if let Some(t) = valid_to
                && (t <= now || t > now + MAX_VALID_TO_SECS)
            {
                return Err(KeyError::InvalidArgument(format!(
                    "valid-to {t} must be in the future and at most 365 days ahead"
                )));
            }
            let material = unwrap_material(ks, &id, import_token, encrypted_material, now)?;
            let digest = ks.material_digest(&id, &material);
            let outcome = place_material(ks, &id, material, digest, new_material, now)?;
            let rec = ks.record_mut(&id)?;
            rec.valid_to = valid_to;
            let has_current = rec
                .versions()
                .last()
                .is_some_and(VersionRecord::has_material);
            if rec.state == KeyState::PendingImport && has_current {
                rec.state = KeyState::Enabled;
            }
            Ok(ImportOutcome {
                key_id: id.to_string(),
                key_state: rec.state,
                valid_to,
                ..outcome
            })
        })
    }

    /// Deletes a key's imported material (KMS DeleteImportedKeyMaterial): the key becomes
    /// PendingImport (unless PendingDeletion) until the same material is imported again.
    pub fn delete_imported_key_material(
        &self,
        key: &str,
        caller: &Caller,
    ) -> Result<KeyState, KeyError> {
        self.mutate(
            Op::DeleteImportedKeyMaterial,
            key,
            caller,
            None,
            |ks, id| {
                if ks.key(&id).is_some_and(|r| r.origin != Origin::External) {
                    return Err(not_external(&id));
                }
                drop_imported_material(ks, &id)?;
                Ok(ks.key(&id).expect("exists").state)
            },
        )
    }
}

/// Checks the token and unwraps the material with the stored private key.
fn unwrap_material(
    ks: &Keystore,
    id: &KeyId,
    token: &[u8],
    encrypted: &[u8],
    now: u64,
) -> Result<KeyMaterial, KeyError> {
    let bad = |why: &str| {
        KeyError::InvalidImportToken(format!(
            "{why}; get new ones with `envelopefs key import-params`"
        ))
    };
    if token.len() != TOKEN_LEN || &token[..8] != TOKEN_MAGIC {
        return Err(bad("this is not an envelopefs import token"));
    }
    let mac: [u8; 32] = token[48..].try_into().expect("length checked");
    if !constant_time_eq(&ks.token_mac(&token[..48]), &mac) {
        return Err(bad("the token was altered or made by another keystore"));
    }
    if token[8..24] != id.0 {
        let other = KeyId(token[8..24].try_into().expect("16 bytes"));
        return Err(bad(&format!("the token is for key {other}, not {id}")));
    }
    let params_id: [u8; 16] = token[24..40].try_into().expect("16 bytes");
    let rec = ks.key(id).expect("resolved");
    let params = rec
        .import_params
        .as_ref()
        .filter(|p| p.id == hex(&params_id))
        .ok_or_else(|| {
            bad("the token was replaced by newer import parameters (use the newest ones)")
        })?;
    let valid_to = u64::from_be_bytes(token[40..48].try_into().expect("8 bytes"));
    if now >= valid_to || now >= params.valid_to {
        return Err(KeyError::ExpiredImportToken(format!(
            "the import token and wrapping key of key {id} expired at Unix time {valid_to}; get new \
             ones with `envelopefs key import-params` and wrap the material again"
        )));
    }
    let der = ks.open_secret(&private_key_aad(id, &params_id), &params.private_key)?;
    let private = RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| {
        KeyError::Internal(format!("stored import wrapping key is unreadable: {e}"))
    })?;
    let plain = Zeroizing::new(
        match params.algorithm {
            WrappingAlgorithm::OaepSha256 => {
                private.decrypt(Oaep::<sha2::Sha256>::new(), encrypted)
            }
            WrappingAlgorithm::OaepSha1 => private.decrypt(Oaep::<sha1::Sha1>::new(), encrypted),
        }
        .map_err(|_| {
            KeyError::IncorrectKeyMaterial(format!(
                "the encrypted material does not decrypt with the wrapping key of these import \
                 parameters; wrap it with wrapping-key.pem from the same `key import-params` run, \
                 using {} (see docs/KEYS.md)",
                params.algorithm.as_str()
            ))
        })?,
    );
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
        KeyError::IncorrectKeyMaterial(format!(
            "the material is {} bytes; a symmetric key's material is exactly 32 bytes \
             (make it with `openssl rand -out material.bin 32`)",
            plain.len()
        ))
    })?;
    Ok(KeyMaterial::from_bytes(bytes))
}

/// Puts unwrapped material where it belongs: version 1 of a new key, a pending rotation, or
/// back into the deleted version it matches.
fn place_material(
    ks: &mut Keystore,
    id: &KeyId,
    material: KeyMaterial,
    digest: String,
    new_material: bool,
    now: u64,
) -> Result<ImportOutcome, KeyError> {
    let rec = ks.key(id).expect("resolved");
    let current = rec.current_version();
    let known = rec
        .versions()
        .iter()
        .find(|v| v.digest.as_deref() == Some(&digest));
    let outcome = |version, import_type| ImportOutcome {
        key_id: id.to_string(),
        version,
        import_type,
        key_state: KeyState::PendingImport,
        valid_to: None,
    };
    if current == 0 || new_material {
        if let Some(v) = known {
            return Err(KeyError::IncorrectKeyMaterial(format!(
                "this material is already version {} of key {id}; new material must differ",
                v.version
            )));
        }
        let version = current + 1;
        let record = VersionRecord {
            version,
            created: now,
            rotation_type: (version > 1).then_some(keystore::RotationType::OnDemand),
            material: Some(ks.seal_material(id, version, &material)?),
            digest: Some(digest),
            token_object: None,
            extra: Default::default(),
        };
        let rec = ks.record_mut(id)?;
        if version == 1 {
            rec.versions.push(record);
            ks.install_material(id, 1, material);
            return Ok(outcome(1, "NEW_KEY_MATERIAL"));
        }
        rec.pending_material = Some(record);
        return Ok(outcome(version, "PENDING_ROTATION"));
    }
    let Some(v) = known.map(|v| v.version) else {
        return Err(KeyError::IncorrectKeyMaterial(format!(
            "key {id} already has (or had) different material; a re-import must be the very \
             same material. To add new material for a rotation, import with --new-material and \
             then run `envelopefs key rotate`"
        )));
    };
    let sealed = ks.seal_material(id, v, &material)?;
    let rec = ks.record_mut(id)?;
    let slot = rec
        .versions
        .iter_mut()
        .find(|x| x.version == v)
        .expect("found");
    if slot.material.is_none() {
        slot.material = Some(sealed);
        ks.install_material(id, v, material);
    }
    Ok(outcome(v, "EXISTING_KEY_MATERIAL"))
}

/// Makes imported pending material the current version (on-demand rotation of an EXTERNAL
/// key). In memory only; returns the new version.
pub(super) fn promote_pending_material(ks: &mut Keystore, id: &KeyId) -> Result<u32, KeyError> {
    let rec = ks.record_mut(id)?;
    let Some(pending) = rec.pending_material.take() else {
        return Err(KeyError::Unsupported(format!(
            "key {id} has imported key material; to rotate it, first import new material with \
             `envelopefs key import ... --new-material`, then run `envelopefs key rotate` again"
        )));
    };
    let v = pending.version;
    let sealed = pending.material.clone().unwrap_or_default();
    rec.last_rotation = pending.created;
    rec.versions.push(pending);
    let m = ks
        .open_material(id, v, &sealed)
        .ok_or_else(|| KeyError::Internal(format!("pending material of key {id} is damaged")))?;
    ks.install_material(id, v, m);
    Ok(v)
}

/// Deletes every imported material version of `id` (in memory only): the digests stay, so the
/// same material can be imported again. The key becomes PendingImport unless PendingDeletion.
pub(crate) fn drop_imported_material(ks: &mut Keystore, id: &KeyId) -> Result<(), KeyError> {
    let rec = ks.record_mut(id)?;
    rec.versions.iter_mut().for_each(|v| v.material = None);
    rec.pending_material = None;
    rec.valid_to = None;
    if rec.state != KeyState::PendingDeletion {
        rec.state = KeyState::PendingImport;
    }
    ks.forget_materials(id, |_| true);
    Ok(())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a `--valid-to` argument: RFC 3339 (`2027-01-31T12:00:00Z`, offsets allowed) or
/// seconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64, KeyError> {
    crate::timefmt::parse(s).ok_or_else(|| {
        KeyError::InvalidArgument(format!(
            "time {s:?}: give RFC 3339 (2027-01-31T12:00:00Z) or seconds since the Unix epoch"
        ))
    })
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
