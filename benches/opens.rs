//! File opens per second through the filesystem core: without the audit trail, with records
//! written by the caller, and with the writer thread the mounted daemon uses (every open
//! unwraps the file's data key through the key service, which audits it).
//! Interleaved rounds, medians; run with `cargo bench --bench opens`.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envelopefs::fs::EncFs;
use envelopefs::keys::Caller;
use envelopefs::keys::audit::AuditLog;
use envelopefs::keys::local::LocalKms;
use envelopefs::store::volume;

const FILES: usize = 1000;
const ROUND: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, PartialEq)]
enum Audit {
    Off,
    Inline,
    Background,
}

fn setup(audit: Audit) -> (tempfile::TempDir, EncFs, Vec<u64>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vol");
    volume::prepare(&root).unwrap();
    let mut kms = LocalKms::in_memory_for_tests();
    if audit != Audit::Off {
        let log = AuditLog::open(&tmp.path().join("audit"), [7u8; 32], 0).unwrap();
        if audit == Audit::Background {
            log.write_in_background().unwrap();
        }
        kms = kms.with_audit_log(log);
    }
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
    let fs = EncFs::new(volume::open(&root).unwrap(), kms, &c).unwrap();
    let mut inos = Vec::new();
    for i in 0..FILES {
        let (attr, fh) = fs
            .create(1, OsStr::new(&format!("f{i}")), 0o644, libc::O_RDWR, &c)
            .unwrap();
        fs.write(fh, 0, b"some contents", &c).unwrap();
        fs.release(fh).unwrap();
        inos.push(attr.ino);
    }
    (tmp, fs, inos)
}

fn opens_per_sec(fs: &EncFs, inos: &[u64]) -> f64 {
    let c = Caller::current();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND {
        let ino = inos[n as usize % inos.len()];
        let fh = fs.open(ino, libc::O_RDONLY, &c).unwrap();
        assert_eq!(fs.read(fh, 0, 4).unwrap(), b"some");
        fs.release(fh).unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (_a, plain, inos_p) = setup(Audit::Off);
    let (_b, inline, inos_i) = setup(Audit::Inline);
    let (_c, background, inos_b) = setup(Audit::Background);
    let (mut p, mut i, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        p.push(opens_per_sec(&plain, &inos_p));
        i.push(opens_per_sec(&inline, &inos_i));
        b.push(opens_per_sec(&background, &inos_b));
    }
    let (p, i, b) = (median(p), median(i), median(b));
    println!("| audit trail | opens/s (open + 4-byte read + release, core without FUSE) |");
    println!("|---|---|");
    println!("| off | {p:.0} |");
    println!("| records written by the caller | {i:.0} |");
    println!("| records written by the writer thread (the daemon's mode) | {b:.0} |");
    println!(
        "inline / off = {:.3}, writer thread / off = {:.3}",
        i / p,
        b / p
    );
}
