//! Secret types (data keys, CMK material, keystore unlock secrets) and the one AEAD
//! construction that seals a 32-byte secret (`seal32` / `open32`).
//!
//! Every type here zeroizes its bytes when dropped, derives neither `Clone` nor `Debug` (the
//! hand-written `Debug` prints `[REDACTED]`), and is read only through `expose_secret`. The
//! 32-byte keys live in a `Box` so that moving the value moves a pointer, not the key, and no
//! stale copy is left behind on the stack.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};
use envelopefs_format::Aes256GcmSiv;
use zeroize::{Zeroize, Zeroizing};

use crate::KeyError;

/// Length of a data key (a 256-bit key).
pub const DATA_KEY_LEN: usize = 32;

/// Defines a boxed, zeroize-on-drop 32-byte secret.
macro_rules! secret32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(Box<[u8; 32]>);

        impl $name {
            /// Moves `bytes` into a box and zeroizes the argument; a caller that keeps its own
            /// copy must zeroize that itself.
            #[allow(dead_code)] // generated for every secret type; not every one needs it
            pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
                let key = Self(Box::new(bytes));
                bytes.zeroize();
                key
            }

            /// A fresh key from the operating system's random generator.
            ///
            /// # Panics
            /// If the operating system cannot provide randomness (no safe way to continue).
            pub fn random() -> Self {
                let mut key = Self::zeroed();
                getrandom::fill(&mut key.0[..]).expect("the system random generator failed");
                key
            }

            /// The key bytes. Do not copy them anywhere that outlives the borrow.
            pub fn expose_secret(&self) -> &[u8; 32] {
                &self.0
            }

            /// The key bytes, writable: lets the key service decrypt straight into the box.
            pub(crate) fn expose_secret_mut(&mut self) -> &mut [u8; 32] {
                &mut self.0
            }

            /// An all-zero key, to be filled through `expose_secret_mut`.
            pub(crate) fn zeroed() -> Self {
                Self(Box::new([0u8; 32]))
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl zeroize::ZeroizeOnDrop for $name {}

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }
    };
}

secret32!(
    /// A file's 256-bit data key (DEK), in plaintext. Drop it as soon as it is no longer needed.
    DataKey
);

secret32!(
    /// 256 bits of secret key material: one version of a CMK, or a key derived from one.
    KeyMaterial
);

/// A keystore passphrase (arbitrary bytes; usually UTF-8 text).
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Passphrase(Zeroizing::new(bytes))
    }

    /// The passphrase bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase([REDACTED])")
    }
}

/// How to unlock a keystore: the secret its root key is derived from.
pub enum Unlock {
    /// A passphrase, stretched with Argon2id (the parameters are stored in the keystore).
    Passphrase(Zeroizing<Vec<u8>>),
    /// The 32 bytes of a key file, used without stretching.
    KeyFile(Zeroizing<[u8; 32]>),
    /// The user PIN of the PKCS#11 token that holds the keystore's CMKs (kdf `pkcs11`):
    /// opened through the `envelopefs-hsm` crate, never by [`crate::local::LocalKms::open`].
    HsmPin(Zeroizing<Vec<u8>>),
}

impl Unlock {
    /// Unlock with a fresh random key file's contents (tests).
    #[cfg(test)]
    pub(crate) fn random_keyfile() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut k[..]).expect("the system random generator failed");
        Unlock::KeyFile(k)
    }
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlock::Passphrase(_) => f.write_str("Unlock::Passphrase([REDACTED])"),
            Unlock::KeyFile(_) => f.write_str("Unlock::KeyFile([REDACTED])"),
            Unlock::HsmPin(_) => f.write_str("Unlock::HsmPin([REDACTED])"),
        }
    }
}

/// How a passphrase becomes the bytes Argon2id stretches, the one rule for every source
/// (docs/FORMAT.md §6.1): from a file (`first_line`), the bytes before the first LF (0x0A),
/// or the whole file if it has none; then, from any source (file, `ENVELOPEFS_PASSPHRASE`,
/// terminal), one trailing CR (0x0D) is dropped. Nothing else changes: no other trimming, no
/// decoding or Unicode normalization. An empty result is refused by the callers.
pub fn passphrase_bytes(raw: Zeroizing<Vec<u8>>, first_line: bool) -> Zeroizing<Vec<u8>> {
    let mut raw = raw;
    if first_line && let Some(i) = raw.iter().position(|&b| b == b'\n') {
        raw.truncate(i);
    }
    if raw.ends_with(b"\r") {
        raw.pop();
    }
    raw
}

/// The contents of a pass file that [`passphrase_bytes`] (`first_line`) reads back as exactly
/// `pass`: `pass` ‖ CR LF (the LF ends the first line, the CR is the one dropped, so a
/// passphrase that itself ends in CR survives). `None` when `pass` contains a line feed,
/// which no pass file can carry. `mount --background` hands the passphrase to its daemon this
/// way.
pub fn as_passfile(pass: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if pass.contains(&b'\n') {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(pass.len() + 2));
    out.extend_from_slice(pass);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// Length of a sealed 32-byte secret: nonce ‖ ciphertext ‖ tag.
pub(crate) const SEALED_LEN: usize = 12 + 32 + 16;

/// Seals a 32-byte secret with AES-256-GCM-SIV under `key`, binding `aad`:
/// nonce (12 B, random) ‖ ciphertext (32 B) ‖ tag (16 B).
pub(crate) fn seal32(
    key: &[u8; 32],
    aad: &[u8],
    secret: &[u8; 32],
) -> Result<[u8; SEALED_LEN], KeyError> {
    seal32_with_nonce(key, aad, secret, random_bytes()?)
}

/// [`seal32`] with a chosen nonce, for test vectors (envelopefs always uses a random nonce).
pub(crate) fn seal32_with_nonce(
    key: &[u8; 32],
    aad: &[u8],
    secret: &[u8; 32],
    nonce: [u8; 12],
) -> Result<[u8; SEALED_LEN], KeyError> {
    let mut out = [0u8; SEALED_LEN];
    out[..12].copy_from_slice(&nonce);
    out[12..44].copy_from_slice(secret);
    let sealed = Aes256GcmSiv::new(key.into()).encrypt_inout_detached(
        &Nonce::from(nonce),
        aad,
        (&mut out[12..44]).into(),
    );
    let Ok(tag) = sealed else {
        out.zeroize();
        return Err(KeyError::Internal("AES-GCM-SIV refused to encrypt".into()));
    };
    out[44..].copy_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal32`] made, into `out`. A wrong length or a failed authentication is
/// [`KeyError::InvalidCiphertext`] and leaves `out` zeroed.
pub(crate) fn open32(
    key: &[u8; 32],
    aad: &[u8],
    blob: &[u8],
    out: &mut [u8; 32],
) -> Result<(), KeyError> {
    if blob.len() != SEALED_LEN {
        return Err(KeyError::InvalidCiphertext);
    }
    let nonce: [u8; 12] = blob[..12]
        .try_into()
        .map_err(|_| KeyError::InvalidCiphertext)?;
    let tag: [u8; 16] = blob[44..]
        .try_into()
        .map_err(|_| KeyError::InvalidCiphertext)?;
    out.copy_from_slice(&blob[12..44]);
    let opened = Aes256GcmSiv::new(key.into()).decrypt_inout_detached(
        &Nonce::from(nonce),
        aad,
        (&mut out[..]).into(),
        &Tag::from(tag),
    );
    opened.map_err(|_| {
        out.zeroize();
        KeyError::InvalidCiphertext
    })
}

/// Seals a secret of any length with AES-256-GCM-SIV under `key`, binding `aad`:
/// nonce (12 B, random) ‖ ciphertext (same length as `secret`) ‖ tag (16 B). Used for secrets
/// that are not 32 bytes (an import wrapping key's private half).
pub(crate) fn seal_bytes(key: &[u8; 32], aad: &[u8], secret: &[u8]) -> Result<Vec<u8>, KeyError> {
    let nonce: [u8; 12] = random_bytes()?;
    let mut out = Vec::with_capacity(12 + secret.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(secret);
    let sealed = Aes256GcmSiv::new(key.into()).encrypt_inout_detached(
        &Nonce::from(nonce),
        aad,
        (&mut out[12..]).into(),
    );
    let Ok(tag) = sealed else {
        out.zeroize();
        return Err(KeyError::Internal("AES-GCM-SIV refused to encrypt".into()));
    };
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal_bytes`] made. A short blob or a failed authentication is
/// [`KeyError::InvalidCiphertext`]; the plaintext zeroizes itself when dropped.
pub(crate) fn open_bytes(
    key: &[u8; 32],
    aad: &[u8],
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if blob.len() < 12 + 16 {
        return Err(KeyError::InvalidCiphertext);
    }
    let (nonce, rest) = blob.split_at(12);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| KeyError::InvalidCiphertext)?;
    let tag: [u8; 16] = tag.try_into().map_err(|_| KeyError::InvalidCiphertext)?;
    let mut out = Zeroizing::new(ct.to_vec());
    Aes256GcmSiv::new(key.into())
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            (&mut out[..]).into(),
            &Tag::from(tag),
        )
        .map_err(|_| KeyError::InvalidCiphertext)?;
    Ok(out)
}

/// `N` bytes from the operating system's random generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| KeyError::Internal(format!("system random generator: {e}")))?;
    Ok(b)
}

pub(crate) use envelopefs_format::context::{unhex as unhex_vec, unhex_array as unhex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_bytes() {
        let k = DataKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{k:?}"), "DataKey([REDACTED])");
        assert_eq!(
            format!("{:?}", KeyMaterial::random()),
            "KeyMaterial([REDACTED])"
        );
        let p = Unlock::Passphrase(Zeroizing::new(b"hunter2".to_vec()));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!format!("{:?}", Passphrase::new(b"hunter2".to_vec())).contains("hunter2"));
    }

    #[test]
    fn random_keys_differ_and_bytes_are_kept() {
        assert_ne!(
            DataKey::random().expose_secret(),
            DataKey::random().expose_secret()
        );
        assert_eq!(DataKey::from_bytes([7; 32]).expose_secret(), &[7; 32]);
    }

    /// Whatever passphrase a pass file can carry survives the trip through one.
    #[test]
    fn as_passfile_round_trips() {
        for p in [&b"pw"[..], b"pw\r", b"pw\r\r", b"\r", b" a b ", b"\xff\x00"] {
            let file = as_passfile(p).unwrap();
            assert_eq!(&passphrase_bytes(file, true)[..], p, "{p:?}");
        }
        assert!(as_passfile(b"two\nlines").is_none());
    }

    /// The passphrase rule of docs/FORMAT.md §6.1, case by case.
    #[test]
    fn passphrase_bytes_rule() {
        let f = |raw: &[u8], first_line| passphrase_bytes(Zeroizing::new(raw.to_vec()), first_line);
        for (raw, file, other) in [
            (&b"pw"[..], &b"pw"[..], &b"pw"[..]),
            (b"pw\n", b"pw", b"pw\n"),
            (b"pw\r\n", b"pw", b"pw\r\n"),
            (b"pw\r", b"pw", b"pw"),
            (b"a b \r\r\n", b"a b \r", b"a b \r\r\n"),
            (b"one\ntwo", b"one", b"one\ntwo"),
            (b"\nx", b"", b"\nx"),
            (b" \xc3\xa9 ", b" \xc3\xa9 ", b" \xc3\xa9 "),
        ] {
            assert_eq!(&f(raw, true)[..], file, "{raw:?} from a file");
            assert_eq!(&f(raw, false)[..], other, "{raw:?} from elsewhere");
        }
    }
    #[test]
    fn seal_open_round_trip_and_tamper() {
        let (k, aad, s) = ([1u8; 32], b"aad", [9u8; 32]);
        let blob = seal32(&k, aad, &s).unwrap();
        let mut out = [0u8; 32];
        open32(&k, aad, &blob, &mut out).unwrap();
        assert_eq!(out, s);
        let mut bad = blob;
        bad[20] ^= 1;
        assert!(matches!(
            open32(&k, aad, &bad, &mut out),
            Err(KeyError::InvalidCiphertext)
        ));
        assert_eq!(out, [0; 32]);
        assert!(open32(&k, b"aaD", &blob, &mut out).is_err());
        for len in [0, 11, 27, 59, 61] {
            assert!(open32(&k, aad, &[0; 61][..len], &mut out).is_err());
        }
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0aF"), None);
        assert_eq!(unhex::<1>("+1"), None);
    }

    #[test]
    fn seal_bytes_round_trip_and_tamper() {
        let k = [3u8; 32];
        let secret = b"a longer secret than 32 bytes, of any length";
        let blob = seal_bytes(&k, b"ad", secret).unwrap();
        assert_eq!(blob.len(), 12 + secret.len() + 16);
        assert_eq!(
            &open_bytes(&k, b"ad", &blob).unwrap()[..],
            b"a longer secret than 32 bytes, of any length"
        );
        assert!(open_bytes(&k, b"aD", &blob).is_err());
        let mut bad = blob.clone();
        bad[13] ^= 1;
        assert!(open_bytes(&k, b"ad", &bad).is_err());
        assert!(open_bytes(&k, b"ad", &blob[..27]).is_err());
    }
}
