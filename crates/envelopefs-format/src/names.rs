//! Encrypted names (feature `encrypted-names`, docs/FORMAT.md §10): entry names, symbolic-link
//! targets and `user.*` xattr names. Pure: bytes in, strings out.
//!
//! ```text
//! name key     = blake3::derive_key("envelopefs name key v1", volume key)
//! dirid        = 16 random bytes per directory, the target of its `.dirid` symlink (32 hex)
//! padded(x)    = x ‖ 0x00 … up to the next multiple of 16 bytes (none if already one)
//!
//! entry name   = b64url(AES-256-GCM-SIV(name key, nonce = dirid[0..12],
//!                        AD = "envelopefs name v1" ‖ dirid, padded(name)) ‖ tag)
//!                if that is at most 255 characters, otherwise
//!                "long." ‖ b64url(blake3(encoded)) with the sidecar symlink
//!                ".name." ‖ b64url(blake3(encoded)) → encoded
//! link target  = b64url(nonce(12, random) ‖ AES-256-GCM-SIV(name key, nonce,
//!                        AD = "envelopefs link v1", padded(target)) ‖ tag)
//! xattr name   = "user." ‖ b64url(AES-256-GCM-SIV(name key, nonce = 0^12,
//!                        AD = "envelopefs xattr name v1", padded(name after "user.")) ‖ tag)
//! ```
//! b64url is RFC 4648 §5 without padding. Names and targets never contain NUL, so the zero
//! padding is removed unambiguously. Encryption of entry names is deterministic per directory
//! (a lookup encrypts the name it is asked for), so equal names in one directory are equal;
//! the dirid makes equal names in different directories differ, and binds a name to its
//! directory: an entry moved to another directory no longer decrypts.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};

use crate::Aes256GcmSiv;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::FormatError;

/// Key-derivation context of the name key.
pub const NAME_KEY_CONTEXT: &str = "envelopefs name key v1";
/// Associated-data prefix of entry names.
const NAME_AD: &[u8] = b"envelopefs name v1";
/// Associated data of link targets.
const LINK_AD: &[u8] = b"envelopefs link v1";
/// Associated data of xattr names.
const XATTR_NAME_AD: &[u8] = b"envelopefs xattr name v1";

/// Length of a directory id.
pub const DIRID_LEN: usize = 16;
/// The backing name of a directory's id symlink.
pub const DIRID_NAME: &str = ".dirid";
/// Prefix of a long-name entry.
pub const LONG_PREFIX: &str = "long.";
/// Prefix of a long-name sidecar symlink.
pub const SIDECAR_PREFIX: &str = ".name.";
/// Longest backing name (NAME_MAX of every Linux filesystem).
pub const MAX_BACKING_NAME: usize = 255;
/// Longest backing symlink target this format writes (PATH_MAX − 1).
pub const MAX_BACKING_TARGET: usize = 4095;
/// Longest plaintext name (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest plaintext link target whose encoding fits [`MAX_BACKING_TARGET`].
pub const MAX_TARGET: usize = 3040;
/// Longest `user.*` xattr name whose encoding fits in 255 bytes.
pub const MAX_XATTR_NAME: usize = 165;
const XATTR_PREFIX: &str = "user.";
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const PAD: usize = 16;

/// A directory id.
pub type DirId = [u8; DIRID_LEN];

/// How a plaintext entry name is stored in its backing directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingName {
    /// The encoded name is the backing name.
    Short(String),
    /// The encoded name is too long for the backing filesystem.
    Long {
        /// The backing entry: `long.<hash>`.
        entry: String,
        /// The sidecar symlink beside it: `.name.<hash>`.
        sidecar: String,
        /// The sidecar's target: the whole encoded name.
        encoded: String,
    },
}

impl BackingName {
    /// The name of the backing entry.
    pub fn entry(&self) -> &str {
        match self {
            BackingName::Short(s) => s,
            BackingName::Long { entry, .. } => entry,
        }
    }
}

/// What a name in a backing directory of an encrypted-names volume is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind<'a> {
    /// envelopefs's own (`.dirid`, sidecars, temporary files): never shown.
    Meta,
    /// A long-name entry; the hash names its sidecar.
    Long(&'a str),
    /// An encoded name.
    Short(&'a str),
}

/// Classifies a backing entry name (one that is not UTF-8 is no encoding of ours: `None`).
pub fn classify(name: &[u8]) -> Option<BackingKind<'_>> {
    let s = std::str::from_utf8(name).ok()?;
    if s.starts_with('.') {
        Some(BackingKind::Meta)
    } else if let Some(h) = s.strip_prefix(LONG_PREFIX) {
        Some(BackingKind::Long(h))
    } else {
        Some(BackingKind::Short(s))
    }
}

/// The sidecar name of a long entry's hash.
pub fn sidecar_of(hash: &str) -> String {
    format!("{SIDECAR_PREFIX}{hash}")
}

/// The hash that names a long entry: b64url(blake3(encoded)).
pub fn long_hash(encoded: &str) -> String {
    B64.encode(blake3::hash(encoded.as_bytes()).as_bytes())
}

/// The `.dirid` symlink's target for `id`: 32 lowercase hex digits.
pub fn dirid_target(id: &DirId) -> String {
    super::context::hex(id)
}

/// Parses a `.dirid` target.
pub fn parse_dirid(target: &[u8]) -> Result<DirId, FormatError> {
    std::str::from_utf8(target)
        .ok()
        .filter(|s| {
            s.len() == 2 * DIRID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .and_then(super::context::unhex_array::<DIRID_LEN>)
        .ok_or(FormatError::BadDirId)
}

fn padded(x: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(x.len().div_ceil(PAD) * PAD + TAG_LEN);
    v.extend_from_slice(x);
    v.resize(x.len().div_ceil(PAD) * PAD, 0);
    v
}

/// Removes the zero padding; a plaintext that is empty, or has a NUL inside, or more padding
/// than one block, is not one this format writes.
fn unpadded(mut v: Vec<u8>) -> Result<Vec<u8>, FormatError> {
    let len = v.len();
    while v.last() == Some(&0) {
        v.pop();
    }
    if v.is_empty() || v.contains(&0) || len - v.len() >= PAD || !len.is_multiple_of(PAD) {
        return Err(FormatError::NameAuthFailed);
    }
    Ok(v)
}

/// A plaintext name as the kernel may pass it: 1..=255 bytes, no `/`, no NUL, not `.`/`..`.
fn check_name(name: &[u8]) -> Result<(), FormatError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FormatError::BadName);
    }
    if name.len() > MAX_NAME {
        return Err(FormatError::NameTooLong);
    }
    Ok(())
}

/// Encrypts and decrypts names under the name key.
pub struct NameCipher {
    aead: Aes256GcmSiv,
}

impl std::fmt::Debug for NameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameCipher([REDACTED])")
    }
}

impl NameCipher {
    /// The cipher of a volume key.
    pub fn from_volume_key(vk: &[u8; 32]) -> Self {
        let mut k = blake3::derive_key(NAME_KEY_CONTEXT, vk);
        let aead = Aes256GcmSiv::new_from_slice(&k).expect("BUG: 32-byte key rejected");
        zeroize::Zeroize::zeroize(&mut k);
        NameCipher { aead }
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut buf = padded(plain);
        let tag = self
            .aead
            .encrypt_inout_detached(&Nonce::from(*nonce), ad, buf.as_mut_slice().into())
            .expect("BUG: name encryption failed");
        buf.extend_from_slice(&tag);
        buf
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        if sealed.len() < TAG_LEN + PAD || !(sealed.len() - TAG_LEN).is_multiple_of(PAD) {
            return Err(FormatError::NameAuthFailed);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let tag = Tag::from(<[u8; TAG_LEN]>::try_from(tag).expect("tag length"));
        let mut buf = ct.to_vec();
        self.aead
            .decrypt_inout_detached(&Nonce::from(*nonce), ad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| FormatError::NameAuthFailed)?;
        unpadded(buf)
    }

    fn name_nonce_ad(dirid: &DirId) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce = dirid[..NONCE_LEN].try_into().expect("nonce");
        (nonce, [NAME_AD, dirid.as_slice()].concat())
    }

    /// The encoded form of an entry name in the directory `dirid` (before the long-name rule).
    pub fn encode_name(&self, dirid: &DirId, name: &[u8]) -> Result<String, FormatError> {
        check_name(name)?;
        let (nonce, ad) = Self::name_nonce_ad(dirid);
        Ok(B64.encode(self.seal(&nonce, &ad, name)))
    }

    /// How entry `name` of the directory `dirid` is stored.
    pub fn backing_name(&self, dirid: &DirId, name: &[u8]) -> Result<BackingName, FormatError> {
        let encoded = self.encode_name(dirid, name)?;
        if encoded.len() <= MAX_BACKING_NAME {
            return Ok(BackingName::Short(encoded));
        }
        let hash = long_hash(&encoded);
        Ok(BackingName::Long {
            entry: format!("{LONG_PREFIX}{hash}"),
            sidecar: sidecar_of(&hash),
            encoded,
        })
    }

    /// Decrypts an encoded entry name of the directory `dirid` (a short entry's backing name,
    /// or a long entry's sidecar target).
    pub fn decode_name(&self, dirid: &DirId, encoded: &str) -> Result<Vec<u8>, FormatError> {
        let sealed = B64
            .decode(encoded)
            .map_err(|_| FormatError::NameAuthFailed)?;
        let (nonce, ad) = Self::name_nonce_ad(dirid);
        let name = self.open(&nonce, &ad, &sealed)?;
        check_name(&name).map_err(|_| FormatError::NameAuthFailed)?;
        Ok(name)
    }

    /// The plaintext name of the backing entry `entry` of the directory `dirid` (§10.2): None
    /// for envelopefs's own metadata (names beginning with `.`); a long entry's encoding is
    /// the target of its sidecar, which `sidecar` reads (given the sidecar's name) and which
    /// must hash to the entry's name.
    pub fn decode_entry(
        &self,
        dirid: &DirId,
        entry: &[u8],
        sidecar: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, FormatError> {
        let encoded = match classify(entry) {
            Some(BackingKind::Meta) => return Ok(None),
            Some(BackingKind::Short(s)) => s.to_owned(),
            Some(BackingKind::Long(hash)) => sidecar(&sidecar_of(hash))
                .and_then(|t| String::from_utf8(t).ok())
                .filter(|enc| long_hash(enc) == hash)
                .ok_or(FormatError::NameAuthFailed)?,
            None => return Err(FormatError::NameAuthFailed),
        };
        self.decode_name(dirid, &encoded).map(Some)
    }

    /// Encrypts a symlink target under `nonce` (fresh and random; vectors pass a fixed one).
    pub fn encode_target(
        &self,
        target: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, FormatError> {
        if target.is_empty() || target.contains(&0) {
            return Err(FormatError::BadName);
        }
        if target.len() > MAX_TARGET {
            return Err(FormatError::NameTooLong);
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&self.seal(&nonce, LINK_AD, target));
        Ok(B64.encode(out))
    }

    /// Decrypts a stored symlink target.
    pub fn decode_target(&self, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
        let raw = B64
            .decode(stored)
            .map_err(|_| FormatError::NameAuthFailed)?;
        if raw.len() < NONCE_LEN {
            return Err(FormatError::NameAuthFailed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        self.open(&nonce.try_into().expect("nonce"), LINK_AD, sealed)
    }

    /// The stored name of a `user.*` xattr name (None: not in the `user.` namespace, stored
    /// as it is).
    pub fn encode_xattr_name(&self, name: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
        let Some(rest) = name.strip_prefix(XATTR_PREFIX.as_bytes()) else {
            return Ok(None);
        };
        if rest.is_empty() || rest.contains(&0) {
            return Err(FormatError::BadName);
        }
        if name.len() > MAX_XATTR_NAME {
            return Err(FormatError::NameTooLong);
        }
        let enc = B64.encode(self.seal(&[0; NONCE_LEN], XATTR_NAME_AD, rest));
        Ok(Some([XATTR_PREFIX.as_bytes(), enc.as_bytes()].concat()))
    }

    /// The plaintext of a stored `user.*` xattr name (None: not in the `user.` namespace).
    pub fn decode_xattr_name(&self, stored: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
        let Some(rest) = stored.strip_prefix(XATTR_PREFIX.as_bytes()) else {
            return Ok(None);
        };
        let sealed = B64.decode(rest).map_err(|_| FormatError::NameAuthFailed)?;
        let plain = self.open(&[0; NONCE_LEN], XATTR_NAME_AD, &sealed)?;
        Ok(Some([XATTR_PREFIX.as_bytes(), &plain].concat()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> NameCipher {
        NameCipher::from_volume_key(&[7; 32])
    }

    #[test]
    fn names_round_trip_at_every_length_and_any_byte() {
        let c = cipher();
        let d = [9u8; 16];
        for len in 1..=MAX_NAME {
            let name: Vec<u8> = (0..len)
                .map(|i| 1 + (i * 37 % 254) as u8)
                .filter(|b| *b != b'/')
                .collect();
            if name == b"." || name == b".." || name.is_empty() {
                continue;
            }
            let b = c.backing_name(&d, &name).unwrap();
            let encoded = match &b {
                BackingName::Short(s) => {
                    assert!(s.len() <= MAX_BACKING_NAME);
                    s.clone()
                }
                BackingName::Long {
                    entry,
                    sidecar,
                    encoded,
                } => {
                    assert!(entry.len() <= MAX_BACKING_NAME && sidecar.len() <= MAX_BACKING_NAME);
                    assert_eq!(
                        entry.strip_prefix(LONG_PREFIX),
                        sidecar.strip_prefix(SIDECAR_PREFIX)
                    );
                    assert!(encoded.len() <= MAX_BACKING_TARGET);
                    encoded.clone()
                }
            };
            assert!(!encoded.contains('.') && !encoded.contains('/'));
            assert_eq!(c.decode_name(&d, &encoded).unwrap(), name, "length {len}");
        }
        // The long-name rule starts above 160 bytes.
        assert!(matches!(
            c.backing_name(&d, &[b'a'; 160]).unwrap(),
            BackingName::Short(_)
        ));
        assert!(matches!(
            c.backing_name(&d, &[b'a'; 161]).unwrap(),
            BackingName::Long { .. }
        ));
    }

    #[test]
    fn names_are_deterministic_per_directory_and_bound_to_it() {
        let c = cipher();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let ea = c.encode_name(&a, b"x").unwrap();
        assert_eq!(ea, c.encode_name(&a, b"x").unwrap());
        assert_ne!(ea, c.encode_name(&b, b"x").unwrap());
        assert_eq!(c.decode_name(&b, &ea), Err(FormatError::NameAuthFailed));
        let mut t = ea.into_bytes();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            c.decode_name(&a, std::str::from_utf8(&t).unwrap()),
            Err(FormatError::NameAuthFailed)
        );
        assert_eq!(c.decode_name(&a, "!!"), Err(FormatError::NameAuthFailed));
        assert_eq!(c.decode_name(&a, ""), Err(FormatError::NameAuthFailed));
        let other = NameCipher::from_volume_key(&[8; 32]);
        assert_eq!(
            other.decode_name(&a, &c.encode_name(&a, b"x").unwrap()),
            Err(FormatError::NameAuthFailed)
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let c = cipher();
        let d = [0u8; 16];
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(c.encode_name(&d, bad), Err(FormatError::BadName));
        }
        assert_eq!(
            c.encode_name(&d, &[b'a'; 256]),
            Err(FormatError::NameTooLong)
        );
        assert!(c.encode_name(&d, b"...").is_ok());
    }

    #[test]
    fn targets_round_trip_and_differ_each_time() {
        let c = cipher();
        let t = b"../some/where \xff";
        let a = c.encode_target(t, [1; 12]).unwrap();
        let b = c.encode_target(t, [2; 12]).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.decode_target(a.as_bytes()).unwrap(), t);
        let long = vec![b'x'; MAX_TARGET];
        let enc = c.encode_target(&long, [3; 12]).unwrap();
        assert!(enc.len() <= MAX_BACKING_TARGET, "{}", enc.len());
        assert_eq!(c.decode_target(enc.as_bytes()).unwrap(), long);
        assert_eq!(
            c.encode_target(&vec![b'x'; MAX_TARGET + 1], [3; 12]),
            Err(FormatError::NameTooLong)
        );
        assert_eq!(c.decode_target(b"abc"), Err(FormatError::NameAuthFailed));
    }

    #[test]
    fn xattr_names_round_trip_outside_user_pass_through() {
        let c = cipher();
        let e = c.encode_xattr_name(b"user.mime_type").unwrap().unwrap();
        assert!(e.starts_with(b"user.") && !e.windows(4).any(|w| w == b"mime"));
        assert_eq!(c.decode_xattr_name(&e).unwrap().unwrap(), b"user.mime_type");
        assert_eq!(c.encode_xattr_name(b"security.selinux").unwrap(), None);
        assert_eq!(c.decode_xattr_name(b"trusted.x").unwrap(), None);
        let max = [b"user.".as_slice(), &[b'n'; MAX_XATTR_NAME - 5]].concat();
        assert!(c.encode_xattr_name(&max).unwrap().unwrap().len() <= 255);
        let over = [b"user.".as_slice(), &[b'n'; MAX_XATTR_NAME - 4]].concat();
        assert_eq!(c.encode_xattr_name(&over), Err(FormatError::NameTooLong));
        assert_eq!(
            c.decode_xattr_name(b"user.zzzz"),
            Err(FormatError::NameAuthFailed)
        );
    }

    #[test]
    fn classify_and_dirid() {
        assert_eq!(classify(b".dirid"), Some(BackingKind::Meta));
        assert_eq!(classify(b".name.abc"), Some(BackingKind::Meta));
        assert_eq!(classify(b"long.abc"), Some(BackingKind::Long("abc")));
        assert_eq!(classify(b"QUJD"), Some(BackingKind::Short("QUJD")));
        assert_eq!(classify(b"\xff"), None);
        let id = [0xab; 16];
        assert_eq!(parse_dirid(dirid_target(&id).as_bytes()).unwrap(), id);
        assert_eq!(
            parse_dirid(b"ABABABABABABABABABABABABABABABAB"),
            Err(FormatError::BadDirId)
        );
        assert_eq!(parse_dirid(b"abab"), Err(FormatError::BadDirId));
    }
}
