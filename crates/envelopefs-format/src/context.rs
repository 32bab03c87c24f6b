//! Encryption context: a set of non-secret key/value pairs bound as associated data
//! to every wrapped data key (as in AWS KMS).
//!
//! Canonical encoding (used as AEAD associated data; see docs/FORMAT.md §Encryption context):
//!
//! ```text
//! u16 BE   pair count N
//! N times, pairs sorted by key bytes (keys are unique):
//!   u16 BE   key length,   key bytes (UTF-8)
//!   u16 BE   value length, value bytes (UTF-8)
//! ```
//!
//! Being length-prefixed, two different contexts can never encode to the same bytes.

use std::collections::BTreeMap;

/// Context key that names the file a data key belongs to (32 lowercase hex digits).
pub(crate) const CTX_FILE_ID: &str = "envelopefs:file-id";
/// Context key that names the volume a data key belongs to (hyphenated UUID).
pub(crate) const CTX_VOLUME_ID: &str = "envelopefs:volume-id";
/// Context key naming what a volume-level key is for.
pub(crate) const CTX_PURPOSE: &str = "envelopefs:purpose";

/// A canonical, ordered encryption context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncryptionContext {
    pairs: BTreeMap<String, String>,
}

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context envelopefs binds to a file's data key.
    pub fn for_file(volume_id: &str, file_id: &[u8; 16]) -> Self {
        let mut c = Self::new();
        c.insert(CTX_VOLUME_ID, volume_id);
        c.insert(CTX_FILE_ID, &hex(file_id));
        c
    }

    /// The context envelopefs binds to a volume's own key (which encrypts xattr values).
    pub fn for_volume_key(volume_id: &str) -> Self {
        let mut c = Self::new();
        c.insert(CTX_VOLUME_ID, volume_id);
        c.insert(CTX_PURPOSE, "volume-key");
        c
    }

    /// Adds or replaces one pair.
    pub fn insert(&mut self, key: &str, value: &str) {
        self.pairs.insert(key.to_owned(), value.to_owned());
    }

    /// Looks one value up.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    /// Iterates the pairs in canonical (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The canonical byte encoding described in the module docs.
    ///
    /// Keys and values longer than 65535 bytes, or more than 65535 pairs, cannot be encoded;
    /// envelopefs never builds such contexts, so this is a programming error.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.pairs.len() * 48);
        out.extend_from_slice(
            &u16::try_from(self.pairs.len())
                .expect("BUG: too many context pairs")
                .to_be_bytes(),
        );
        for (k, v) in &self.pairs {
            for s in [k, v] {
                let len = u16::try_from(s.len()).expect("BUG: context entry too long");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }
}

/// Decodes hex of any even length, either case; None on an odd length or any other character
/// (no sign, no prefix, no spaces). The one hex decoder of the workspace.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?))
        .collect()
}

/// Decodes exactly `N` bytes of hex (see [`unhex`]).
pub fn unhex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    unhex(s)?.try_into().ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_sorted_and_length_prefixed() {
        let mut c = EncryptionContext::new();
        c.insert("b", "2");
        c.insert("a", "1");
        assert_eq!(
            c.encode(),
            b"\x00\x02\x00\x01a\x00\x011\x00\x01b\x00\x012".to_vec()
        );
    }

    #[test]
    fn different_splits_encode_differently() {
        let mut a = EncryptionContext::new();
        a.insert("ab", "c");
        let mut b = EncryptionContext::new();
        b.insert("a", "bc");
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn file_context_has_volume_and_file() {
        let c = EncryptionContext::for_file("vol", &[0xab; 16]);
        assert_eq!(c.get(CTX_FILE_ID), Some("abababababababababababababababab"));
        assert_eq!(c.get(CTX_VOLUME_ID), Some("vol"));
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let b = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert_eq!(unhex("ABff").unwrap(), [0xab, 0xff]);
        assert_eq!(unhex_array::<2>("abff"), Some([0xab, 0xff]));
        for bad in ["a", "+f", "0x", "g0", " 0", "ab c"] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
        assert_eq!(unhex_array::<2>("ab"), None);
    }
}
