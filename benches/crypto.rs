//! Crypto micro-benchmarks: what one FUSE request costs in pure CPU, next to the single-core
//! ceiling of the primitives underneath.
//!
//! Run: `cargo bench --bench crypto` (add `-- --quick` for a fast smoke run, or a filter such
//! as `-- block/` to run one group). Results are recorded in docs/PERFORMANCE.md.
//!
//! Groups:
//! - `block`: `BlockCipher::seal` / `open` of one 4 KiB and one 64 KiB block (the per-block
//!   cost the daemon pays on every write / read), plus `BlockCipher::new` (per open file).
//! - `ceiling`: raw AES-256-GCM-SIV `encrypt_inout_detached` / `decrypt_inout_detached` on the
//!   same sizes with the aes-gcm-siv crate directly, and its two halves (raw AES-256 block
//!   encryption, which is what CTR mode costs, and POLYVAL), so the overhead of the block layer
//!   above the primitive is visible. AES-256-GCM itself is not measured: it would need the
//!   aes-gcm crate, a new dependency; its cost is AES-CTR + GHASH, i.e. the same two halves.
//! - `memcpy`: glibc memcpy at a benign and at a page-aliased relative placement (see there).
//! - `header`: header encode (includes the BLAKE3 MAC), decode, verify_mac.
//! - `kms`: `LocalKms::generate_data_key` (new file) and `decrypt` (open of an existing file),
//!   and the whole open path (decode + unwrap + verify_mac + BlockCipher::new).
//!
//! At start-up the bench prints which hardware paths the aes and polyval crates will take on
//! this CPU (they detect them at run time with the cpufeatures crate).

use std::hint::black_box;

use aes_gcm_siv::aead::AeadInOut;
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use envelopefs::format::block::{BLOCK_OVERHEAD, BlockCipher, NONCE_LEN};
use envelopefs::format::context::EncryptionContext;
use envelopefs::format::header::{FileHeader, KeySlot, verify_mac};
use envelopefs::keys::local::LocalKms;
use envelopefs::keys::{Caller, KeyService};

const SIZES: [usize; 2] = [4096, 65536];

fn label(size: usize) -> String {
    format!("{}KiB", size / 1024)
}

/// Prints what the crates' run-time detection will pick (cpufeatures semantics: "vaes" and
/// "vpclmulqdq" are only reported when the OS has enabled the AVX-512 (zmm) register state).
fn report_cpu_features() {
    #[cfg(target_arch = "x86_64")]
    {
        let f = |name: &str, on: bool| format!("{name}={}", if on { "yes" } else { "no" });
        // SAFETY: xgetbv is only executed when CPUID reports OSXSAVE, which std checks for "xsave".
        let xcr0 = if std::arch::is_x86_feature_detected!("xsave") {
            unsafe { std::arch::x86_64::_xgetbv(0) }
        } else {
            0
        };
        let zmm_state = xcr0 & 0b1110_0110 == 0b1110_0110;
        eprintln!(
            "cpu (std detection): {} {} {} {} {} {} {}; XCR0={xcr0:#x} (zmm state {})",
            f("aes", std::arch::is_x86_feature_detected!("aes")),
            f(
                "pclmulqdq",
                std::arch::is_x86_feature_detected!("pclmulqdq")
            ),
            f("avx", std::arch::is_x86_feature_detected!("avx")),
            f("avx2", std::arch::is_x86_feature_detected!("avx2")),
            f("vaes", std::arch::is_x86_feature_detected!("vaes")),
            f(
                "vpclmulqdq",
                std::arch::is_x86_feature_detected!("vpclmulqdq")
            ),
            f("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            if zmm_state { "enabled" } else { "not enabled" },
        );
        // cpufeatures answers `true` without asking the CPU when the feature is enabled at
        // compile time (e.g. RUSTFLAGS="-C target-cpu=native"), so VAES is then used even
        // without the zmm state its run-time check insists on.
        let vaes256 = cfg!(target_feature = "vaes")
            || (std::arch::is_x86_feature_detected!("vaes") && zmm_state);
        let vaes512 = (cfg!(all(target_feature = "vaes", target_feature = "avx512f")))
            || (vaes256 && zmm_state && std::arch::is_x86_feature_detected!("avx512f"));
        eprintln!(
            "compile-time target features: aes={} vaes={} avx2={} avx512f={}",
            cfg!(target_feature = "aes"),
            cfg!(target_feature = "vaes"),
            cfg!(target_feature = "avx2"),
            cfg!(target_feature = "avx512f")
        );
        eprintln!(
            "aes 0.9 backend: {} (aes::hardware_accelerated() = {}); polyval 0.7 backend: {}",
            if vaes512 {
                "x86_vaes512"
            } else if vaes256 {
                "x86_vaes256"
            } else if aes::hardware_accelerated() {
                "x86_aes (AES-NI, 128-bit)"
            } else {
                "soft (fixslice)"
            },
            aes::hardware_accelerated(),
            if std::arch::is_x86_feature_detected!("avx")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
            {
                "intrinsics (AVX + PCLMULQDQ, 128-bit)"
            } else {
                "soft"
            },
        );
    }
}

/// A buffer whose usable slice starts at a chosen offset from a page boundary, so that copy
/// costs do not depend on where the allocator happened to put things (see `memcpy` below).
struct Placed {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Placed {
    fn new(len: usize, page_offset: usize, fill: u8) -> Self {
        let buf = vec![fill; len + 2 * 4096];
        let start = (4096 - (buf.as_ptr() as usize % 4096)) % 4096 + page_offset;
        Placed { buf, start, len }
    }
    fn get(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn block(c: &mut Criterion) {
    report_cpu_features();
    let cipher = BlockCipher::new(&[7u8; 32], [9u8; 16]);
    let mut g = c.benchmark_group("block");
    for size in SIZES {
        // Plaintext page-aligned, sealed block at +64: seal copies the plaintext to
        // sealed+12, i.e. (dst - src) mod 4096 = 76, a layout where memcpy runs at full speed.
        let pt = Placed::new(size, 0, 0x5a);
        let mut sealed = Placed::new(size + BLOCK_OVERHEAD, 64, 0);
        cipher.seal(3, false, [1u8; NONCE_LEN], pt.get(), sealed.get_mut());
        let sealed_ro = Placed {
            buf: sealed.buf.clone(),
            start: sealed.start,
            len: sealed.len,
        };
        let mut out = Placed::new(size, 0, 0);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal", label(size)), &size, |b, _| {
            b.iter(|| {
                cipher.seal(
                    black_box(3),
                    false,
                    [1u8; NONCE_LEN],
                    black_box(pt.get()),
                    sealed.get_mut(),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("open", label(size)), &size, |b, _| {
            b.iter(|| {
                cipher
                    .open(
                        black_box(3),
                        false,
                        black_box(sealed_ro.get()),
                        out.get_mut(),
                    )
                    .unwrap()
            })
        });
        // The seal path as the daemon runs it: a fresh random nonce per block (getrandom).
        g.bench_with_input(
            BenchmarkId::new("seal+getrandom_nonce", label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    let mut nonce = [0u8; NONCE_LEN];
                    getrandom::fill(&mut nonce).unwrap();
                    cipher.seal(3, false, nonce, black_box(pt.get()), sealed.get_mut())
                })
            },
        );
        // Same seal with plaintext and output at the same page offset: the internal copy then
        // runs at (dst - src) mod 4096 = 12, glibc's slow `rep movsb` case on this CPU.
        let mut sealed_aliased = Placed::new(size + BLOCK_OVERHEAD, 0, 0);
        g.bench_with_input(
            BenchmarkId::new("seal_page_aliased", label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    cipher.seal(
                        black_box(3),
                        false,
                        [1u8; NONCE_LEN],
                        black_box(pt.get()),
                        sealed_aliased.get_mut(),
                    )
                })
            },
        );
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("BlockCipher::new", |b| {
        b.iter(|| BlockCipher::new(black_box(&[7u8; 32]), [9u8; 16]))
    });
    g.finish();
}

/// memcpy (glibc, through `copy_from_slice`) at two relative placements. On AMD Zen 3 with
/// glibc 2.36, `rep movsb` (used from 2 KiB up) runs ~20x slower when 0 < (dst - src) mod 4096
/// < 32; `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=...` moves copies off that path.
fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    for size in SIZES {
        let src = Placed::new(size, 0, 0x5a);
        g.throughput(Throughput::Bytes(size as u64));
        for (name, dst_off) in [("dst-src=64", 64usize), ("dst-src=12", 12)] {
            let mut dst = Placed::new(size, dst_off, 0);
            g.bench_with_input(BenchmarkId::new(name, label(size)), &size, |b, _| {
                b.iter(|| dst.get_mut().copy_from_slice(black_box(src.get())))
            });
        }
    }
    g.finish();
}

fn ceiling(c: &mut Criterion) {
    use aes::cipher::{BlockCipherEncrypt, KeyInit as _};
    use polyval::universal_hash::UniversalHash;

    let aead = Aes256GcmSiv::new_from_slice(&[3u8; 32]).unwrap();
    let nonce = Nonce::from([1u8; 12]);
    let ad = [0u8; 25];
    let mut g = c.benchmark_group("ceiling");
    for size in SIZES {
        let mut buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("aes256gcmsiv_encrypt", label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    aead.encrypt_inout_detached(&nonce, &ad, buf.as_mut_slice().into())
                        .unwrap()
                })
            },
        );
        let mut ct = Placed::new(size, 0, 0x5a);
        let tag: Tag = aead
            .encrypt_inout_detached(&nonce, &ad, ct.get_mut().into())
            .unwrap();
        let mut work = Placed::new(size, 64, 0);
        // Includes restoring the ciphertext (a benignly placed memcpy, see `memcpy`).
        g.bench_with_input(
            BenchmarkId::new("aes256gcmsiv_decrypt", label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    work.get_mut().copy_from_slice(ct.get());
                    aead.decrypt_inout_detached(&nonce, &ad, work.get_mut().into(), &tag)
                        .unwrap()
                })
            },
        );
        // The two halves of GCM-SIV (and of GCM): AES-256 over every 16-byte block (CTR mode's
        // cost without the counter/XOR) and the POLYVAL universal hash.
        let aes = aes::Aes256::new(&[3u8; 32].into());
        let mut blocks = vec![aes::Block::default(); size / 16];
        g.bench_with_input(
            BenchmarkId::new("aes256_blocks", label(size)),
            &size,
            |b, _| b.iter(|| aes.encrypt_blocks(black_box(&mut blocks))),
        );
        let data = vec![0x5au8; size];
        g.bench_with_input(BenchmarkId::new("polyval", label(size)), &size, |b, _| {
            b.iter(|| {
                let mut p = polyval::Polyval::new(&[4u8; 16].into());
                p.update_padded(black_box(&data));
                p.finalize()
            })
        });
    }
    g.finish();
}

fn sample_header(kms: &LocalKms, caller: &Caller) -> (FileHeader, [u8; 32], EncryptionContext) {
    let file_id = [9u8; 16];
    let ctx = EncryptionContext::for_file("bench-volume", &file_id);
    let (dek, wrapped) = kms
        .generate_data_key("alias/default", &ctx, caller)
        .unwrap();
    let header = FileHeader {
        sealed_holes: false,
        block_size: 4096,
        file_id,
        seq: 1,
        slots: vec![envelopefs::store::file_header::cmk_slot(wrapped)],
    };
    (header, *dek.expose_secret(), ctx)
}

fn header(c: &mut Criterion) {
    let kms = LocalKms::in_memory_for_tests();
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let (hdr, dek, _) = sample_header(&kms, &caller);
    let bytes = hdr.encode(&dek).unwrap();
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| black_box(&hdr).encode(black_box(&dek)).unwrap())
    });
    g.bench_function("decode", |b| {
        b.iter(|| FileHeader::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("verify_mac", |b| {
        b.iter(|| verify_mac(black_box(&bytes), black_box(&dek)).unwrap())
    });
    g.finish();
}

fn kms(c: &mut Criterion) {
    let kms = LocalKms::in_memory_for_tests();
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let (hdr, dek, ctx) = sample_header(&kms, &caller);
    let bytes = hdr.encode(&dek).unwrap();
    let KeySlot::Cmk {
        key_id,
        version,
        blob,
    } = hdr.slots[0].clone()
    else {
        unreachable!()
    };
    let wrapped = envelopefs::keys::WrappedKey {
        key_id: envelopefs::keys::KeyId(key_id),
        version,
        blob,
    };
    let mut g = c.benchmark_group("kms");
    g.throughput(Throughput::Elements(1));
    g.bench_function("generate_data_key", |b| {
        b.iter(|| {
            kms.generate_data_key("alias/default", black_box(&ctx), &caller)
                .unwrap()
        })
    });
    g.bench_function("decrypt", |b| {
        b.iter(|| {
            kms.decrypt(black_box(&wrapped), black_box(&ctx), &caller)
                .unwrap()
        })
    });
    // Everything a cold open of an existing file costs in CPU (no I/O): parse the header copy,
    // unwrap the DEK, check the MAC with it, build the block cipher.
    g.bench_function(
        "open_path(decode+decrypt+verify_mac+BlockCipher::new)",
        |b| {
            b.iter(|| {
                let h = FileHeader::decode(black_box(&bytes)).unwrap();
                let KeySlot::Cmk {
                    key_id,
                    version,
                    blob,
                } = &h.slots[0]
                else {
                    unreachable!()
                };
                let w = envelopefs::keys::WrappedKey {
                    key_id: envelopefs::keys::KeyId(*key_id),
                    version: *version,
                    blob: blob.clone(),
                };
                let dek = kms.decrypt(&w, &ctx, &caller).unwrap();
                verify_mac(&bytes, dek.expose_secret()).unwrap();
                BlockCipher::new(dek.expose_secret(), h.file_id)
            })
        },
    );
    g.finish();
}

criterion_group!(benches, block, memcpy, ceiling, header, kms);
criterion_main!(benches);
