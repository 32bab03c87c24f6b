//! The plan of a write or a size change, as pure arithmetic (docs/DESIGN.md §How a write
//! flows): which blocks are sealed again, what goes into each, and where the sealed bytes land
//! in the backing file. No I/O, no keys, no logging: [`EncFs::apply`](super::EncFs) reads the
//! old blocks the plan asks for, seals, and hands the runs to `store::blocks`.
//!
//! A file going from `old_size` to `new_size` plaintext bytes, with an optional write of `len`
//! bytes at `offset` applied, must re-seal every block whose contents, plaintext length or
//! last-block flag change (the flag is in each block's associated data, docs/FORMAT.md
//! §Blocks). On a `sealed-holes` volume every block between the old and the new end is sealed
//! too (no holes); on other volumes the blocks a growing file skips stay holes that read as
//! zeros.

use std::ops::Range;

use crate::format::block::BLOCK_OVERHEAD;
use crate::format::layout::Layout;

/// How much a `sealed-holes` file grows per step when a write or truncate leaves a gap (see
/// [`fill_step`]).
pub(crate) const FILL_BYTES: u64 = 1 << 20;

/// The next size of a `sealed-holes` file grown from `size` towards `upto` in bounded steps:
/// [`FILL_BYTES`] (at least one block) at a time, ending on block boundaries, so memory stays
/// bounded and every step leaves a valid file.
pub(crate) fn fill_step(layout: Layout, size: u64, upto: u64) -> u64 {
    let bs = layout.block_size();
    let step = (FILL_BYTES / bs).max(1);
    ((size / bs + step) * bs).min(upto)
}

/// The old block a partly written block starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OldBlock {
    /// Its plaintext length in the old file (at least 1).
    pub(crate) len: usize,
    /// Whether it was the old file's last block (its last-block flag).
    pub(crate) last: bool,
}

/// The part of the write that lands in one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Offset in the block's plaintext.
    pub(crate) at: usize,
    /// The bytes of the write (offsets into the write's buffer).
    pub(crate) from: Range<usize>,
}

/// One block to seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockPlan {
    /// Block index.
    pub(crate) index: u64,
    /// Its plaintext length in the new file (1 to the block size).
    pub(crate) len: usize,
    /// Whether it is the new file's last block.
    pub(crate) last: bool,
    /// When the write does not cover the whole block and the old file had bytes in it: the
    /// old block to read and open first. Its first `min(old.len, len)` bytes are kept; the
    /// rest of the block is zeros, under the write.
    pub(crate) old: Option<OldBlock>,
    /// The part of the write that lands here, if any.
    pub(crate) data: Option<Placed>,
}

impl BlockPlan {
    /// True when the write covers the whole block: nothing old is kept, nothing is zeroed.
    pub(crate) fn fully_written(&self) -> bool {
        self.data
            .as_ref()
            .is_some_and(|d| d.at == 0 && d.from.len() == self.len)
    }

    /// Bytes the sealed block takes on disk.
    pub(crate) fn sealed_len(&self) -> usize {
        self.len + BLOCK_OVERHEAD
    }
}

/// Consecutive planned blocks, written to the backing file with one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// Backing-file offset of its first block.
    pub(crate) offset: u64,
    /// Its blocks: indices into [`WritePlan::blocks`].
    pub(crate) blocks: Range<usize>,
    /// Sealed bytes (the sum of the blocks' [`BlockPlan::sealed_len`]).
    pub(crate) len: u64,
}

impl Run {
    /// The backing-file range the run covers.
    #[cfg(test)]
    pub(crate) fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }
}

/// Everything a write or size change does to a backing file that has a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WritePlan {
    /// The blocks to seal, by increasing index, each once.
    pub(crate) blocks: Vec<BlockPlan>,
    /// The blocks grouped into maximal runs of consecutive indices, by increasing offset.
    pub(crate) runs: Vec<Run>,
    /// Seal the empty block of an emptied `sealed-holes` file at
    /// [`Layout::block_offset`]`(0)` (the only block; no run holds it).
    pub(crate) empty_block: bool,
    /// Backing length before the change: what a failed write gives back, and where the store
    /// splits a run, writing the bytes past it before any existing byte
    /// (`store::blocks::write_runs`).
    pub(crate) old_backing: u64,
    /// When the file shrinks: the backing length to cut it to after the runs are written.
    pub(crate) truncate_to: Option<u64>,
}

impl WritePlan {
    /// Plans the change of a file with a header from `old_size` to `new_size` plaintext bytes
    /// with `write` = (offset, length) applied. A write must lie within the new size and not be
    /// empty (`write_content` returns early on an empty write).
    pub fn new(
        layout: Layout,
        old_size: u64,
        new_size: u64,
        write: Option<(u64, u64)>,
    ) -> WritePlan {
        let bs = layout.block_size();
        let (old_count, new_count) = (layout.block_count(old_size), layout.block_count(new_size));
        if let Some((off, len)) = write {
            debug_assert!(
                len > 0 && off + len <= new_size,
                "BUG: write outside the plan"
            );
        }
        let changed = |i: u64| -> bool {
            i >= old_count
                || layout.block_len(i, old_size) != layout.block_len(i, new_size)
                || (i + 1 == old_count) != (i + 1 == new_count)
        };
        let mut indices: Vec<u64> = Vec::new();
        if let Some((off, len)) = write {
            indices.extend(off / bs..=(off + len - 1) / bs);
        }
        // The old and the new last block are the only ones whose length or flag can change.
        for i in [old_count.checked_sub(1), new_count.checked_sub(1)]
            .into_iter()
            .flatten()
        {
            if i < new_count && changed(i) {
                indices.push(i);
            }
        }
        if layout.sealed_holes() {
            // No holes: every new block is written (callers grow in bounded steps, fill_step).
            indices.extend(old_count..new_count);
        }
        indices.sort_unstable();
        indices.dedup();

        let blocks: Vec<BlockPlan> = indices
            .into_iter()
            .map(|i| {
                let len = layout.block_len(i, new_size) as usize;
                let bstart = i * bs;
                let data = write.and_then(|(off, wlen)| {
                    let s = off.max(bstart);
                    let e = (off + wlen).min(bstart + len as u64);
                    (s < e).then(|| Placed {
                        at: (s - bstart) as usize,
                        from: (s - off) as usize..(e - off) as usize,
                    })
                });
                let mut b = BlockPlan {
                    index: i,
                    len,
                    last: i + 1 == new_count,
                    old: None,
                    data,
                };
                let old_len = layout.block_len(i, old_size) as usize;
                if !b.fully_written() && old_len > 0 {
                    b.old = Some(OldBlock {
                        len: old_len,
                        last: i + 1 == old_count,
                    });
                }
                b
            })
            .collect();

        let mut runs: Vec<Run> = Vec::new();
        for (n, b) in blocks.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if blocks[r.blocks.end - 1].index + 1 == b.index => {
                    r.blocks.end = n + 1;
                    r.len += b.sealed_len() as u64;
                }
                _ => runs.push(Run {
                    offset: layout.block_offset(b.index),
                    blocks: n..n + 1,
                    len: b.sealed_len() as u64,
                }),
            }
        }

        // The file has its header, so its backing length follows from its size.
        let old_backing = layout.backing_size(old_size);
        WritePlan {
            blocks,
            runs,
            empty_block: layout.sealed_holes() && new_size == 0 && old_size != 0,
            old_backing,
            truncate_to: (new_size < old_size).then(|| layout.backing_size(new_size)),
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
