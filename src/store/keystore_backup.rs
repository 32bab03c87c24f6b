//! Keystore backups (docs/FORMAT.md §11): a self-contained file holding a volume's keystore
//! and its volume-key record, sealed under a key derived from a separate backup passphrase
//! (Argon2id) or backup key file, with the volume id in the clear and under the seal.
//!
//! ```text
//! off len
//!   0   8  magic "EnvFSkb1"
//!   8   1  kdf: 1 = argon2id, 2 = keyfile
//!   9  16  salt
//!  25   4  m_kib (u32)  ┐ argon2id costs; all three zero for keyfile
//!  29   4  t     (u32)  │
//!  33   4  p     (u32)  ┘
//!  37  16  volume id (the UUID's 16 raw bytes)
//!  53  12  nonce
//!  65   …  AES-256-GCM-SIV(backup key, nonce, AD = bytes 0..65, payload) ‖ tag (16)
//! root       = Argon2id(passphrase, salt) | derive_key("envelopefs keystore backup keyfile v1", keyfile ‖ salt)
//! backup key = derive_key("envelopefs keystore backup v1", root)
//! payload    = UTF-8 JSON {"volume_id", "created", "keystore" (the keystore file's text),
//!              "volume_key" (the config's record)}
//! ```

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};
use envelopefs_format::Aes256GcmSiv;
use zeroize::Zeroizing;

use crate::format::volume::WrappedKeyRecord;

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"EnvFSkb1";
/// Length of the clear prefix (the associated data).
pub const PREFIX_LEN: usize = 65;
/// Argon2id costs of new backups (as new keystores).
pub const ARGON2_COSTS: (u32, u32, u32) = (65536, 3, 1);
const KEYFILE_CONTEXT: &str = "envelopefs keystore backup keyfile v1";
const KEY_CONTEXT: &str = "envelopefs keystore backup v1";
const TAG_LEN: usize = 16;

/// The secret a backup is sealed under.
pub enum BackupSecret<'a> {
    /// A passphrase (bytes per docs/FORMAT.md §6.1).
    Passphrase(&'a [u8]),
    /// A 32-byte key file.
    KeyFile(&'a [u8; 32]),
}

/// What a backup holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Payload {
    /// The volume's id (hyphenated UUID).
    pub volume_id: String,
    /// When the backup was made, Unix seconds.
    pub created: u64,
    /// The keystore file's whole text.
    pub keystore: String,
    /// The config's volume-key record.
    pub volume_key: WrappedKeyRecord,
}

/// Why a backup could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a keystore backup, or a damaged one.
    #[error("not an envelopefs keystore backup, or a damaged one: {0}")]
    Malformed(String),
    /// The backup belongs to another volume.
    #[error(
        "this backup is of volume {backup}, not of this volume ({volume}): restore it onto its own volume"
    )]
    OtherVolume {
        /// The backup's volume id.
        backup: String,
        /// This volume's id.
        volume: String,
    },
    /// The seal did not open.
    #[error(
        "wrong backup passphrase or key file (or the backup was modified): try again with the \
         secret the backup was made with"
    )]
    WrongSecret,
}

/// The clear fields of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// 1 = argon2id, 2 = keyfile.
    pub kdf: u8,
    /// KDF salt.
    pub salt: [u8; 16],
    /// Argon2id memory (KiB), passes, lanes (zero for keyfile).
    pub costs: (u32, u32, u32),
    /// The volume id's raw bytes.
    pub volume_id: [u8; 16],
    /// The AEAD nonce.
    pub nonce: [u8; 12],
}

impl Prefix {
    fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8] = self.kdf;
        b[9..25].copy_from_slice(&self.salt);
        b[25..29].copy_from_slice(&self.costs.0.to_be_bytes());
        b[29..33].copy_from_slice(&self.costs.1.to_be_bytes());
        b[33..37].copy_from_slice(&self.costs.2.to_be_bytes());
        b[37..53].copy_from_slice(&self.volume_id);
        b[53..65].copy_from_slice(&self.nonce);
        b
    }

    /// Parses and checks the clear prefix of `file` (never panics).
    pub fn decode(file: &[u8]) -> Result<Prefix, BackupError> {
        let bad = |s: &str| BackupError::Malformed(s.to_owned());
        if file.len() < PREFIX_LEN + TAG_LEN {
            return Err(bad("too short"));
        }
        if &file[..8] != MAGIC {
            return Err(bad("bad magic (expected EnvFSkb1)"));
        }
        let u32_at = |o: usize| u32::from_be_bytes(file[o..o + 4].try_into().expect("4 bytes"));
        let p = Prefix {
            kdf: file[8],
            salt: file[9..25].try_into().expect("16 bytes"),
            costs: (u32_at(25), u32_at(29), u32_at(33)),
            volume_id: file[37..53].try_into().expect("16 bytes"),
            nonce: file[53..65].try_into().expect("12 bytes"),
        };
        match p.kdf {
            1 => {
                let (m, t, l) = p.costs;
                if m > 4_194_304 || t > 100 || l > 64 || t == 0 || l == 0 || m < 8 * l {
                    return Err(bad("Argon2id costs out of range"));
                }
            }
            2 if p.costs == (0, 0, 0) => {}
            2 => return Err(bad("non-zero costs for a key file backup")),
            k => return Err(BackupError::Malformed(format!("unknown kdf {k}"))),
        }
        Ok(p)
    }
}

/// The backup key for `prefix` from `secret` (None: the secret is of the other kind).
pub fn backup_key(prefix: &Prefix, secret: &BackupSecret) -> Option<Zeroizing<[u8; 32]>> {
    let mut root = Zeroizing::new([0u8; 32]);
    match (prefix.kdf, secret) {
        (1, BackupSecret::Passphrase(pw)) => {
            let (m, t, p) = prefix.costs;
            let params = argon2::Params::new(m, t, p, Some(32)).ok()?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(pw, &prefix.salt, root.as_mut())
                .ok()?;
        }
        (2, BackupSecret::KeyFile(k)) => {
            let mut ikm = Zeroizing::new([0u8; 48]);
            ikm[..32].copy_from_slice(k.as_slice());
            ikm[32..].copy_from_slice(&prefix.salt);
            *root = blake3::derive_key(KEYFILE_CONTEXT, ikm.as_ref());
        }
        _ => return None,
    }
    Some(Zeroizing::new(blake3::derive_key(
        KEY_CONTEXT,
        root.as_ref(),
    )))
}

/// Seals `payload` into a backup file with the clear fields of `prefix` (whose nonce and
/// salt must be fresh and random; tests pass fixed ones).
pub fn seal(prefix: &Prefix, secret: &BackupSecret, payload: &Payload) -> Option<Vec<u8>> {
    let key = backup_key(prefix, secret)?;
    let head = prefix.encode();
    let mut body = Zeroizing::new(serde_json::to_vec(payload).expect("payload serialises"));
    let aead = Aes256GcmSiv::new_from_slice(key.as_ref()).expect("32-byte key");
    let tag = aead
        .encrypt_inout_detached(
            &Nonce::from(prefix.nonce),
            &head,
            body.as_mut_slice().into(),
        )
        .ok()?;
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Some(out)
}

/// Refuses a backup whose clear volume id is not `volume_id` (hyphenated), before any key
/// derivation (the id is under the seal too: [`open`] checks it again).
pub fn check_volume(prefix: &Prefix, volume_id: &str) -> Result<(), BackupError> {
    let backup_id = uuid::Uuid::from_bytes(prefix.volume_id)
        .hyphenated()
        .to_string();
    if backup_id.eq_ignore_ascii_case(volume_id) {
        Ok(())
    } else {
        Err(BackupError::OtherVolume {
            backup: backup_id,
            volume: volume_id.to_owned(),
        })
    }
}

/// Opens a backup file of the volume `volume_id` (hyphenated).
pub fn open(file: &[u8], volume_id: &str, secret: &BackupSecret) -> Result<Payload, BackupError> {
    let prefix = Prefix::decode(file)?;
    check_volume(&prefix, volume_id)?;
    let key = backup_key(&prefix, secret).ok_or_else(|| {
        BackupError::Malformed(
            if prefix.kdf == 1 {
                "this backup was made with a passphrase: give --backup-passfile or the terminal"
            } else {
                "this backup was made with a key file: give --backup-keyfile"
            }
            .into(),
        )
    })?;
    let aead = Aes256GcmSiv::new_from_slice(key.as_ref()).expect("32-byte key");
    let (head, rest) = file.split_at(PREFIX_LEN);
    let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut body = Zeroizing::new(sealed.to_vec());
    let tag: [u8; TAG_LEN] = tag.try_into().expect("16 bytes");
    aead.decrypt_inout_detached(
        &Nonce::from(prefix.nonce),
        head,
        body.as_mut_slice().into(),
        &Tag::from(tag),
    )
    .map_err(|_| BackupError::WrongSecret)?;
    let payload: Payload = serde_json::from_slice(&body)
        .map_err(|e| BackupError::Malformed(format!("payload: {e}")))?;
    if !payload.volume_id.eq_ignore_ascii_case(volume_id) {
        return Err(BackupError::OtherVolume {
            backup: payload.volume_id,
            volume: volume_id.to_owned(),
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(kdf: u8) -> Prefix {
        Prefix {
            kdf,
            salt: [2; 16],
            costs: if kdf == 1 { (8, 1, 1) } else { (0, 0, 0) },
            volume_id: *uuid::Uuid::parse_str("12345678-9abc-4def-8123-456789abcdef")
                .unwrap()
                .as_bytes(),
            nonce: [3; 12],
        }
    }

    fn payload() -> Payload {
        Payload {
            volume_id: "12345678-9abc-4def-8123-456789abcdef".into(),
            created: 1,
            keystore: "{}".into(),
            volume_key: WrappedKeyRecord {
                key_id: "k".into(),
                version: 1,
                blob: "00".into(),
            },
        }
    }

    #[test]
    fn round_trips_and_refuses_other_volumes_wrong_secrets_and_edits() {
        let id = "12345678-9abc-4def-8123-456789abcdef";
        for (kdf, s) in [
            (1, BackupSecret::Passphrase(b"pw")),
            (2, BackupSecret::KeyFile(&[9; 32])),
        ] {
            let f = seal(&prefix(kdf), &s, &payload()).unwrap();
            assert_eq!(open(&f, id, &s).unwrap().keystore, "{}");
            assert!(matches!(
                open(&f, "00000000-0000-4000-8000-000000000000", &s),
                Err(BackupError::OtherVolume { .. })
            ));
            let wrong = match kdf {
                1 => BackupSecret::Passphrase(b"px"),
                _ => BackupSecret::KeyFile(&[8; 32]),
            };
            assert!(matches!(
                open(&f, id, &wrong),
                Err(BackupError::WrongSecret)
            ));
            for i in [8usize, 20, 40, 60, 70, f.len() - 1] {
                let mut g = f.clone();
                g[i] ^= 1;
                assert!(open(&g, id, &s).is_err(), "byte {i}");
            }
            assert!(open(&f[..50], id, &s).is_err());
        }
    }
}
