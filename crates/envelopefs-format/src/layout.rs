//! Pure offset and size arithmetic of a backing file (docs/FORMAT.md §File layout).
//!
//! ```text
//! offset 0                 header copy A   (HEADER_COPY_LEN bytes)
//! offset HEADER_COPY_LEN   header copy B   (HEADER_COPY_LEN bytes)
//! offset HEADER_REGION     block 0, block 1, … each nonce(12) ‖ ciphertext(n) ‖ tag(16)
//! ```
//! Every block but the last holds exactly `block_size` plaintext bytes; the last holds 1 to
//! `block_size`. A backing file of length 0 is an empty file that never got a header.
//!
//! With the `sealed-holes` feature an empty file that has a header also has one empty sealed
//! block (`BLOCK_OVERHEAD` bytes: nonce ‖ tag), so a file cut down to its header alone is an
//! invalid length rather than an empty file.

use super::FormatError;
use super::block::BLOCK_OVERHEAD;
use super::header::HEADER_REGION;

/// Size arithmetic for one block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    block_size: u64,
    /// `sealed-holes`: an empty file with a header ends in an empty sealed block.
    sealed_empty: bool,
}

impl Layout {
    /// A layout for `block_size` plaintext bytes per block (checked by the volume config),
    /// format v1 without `sealed-holes`.
    pub fn new(block_size: u32) -> Self {
        Layout {
            block_size: u64::from(block_size),
            sealed_empty: false,
        }
    }

    /// A layout for a volume with (`true`) or without the `sealed-holes` feature.
    pub fn with_sealed_holes(block_size: u32, sealed_holes: bool) -> Self {
        Layout {
            block_size: u64::from(block_size),
            sealed_empty: sealed_holes,
        }
    }

    /// True on a `sealed-holes` volume: every block is sealed (no holes) and an empty file
    /// with a header carries an empty sealed block.
    pub fn sealed_holes(&self) -> bool {
        self.sealed_empty
    }

    /// Plaintext bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Bytes one full block takes on disk.
    pub fn sealed_block_size(&self) -> u64 {
        self.block_size + BLOCK_OVERHEAD as u64
    }

    /// Backing-file offset of block `index`.
    pub fn block_offset(&self, index: u64) -> u64 {
        HEADER_REGION as u64 + index * self.sealed_block_size()
    }

    /// Number of blocks a file of `size` plaintext bytes has.
    pub fn block_count(&self, size: u64) -> u64 {
        size.div_ceil(self.block_size)
    }

    /// Plaintext length of block `index` in a file of `size` bytes (0 past the end).
    pub fn block_len(&self, index: u64, size: u64) -> u64 {
        let start = index * self.block_size;
        size.saturating_sub(start).min(self.block_size)
    }

    /// Plaintext size of a file whose backing file is `len` bytes long.
    pub fn plaintext_size(&self, len: u64) -> Result<u64, FormatError> {
        if len == 0 {
            return Ok(0);
        }
        let data = len
            .checked_sub(HEADER_REGION as u64)
            .ok_or(FormatError::BadLength(len))?;
        let sealed = self.sealed_block_size();
        let (full, rem) = (data / sealed, data % sealed);
        if self.sealed_empty {
            // Header alone: cut down (an empty file has its empty block). Header and an empty
            // block: an empty file; an empty block after full ones: impossible.
            return match (full, rem) {
                (0, 0) => Err(FormatError::BadLength(len)),
                (0, r) if r == BLOCK_OVERHEAD as u64 => Ok(0),
                (_, 0) => Ok(full * self.block_size),
                (_, r) if r > BLOCK_OVERHEAD as u64 => {
                    Ok(full * self.block_size + r - BLOCK_OVERHEAD as u64)
                }
                _ => Err(FormatError::BadLength(len)),
            };
        }
        match rem {
            0 => Ok(full * self.block_size),
            r if r > BLOCK_OVERHEAD as u64 => {
                Ok(full * self.block_size + r - BLOCK_OVERHEAD as u64)
            }
            _ => Err(FormatError::BadLength(len)),
        }
    }

    /// Backing length of a file of `size` plaintext bytes that has a header.
    pub fn backing_size(&self, size: u64) -> u64 {
        if size == 0 && self.sealed_empty {
            return (HEADER_REGION + BLOCK_OVERHEAD) as u64;
        }
        let full = size / self.block_size;
        let rem = size % self.block_size;
        let tail = if rem == 0 {
            0
        } else {
            rem + BLOCK_OVERHEAD as u64
        };
        HEADER_REGION as u64 + full * self.sealed_block_size() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_sizes() {
        let l = Layout::new(4096);
        assert_eq!(l.backing_size(0), 1024);
        assert_eq!(l.backing_size(1), 1024 + 29);
        assert_eq!(l.backing_size(4096), 1024 + 4124);
        assert_eq!(l.backing_size(5000), 1024 + 4124 + 904 + 28);
    }

    #[test]
    fn size_round_trips() {
        for bs in [512u32, 4096, 65536] {
            let l = Layout::new(bs);
            for size in (0..3 * u64::from(bs) + 7).step_by(97).chain([
                1,
                u64::from(bs),
                10 * u64::from(bs) + 1,
            ]) {
                assert_eq!(
                    l.plaintext_size(l.backing_size(size)),
                    Ok(size),
                    "bs {bs} size {size}"
                );
            }
        }
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        let l = Layout::new(4096);
        assert_eq!(l.plaintext_size(0), Ok(0));
        assert!(l.plaintext_size(1).is_err());
        assert!(l.plaintext_size(1023).is_err());
        for extra in 1..=28 {
            assert!(l.plaintext_size(1024 + extra).is_err());
            assert!(l.plaintext_size(1024 + 4124 + extra).is_err());
        }
    }

    #[test]
    fn sealed_holes_sizes() {
        for bs in [512u32, 4096] {
            let l = Layout::with_sealed_holes(bs, true);
            let b = u64::from(bs);
            assert_eq!(l.backing_size(0), 1024 + 28);
            assert_eq!(l.plaintext_size(0), Ok(0), "never written: no header");
            assert!(l.plaintext_size(1024).is_err(), "header alone");
            assert_eq!(l.plaintext_size(1024 + 28), Ok(0));
            assert!(
                l.plaintext_size(1024 + (b + 28) + 28).is_err(),
                "an empty block after a full one"
            );
            for size in (1..3 * b + 7).step_by(97).chain([b, 2 * b]) {
                assert_eq!(l.plaintext_size(l.backing_size(size)), Ok(size));
                assert_eq!(l.backing_size(size), Layout::new(bs).backing_size(size));
            }
        }
    }

    #[test]
    fn block_lengths() {
        let l = Layout::new(4096);
        assert_eq!(l.block_count(0), 0);
        assert_eq!(l.block_count(4097), 2);
        assert_eq!(l.block_len(1, 4097), 1);
        assert_eq!(l.block_len(2, 4097), 0);
        assert_eq!(l.block_offset(2), 1024 + 2 * 4124);
    }
}
