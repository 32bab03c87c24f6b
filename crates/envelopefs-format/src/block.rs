//! Sealing and opening one content block (docs/FORMAT.md §Blocks).
//!
//! ```text
//! sealed block = nonce (12 random bytes) ‖ AES-256-GCM-SIV ciphertext (n bytes) ‖ tag (16)
//! key          = blake3::derive_key("envelopefs block key v1", DEK)
//! AD (25 B)    = file id (16) ‖ block index (u64 BE) ‖ last-block flag (1 = last, 0 = not)
//! ```
//! The associated data stops a block from being moved within a file or to another file, and
//! the last-block flag makes truncation at a block boundary detectable.
//!
//! Holes: on a volume without the `sealed-holes` feature a sealed block made of zero bytes only
//! is a hole and reads as zeros (a real nonce is never all zero in practice), so zeroing a
//! block behind the mount's back forges a hole. With `sealed-holes` ([`BlockCipher::without_holes`])
//! every block is sealed, zero bytes fail authentication like any other damage, and an empty
//! file that has a header carries one empty sealed block (index 0, last) so that cutting a file
//! down to its header is detected too ([`BlockCipher::seal_empty`]).

use aes_gcm_siv::aead::inout::InOutBuf;
use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};

use crate::Aes256GcmSiv;

use super::FormatError;

/// Nonce length.
pub const NONCE_LEN: usize = 12;
/// Tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed block adds to its plaintext.
pub const BLOCK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Key-derivation context for the content key.
pub(crate) const BLOCK_KEY_CONTEXT: &str = "envelopefs block key v1";

/// The per-file content cipher: derived from the file's DEK, bound to its file id.
pub struct BlockCipher {
    aead: Aes256GcmSiv,
    file_id: [u8; 16],
    /// An all-zero sealed block reads as zeros (format v1 without `sealed-holes`).
    holes: bool,
}

impl std::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCipher")
            .field("file_id", &super::context::hex(&self.file_id))
            .finish_non_exhaustive()
    }
}

fn block_ad(file_id: &[u8; 16], index: u64, last: bool) -> [u8; 25] {
    let mut ad = [0u8; 25];
    ad[..16].copy_from_slice(file_id);
    ad[16..24].copy_from_slice(&index.to_be_bytes());
    ad[24] = u8::from(last);
    ad
}

impl BlockCipher {
    /// Builds the cipher for a file from its 32-byte data key.
    pub fn new(dek: &[u8; 32], file_id: [u8; 16]) -> Self {
        let mut key = blake3::derive_key(BLOCK_KEY_CONTEXT, dek);
        let aead = Aes256GcmSiv::new_from_slice(&key).expect("BUG: 32-byte key rejected");
        zeroize::Zeroize::zeroize(&mut key);
        BlockCipher {
            aead,
            file_id,
            holes: true,
        }
    }

    /// The same cipher for a `sealed-holes` volume: an all-zero block is not a hole but a
    /// block that fails authentication.
    pub fn without_holes(mut self) -> Self {
        self.holes = false;
        self
    }

    /// Seals the empty terminal block of an empty file (`sealed-holes` volumes): block 0,
    /// last flag set, no plaintext; `BLOCK_OVERHEAD` bytes (nonce ‖ tag).
    pub fn seal_empty(&self, nonce: [u8; NONCE_LEN]) -> [u8; BLOCK_OVERHEAD] {
        let mut out = [0u8; BLOCK_OVERHEAD];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        let ad = block_ad(&self.file_id, 0, true);
        let tag = self
            .aead
            .encrypt_inout_detached(&Nonce::from(nonce), &ad, (&mut [][..]).into())
            .expect("BUG: AES-GCM-SIV encryption of nothing failed");
        out[NONCE_LEN..].copy_from_slice(&tag);
        out
    }

    /// Authenticates the empty terminal block of an empty file (see [`Self::seal_empty`]).
    pub fn open_empty(&self, sealed: &[u8]) -> Result<(), FormatError> {
        if sealed.len() != BLOCK_OVERHEAD {
            return Err(FormatError::BlockAuthFailed(0));
        }
        self.decrypt(0, true, sealed, (&mut [][..]).into())
    }

    /// Seals `plaintext` as block `index` into `out`, which must be exactly
    /// `plaintext.len() + BLOCK_OVERHEAD` bytes. `nonce` must be fresh random bytes.
    pub fn seal(
        &self,
        index: u64,
        last: bool,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
        out: &mut [u8],
    ) {
        assert_eq!(
            out.len(),
            plaintext.len() + BLOCK_OVERHEAD,
            "BUG: seal output length"
        );
        assert!(!plaintext.is_empty(), "BUG: empty block");
        let (n, rest) = out.split_at_mut(NONCE_LEN);
        let (ct, tag_out) = rest.split_at_mut(plaintext.len());
        n.copy_from_slice(&nonce);
        let ad = block_ad(&self.file_id, index, last);
        // Encrypted from `plaintext` straight into `out` (no copy first).
        let io = InOutBuf::new(plaintext, ct).expect("BUG: equal lengths by construction");
        let tag = self
            .aead
            .encrypt_inout_detached(&Nonce::from(nonce), &ad, io)
            .expect("BUG: AES-GCM-SIV encryption cannot fail for block-sized input");
        tag_out.copy_from_slice(&tag);
    }

    /// Opens sealed block `index` into `out` (length `sealed.len() - BLOCK_OVERHEAD`),
    /// decrypting from `sealed` straight into `out`. An all-zero sealed block is a hole and
    /// yields zeros. On failure `out` is wiped.
    pub fn open(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        if sealed.len() <= BLOCK_OVERHEAD || out.len() != sealed.len() - BLOCK_OVERHEAD {
            return Err(FormatError::BlockAuthFailed(index));
        }
        if self.holes && is_hole(sealed) {
            out.fill(0);
            return Ok(());
        }
        let body = &sealed[NONCE_LEN..sealed.len() - TAG_LEN];
        let io = InOutBuf::new(body, out).map_err(|_| FormatError::BlockAuthFailed(index))?;
        let r = self.decrypt(index, last, sealed, io);
        if r.is_err() {
            out.fill(0);
        }
        r
    }

    /// Authenticates sealed block `index` (nonce and tag from `sealed`, which is at least
    /// [`BLOCK_OVERHEAD`] long, checked by the callers) and decrypts `io`.
    fn decrypt(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
        io: InOutBuf<'_, '_, u8>,
    ) -> Result<(), FormatError> {
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("NONCE_LEN bytes");
        let tag: [u8; TAG_LEN] = sealed[sealed.len() - TAG_LEN..]
            .try_into()
            .expect("TAG_LEN bytes");
        let ad = block_ad(&self.file_id, index, last);
        self.aead
            .decrypt_inout_detached(&Nonce::from(nonce), &ad, io, &Tag::from(tag))
            .map_err(|_| FormatError::BlockAuthFailed(index))
    }
}

/// True when a sealed block is entirely zero bytes (a hole left by a sparse backing file).
pub fn is_hole(sealed: &[u8]) -> bool {
    sealed.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> BlockCipher {
        BlockCipher::new(&[7u8; 32], [9u8; 16])
    }

    #[test]
    fn open_opens_holes_and_wipes_on_failure() {
        let c = cipher();
        let a = sealed(3, false, &[5u8; 4096]);
        let b = sealed(4, true, b"tail");
        let mut buf = vec![1u8; 4096];
        c.open(3, false, &a, &mut buf).unwrap();
        assert_eq!(buf, [5u8; 4096]);
        let mut buf = vec![1u8; 4];
        c.open(4, true, &b, &mut buf).unwrap();
        assert_eq!(buf, b"tail");
        let hole = [0u8; 4096 + BLOCK_OVERHEAD];
        let mut buf = vec![1u8; 4096];
        c.open(5, false, &hole, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 4096], "a hole");
        let mut bad = a.clone();
        bad[100] ^= 1;
        let mut buf = vec![1u8; 4096];
        assert!(c.open(3, false, &bad, &mut buf).is_err());
        assert_eq!(buf, [0u8; 4096], "a failed open leaves only zeros");
        let mut buf = vec![1u8; 4];
        assert!(
            c.open(4, false, &b, &mut buf).is_err(),
            "last flag is bound"
        );
        assert_eq!(buf, [0u8; 4], "a failed open leaves only zeros");
        let mut short = vec![0u8; 3];
        assert!(c.open(4, true, &b, &mut short).is_err(), "length checked");
    }

    fn sealed(index: u64, last: bool, pt: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; pt.len() + BLOCK_OVERHEAD];
        cipher().seal(index, last, [1u8; 12], pt, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let s = sealed(3, true, b"hello");
        let mut out = [0u8; 5];
        cipher().open(3, true, &s, &mut out).unwrap();
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn moved_block_is_detected() {
        let s = sealed(3, false, b"hello");
        let mut out = [0u8; 5];
        assert_eq!(
            cipher().open(4, false, &s, &mut out),
            Err(FormatError::BlockAuthFailed(4))
        );
    }

    #[test]
    fn block_from_another_file_is_detected() {
        let s = sealed(0, true, b"hello");
        let other = BlockCipher::new(&[7u8; 32], [8u8; 16]);
        let mut out = [0u8; 5];
        assert!(other.open(0, true, &s, &mut out).is_err());
    }

    #[test]
    fn last_flag_is_bound() {
        let s = sealed(0, false, b"hello");
        let mut out = [0u8; 5];
        assert!(cipher().open(0, true, &s, &mut out).is_err());
    }

    #[test]
    fn flipped_bit_is_detected_and_output_cleared() {
        let mut s = sealed(0, true, b"hello");
        s[14] ^= 1;
        let mut out = [0u8; 5];
        assert!(cipher().open(0, true, &s, &mut out).is_err());
        assert_eq!(out, [0u8; 5]);
    }

    #[test]
    fn without_holes_a_zeroed_block_fails_and_the_empty_block_authenticates() {
        let c = cipher().without_holes();
        let zeros = vec![0u8; 100 + BLOCK_OVERHEAD];
        let mut out = vec![1u8; 100];
        assert_eq!(
            c.open(3, false, &zeros, &mut out),
            Err(FormatError::BlockAuthFailed(3))
        );
        assert_eq!(out, [0u8; 100], "a failed open leaves only zeros");
        let e = c.seal_empty([5; NONCE_LEN]);
        assert_eq!(c.open_empty(&e), Ok(()));
        assert!(c.open_empty(&[0u8; BLOCK_OVERHEAD]).is_err(), "zeros");
        let other = BlockCipher::new(&[7u8; 32], [8u8; 16]).without_holes();
        assert!(other.open_empty(&e).is_err(), "another file's empty block");
        let mut flipped = e;
        flipped[20] ^= 1;
        assert!(c.open_empty(&flipped).is_err());
        // The empty block is the AD-bound empty message, not a shortened real block.
        let real = sealed(0, true, b"x");
        assert!(
            c.open_empty(&[&real[..NONCE_LEN], &real[NONCE_LEN + 1..]].concat())
                .is_err()
        );
    }

    #[test]
    fn hole_reads_as_zeros() {
        let s = vec![0u8; 100 + BLOCK_OVERHEAD];
        let mut out = vec![1u8; 100];
        cipher().open(0, false, &s, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0));
    }
}
