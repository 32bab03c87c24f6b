//! The byte layout of an HSM key backup (docs/FORMAT.md §6.6): pure bytes in, types out.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "EFSHSMBK"
//! 8       2     version (u16 BE) = 1
//! 10      2     n, the number of entries (u16 BE, 1..=4096)
//! 12      8     created (u64 BE, Unix seconds)
//! 20      16    backup key id: blake3::derive_key("envelopefs hsm backup key id v1", BK)[..16]
//! 36      40    wrapped EBK: AES-256 key wrap with padding (RFC 5649) of the 32-byte
//!               ephemeral backup key EBK under the officer's backup key BK
//! 76      ...   n entries, each:
//!                 kind (1 B: 1 = CMK version, 2 = keystore root object)
//!                 label length L (u16 BE, 1..=255) ‖ label (L B, UTF-8: the token object's)
//!                 wrapped key (40 B): AES-256-KWP of the object's 32-byte value under EBK
//! end-32  32    MAC: blake3::keyed_hash(blake3::derive_key("envelopefs hsm backup mac v1",
//!               BK), every byte before it)
//! ```
//!
//! A reader checks the length, magic and version, then the backup key id (a different key is
//! its own error), then the MAC, and only then parses the entries.

use envelopefs_kms::KeyError;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"EFSHSMBK";
/// The version this build writes and reads.
pub const VERSION: u16 = 1;
/// A 32-byte key wrapped with RFC 5649 (AES-KWP): 40 bytes.
pub const WRAPPED_LEN: usize = 40;
const HEADER_LEN: usize = 76;
const MAC_LEN: usize = 32;
/// Most entries a backup holds.
pub const MAX_ENTRIES: usize = 4096;
const KEY_ID_CONTEXT: &str = "envelopefs hsm backup key id v1";
const MAC_CONTEXT: &str = "envelopefs hsm backup mac v1";

/// What a backed-up token object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A CMK version (`envelopefs cmk <key id> v<n>`).
    Cmk = 1,
    /// The keystore's root object (`envelopefs keystore <salt>`).
    Keystore = 2,
}

/// One backed-up object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Its label in the token.
    pub label: String,
    /// Its value, wrapped under the EBK.
    pub wrapped: [u8; WRAPPED_LEN],
}

/// A parsed (or to be written) backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    /// When it was made (Unix seconds).
    pub created: u64,
    /// The EBK wrapped under the backup key.
    pub wrapped_ebk: [u8; WRAPPED_LEN],
    /// The objects.
    pub entries: Vec<Entry>,
}

/// The id of a backup key: tells a wrong backup key file from a damaged backup.
pub fn key_id(bk: &[u8; 32]) -> [u8; 16] {
    let d = blake3::derive_key(KEY_ID_CONTEXT, bk);
    d[..16].try_into().expect("16 of 32")
}

fn mac(bk: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let k = zeroize::Zeroizing::new(blake3::derive_key(MAC_CONTEXT, bk));
    *blake3::keyed_hash(&k, bytes).as_bytes()
}

fn bad(why: impl std::fmt::Display) -> KeyError {
    KeyError::InvalidArgument(format!(
        "not a usable envelopefs HSM backup: {why}; nothing was restored"
    ))
}

impl BackupFile {
    /// The file's bytes, authenticated under the backup key `bk`.
    pub fn encode(&self, bk: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        if self.entries.is_empty() || self.entries.len() > MAX_ENTRIES {
            return Err(KeyError::InvalidArgument(format!(
                "a backup holds 1 to {MAX_ENTRIES} objects, not {}",
                self.entries.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * 100 + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.extend_from_slice(&key_id(bk));
        out.extend_from_slice(&self.wrapped_ebk);
        for e in &self.entries {
            let label = e.label.as_bytes();
            if label.is_empty() || label.len() > 255 {
                return Err(KeyError::InvalidArgument(format!(
                    "token object label {:?} is not 1 to 255 bytes",
                    e.label
                )));
            }
            out.push(e.kind as u8);
            out.extend_from_slice(&(label.len() as u16).to_be_bytes());
            out.extend_from_slice(label);
            out.extend_from_slice(&e.wrapped);
        }
        let m = mac(bk, &out);
        out.extend_from_slice(&m);
        Ok(out)
    }

    /// Parses and authenticates `bytes` with the backup key `bk`. Never panics.
    pub fn decode(bytes: &[u8], bk: &[u8; 32]) -> Result<Self, KeyError> {
        if bytes.len() < HEADER_LEN + MAC_LEN {
            return Err(bad(format!("{} bytes is too short", bytes.len())));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad(
                "wrong magic (not a backup made by envelopefs hsm backup)",
            ));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(bad(format!(
                "version {version}; this envelopefs reads version {VERSION} (a newer one \
                 wrote it?)"
            )));
        }
        if bytes[20..36] != key_id(bk) {
            return Err(KeyError::AccessDenied {
                key_id: "(backup key)".into(),
                reason: "this backup was made with another backup key; give the one it was \
                         made with (--backup-key-file)"
                    .into(),
            });
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let want = mac(bk, body);
        let same = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(bad(
                "its MAC does not verify: the file was altered or damaged; restore from \
                 another copy",
            ));
        }
        let n = u16::from_be_bytes([bytes[10], bytes[11]]) as usize;
        if n == 0 || n > MAX_ENTRIES {
            return Err(bad(format!("{n} entries")));
        }
        let created = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let wrapped_ebk = bytes[36..76].try_into().expect("40 bytes");
        let mut rest = &body[HEADER_LEN..];
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let short = || bad(format!("entry {i} is cut short"));
            let (&kind, r) = rest.split_first().ok_or_else(short)?;
            let kind = match kind {
                1 => Kind::Cmk,
                2 => Kind::Keystore,
                k => return Err(bad(format!("entry {i} has unknown kind {k}"))),
            };
            let len = r.get(..2).ok_or_else(short)?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            if len == 0 || len > 255 {
                return Err(bad(format!("entry {i} has a {len}-byte label")));
            }
            let label = r.get(2..2 + len).ok_or_else(short)?;
            let label = std::str::from_utf8(label)
                .map_err(|_| bad(format!("entry {i} has a label that is not UTF-8")))?;
            let wrapped = r.get(2 + len..2 + len + WRAPPED_LEN).ok_or_else(short)?;
            entries.push(Entry {
                kind,
                label: label.to_owned(),
                wrapped: wrapped.try_into().expect("40 bytes"),
            });
            rest = &r[2 + len + WRAPPED_LEN..];
        }
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the last entry", rest.len())));
        }
        Ok(BackupFile {
            created,
            wrapped_ebk,
            entries,
        })
    }
}

/// The `key = value` lines of the block `vector NAME` … `end` in docs/FORMAT.md (values of
/// a repeated key concatenated). For the tests.
#[doc(hidden)]
pub fn doc_vector(name: &str) -> std::collections::BTreeMap<String, String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let mut lines = doc.lines().map(str::trim);
    lines
        .find(|l| l.strip_prefix("vector ").map(str::trim) == Some(name))
        .unwrap_or_else(|| panic!("docs/FORMAT.md lacks vector {name}"));
    let mut out = std::collections::BTreeMap::new();
    for line in lines.take_while(|l| *l != "end") {
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_owned())
                .or_insert_with(String::new)
                .push_str(v.trim());
        }
    }
    out
}

/// Hex to bytes (for the tests; panics on bad hex).
#[doc(hidden)]
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector `hsm-backup-1` of docs/FORMAT.md §6.6: the layout and MAC, byte for byte.
    #[test]
    fn vector_hsm_backup_1() {
        let v = doc_vector("hsm-backup-1");
        let bk: [u8; 32] = unhex(&v["bk"]).try_into().unwrap();
        let file = BackupFile {
            created: v["created"].parse().unwrap(),
            wrapped_ebk: unhex(&v["wrapped_ebk"]).try_into().unwrap(),
            entries: vec![Entry {
                kind: Kind::Cmk,
                label: v["label"].clone(),
                wrapped: unhex(&v["wrapped_key"]).try_into().unwrap(),
            }],
        };
        assert_eq!(v["kind"], "1");
        let bytes = file.encode(&bk).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, v["file"], "docs/FORMAT.md §6.6 file");
        assert_eq!(BackupFile::decode(&bytes, &bk).unwrap(), file);
    }

    fn sample() -> BackupFile {
        BackupFile {
            created: 1_800_000_000,
            wrapped_ebk: [7; 40],
            entries: vec![
                Entry {
                    kind: Kind::Keystore,
                    label: "envelopefs keystore 00".into(),
                    wrapped: [1; 40],
                },
                Entry {
                    kind: Kind::Cmk,
                    label: "envelopefs cmk x v1".into(),
                    wrapped: [2; 40],
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_refused() {
        let bk = [9u8; 32];
        let bytes = sample().encode(&bk).unwrap();
        assert_eq!(BackupFile::decode(&bytes, &bk).unwrap(), sample());
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x40;
            assert!(BackupFile::decode(&t, &bk).is_err(), "byte {i} flipped");
        }
        for n in 0..bytes.len() {
            assert!(BackupFile::decode(&bytes[..n], &bk).is_err(), "cut at {n}");
        }
        let e = BackupFile::decode(&bytes, &[8u8; 32]).unwrap_err();
        assert!(e.to_string().contains("another backup key"), "{e}");
    }
}
