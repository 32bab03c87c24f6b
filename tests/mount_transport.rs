//! The two request transports: `--transport uring` serves requests on one io_uring per CPU,
//! each with its own thread, beside a classic reader; `--transport classic` is fuser's
//! read/write loop. The rest of the suite runs on both (scripts/test.sh runs it once with the
//! default `auto`, which is uring where the kernel allows it, and once with
//! `ENVELOPEFS_TRANSPORT=classic`); these tests check that each transport is what serves.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::mounted::{Mounted, Options};

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether FUSE over io_uring can be used here (root and enable_uring=Y). Without it the
/// uring tests skip, saying so, unless `ENVELOPEFS_REQUIRE_URING=1` (set by .ci/run where the
/// kernel has the switch), which makes them fail.
fn uring_available() -> bool {
    let on = fs::read_to_string(ENABLE_URING).is_ok_and(|s| s.trim() == "Y");
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if on && root {
        return true;
    }
    let why = if !root {
        "the io_uring transport needs root".to_string()
    } else {
        format!("{ENABLE_URING} is not Y (as root: echo Y > {ENABLE_URING})")
    };
    if std::env::var("ENVELOPEFS_REQUIRE_URING").as_deref() == Ok("1") {
        panic!("ENVELOPEFS_REQUIRE_URING=1 but {why}");
    }
    eprintln!("skipping: {why}");
    false
}

fn with_transport(t: &str) -> Options {
    Options {
        extra_args: vec!["--transport".into(), t.into()],
        ..Options::default()
    }
}

/// Per thread of the daemon: (name, utime + stime in clock ticks).
fn threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let t = t.expect("task").path();
        let name = fs::read_to_string(t.join("comm")).unwrap_or_default();
        let stat = fs::read_to_string(t.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((name.trim().to_string(), ticks(14) + ticks(15)));
    }
    out
}

/// A tree of small files written, listed, read back and removed through the mount.
fn workload(m: &Mounted) {
    let dir = m.path("tree");
    fs::create_dir(&dir).unwrap();
    for i in 0..600 {
        fs::write(
            dir.join(format!("f{i}")),
            format!("file {i} ").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    // Forget what the kernel knows, so lookups and reads reach the daemon again.
    fs::write("/proc/sys/vm/drop_caches", "3").ok();
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let i: usize = e.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(
            fs::read_to_string(e.path()).unwrap(),
            format!("file {i} ").repeat(i % 50 + 1)
        );
        assert_eq!(
            e.metadata().unwrap().size() as usize,
            (i % 50 + 1) * format!("file {i} ").len()
        );
        n += 1;
    }
    assert_eq!(n, 600);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn uring_transport_serves_requests_on_per_cpu_rings() {
    if !uring_available() {
        return;
    }
    let Some(m) = Mounted::with_options(with_transport("uring")) else {
        return;
    };
    workload(&m);
    let log = m.log_text();
    assert!(
        log.contains("io_uring transport") && log.contains("FUSE over io_uring:"),
        "the daemon did not say it serves on io_uring:\n{log}"
    );
    let pid = m.pid().expect("daemon pid");
    let t = threads(pid);
    let rings: Vec<_> = t
        .iter()
        .filter(|(n, _)| n.starts_with("fuse-ring-"))
        .collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        rings.len() >= cpus,
        "one ring thread per CPU expected: {t:?}"
    );
    assert!(
        rings.iter().map(|(_, ticks)| ticks).sum::<u64>() > 0,
        "the ring threads did no work, so requests went elsewhere: {t:?}"
    );
    assert!(!t.iter().any(|(n, _)| n.starts_with("fuser")), "{t:?}");
}

#[test]
fn classic_transport_has_no_rings() {
    let Some(m) = Mounted::with_options(with_transport("classic")) else {
        return;
    };
    workload(&m);
    assert!(
        m.log_text().contains("(classic transport)"),
        "{}",
        m.log_text()
    );
    let t = threads(m.pid().expect("daemon pid"));
    assert!(!t.iter().any(|(n, _)| n.starts_with("fuse-ring-")), "{t:?}");
}

/// Files written on the rings are there after a remount, cache drops (which make the kernel
/// send FORGET / BATCH_FORGET on /dev/fuse, beside the rings) are served, and the daemon exits
/// cleanly (exit status 0) at unmount, with every ring thread ended.
#[test]
fn uring_transport_survives_a_remount_and_exits_cleanly() {
    if !uring_available() {
        return;
    }
    let Some(mut m) = Mounted::with_options(with_transport("uring")) else {
        return;
    };
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..300 {
        fs::write(m.path(&format!("d/{i}")), [i as u8; 10]).unwrap();
    }
    m.remount();
    for i in 0..300 {
        assert_eq!(fs::read(m.path(&format!("d/{i}"))).unwrap(), [i as u8; 10]);
    }
    fs::write("/proc/sys/vm/drop_caches", "2").ok();
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 300);
    let status = m.unmount().expect("daemon exit status");
    assert!(status.success(), "daemon exit: {status}\n{}", m.log_text());
}
