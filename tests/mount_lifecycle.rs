//! Mount tests of a volume's life: persistence across remounts (with and without the
//! writeback cache), the plaintext size derived from the backing size, refused mounts (a
//! second mount, wrong or malformed key files), and SIGTERM / SIGINT unmounting cleanly.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::sys::{get_xattr, set_xattr, ts, utimens};
use common::{Mounted, Rng, backing_len, tree_listing};

/// With `--no-writeback-cache` every time survives a remount exactly.
#[test]
fn persistence_across_remount() {
    persistence(false);
}

/// With the kernel's writeback cache (the default) the kernel keeps a written file's mtime
/// itself while the inode is cached, so the stored mtime of a file written without an explicit
/// utimens may differ from what stat showed by the time the kernel took to hand the data over
/// (docs/SEMANTICS.md). Everything else survives exactly.
#[test]
fn persistence_across_remount_with_writeback_cache() {
    persistence(true);
}

fn persistence(writeback: bool) {
    let Some(mut m) = Mounted::with_options(common::Options {
        writeback,
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(5);
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        3 * 4096,
        3 * 4096 + 1,
        100_000,
        1 << 20,
    ];
    let mut files = Vec::new();
    fs::create_dir_all(m.path("a/b")).unwrap();
    for (i, &s) in sizes.iter().enumerate() {
        let name = if i % 2 == 0 {
            format!("f{i}")
        } else {
            format!("a/b/f{i}")
        };
        let data = rng.bytes(s);
        fs::write(m.path(&name), &data).unwrap();
        files.push((name, data));
    }
    fs::set_permissions(m.path("f0"), fs::Permissions::from_mode(0o600)).unwrap();
    utimens(&m.path("f2"), ts(1_500_000_000, 1), ts(1_600_000_000, 2)).unwrap();
    std::os::unix::fs::symlink("a/b", m.path("link")).unwrap();
    set_xattr(&m.path("a"), "user.k", b"v", 0).unwrap();
    let listing = tree_listing(m.mnt());
    m.remount();
    for (name, data) in &files {
        assert_eq!(
            &fs::read(m.path(name)).unwrap(),
            data,
            "{name} after remount"
        );
    }
    let after = tree_listing(m.mnt());
    if writeback {
        assert_listings_match(&after, &listing, &["./f2"], 2.0);
    } else {
        assert_eq!(after, listing, "names, modes, sizes, times after remount");
    }
    assert_eq!(get_xattr(&m.path("a"), "user.k").unwrap(), b"v");
    m.remount();
    for (name, data) in &files {
        assert_eq!(
            &fs::read(m.path(name)).unwrap(),
            data,
            "{name} after a second remount"
        );
    }
}

/// Compares two [`tree_listing`]s: equal except that the mtime of a regular file not in
/// `exact` may differ by up to `slack` seconds.
fn assert_listings_match(got: &str, want: &str, exact: &[&str], slack: f64) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(
        g.len(),
        w.len(),
        "entries after remount:\n{got}\nbefore:\n{want}"
    );
    for (gl, wl) in g.iter().zip(&w) {
        let (gf, wf): (Vec<&str>, Vec<&str>) = (gl.split(' ').collect(), wl.split(' ').collect());
        let loose = gf[1] == "f" && !exact.contains(&gf[0]);
        let same_but_time = gf.len() == wf.len()
            && gf
                .iter()
                .zip(&wf)
                .enumerate()
                .all(|(i, (a, b))| i == 4 || a == b);
        let dt = (gf[4].parse::<f64>().unwrap() - wf[4].parse::<f64>().unwrap()).abs();
        assert!(
            same_but_time && (gf[4] == wf[4] || (loose && dt <= slack)),
            "after remount: {gl}\nbefore:       {wl}"
        );
    }
}

/// The plaintext size is derived from the backing length alone:
/// backing = 1024 + full blocks × (4096 + 28) + (tail + 28 if a partial block), and an empty
/// file with a header carries one empty sealed block (28 bytes, `sealed-holes`).
#[test]
fn plaintext_size_from_backing_size() {
    let Some(mut m) = Mounted::new() else { return };
    File::create(m.path("never_written")).unwrap();
    fs::write(m.path("one"), b"x").unwrap();
    fs::write(m.path("five_k"), vec![1u8; 5000]).unwrap();
    fs::write(m.path("three_blocks"), vec![2u8; 3 * 4096]).unwrap();
    fs::write(m.path("shrunk"), vec![3u8; 5000]).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("shrunk"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    fs::write(m.path("emptied"), b"was here").unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("emptied"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let cases = [
        ("never_written", 0u64, 1024u64 + 28), // the header is written at create
        ("one", 1, 1024 + 1 + 28),
        ("five_k", 5000, 1024 + 4124 + 904 + 28),
        ("three_blocks", 3 * 4096, 1024 + 3 * 4124),
        ("shrunk", 4096, 1024 + 4124),
        ("emptied", 0, 1024 + 28),
    ];
    for round in 0..2 {
        for (name, size, backing) in cases {
            assert_eq!(
                fs::metadata(m.path(name)).unwrap().len(),
                size,
                "{name}: size through the mount (round {round})"
            );
            assert_eq!(
                fs::metadata(m.backing_path(name)).unwrap().len(),
                backing,
                "{name}: backing length"
            );
            if size > 0 {
                assert_eq!(backing_len(size), backing);
            }
        }
        m.remount();
    }
}

/// A second mount of a mounted volume is refused (exit 6); a wrong or malformed key file is
/// refused (exit 3 / 1) without mounting anything.
#[test]
fn mount_refusals() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("f"), b"still here").unwrap();
    let mnt2 = m.root().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let backing = m.backing().to_owned();
    let try_mount = |key: &Path| {
        // Should fail fast; if it mounted instead, `timeout` stops it (SIGTERM unmounts).
        common::output(
            Command::new("timeout")
                .args(["-k", "5", "20"])
                .arg(common::BIN)
                .arg("mount")
                .arg(&backing)
                .arg(&mnt2)
                .arg("--keyfile")
                .arg(key)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null()),
        )
    };
    let out = try_mount(m.keyfile());
    assert_eq!(
        out.status.code(),
        Some(6),
        "second mount of a mounted volume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&mnt2));
    assert!(m.unmount().is_some_and(|s| s.success()));

    let wrong = m.scratch().join("wrong.key");
    fs::write(&wrong, common::random_bytes(32)).unwrap();
    let out = try_mount(&wrong);
    assert_eq!(
        out.status.code(),
        Some(3),
        "wrong key file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&mnt2));
    let short = m.scratch().join("short.key");
    fs::write(&short, common::random_bytes(31)).unwrap();
    let out = try_mount(&short);
    assert!(!out.status.success(), "a 31-byte key file must be refused");
    assert!(!common::is_mounted(&mnt2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains(&common::hex(m.key())),
        "error output holds the key"
    );

    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"still here");
}

/// SIGTERM and SIGINT unmount cleanly: exit 0, the mount is gone, the data is intact.
#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    let Some(mut m) = Mounted::new() else { return };
    let data = Rng::new(15).bytes(50_000);
    fs::write(m.path("f"), &data).unwrap();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let status = m.signal_and_wait(sig);
        assert!(
            status.is_some_and(|s| s.success()),
            "signal {sig}: daemon exit {status:?}\n{}",
            m.diagnostics()
        );
        assert!(!common::is_mounted(m.mnt()), "signal {sig}: still mounted");
        m.mount();
        assert_eq!(fs::read(m.path("f")).unwrap(), data);
    }
    assert!(
        m.log_text().contains("signal received"),
        "the log says why it stopped"
    );
}

/// `envelopefs unmount` returns once the daemon has let go of the volume: right after it, an
/// offline command gets the volume lock (before, a remount straight after an unmount could
/// still find the old daemon holding it, exit 6).
#[test]
fn unmount_returns_once_the_volume_is_free() {
    let Some(m) = Mounted::init_only(common::Options::default()) else {
        return;
    };
    let mnt = m.mnt().to_owned();
    for round in 0..5 {
        let out = common::output(
            common::tool(common::BIN)
                .args(["mount", "--background"])
                .arg(m.backing())
                .arg(&mnt)
                .arg("--keyfile")
                .arg(m.keyfile()),
        );
        assert!(out.status.success(), "round {round}: {out:?}");
        fs::write(mnt.join(format!("f{round}")), b"x").unwrap();
        let out = common::output(common::tool(common::BIN).arg("unmount").arg(&mnt));
        assert!(out.status.success(), "round {round}: {out:?}");
        // An offline re-encryption needs the volume lock at once.
        let (ok, text) = m.cli(&["reencrypt"], &["--json"]);
        assert!(ok, "round {round}: {text}");
        assert!(
            text.contains("\"via\": \"offline\""),
            "round {round}: {text}"
        );
    }
}
