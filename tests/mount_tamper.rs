//! Mount tests of tampering: every change to the ciphertext (flipped bytes, swapped, cut,
//! appended or zeroed blocks, damaged or swapped headers) reads as EIO, never as garbage.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::sys::flip_byte;
use common::{BLOCK, Mounted, Rng, block_offset, read_errno};

#[test]
fn tamper_flipped_byte_reads_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let size = 3 * BLOCK as usize + 500;
    let mut rng = Rng::new(9);
    let intact = rng.bytes(size);
    // (name, backing offset of the flipped byte)
    let cases = [
        ("ciphertext_mid", block_offset(1) + 12 + 100),
        ("nonce_first", block_offset(0) + 3),
        ("tag_last", block_offset(3) + 12 + 500 + 5),
        ("ciphertext_last", block_offset(3) + 12),
    ];
    for (name, _) in &cases {
        fs::write(m.path(name), &intact).unwrap();
    }
    fs::write(m.path("untouched"), &intact).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    for (name, off) in &cases {
        flip_byte(&m.backing_path(name), *off);
    }
    m.mount();
    for (name, _) in &cases {
        assert_eq!(
            fs::metadata(m.path(name)).unwrap().len(),
            size as u64,
            "{name}: size is still derivable"
        );
        assert_eq!(read_errno(&m.path(name)), Err(libc::EIO), "{name}");
    }
    assert_eq!(
        fs::read(m.path("untouched")).unwrap(),
        intact,
        "other files are unaffected"
    );
    let log = m.log_text();
    assert!(
        log.contains("WARN"),
        "an integrity failure is logged:\n{log}"
    );
    // A damaged file can be replaced whole (O_TRUNC drops the damaged blocks).
    fs::write(m.path("ciphertext_mid"), &intact).unwrap();
    assert_eq!(fs::read(m.path("ciphertext_mid")).unwrap(), intact);
}

#[test]
fn tamper_swapped_blocks_read_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let mut rng = Rng::new(10);
    fs::write(m.path("swapped"), rng.bytes(4 * BLOCK as usize)).unwrap();
    let x = rng.bytes(2 * BLOCK as usize);
    fs::write(m.path("x"), &x).unwrap();
    fs::write(m.path("y"), rng.bytes(2 * BLOCK as usize)).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    let sealed = (BLOCK + common::OVERHEAD) as usize;
    let read_block = |p: &Path, i: u64| {
        let mut b = vec![0u8; sealed];
        File::open(p)
            .unwrap()
            .read_exact_at(&mut b, block_offset(i))
            .unwrap();
        b
    };
    let write_block = |p: &Path, i: u64, b: &[u8]| {
        OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .write_all_at(b, block_offset(i))
            .unwrap()
    };
    // Blocks 1 and 2 of one file swap places.
    let s = m.backing_path("swapped");
    let (b1, b2) = (read_block(&s, 1), read_block(&s, 2));
    write_block(&s, 1, &b2);
    write_block(&s, 2, &b1);
    // Block 0 of x moves into y (same index, other file).
    write_block(
        &m.backing_path("y"),
        0,
        &read_block(&m.backing_path("x"), 0),
    );
    m.mount();
    assert_eq!(
        read_errno(&m.path("swapped")),
        Err(libc::EIO),
        "swapped blocks"
    );
    assert_eq!(
        read_errno(&m.path("y")),
        Err(libc::EIO),
        "a block from another file"
    );
    assert_eq!(
        fs::read(m.path("x")).unwrap(),
        x,
        "the donor file is intact"
    );
}

#[test]
fn tamper_truncated_backing_reads_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(12).bytes(3 * BLOCK as usize + 100);
    for name in ["cut_two_blocks", "cut_tail", "cut_mid_block"] {
        fs::write(m.path(name), &data).unwrap();
    }
    assert!(m.unmount().is_some_and(|s| s.success()));
    let cut = |name: &str, len: u64| {
        OpenOptions::new()
            .write(true)
            .open(m.backing_path(name))
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    cut("cut_two_blocks", block_offset(2)); // a valid-looking 8192-byte file
    cut("cut_tail", block_offset(3)); // a valid-looking 12288-byte file
    cut("cut_mid_block", block_offset(2) + 1000); // a valid-looking length, inside block 2
    m.mount();
    assert_eq!(
        fs::metadata(m.path("cut_two_blocks")).unwrap().len(),
        2 * BLOCK
    );
    assert_eq!(
        read_errno(&m.path("cut_two_blocks")),
        Err(libc::EIO),
        "truncated at a block boundary"
    );
    assert_eq!(
        read_errno(&m.path("cut_tail")),
        Err(libc::EIO),
        "tail block dropped"
    );
    assert_eq!(
        read_errno(&m.path("cut_mid_block")),
        Err(libc::EIO),
        "truncated inside a block"
    );
}

#[test]
fn tamper_header_copies() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(13).bytes(5000);
    for name in ["copy_a_damaged", "both_damaged", "magic_a_damaged"] {
        fs::write(m.path(name), &data).unwrap();
    }
    assert!(m.unmount().is_some_and(|s| s.success()));
    flip_byte(&m.backing_path("copy_a_damaged"), 100); // inside copy A's key slot
    flip_byte(&m.backing_path("magic_a_damaged"), 0);
    flip_byte(&m.backing_path("both_damaged"), 500); // copy A's MAC
    flip_byte(&m.backing_path("both_damaged"), 512 + 500); // copy B's MAC
    m.mount();
    assert_eq!(
        fs::read(m.path("copy_a_damaged")).unwrap(),
        data,
        "copy B takes over"
    );
    assert_eq!(
        fs::read(m.path("magic_a_damaged")).unwrap(),
        data,
        "copy B takes over"
    );
    assert_eq!(read_errno(&m.path("both_damaged")), Err(libc::EIO));
}

#[test]
fn tamper_appended_or_zeroed_blocks_and_swapped_headers_read_eio() {
    let Some(mut m) = Mounted::new() else { return };
    let mut rng = Rng::new(14);
    let full = rng.bytes(3 * BLOCK as usize); // last block is full
    let partial = rng.bytes(2 * BLOCK as usize + 300);
    for name in ["append_block", "zero_last", "append_byte", "victim"] {
        fs::write(m.path(name), &full).unwrap();
    }
    fs::write(m.path("donor"), &partial).unwrap();
    fs::write(m.path("zero_last_partial"), &partial).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    let sealed = (BLOCK + common::OVERHEAD) as usize;
    let bp = |n: &str| m.backing_path(n);
    // A copy of block 1 appended as block 3: the old last block (flag 1) is no longer last.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(bp("append_block"))
        .unwrap();
    let mut b1 = vec![0u8; sealed];
    f.read_exact_at(&mut b1, block_offset(1)).unwrap();
    f.write_all_at(&b1, block_offset(3)).unwrap();
    drop(f);
    // The last block zeroed (a "hole" where the format always writes).
    OpenOptions::new()
        .write(true)
        .open(bp("zero_last"))
        .unwrap()
        .write_all_at(&vec![0u8; sealed], block_offset(2))
        .unwrap();
    let tail = 300 + common::OVERHEAD as usize;
    OpenOptions::new()
        .write(true)
        .open(bp("zero_last_partial"))
        .unwrap()
        .write_all_at(&vec![0u8; tail], block_offset(2))
        .unwrap();
    // One byte appended: a length the format cannot produce... or a 1-byte block.
    OpenOptions::new()
        .append(true)
        .open(bp("append_byte"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    // Another file's header region (copies A and B) put on "victim".
    let mut hdr = vec![0u8; common::HEADER_REGION as usize];
    File::open(bp("donor"))
        .unwrap()
        .read_exact_at(&mut hdr, 0)
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(bp("victim"))
        .unwrap()
        .write_all_at(&hdr, 0)
        .unwrap();
    m.mount();
    assert_eq!(
        fs::metadata(m.path("append_block")).unwrap().len(),
        4 * BLOCK
    );
    for name in [
        "append_block",
        "zero_last",
        "zero_last_partial",
        "append_byte",
        "victim",
    ] {
        assert_eq!(read_errno(&m.path(name)), Err(libc::EIO), "{name}");
    }
    assert_eq!(fs::read(m.path("donor")).unwrap(), partial);
}
