//! File opens per second through the filesystem core with the CMK in a SoftHSM2 token (every
//! open unwraps the file's data key by C_Decrypt(CKM_AES_GCM) inside the token) next to the
//! embedded custody (AES-256-GCM-SIV in process), and the key service's wrap and unwrap
//! alone. No audit trail, no FUSE. Interleaved rounds, medians; run with
//! `cargo bench --bench hsm_opens` (skips, saying so, without SoftHSM2).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envelopefs::fs::EncFs;
use envelopefs::keys::local::LocalKms;
use envelopefs::keys::{Caller, KeyService};
use envelopefs::store::volume;
use envelopefs_format::context::EncryptionContext;
use envelopefs_hsm::softhsm::{TestToken, USER_PIN};

const FILES: usize = 1000;
const ROUND: Duration = Duration::from_millis(1500);

fn setup(kms: LocalKms) -> (tempfile::TempDir, EncFs, Vec<u64>, Arc<LocalKms>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vol");
    volume::prepare(&root).unwrap();
    let kms = Arc::new(kms);
    volume::create(
        &root,
        kms.as_ref(),
        "alias/default",
        4096,
        "keystore.json".into(),
        0,
        true,
    )
    .unwrap();
    let c = Caller::current();
    let fs = EncFs::new(volume::open(&root).unwrap(), kms.clone(), &c).unwrap();
    let mut inos = Vec::new();
    for i in 0..FILES {
        let (attr, fh) = fs
            .create(1, OsStr::new(&format!("f{i}")), 0o644, libc::O_RDWR, &c)
            .unwrap();
        fs.write(fh, 0, b"some contents", &c).unwrap();
        fs.release(fh).unwrap();
        inos.push(attr.ino);
    }
    (tmp, fs, inos, kms)
}

fn opens_per_sec(fs: &EncFs, inos: &[u64]) -> f64 {
    let c = Caller::current();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND {
        let fh = fs
            .open(inos[n as usize % inos.len()], libc::O_RDONLY, &c)
            .unwrap();
        assert_eq!(fs.read(fh, 0, 4).unwrap(), b"some");
        fs.release(fh).unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Microseconds per GenerateDataKey (wrap) and per Decrypt (unwrap) of the key service.
fn wrap_unwrap_us(kms: &LocalKms) -> (f64, f64) {
    let c = Caller::current();
    let ctx = EncryptionContext::for_file("bench", &[1; 16]);
    let (mut n, start) = (0u32, Instant::now());
    let mut last = None;
    while start.elapsed() < ROUND / 2 {
        last = Some(kms.generate_data_key("alias/default", &ctx, &c).unwrap().1);
        n += 1;
    }
    let wrap = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let w = last.unwrap();
    let (mut n, start) = (0u32, Instant::now());
    while start.elapsed() < ROUND / 2 {
        kms.decrypt(&w, &ctx, &c).unwrap();
        n += 1;
    }
    (wrap, start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some(token) = TestToken::new("bench") else {
        return;
    };
    token.use_in_this_process();
    let pin = envelopefs_hsm::Pin::from_bytes(zeroize::Zeroizing::new(USER_PIN.into())).unwrap();
    let t = Arc::new(envelopefs_hsm::Token::open(&token.module, "bench", pin).unwrap());
    let (_a, soft, inos_s, soft_kms) = setup(LocalKms::in_memory_for_tests());
    let (_b, hsm, inos_h, hsm_kms) = setup(LocalKms::in_memory_with_custody_for_tests(t).unwrap());
    let (mut s, mut h, mut sw, mut hw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        s.push(opens_per_sec(&soft, &inos_s));
        h.push(opens_per_sec(&hsm, &inos_h));
        sw.push(wrap_unwrap_us(&soft_kms));
        hw.push(wrap_unwrap_us(&hsm_kms));
    }
    let (s, h) = (median(s), median(h));
    let sw = (
        median(sw.iter().map(|x| x.0).collect()),
        median(sw.iter().map(|x| x.1).collect()),
    );
    let hw = (
        median(hw.iter().map(|x| x.0).collect()),
        median(hw.iter().map(|x| x.1).collect()),
    );
    println!(
        "| custody | opens/s (open + 4-byte read + release, core without FUSE) | wrap µs | unwrap µs |"
    );
    println!("|---|---|---|---|");
    println!(
        "| embedded (AES-256-GCM-SIV in process) | {s:.0} | {:.1} | {:.1} |",
        sw.0, sw.1
    );
    println!(
        "| SoftHSM2 token (C_Encrypt/C_Decrypt CKM_AES_GCM) | {h:.0} | {:.1} | {:.1} |",
        hw.0, hw.1
    );
    println!(
        "token / embedded opens = {:.3}; the token adds {:.1} µs per open",
        h / s,
        1e6 / h - 1e6 / s
    );
}
