//! Unit tests of `plan.rs` (a file of their own, the project's convention for large modules).
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const O: u64 = BLOCK_OVERHEAD as u64;

fn indices(p: &WritePlan) -> Vec<u64> {
    p.blocks.iter().map(|b| b.index).collect()
}

#[test]
fn a_write_inside_one_full_block_reads_it_and_writes_it_alone() {
    let l = Layout::with_sealed_holes(4096, true);
    let p = WritePlan::new(l, 3 * 4096, 3 * 4096, Some((4096 + 10, 20)));
    assert_eq!(
        p.blocks,
        vec![BlockPlan {
            index: 1,
            len: 4096,
            last: false,
            old: Some(OldBlock {
                len: 4096,
                last: false
            }),
            data: Some(Placed {
                at: 10,
                from: 0..20
            }),
        }]
    );
    assert_eq!(
        p.runs,
        vec![Run {
            offset: l.block_offset(1),
            blocks: 0..1,
            len: 4096 + O
        }]
    );
    assert_eq!(p.truncate_to, None);
    assert!(!p.empty_block);
}

#[test]
fn a_write_covering_whole_blocks_reads_nothing() {
    let l = Layout::new(4096);
    let p = WritePlan::new(l, 4 * 4096, 4 * 4096, Some((4096, 2 * 4096)));
    assert_eq!(indices(&p), [1, 2]);
    assert!(
        p.blocks
            .iter()
            .all(|b| b.old.is_none() && b.fully_written())
    );
    assert_eq!(p.blocks[1].data.as_ref().unwrap().from, 4096..8192);
    assert_eq!(p.runs.len(), 1);
    assert_eq!(p.runs[0].len, 2 * (4096 + O));
}

#[test]
fn an_append_reseals_the_old_last_block() {
    let l = Layout::new(4096);
    // 100 bytes, then 5000 more at 100: block 0 grows to full and loses its last flag.
    let p = WritePlan::new(l, 100, 5100, Some((100, 5000)));
    assert_eq!(indices(&p), [0, 1]);
    let b0 = &p.blocks[0];
    assert_eq!(
        b0.old,
        Some(OldBlock {
            len: 100,
            last: true
        })
    );
    assert!(!b0.last);
    assert_eq!(
        b0.data,
        Some(Placed {
            at: 100,
            from: 0..3996
        })
    );
    let b1 = &p.blocks[1];
    assert_eq!((b1.len, b1.last, b1.old), (1004, true, None));
    assert_eq!(
        b1.data,
        Some(Placed {
            at: 0,
            from: 3996..5000
        })
    );
    assert_eq!(p.old_backing, l.backing_size(100));
}

#[test]
fn a_write_past_a_gap_leaves_holes_without_sealed_holes() {
    let l = Layout::new(4096);
    let p = WritePlan::new(l, 10, 5 * 4096 + 5, Some((5 * 4096, 5)));
    // The old last block grows to full (length and flag change), the gap stays a hole.
    assert_eq!(indices(&p), [0, 5]);
    assert_eq!(p.runs.len(), 2);
    assert_eq!(
        p.runs.iter().map(Run::range).collect::<Vec<_>>(),
        vec![
            l.block_offset(0)..l.block_offset(1),
            l.block_offset(5)..l.backing_size(5 * 4096 + 5)
        ]
    );
    // With sealed holes, every block in between is sealed, as one run.
    let l = Layout::with_sealed_holes(4096, true);
    let p = WritePlan::new(l, 10, 5 * 4096 + 5, Some((5 * 4096, 5)));
    assert_eq!(indices(&p), [0, 1, 2, 3, 4, 5]);
    assert_eq!(p.runs.len(), 1);
    assert!(
        p.blocks[1..5]
            .iter()
            .all(|b| b.old.is_none() && b.data.is_none())
    );
}

#[test]
fn shrinking_reseals_the_new_last_block_and_truncates() {
    let l = Layout::new(4096);
    let p = WritePlan::new(l, 3 * 4096, 4096 + 7, None);
    assert_eq!(indices(&p), [1]);
    assert_eq!(
        p.blocks[0].old,
        Some(OldBlock {
            len: 4096,
            last: false
        })
    );
    assert!(p.blocks[0].last);
    assert_eq!(p.truncate_to, Some(l.backing_size(4096 + 7)));
    // To a block boundary: the new last block is whole but gains its last flag.
    let p = WritePlan::new(l, 3 * 4096, 2 * 4096, None);
    assert_eq!(indices(&p), [1]);
    assert_eq!(p.truncate_to, Some(l.backing_size(2 * 4096)));
}

#[test]
fn emptying_writes_the_empty_block_only_with_sealed_holes() {
    let p = WritePlan::new(Layout::with_sealed_holes(4096, true), 5000, 0, None);
    assert!(p.blocks.is_empty() && p.empty_block);
    assert_eq!(p.truncate_to, Some(1024 + O));
    let p = WritePlan::new(Layout::new(4096), 5000, 0, None);
    assert!(p.blocks.is_empty() && !p.empty_block);
    assert_eq!(p.truncate_to, Some(1024));
}

#[test]
fn fill_steps_end_on_block_boundaries_and_at_the_target() {
    let l = Layout::new(4096);
    assert_eq!(fill_step(l, 0, 10 * FILL_BYTES), FILL_BYTES);
    assert_eq!(fill_step(l, 100, 10 * FILL_BYTES), FILL_BYTES);
    assert_eq!(fill_step(l, 0, 5), 5);
    // A block larger than a step still grows one block at a time.
    let big = Layout::new(1 << 21);
    assert_eq!(fill_step(big, 0, 1 << 30), 1 << 21);
}

/// A model backing file: block index → (plaintext, last flag) as sealed. Seals the plan
/// with the identity "cipher", checks every block read back against the expected bytes.
fn check_against_model(
    bs: u32,
    sealed_holes: bool,
    old: &[u8],
    new_size: u64,
    write: Option<(u64, Vec<u8>)>,
) -> Result<(), TestCaseError> {
    let l = Layout::with_sealed_holes(bs, sealed_holes);
    let bsu = u64::from(bs);
    let old_size = old.len() as u64;
    let (old_count, new_count) = (l.block_count(old_size), l.block_count(new_size));
    let mut disk: BTreeMap<u64, (Vec<u8>, bool)> = old
        .chunks(bs as usize)
        .enumerate()
        .map(|(i, c)| (i as u64, (c.to_vec(), i as u64 + 1 == old_count)))
        .collect();
    let p = WritePlan::new(
        l,
        old_size,
        new_size,
        write.as_ref().map(|(o, d)| (*o, d.len() as u64)),
    );

    // Blocks: sorted, unique, inside the new file, flags and lengths of the new file.
    for w in p.blocks.windows(2) {
        prop_assert!(w[0].index < w[1].index, "blocks sorted and unique");
    }
    for b in &p.blocks {
        prop_assert!(b.index < new_count, "block {} past the new end", b.index);
        prop_assert_eq!(b.len as u64, l.block_len(b.index, new_size));
        prop_assert_eq!(b.last, b.index + 1 == new_count);
        if let Some(o) = b.old {
            prop_assert_eq!(o.len as u64, l.block_len(b.index, old_size));
            prop_assert_eq!(o.last, b.index + 1 == old_count);
            prop_assert!(!b.fully_written());
        } else {
            prop_assert!(b.fully_written() || l.block_len(b.index, old_size) == 0);
        }
        if let Some(d) = &b.data {
            prop_assert!(!d.from.is_empty() && d.at + d.from.len() <= b.len);
        }
    }
    // The write's pieces cover it exactly once, in order.
    let pieces: Vec<Range<usize>> = p
        .blocks
        .iter()
        .filter_map(|b| b.data.as_ref().map(|d| d.from.clone()))
        .collect();
    let mut at = 0;
    for r in &pieces {
        prop_assert_eq!(r.start, at, "write pieces contiguous");
        at = r.end;
    }
    prop_assert_eq!(at, write.as_ref().map_or(0, |(_, d)| d.len()));
    // Runs: maximal, contiguous, sorted, covering every block once, offsets from the layout.
    let mut next = 0;
    for (k, r) in p.runs.iter().enumerate() {
        prop_assert_eq!(r.blocks.start, next);
        prop_assert!(!r.blocks.is_empty());
        next = r.blocks.end;
        let bl = &p.blocks[r.blocks.clone()];
        prop_assert_eq!(r.offset, l.block_offset(bl[0].index));
        for w in bl.windows(2) {
            prop_assert_eq!(w[0].index + 1, w[1].index);
        }
        let sum: u64 = bl.iter().map(|b| b.sealed_len() as u64).sum();
        prop_assert_eq!(r.len, sum);
        let tail = &bl[bl.len() - 1];
        prop_assert_eq!(
            r.range().end,
            l.block_offset(tail.index) + tail.sealed_len() as u64
        );
        if k > 0 {
            let prev = &p.blocks[p.runs[k - 1].blocks.end - 1];
            prop_assert!(prev.index + 1 < bl[0].index, "runs are maximal");
        }
    }
    prop_assert_eq!(next, p.blocks.len());
    prop_assert_eq!(p.old_backing, l.backing_size(old_size));

    // Apply to the model: what the glue does, with an identity seal.
    for b in &p.blocks {
        let mut plain = vec![0u8; b.len];
        if let Some(o) = b.old {
            let (bytes, last) = disk.get(&b.index).cloned().unwrap_or_else(|| {
                // A hole: an old block of zeros (never the last one).
                (vec![0; bs as usize], false)
            });
            prop_assert_eq!(bytes.len(), o.len, "old block length");
            prop_assert_eq!(last, o.last, "old block flag");
            let keep = o.len.min(b.len);
            plain[..keep].copy_from_slice(&bytes[..keep]);
        }
        if let (Some(d), Some((_, wd))) = (&b.data, &write) {
            plain[d.at..d.at + d.from.len()].copy_from_slice(&wd[d.from.clone()]);
        }
        disk.insert(b.index, (plain, b.last));
    }
    let mut backing_len = p.old_backing;
    for r in &p.runs {
        backing_len = backing_len.max(r.range().end);
    }
    if let Some(t) = p.truncate_to {
        backing_len = t;
        disk.retain(|&i, _| i < new_count);
    }
    prop_assert_eq!(
        backing_len,
        l.backing_size(new_size),
        "final backing length"
    );
    prop_assert_eq!(
        p.empty_block,
        sealed_holes && new_size == 0 && old_size != 0
    );

    // Read the new file back: every block has the new length and flag, or is a hole
    // (only without sealed-holes, never the last block).
    let mut expect = old.to_vec();
    expect.resize(new_size as usize, 0);
    if let Some((o, d)) = &write {
        expect[*o as usize..*o as usize + d.len()].copy_from_slice(d);
    }
    for i in 0..new_count {
        let want = &expect[(i * bsu) as usize..(i * bsu + l.block_len(i, new_size)) as usize];
        match disk.get(&i) {
            Some((bytes, last)) => {
                prop_assert_eq!(bytes.as_slice(), want, "block {} contents", i);
                prop_assert_eq!(*last, i + 1 == new_count, "block {} flag", i);
            }
            None => {
                prop_assert!(!sealed_holes, "block {} left a hole", i);
                prop_assert!(i + 1 < new_count, "the last block is a hole");
                prop_assert!(want.iter().all(|&b| b == 0), "a hole under data");
            }
        }
    }
    Ok(())
}

/// (block size, sealed holes, old contents, new size, write) with the write inside the new
/// size, as `write_content` and `truncate_content` call `apply`.
type Case = (u32, bool, Vec<u8>, u64, Option<(u64, Vec<u8>)>);

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![16u32, 32, 64]),
        any::<bool>(),
        prop::collection::vec(1u8..=255, 0..300),
        0u64..400,
        prop::option::of((0u64..350, prop::collection::vec(1u8..=255, 1..150))),
    )
        .prop_map(|(bs, sh, old, size, write)| match write {
            // A write: the new size is at least its end (write_content: max(size, end)).
            Some((off, data)) => {
                let end = off + data.len() as u64;
                (
                    bs,
                    sh,
                    old.clone(),
                    (old.len() as u64).max(end),
                    Some((off, data)),
                )
            }
            None => (bs, sh, old, size, None),
        })
}

proptest! {
    // Shrunk failures are pinned as named tests (below), not in a proptest-regressions
    // file at the top of the repository.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn plans_match_the_model((bs, sh, old, size, write) in case()) {
        check_against_model(bs, sh, &old, size, write)?;
    }
}

#[test]
fn model_regressions() {
    // Growing by a truncate within the old last block, and across a gap.
    check_against_model(16, false, &[1; 10], 12, None).unwrap();
    check_against_model(16, false, &[1; 10], 100, None).unwrap();
    check_against_model(16, true, &[1; 10], 100, None).unwrap();
    // A write ending exactly on a block boundary of an empty file.
    check_against_model(16, false, &[], 32, Some((16, vec![2; 16]))).unwrap();
    check_against_model(16, true, &[], 0, None).unwrap();
}

/// The shrunk failures the model proptest found while the plan was written (a new file of
/// one byte; a write into a file grown past several blocks), pinned.
#[test]
fn regression_one_byte_new_file() {
    check_against_model(16, false, &[], 1, None).unwrap();
}

#[test]
fn regression_write_inside_a_grown_file() {
    let mut old = vec![1u8; 84];
    old.extend_from_slice(&[2, 181, 186, 75, 33, 20, 128, 253, 1, 203, 90, 249, 30]);
    let data: Vec<u8> = (0..140u32).map(|i| (i * 37 % 251) as u8).collect();
    check_against_model(16, false, &old, 269, Some((127, data))).unwrap();
}
