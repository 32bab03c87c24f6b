//! Key management through a live mount (issue 3's "done when"): rotation keeps old files
//! readable, rewrap of a mounted volume moves every header without changing any content,
//! disable cuts access at once and enable restores it, a key policy denies a user until a
//! grant lets them in and a revoke shuts them out again; a keystore edited under a live mount,
//! and `mount --background`'s passphrase. Administrators and refusals are in keys_admin.rs,
//! audit records through a mount in keys_audit_live.rs.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use common::{BIN, Mounted, Rng, ok, tool};

/// (key id, version) → file count, from `envelopefs scan --json` (no key needed).
fn versions(m: &Mounted) -> serde_json::Value {
    let out = common::output(tool(BIN).args(["scan", "--json"]).arg(m.backing()));
    assert!(
        out.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("scan --json prints JSON")
}

/// version → file count over all keys, from scan's `by_key: {key: {version: count}}`.
fn version_counts(scan: &serde_json::Value) -> std::collections::BTreeMap<u64, u64> {
    let mut out = std::collections::BTreeMap::new();
    let by_key = scan["by_key"]
        .as_object()
        .unwrap_or_else(|| panic!("scan output lacks by_key: {scan}"));
    for versions in by_key.values() {
        for (v, n) in versions.as_object().expect("versions object") {
            *out.entry(v.parse::<u64>().expect("numeric version"))
                .or_default() += n.as_u64().expect("count");
        }
    }
    out
}

fn hash_all(m: &Mounted, names: &[String]) -> Vec<[u8; 32]> {
    names
        .iter()
        .map(|n| *blake3::hash(&fs::read(m.path(n)).unwrap()).as_bytes())
        .collect()
}

#[test]
fn rotation_keeps_old_files_and_rewrap_of_a_live_mount_moves_every_header() {
    let Some(m) = Mounted::new() else { return };
    let mut rng = Rng::new(31);
    let mut names = Vec::new();
    for i in 0..40 {
        let name = format!("f{i:02}");
        let len = [0usize, 1, 4095, 4096, 4097, 70_000][i % 6] + i;
        fs::write(m.path(&name), rng.bytes(len)).unwrap();
        names.push(name);
    }
    let before = hash_all(&m, &names);
    assert_eq!(version_counts(&versions(&m)).get(&1), Some(&40));

    ok(&m, &["key", "rotate"], &["alias/default"]);
    assert_eq!(
        hash_all(&m, &names),
        before,
        "files written before the rotation still read"
    );
    fs::write(m.path("new"), b"after rotation").unwrap();
    let counts = version_counts(&versions(&m));
    assert_eq!(
        (counts.get(&1), counts.get(&2)),
        (Some(&40), Some(&1)),
        "new files use version 2"
    );

    // Keep one file open across the rewrap: the daemon must go on reading and writing it.
    let mut open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f05"))
        .unwrap();
    let text = ok(&m, &["rewrap"], &[]);
    assert!(text.contains("re-wrapped 40"), "{text}");
    std::io::Write::write_all(&mut open, b"still writable").unwrap();
    drop(open);
    let counts = version_counts(&versions(&m));
    assert_eq!(
        (counts.get(&1), counts.get(&2)),
        (None, Some(&41)),
        "every header moved to version 2"
    );
    let mut expect = before.clone();
    assert!(
        fs::read(m.path("f05"))
            .unwrap()
            .starts_with(b"still writable")
    );
    expect[5] = *blake3::hash(&fs::read(m.path("f05")).unwrap()).as_bytes();
    assert_eq!(hash_all(&m, &names), expect, "contents unchanged by rewrap");
    assert_eq!(versions(&m)["volume_key"][1], 2, "the volume key moved too");
    let again = ok(&m, &["rewrap"], &[]);
    assert!(
        again.contains("re-wrapped 0"),
        "rewrap is idempotent: {again}"
    );
    assert!(
        m.log_text().lines().all(|l| !l.contains("WARN")),
        "no warnings: {}",
        m.log_text()
    );
}

#[test]
fn disable_cuts_access_at_once_and_enable_restores_it() {
    let Some(m) = Mounted::new() else { return };
    fs::write(m.path("a"), b"secret contents").unwrap();
    ok(&m, &["key", "disable"], &["alias/default"]);
    let e = fs::read(m.path("a")).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "read under a disabled key: {e}"
    );
    let e = fs::write(m.path("b"), b"x").unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "create under a disabled key: {e}"
    );
    assert!(
        !m.path("b").exists(),
        "a refused create leaves nothing behind"
    );
    let log = m.log_text();
    assert!(
        log.contains("disabled") || log.contains("Disabled"),
        "the log says why: {log}"
    );
    ok(&m, &["key", "enable"], &["alias/default"]);
    assert_eq!(fs::read(m.path("a")).unwrap(), b"secret contents");
    fs::write(m.path("b"), b"x").unwrap();
}

#[test]
fn policy_denies_a_user_until_a_grant_lets_them_in_and_revoke_shuts_them_out() {
    let Some(m) = Mounted::for_other_users(common::Options::default()) else {
        return;
    };
    fs::write(m.path("shared"), b"for everyone by mode").unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |script: &str| common::as_user_1000(m.mnt(), script);
    assert!(
        as_user("cat shared").status.success(),
        "the default policy lets local users use the key"
    );

    common::put_key_policy(&m, "alias/default", common::ADMIN_ONLY_POLICY);
    let out = as_user("cat shared");
    assert!(
        !out.status.success(),
        "denied by policy although mode 0644 allows"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "EACCES: {out:?}"
    );
    assert_eq!(
        fs::read(m.path("shared")).unwrap(),
        b"for everyone by mode",
        "the admin still reads"
    );

    let text = ok(
        &m,
        &["key", "grant", "create"],
        &[
            "alias/default",
            "--grantee",
            "uid:1000",
            "--operations",
            "Decrypt",
            "--json",
        ],
    );
    let grant: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("grant --json: {e}: {text}"));
    let grant_id = grant["grant_id"]
        .as_str()
        .or_else(|| grant["GrantId"].as_str())
        .unwrap_or_else(|| panic!("no grant id in {grant}"))
        .to_owned();
    let out = as_user("cat shared");
    assert!(
        out.status.success(),
        "the grant lets uid 1000 in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"for everyone by mode");

    ok(
        &m,
        &["key", "grant", "revoke"],
        &["alias/default", &grant_id],
    );
    assert!(
        !as_user("cat shared").status.success(),
        "revoked: denied again"
    );

    // A statement naming a group matches through the caller's supplementary groups (read
    // from /proc only for keys whose policy or grants name a group).
    common::put_key_policy(
        &m,
        "alias/default",
        r#"{"Version":"2012-10-17","Statement":[{"Sid":"admin","Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"},{"Sid":"group 4242","Effect":"Allow","Principal":{"Group":"4242"},"Action":"kms:Decrypt"}]}"#,
    );
    let in_group = common::output(
        tool("setpriv")
            .args(["--reuid", "1000", "--regid", "1000", "--groups", "4242"])
            .args(["cat", "shared"])
            .current_dir(m.mnt()),
    );
    assert!(
        in_group.status.success(),
        "uid 1000 with supplementary group 4242 is allowed: {}",
        String::from_utf8_lossy(&in_group.stderr)
    );
    assert!(
        !as_user("cat shared").status.success(),
        "uid 1000 without group 4242 is denied"
    );
}

/// Issue 11 item 8f: a live mount whose keystore.json is edited by hand (the MAC left as it
/// was) logs one error naming the file, however many operations follow, and keeps serving
/// with the last verified keystore.
#[test]
fn live_mount_logs_a_keystore_failing_its_mac_once() {
    let Some(m) = Mounted::new() else { return };
    fs::write(m.path("a"), b"before").unwrap();
    let ks = m.backing().join("keystore.json");
    let good = fs::read_to_string(&ks).unwrap();
    let bad = good.replace("Enabled", "Disabled");
    assert_ne!(bad, good);
    fs::write(&ks, &bad).unwrap();
    for i in 0..5 {
        fs::write(m.path(&format!("n{i}")), b"after").unwrap();
        assert_eq!(fs::read(m.path(&format!("n{i}"))).unwrap(), b"after");
    }
    assert_eq!(fs::read(m.path("a")).unwrap(), b"before");
    let needle = ks.display().to_string();
    let lines = m.log_lines_with(&["ERROR", &needle, "still using the keystore"]);
    assert_eq!(lines, 1, "{}", m.log_text());
}

/// Unmounts (lazily) in Drop, so a failing test leaves no mount behind.
struct Unmount<'a>(&'a std::path::Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if common::is_mounted(self.0) {
            let _ = common::output(tool(BIN).arg("unmount").arg(self.0));
        }
        if common::is_mounted(self.0) {
            common::abort_mount(self.0);
            let _ = common::output(tool("umount").arg("-l").arg(self.0));
        }
    }
}

/// docs/FORMAT.md §6.1: `mount --background` hands its daemon the very passphrase bytes the
/// foreground would use, whatever they are: $ENVELOPEFS_PASSPHRASE = "two\nlines\r\r" is the
/// passphrase "two\nlines\r" (a line feed, and a CR at the end). A wrong one fails with the
/// daemon's own exit code (3) and its log.
#[test]
fn background_mount_uses_the_same_passphrase_bytes() {
    if !common::fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&mnt).unwrap();
    let run = |args: &[&std::ffi::OsStr], pass: &str| {
        common::output(
            tool(BIN)
                .args(args)
                .env("ENVELOPEFS_PASSPHRASE", pass)
                .env_remove("RUST_LOG"),
        )
    };
    let pass = "two\nlines\r\r";
    let out = run(&["init".as_ref(), backing.as_os_str()], pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.path().join("daemon.log");
    let mount = |pass: &str| {
        run(
            &[
                "mount".as_ref(),
                "--background".as_ref(),
                backing.as_os_str(),
                mnt.as_os_str(),
                "--log-file".as_ref(),
                log.as_os_str(),
            ],
            pass,
        )
    };
    let out = mount(pass);
    let _guard = Unmount(&mnt);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Neither the daemon's command line nor its environment holds the passphrase.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = stdout
        .split("daemon pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no daemon pid in {stdout:?}"));
    for what in ["cmdline", "environ"] {
        let bytes = fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"two\nlines"),
            "the passphrase is in the daemon's {what}"
        );
        assert!(!String::from_utf8_lossy(&bytes).contains("ENVELOPEFS_PASSPHRASE"));
    }
    fs::write(mnt.join("f"), b"through the background daemon").unwrap();
    assert_eq!(
        fs::read(mnt.join("f")).unwrap(),
        b"through the background daemon"
    );
    let out = common::output(tool(BIN).arg("unmount").arg(&mnt));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mount("two\nlines");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert!(!common::is_mounted(&mnt));
}
