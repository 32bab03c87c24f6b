//! `envelopefs fsck`: nothing on a clean volume; every kind of damage the tamper tests make
//! is found and named (tests/mount_tamper.rs, tests/trust.rs, tests/mount_names.rs); `--repair`
//! fixes exactly what is safe, after which the volume checks clean.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::process::Command;

use common::sys::{flip_byte, get_xattr, list_xattr, set_xattr};
use common::{BIN, BLOCK, Mounted, Rng, block_offset, output};

/// Runs `envelopefs fsck BACKING EXTRA... --json --keyfile KF`: (exit code, report).
fn fsck(m: &Mounted, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = output(
        Command::new(BIN)
            .arg("fsck")
            .arg(m.backing())
            .args(extra)
            .arg("--json")
            .arg("--keyfile")
            .arg(m.keyfile()),
    );
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}), exit {code}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// (kind, path) of every finding.
fn kinds(v: &serde_json::Value) -> Vec<(String, String, bool)> {
    v["damage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["path"].as_str().unwrap().to_owned(),
                d["repaired"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A small tree with every kind of entry: sizes around block edges, an empty file, a long
/// name, a symlink, a hard link, xattrs on a file and a directory, nested directories.
fn populate(m: &Mounted) {
    let mut rng = Rng::new(16);
    fs::create_dir_all(m.path("d/e")).unwrap();
    for (name, size) in [
        ("one", 1usize),
        ("five", 5000),
        ("full", 3 * BLOCK as usize),
        ("partial", 2 * BLOCK as usize + 300),
        ("d/e/deep", 9000),
        ("victim", 3 * BLOCK as usize),
        ("copy_a", 5000),
        ("both", 5000),
        ("cut", 5000),
        ("zero_last", 2 * BLOCK as usize + 300),
    ] {
        fs::write(m.path(name), rng.bytes(size)).unwrap();
    }
    fs::write(m.path("empty"), b"").unwrap();
    fs::create_dir(m.path("g")).unwrap();
    fs::write(m.path("g/x"), b"x").unwrap();
    fs::write(m.path(&"L".repeat(200)), b"long name").unwrap();
    std::os::unix::fs::symlink("d/e/deep", m.path("link")).unwrap();
    fs::write(m.path("linked"), b"two names").unwrap();
    fs::hard_link(m.path("linked"), m.path("d/linked-again")).unwrap();
    set_xattr(&m.path("one"), "user.note", b"hello", 0).unwrap();
    set_xattr(&m.path("d"), "user.dirnote", b"dir", 0).unwrap();
}

#[test]
fn a_clean_volume_checks_clean_and_every_damage_is_found_and_named() {
    let Some(mut m) = Mounted::new() else { return };
    populate(&m);
    let names = !m.plaintext_names();
    assert!(m.unmount().is_some_and(|s| s.success()));
    let (code, v) = fsck(&m, &[]);
    assert_eq!(kinds(&v), vec![], "clean volume:\n{v:#}");
    assert_eq!(code, 0, "{v:#}");
    assert!(v["files"].as_u64().unwrap() >= 14, "{v:#}");
    assert!(v["xattrs"].as_u64().unwrap() >= 2, "{v:#}");
    assert!(v["audit_records"].as_u64().unwrap() >= 1, "{v:#}");

    // While mounted: refused, could not check.
    m.mount();
    let out = output(
        Command::new(BIN)
            .arg("fsck")
            .arg(m.backing())
            .arg("--keyfile")
            .arg(m.keyfile()),
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "mounted volume: could not check"
    );
    assert!(m.unmount().is_some_and(|s| s.success()));

    let bp = |n: &str| m.backing_path(n);
    let rel = |n: &str| {
        bp(n)
            .strip_prefix(m.backing())
            .unwrap()
            .display()
            .to_string()
    };
    // Contents and headers (tests/mount_tamper.rs, tests/trust.rs).
    flip_byte(&bp("five"), block_offset(1) + 40); // a block
    flip_byte(&bp("copy_a"), 100); // header copy A only
    flip_byte(&bp("both"), 500);
    flip_byte(&bp("both"), 512 + 500); // both copies
    let cut = OpenOptions::new().write(true).open(bp("cut")).unwrap();
    cut.set_len(1024).unwrap(); // cut to its header
    drop(cut);
    OpenOptions::new()
        .write(true)
        .open(bp("zero_last"))
        .unwrap()
        .write_all_at(&vec![0u8; 300 + 28], block_offset(2))
        .unwrap();
    let mut hdr = vec![0u8; 1024];
    fs::File::open(bp("full"))
        .unwrap()
        .read_exact_at(&mut hdr, 0)
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(bp("victim"))
        .unwrap()
        .write_all_at(&hdr, 0)
        .unwrap(); // another file's header region
    // An xattr value changed in BACKING.
    let stored = list_xattr(&bp("one"))
        .unwrap()
        .into_iter()
        .find(|n| n.starts_with("user."))
        .unwrap();
    let mut val = get_xattr(&bp("one"), &stored).unwrap();
    val[20] ^= 1;
    set_xattr(&bp("one"), &stored, &val, 0).unwrap();
    // A temp file of a crashed atomic replace.
    fs::write(m.backing().join(".envelopefs.json.tmp999999"), b"{").unwrap();
    // The audit trail edited.
    let audit = m.backing().join("keystore.json.audit/audit-000001.jsonl");
    let text = fs::read_to_string(&audit).unwrap();
    fs::write(&audit, text.replacen("\"uid\":", "\"uid\":1", 1)).unwrap();

    let mut expect = vec![
        ("block", rel("five")),
        ("header-copy", rel("copy_a")),
        ("header", rel("both")),
        ("length", rel("cut")),
        ("block", rel("zero_last")),
        // Its header verifies (it is another file's), its blocks do not.
        ("block", rel("victim")),
        ("xattr-value", rel("one")),
        ("temp-file", ".envelopefs.json.tmp999999".to_owned()),
        ("audit", "keystore.json.audit".to_owned()),
    ];
    if names {
        // Names (tests/mount_names.rs): an entry renamed by hand, one moved to another
        // directory, a directory's id removed, a link target edited, an orphan sidecar.
        let two = bp("d/e/deep");
        let mut t = two.file_name().unwrap().as_bytes().to_vec();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        let renamed = two.with_file_name(OsStr::from_bytes(&t));
        fs::rename(&two, &renamed).unwrap();
        let partial = bp("partial");
        let moved = bp("d").join(partial.file_name().unwrap());
        fs::rename(&partial, &moved).unwrap();
        let link = bp("link");
        let mut target = fs::read_link(&link).unwrap().into_os_string().into_vec();
        target[5] = if target[5] == b'A' { b'B' } else { b'A' };
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &link).unwrap();
        std::os::unix::fs::symlink("whatever", m.data().join(".name.orphanhash")).unwrap();
        fs::remove_file(bp("g").join(".dirid")).unwrap();
        let strip =
            |p: &std::path::Path| p.strip_prefix(m.backing()).unwrap().display().to_string();
        expect.extend([
            ("name", strip(&renamed)),
            ("name", strip(&moved)),
            ("symlink-target", rel("link")),
            ("orphan-sidecar", "data/.name.orphanhash".to_owned()),
            ("dirid", format!("{}/.dirid", rel("g"))),
        ]);
    }
    let (code, v) = fsck(&m, &[]);
    let mut found: Vec<(String, String)> = kinds(&v).into_iter().map(|(k, p, _)| (k, p)).collect();
    let mut want: Vec<(String, String)> = expect
        .iter()
        .map(|(k, p)| ((*k).to_owned(), p.clone()))
        .collect();
    found.sort();
    want.sort();
    assert_eq!(found, want, "{v:#}");
    assert_eq!(code, 7, "damage found");

    // --repair fixes the header copy, the temp file and the orphan sidecar, nothing else.
    let (code, v) = fsck(&m, &["--repair"]);
    assert_eq!(code, 7, "damage remains");
    let repaired: Vec<String> = kinds(&v)
        .into_iter()
        .filter(|(_, _, r)| *r)
        .map(|(k, _, _)| k)
        .collect();
    let mut want_fixed = vec!["header-copy", "temp-file"];
    if names {
        want_fixed.push("orphan-sidecar");
    }
    let mut repaired_sorted = repaired.clone();
    repaired_sorted.sort();
    want_fixed.sort();
    assert_eq!(repaired_sorted, want_fixed, "{v:#}");
    let (_, v) = fsck(&m, &[]);
    let left: Vec<String> = kinds(&v).into_iter().map(|(k, _, _)| k).collect();
    assert!(
        !left.iter().any(|k| want_fixed.contains(&k.as_str())),
        "repaired damage is gone: {v:#}"
    );
    // The repaired file reads back through a mount.
    m.mount();
    assert_eq!(fs::read(m.path("copy_a")).unwrap().len(), 5000);
}
