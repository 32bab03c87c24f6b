//! The per-file header (docs/FORMAT.md §File header). Two copies of `HEADER_COPY_LEN` bytes
//! sit at the start of every non-empty backing file; all integers are big-endian.
//!
//! ```text
//! off  len  field
//!   0    8  magic "EnvFShdr"
//!   8    2  format version = 1
//!  10    2  cipher suite = 1 (AES-256-GCM-SIV blocks, BLAKE3 key derivation and MAC)
//!  12    4  plaintext block size (power of two, 512..=1048576)
//!  16   16  file id (random, never all zero)
//!  32    8  sequence number: the copy with the higher valid one is current
//!  40    1  slot count S (1..=MAX_SLOTS)
//!  41    1  flags: bit 0 = sealed holes (the file was written under `sealed-holes`); others zero
//!  42    6  reserved, zero
//!  48       S slots, each: kind (1) ‖ reserved 0 (1) ‖ body length L (u16) ‖ body (L)
//!           kind 1 = CMK slot, body = key id (16) ‖ key version (u32) ‖ blob length (u16) ‖ blob
//!           kind 2 = customer-key (SSE-C) slot, body = 112 bytes (`customer`)
//!   …       zero padding up to offset 480
//! 480   32  MAC = BLAKE3 keyed hash of bytes 0..480,
//!           key = blake3::derive_key("envelopefs header mac v1", DEK)
//! ```
//! The MAC is keyed by the data key itself, so it both authenticates the header and commits to
//! the DEK: a slot that unwraps to any other key fails the MAC. Unknown slot kinds are kept and
//! MACed but cannot be opened by this build.

use super::FormatError;

/// Bytes of one header copy.
pub const HEADER_COPY_LEN: usize = 512;
/// Bytes of the header region (copies A and B) before block 0.
pub const HEADER_REGION: usize = 2 * HEADER_COPY_LEN;
/// Magic at the start of every header copy.
pub(crate) const HEADER_MAGIC: [u8; 8] = *b"EnvFShdr";
/// The header format version this build writes and reads.
pub(crate) const HEADER_VERSION: u16 = 1;
/// Cipher suite 1: AES-256-GCM-SIV blocks, BLAKE3 derivation and MAC.
pub(crate) const SUITE_AES256GCMSIV_BLAKE3: u16 = 1;
/// Most key slots a header may hold.
pub(crate) const MAX_SLOTS: usize = 4;
/// Slot kind: data key wrapped by a CMK of the key service.
pub(crate) const SLOT_KIND_CMK: u8 = 1;
/// Key-derivation context of the header MAC key.
pub(crate) const HEADER_MAC_CONTEXT: &str = "envelopefs header mac v1";

const FIXED_LEN: usize = 48;
const MAC_OFFSET: usize = HEADER_COPY_LEN - 32;

/// One key slot: one independently wrapped copy of the file's data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySlot {
    /// Wrapped by a CMK of the key service.
    Cmk {
        /// CMK id (UUID bytes).
        key_id: [u8; 16],
        /// CMK key-material version used.
        version: u32,
        /// The key service's wrapped-key blob.
        blob: Vec<u8>,
    },
    /// Wrapped under a user's customer-provided key (SSE-C, docs/FORMAT.md §4.6).
    Customer(super::customer::CustomerSlot),
    /// A slot kind this build does not know (kept so the MAC still verifies).
    Unknown {
        /// Slot kind byte.
        kind: u8,
        /// Raw body.
        body: Vec<u8>,
    },
}

impl KeySlot {
    fn body(&self) -> (u8, Vec<u8>) {
        match self {
            KeySlot::Cmk {
                key_id,
                version,
                blob,
            } => {
                let mut b = Vec::with_capacity(22 + blob.len());
                b.extend_from_slice(key_id);
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(&(blob.len() as u16).to_be_bytes());
                b.extend_from_slice(blob);
                (SLOT_KIND_CMK, b)
            }
            KeySlot::Customer(c) => (super::customer::SLOT_KIND_CUSTOMER, c.encode()),
            KeySlot::Unknown { kind, body } => (*kind, body.clone()),
        }
    }

    fn parse(kind: u8, body: &[u8]) -> Result<KeySlot, FormatError> {
        if kind == super::customer::SLOT_KIND_CUSTOMER {
            return Ok(KeySlot::Customer(super::customer::CustomerSlot::parse(
                body,
            )?));
        }
        if kind != SLOT_KIND_CMK {
            return Ok(KeySlot::Unknown {
                kind,
                body: body.to_vec(),
            });
        }
        if body.len() < 22 {
            return Err(FormatError::BadSlot("CMK slot body too short"));
        }
        let blob_len = usize::from(u16::from_be_bytes([body[20], body[21]]));
        if body.len() != 22 + blob_len {
            return Err(FormatError::BadSlot(
                "CMK slot blob length does not match the body",
            ));
        }
        Ok(KeySlot::Cmk {
            key_id: body[..16].try_into().expect("16 bytes"),
            version: u32::from_be_bytes(body[16..20].try_into().expect("4 bytes")),
            blob: body[22..].to_vec(),
        })
    }
}

/// A decoded header copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Plaintext block size.
    pub block_size: u32,
    /// Random file id, bound into every block and into the key slots' encryption context.
    pub file_id: [u8; 16],
    /// Sequence number; bumped on every header rewrite.
    pub seq: u64,
    /// Flags bit 0: the file was written under `sealed-holes` (no holes; an empty file has an
    /// empty block). Under the header MAC, so it holds whatever the volume config says.
    pub sealed_holes: bool,
    /// Key slots (1..=MAX_SLOTS).
    pub slots: Vec<KeySlot>,
}

/// Header flags bit: the file is sealed-holes.
pub const FLAG_SEALED_HOLES: u8 = 0x01;

/// Checks that a block size is allowed.
pub fn check_block_size(bs: u32) -> Result<(), FormatError> {
    if bs.is_power_of_two() && (512..=1 << 20).contains(&bs) {
        Ok(())
    } else {
        Err(FormatError::BadBlockSize(bs))
    }
}

fn mac(dek: &[u8; 32], covered: &[u8]) -> [u8; 32] {
    let mut key = blake3::derive_key(HEADER_MAC_CONTEXT, dek);
    let out = *blake3::keyed_hash(&key, covered).as_bytes();
    zeroize::Zeroize::zeroize(&mut key);
    out
}

impl FileHeader {
    /// Encodes one header copy, MACed under `dek`.
    pub fn encode(&self, dek: &[u8; 32]) -> Result<[u8; HEADER_COPY_LEN], FormatError> {
        check_block_size(self.block_size)?;
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return Err(FormatError::BadSlot("slot count must be 1..=4"));
        }
        if self.file_id == [0; 16] {
            return Err(FormatError::ZeroFileId);
        }
        let mut out = [0u8; HEADER_COPY_LEN];
        out[0..8].copy_from_slice(&HEADER_MAGIC);
        out[8..10].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        out[10..12].copy_from_slice(&SUITE_AES256GCMSIV_BLAKE3.to_be_bytes());
        out[12..16].copy_from_slice(&self.block_size.to_be_bytes());
        out[16..32].copy_from_slice(&self.file_id);
        out[32..40].copy_from_slice(&self.seq.to_be_bytes());
        out[40] = self.slots.len() as u8;
        out[41] = if self.sealed_holes {
            FLAG_SEALED_HOLES
        } else {
            0
        };
        let mut pos = FIXED_LEN;
        for slot in &self.slots {
            let (kind, body) = slot.body();
            let end = pos + 4 + body.len();
            if end > MAC_OFFSET || body.len() > usize::from(u16::MAX) {
                return Err(FormatError::BadSlot("slots do not fit in the header"));
            }
            out[pos] = kind;
            out[pos + 2..pos + 4].copy_from_slice(&(body.len() as u16).to_be_bytes());
            out[pos + 4..end].copy_from_slice(&body);
            pos = end;
        }
        let tag = mac(dek, &out[..MAC_OFFSET]);
        out[MAC_OFFSET..].copy_from_slice(&tag);
        Ok(out)
    }

    /// Decodes one header copy's structure. The MAC is not checked here (it needs the DEK):
    /// call [`verify_mac`] once a slot has been unwrapped.
    pub fn decode(bytes: &[u8]) -> Result<FileHeader, FormatError> {
        if bytes.len() != HEADER_COPY_LEN {
            return Err(FormatError::Truncated {
                need: HEADER_COPY_LEN,
                have: bytes.len(),
            });
        }
        if bytes[0..8] != HEADER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != HEADER_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let suite = u16::from_be_bytes([bytes[10], bytes[11]]);
        if suite != SUITE_AES256GCMSIV_BLAKE3 {
            return Err(FormatError::UnsupportedSuite(suite));
        }
        let block_size = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes"));
        check_block_size(block_size)?;
        let file_id: [u8; 16] = bytes[16..32].try_into().expect("16 bytes");
        if file_id == [0; 16] {
            return Err(FormatError::ZeroFileId);
        }
        let seq = u64::from_be_bytes(bytes[32..40].try_into().expect("8 bytes"));
        let count = usize::from(bytes[40]);
        if count == 0 || count > MAX_SLOTS {
            return Err(FormatError::BadSlot("slot count must be 1..=4"));
        }
        if bytes[41] & !FLAG_SEALED_HOLES != 0 || bytes[42..48].iter().any(|&b| b != 0) {
            return Err(FormatError::ReservedNotZero);
        }
        let mut slots = Vec::with_capacity(count);
        let mut pos = FIXED_LEN;
        for _ in 0..count {
            if pos + 4 > MAC_OFFSET {
                return Err(FormatError::BadSlot("slot runs past the MAC"));
            }
            let kind = bytes[pos];
            if bytes[pos + 1] != 0 {
                return Err(FormatError::ReservedNotZero);
            }
            let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            let end = pos + 4 + len;
            if end > MAC_OFFSET {
                return Err(FormatError::BadSlot("slot runs past the MAC"));
            }
            slots.push(KeySlot::parse(kind, &bytes[pos + 4..end])?);
            pos = end;
        }
        if bytes[pos..MAC_OFFSET].iter().any(|&b| b != 0) {
            return Err(FormatError::ReservedNotZero);
        }
        Ok(FileHeader {
            block_size,
            file_id,
            seq,
            sealed_holes: bytes[41] & FLAG_SEALED_HOLES != 0,
            slots,
        })
    }
}

/// Checks a header copy's MAC under a candidate data key (constant time).
pub fn verify_mac(copy: &[u8], dek: &[u8; 32]) -> Result<(), FormatError> {
    if copy.len() != HEADER_COPY_LEN {
        return Err(FormatError::HeaderAuthFailed);
    }
    let expected = blake3::Hash::from(mac(dek, &copy[..MAC_OFFSET]));
    let stored: [u8; 32] = copy[MAC_OFFSET..].try_into().expect("32 bytes");
    if expected == blake3::Hash::from(stored) {
        Ok(())
    } else {
        Err(FormatError::HeaderAuthFailed)
    }
}

/// A structurally valid header copy found in a header region.
#[derive(Clone, Debug)]
pub struct HeaderCandidate {
    /// 0 for copy A, 1 for copy B.
    pub copy: usize,
    /// The decoded header.
    pub header: FileHeader,
}

/// Decodes both copies of a header region; returns the structurally valid ones, newest
/// (highest sequence number) first, or the first copy's error if neither is valid.
pub fn candidates(region: &[u8]) -> Result<Vec<HeaderCandidate>, FormatError> {
    if region.len() < HEADER_REGION {
        return Err(FormatError::Truncated {
            need: HEADER_REGION,
            have: region.len(),
        });
    }
    let mut found = Vec::with_capacity(2);
    let mut first_err = None;
    for copy in 0..2 {
        match FileHeader::decode(&region[copy * HEADER_COPY_LEN..(copy + 1) * HEADER_COPY_LEN]) {
            Ok(header) => found.push(HeaderCandidate { copy, header }),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if found.is_empty() {
        return Err(first_err.expect("two copies examined"));
    }
    found.sort_by_key(|c| std::cmp::Reverse(c.header.seq));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileHeader {
        FileHeader {
            sealed_holes: false,
            block_size: 4096,
            file_id: [0x11; 16],
            seq: 1,
            slots: vec![KeySlot::Cmk {
                key_id: [0x22; 16],
                version: 1,
                blob: vec![0x33; 60],
            }],
        }
    }

    #[test]
    fn round_trip_and_mac() {
        let dek = [5u8; 32];
        let bytes = sample().encode(&dek).unwrap();
        assert_eq!(FileHeader::decode(&bytes).unwrap(), sample());
        verify_mac(&bytes, &dek).unwrap();
        assert_eq!(
            verify_mac(&bytes, &[6u8; 32]),
            Err(FormatError::HeaderAuthFailed)
        );
    }

    #[test]
    fn any_changed_byte_fails_decode_or_mac() {
        let dek = [5u8; 32];
        let bytes = sample().encode(&dek).unwrap();
        for i in 0..HEADER_COPY_LEN {
            let mut b = bytes;
            b[i] ^= 0x80;
            let ok = FileHeader::decode(&b).is_ok() && verify_mac(&b, &dek).is_ok();
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn four_slots_fit_five_do_not() {
        let mut h = sample();
        h.slots = vec![h.slots[0].clone(); 4];
        let bytes = h.encode(&[1; 32]).unwrap();
        assert_eq!(FileHeader::decode(&bytes).unwrap().slots.len(), 4);
        h.slots.push(h.slots[0].clone());
        assert!(h.encode(&[1; 32]).is_err());
    }

    #[test]
    fn unknown_slot_kind_survives() {
        let mut h = sample();
        h.slots.push(KeySlot::Unknown {
            kind: 9,
            body: vec![1, 2, 3],
        });
        let bytes = h.encode(&[1; 32]).unwrap();
        assert_eq!(FileHeader::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut b = [0u8; HEADER_COPY_LEN];
            for x in b.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = (seed >> 56) as u8;
            }
            b[..8].copy_from_slice(&HEADER_MAGIC);
            b[8..10].copy_from_slice(&1u16.to_be_bytes());
            b[10..12].copy_from_slice(&1u16.to_be_bytes());
            let _ = FileHeader::decode(&b);
        }
    }

    #[test]
    fn newest_copy_first_and_torn_copy_skipped() {
        let dek = [5u8; 32];
        let mut h = sample();
        let a = h.encode(&dek).unwrap();
        h.seq = 2;
        let b = h.encode(&dek).unwrap();
        let mut region = [a, b].concat();
        assert_eq!(candidates(&region).unwrap()[0].copy, 1);
        region[600] ^= 0xff; // damage copy B's slot area
        let c = candidates(&region).unwrap_or_default();
        let usable: Vec<_> = c
            .iter()
            .filter(|c| verify_mac(&region[c.copy * 512..(c.copy + 1) * 512], &dek).is_ok())
            .collect();
        assert_eq!(usable[0].copy, 0);
    }
}
