//! The keystore's key derivation: the `kdf` field of the keystore file, the root key derived
//! from a passphrase or key file, and the keys derived from the root (all 32 bytes):
//!
//! ```text
//! root       = Argon2id(version 0x13, m = m_kib KiB, t, p, output 32 B)(passphrase, salt)
//!            | blake3::derive_key("envelopefs keystore keyfile v1", K ‖ salt)   K = 32-B key file
//! wrap_key   = blake3::derive_key("envelopefs keystore wrap v1",  root)   AES-256-GCM-SIV key
//! mac_key    = blake3::derive_key("envelopefs keystore mac v1",   root)   blake3 keyed-hash key
//! check      = first 16 B of blake3::derive_key("envelopefs keystore check v1", root)
//! audit_key  = blake3::derive_key("envelopefs audit key v1", root)         audit-log chain key
//! token_key  = blake3::derive_key("envelopefs import token v1", root)      import-token MAC key
//! digest_key = blake3::derive_key("envelopefs imported material digest v1", root)
//! ```
//!
//! A keystore whose CMKs live in a PKCS#11 token (kdf `pkcs11`) has no passphrase: the token
//! computes `S = AES-256-ECB_R(salt ‖ (salt XOR 0xff×16))` (32 B) with its non-extractable
//! keystore object `R` ([`crate::custody::Custody::keystore_secret`]), and
//!
//! ```text
//! root       = blake3::derive_key("envelopefs keystore pkcs11 v1", S ‖ salt)
//! ```
//!
//! The root key itself is dropped (zeroized) as soon as these are derived; the derived keys live
//! as long as the open keystore, so re-reading the file (live refresh) needs no second Argon2 run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::KeyError;
use crate::secret::{KeyMaterial, Unlock, unhex};
use envelopefs_format::context::hex;

pub(super) const SALT_LEN: usize = 16;
/// Largest Argon2 memory cost `open` accepts (4 GiB), so a damaged file cannot exhaust memory.
const MAX_M_KIB: u32 = 4 * 1024 * 1024;
/// Most Argon2 passes `open` accepts.
const MAX_T: u32 = 100;
/// Most Argon2 lanes `open` accepts.
const MAX_P: u32 = 64;
/// Above this memory cost (1 GiB) or [`SLOW_T`] passes, `open` warns before deriving: such
/// costs are never chosen by envelopefs and may come from a tampered file.
const SLOW_M_KIB: u32 = 1024 * 1024;
/// See [`SLOW_M_KIB`].
const SLOW_T: u32 = 10;
/// The first bytes of [`Kdf::canonical`].
const KDF_DOMAIN: &[u8] = b"envelopefs keystore kdf v2";

/// How the root key is derived (the `kdf` field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alg")]
pub(super) enum Kdf {
    #[serde(rename = "argon2id")]
    Argon2id {
        salt: String,
        m_kib: u32,
        t: u32,
        p: u32,
    },
    #[serde(rename = "keyfile")]
    KeyFile { salt: String },
    /// The root key comes from a PKCS#11 token ([`crate::custody`]): `module` and
    /// `token_label` say where, `root_object` is the label of the keystore's object in it.
    #[serde(rename = "pkcs11")]
    Pkcs11 {
        salt: String,
        module: String,
        token_label: String,
        root_object: String,
    },
}

impl Kdf {
    /// The canonical encoding of the `kdf` object that the version-2 MAC covers
    /// (docs/FORMAT.md §6.2); `None` when the salt is not 16 bytes of hex:
    ///
    /// ```text
    /// "envelopefs keystore kdf v2" (26 B ASCII)
    /// ‖ 0x01 ‖ salt (16 B) ‖ m_kib (u32 BE) ‖ t (u32 BE) ‖ p (u32 BE)     argon2id: 59 B
    /// ‖ 0x02 ‖ salt (16 B)                                               keyfile:  43 B
    /// ‖ 0x03 ‖ salt (16 B) ‖ for module, token_label, root_object each:
    ///          length (u16 BE) ‖ UTF-8 bytes                              pkcs11
    /// ```
    pub(super) fn canonical(&self) -> Option<Vec<u8>> {
        let mut out = KDF_DOMAIN.to_vec();
        match self {
            Kdf::Argon2id { salt, m_kib, t, p } => {
                out.push(1);
                out.extend_from_slice(&unhex::<SALT_LEN>(salt)?);
                for n in [m_kib, t, p] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
            Kdf::KeyFile { salt } => {
                out.push(2);
                out.extend_from_slice(&unhex::<SALT_LEN>(salt)?);
            }
            Kdf::Pkcs11 {
                salt,
                module,
                token_label,
                root_object,
            } => {
                out.push(3);
                out.extend_from_slice(&unhex::<SALT_LEN>(salt)?);
                for s in [module, token_label, root_object] {
                    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        Some(out)
    }

    /// `argon2id m_kib=65536 t=3 p=1` or `keyfile`: for messages (the salt is left out).
    pub(super) fn describe(&self) -> String {
        match self {
            Kdf::Argon2id { m_kib, t, p, .. } => format!("argon2id m_kib={m_kib} t={t} p={p}"),
            Kdf::KeyFile { .. } => "keyfile".into(),
            Kdf::Pkcs11 {
                module,
                token_label,
                ..
            } => format!("pkcs11 token {token_label:?} of module {module}"),
        }
    }

    /// The salt, when it is 16 bytes of hex.
    pub(super) fn salt(&self) -> Option<[u8; SALT_LEN]> {
        match self {
            Kdf::Argon2id { salt, .. } | Kdf::KeyFile { salt } | Kdf::Pkcs11 { salt, .. } => {
                unhex::<SALT_LEN>(salt)
            }
        }
    }
}

/// The keys derived from the root key; the secret ones zeroize on drop.
pub(super) struct Keys {
    pub(super) wrap: KeyMaterial,
    mac: KeyMaterial,
    pub(super) check: String,
    pub(super) audit: KeyMaterial,
    pub(super) token: KeyMaterial,
    pub(super) digest: KeyMaterial,
}

impl Keys {
    pub(super) fn from_root(root: &KeyMaterial) -> Self {
        let d = |ctx| KeyMaterial::from_bytes(blake3::derive_key(ctx, root.expose_secret()));
        let check = d("envelopefs keystore check v1");
        Keys {
            wrap: d("envelopefs keystore wrap v1"),
            mac: d("envelopefs keystore mac v1"),
            check: hex(&check.expose_secret()[..16]),
            audit: d(crate::audit::AUDIT_KEY_CONTEXT),
            token: d("envelopefs import token v1"),
            digest: d("envelopefs imported material digest v1"),
        }
    }

    /// The keystore MAC: version 1 covers the body; version 2 covers
    /// `kdf_bytes` ([`Kdf::canonical`]) ‖ the body.
    pub(super) fn mac(&self, version: u64, kdf_bytes: &[u8], body: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(self.mac.expose_secret());
        if version >= 2 {
            h.update(kdf_bytes);
        }
        h.update(body.as_bytes());
        h.finalize()
    }
}

/// Derives the root key. When opening (not `creating`), absurd Argon2 costs that would
/// exhaust memory are refused as corruption.
pub(super) fn derive_root(
    kdf: &Kdf,
    unlock: &Unlock,
    path: &Path,
    creating: bool,
) -> Result<KeyMaterial, KeyError> {
    let bad = |why: String| {
        if creating {
            KeyError::InvalidArgument(why)
        } else {
            KeyError::corrupt(path, why)
        }
    };
    let salt = kdf.salt().ok_or_else(|| bad("bad kdf salt".into()))?;
    match (kdf, unlock) {
        (Kdf::Argon2id { m_kib, t, p, .. }, Unlock::Passphrase(pw)) => {
            let costs = format!("argon2 costs m_kib={m_kib} t={t} p={p}");
            if !creating && (*m_kib > MAX_M_KIB || *t > MAX_T || *p > MAX_P) {
                return Err(bad(format!(
                    "unreasonable {costs} (at most m_kib={MAX_M_KIB} t={MAX_T} p={MAX_P} are \
                     accepted; envelopefs writes m_kib=65536 t=3 p=1), so it was probably modified"
                )));
            }
            if !creating && (*m_kib > SLOW_M_KIB || *t > SLOW_T) {
                log::warn!(
                    "keystore {}: unusually high {costs} (envelopefs writes m_kib=65536 t=3 \
                     p=1); deriving the key may take long; if you did not choose them, the \
                     keystore may have been modified",
                    path.display()
                );
            }
            let params = argon2::Params::new(*m_kib, *t, *p, Some(32))
                .map_err(|e| bad(format!("{costs}: {e}")))?;
            let mut root = KeyMaterial::zeroed();
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(pw, &salt, root.expose_secret_mut())
                .map_err(|e| KeyError::Internal(format!("argon2: {e}")))?;
            Ok(root)
        }
        (Kdf::KeyFile { .. }, Unlock::KeyFile(k)) => {
            let input = zeroize::Zeroizing::new([&k[..], &salt[..]].concat());
            Ok(KeyMaterial::from_bytes(blake3::derive_key(
                "envelopefs keystore keyfile v1",
                &input,
            )))
        }
        (Kdf::Argon2id { .. }, Unlock::KeyFile(_)) => Err(KeyError::InvalidArgument(format!(
            "keystore {} is protected by a passphrase, not a key file; give the passphrase (or --passfile)",
            path.display()
        ))),
        (Kdf::KeyFile { .. }, Unlock::Passphrase(_)) => Err(KeyError::InvalidArgument(format!(
            "keystore {} is protected by a key file, not a passphrase; pass it with --keyfile",
            path.display()
        ))),
        (Kdf::Argon2id { .. } | Kdf::KeyFile { .. }, Unlock::HsmPin(_)) => {
            Err(KeyError::InvalidArgument(format!(
                "keystore {} is protected by a {}, not by a PKCS#11 token; drop --pin-file / \
                 ENVELOPEFS_HSM_PIN and give the passphrase (or --passfile, --keyfile)",
                path.display(),
                kdf.describe()
            )))
        }
        (Kdf::Pkcs11 { .. }, _) => Err(KeyError::InvalidArgument(format!(
            "keystore {} is held by a {}, not a passphrase or key file; open it with the \
             token's PIN (--pin-file, ENVELOPEFS_HSM_PIN or the terminal)",
            path.display(),
            kdf.describe()
        ))),
    }
}

/// The root key of a keystore held by a PKCS#11 token, from the token's secret `s` (see the
/// module documentation).
pub(super) fn root_from_token(s: &[u8; 32], salt: &[u8; SALT_LEN]) -> KeyMaterial {
    let input = zeroize::Zeroizing::new([&s[..], &salt[..]].concat());
    KeyMaterial::from_bytes(blake3::derive_key("envelopefs keystore pkcs11 v1", &input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    /// Key-derivation test vector for docs/FORMAT.md: key file 0x01×32, salt 0x02×16.
    /// Hex of the root key, the wrap and MAC keys, and the check value, as the vectors list them.
    fn derived_hex(root: &KeyMaterial, keys: &Keys) -> [String; 4] {
        [
            hex(root.expose_secret()),
            hex(keys.wrap.expose_secret()),
            hex(keys.mac.expose_secret()),
            keys.check.clone(),
        ]
    }

    #[test]
    fn keyfile_derivation_vector() {
        let kdf = Kdf::KeyFile {
            salt: hex(&[2; 16]),
        };
        let root = derive_root(
            &kdf,
            &Unlock::KeyFile(Zeroizing::new([1; 32])),
            Path::new("v"),
            false,
        )
        .unwrap();
        let keys = Keys::from_root(&root);
        let got = derived_hex(&root, &keys);
        assert_eq!(
            got,
            [
                "62084641e6de7605b975e097cef095323ad442e78f89aba6fb7e84bb0e29c9e5",
                "3e9492b87afd4048b7cdad0f0a1a0617fd94aa20612536b935e52500f8ba63d8",
                "68f1967e16d60da5eb6046d99fd48afd3b3960ee787543b668deb2c86e54c1eb",
                "65f43f8327e40f16e59d13f0894264b1",
            ]
        );
        let audit = blake3::derive_key("envelopefs audit key v1", root.expose_secret());
        assert_eq!(keys.audit.expose_secret(), &audit);
    }

    /// Vector `keystore-argon2id-1` of docs/FORMAT.md §6.4 (the root key was cross-checked
    /// with Python `cryptography`'s Argon2id), and `keystore-mac-v2-1`: the canonical kdf
    /// encoding and the version-2 MAC of the body `{}` under the mac_key derived here. The
    /// values are checked both as written here and as printed in the document.
    #[test]
    fn argon2id_derivation_and_v2_mac_vector() {
        let kdf = Kdf::Argon2id {
            salt: hex(&[2; 16]),
            m_kib: 8,
            t: 1,
            p: 1,
        };
        let pw = Unlock::Passphrase(Zeroizing::new(b"correct horse".to_vec()));
        let root = derive_root(&kdf, &pw, Path::new("v"), false).unwrap();
        let keys = Keys::from_root(&root);
        let got = derived_hex(&root, &keys);
        assert_eq!(
            got,
            [
                "cfeaedcb6f5fab3309a3f9cf73742e780e5e3bbbde874eac235a41672466776e",
                "0ef777f3be19d8a08eeb4bddb8f6718b2a3b5dcbef63bc0bd3f03d28d0c04d50",
                "e62354bae315655913ba3a3ec51c895dbfa28cfd3bfb3f274019dd4e283e14e0",
                "2ef791f90a347ee6db8f8bd4648bf5ce",
            ]
        );
        let kdf_bytes = kdf.canonical().unwrap();
        assert_eq!(
            hex(&kdf_bytes),
            "656e76656c6f70656673206b657973746f7265206b6466207632\
             01 02020202020202020202020202020202 00000008 00000001 00000001"
                .replace(' ', "")
        );
        assert_eq!(
            keys.mac(2, &kdf_bytes, "{}").to_hex().as_str(),
            "b49b9f1c42830a201843a4d14244a1d38f1b169fd9c94c132c83b7da27a31d30"
        );
        let doc = crate::doc_vectors::get("keystore-argon2id-1");
        assert_eq!(doc["passphrase"], hex(b"correct horse"));
        assert_eq!(
            [&doc["salt"], &doc["m_kib"], &doc["t"], &doc["p"]],
            [&hex(&[2; 16]), "8", "1", "1"]
        );
        assert_eq!(
            [
                &doc["root"],
                &doc["wrap_key"],
                &doc["mac_key"],
                &doc["check"]
            ],
            [&got[0], &got[1], &got[2], &got[3]]
        );
        let doc = crate::doc_vectors::get("keystore-mac-v2-1");
        assert_eq!(doc["kdf_bytes"], hex(&kdf_bytes));
        assert_eq!(
            doc["mac"],
            keys.mac(2, &kdf_bytes, &doc["body"]).to_hex().as_str()
        );
        let keyfile = Kdf::KeyFile {
            salt: hex(&[2; 16]),
        };
        assert_eq!(
            hex(&keyfile.canonical().unwrap()),
            "656e76656c6f70656673206b657973746f7265206b646620763202 02020202020202020202020202020202"
                .replace(' ', "")
        );
    }
}

#[cfg(test)]
mod pkcs11_tests {
    use super::*;

    /// Vector `keystore-pkcs11-1` of docs/FORMAT.md §6.5: the canonical kdf encoding of a
    /// token-held keystore and its root key from a given token secret `S`.
    #[test]
    fn pkcs11_kdf_vector() {
        let doc = crate::doc_vectors::get("keystore-pkcs11-1");
        let kdf = Kdf::Pkcs11 {
            salt: doc["salt"].clone(),
            module: doc["module"].clone(),
            token_label: doc["token_label"].clone(),
            root_object: doc["root_object"].clone(),
        };
        let kdf_bytes = kdf.canonical().unwrap();
        assert_eq!(doc["kdf_bytes"], hex(&kdf_bytes));
        assert_eq!(kdf_bytes.len(), 26 + 1 + 16 + 3 * 2 + 31 + 1 + 52);
        let s = unhex::<32>(&doc["S"]).unwrap();
        let root = root_from_token(&s, &kdf.salt().unwrap());
        assert_eq!(doc["root"], hex(root.expose_secret()));
        // A passphrase or key file cannot open it; the message says what can.
        let e = derive_root(
            &kdf,
            &Unlock::KeyFile(zeroize::Zeroizing::new([1; 32])),
            Path::new("k"),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("PIN"), "{e}");
    }
}
