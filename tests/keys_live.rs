//! Key management through a live mount (issue 3's "done when"): rotation keeps old files
//! readable, rewrap of a mounted volume moves every header without changing any content,
//! disable cuts access at once and enable restores it, a key policy denies a user until a
//! grant lets them in and a revoke shuts them out again, and an edited audit record makes
//! `audit verify` fail naming it.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use common::{BIN, Mounted, Rng, tool};

fn ok(m: &Mounted, args: &[&str], rest: &[&str]) -> String {
    let (success, text) = m.cli(args, rest);
    assert!(
        success,
        "envelopefs {args:?} {rest:?} failed:\n{text}\n{}",
        m.diagnostics()
    );
    text
}

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

    let policy = m.scratch().join("policy.json");
    fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Sid":"admin only","Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"}]}"#,
    )
    .unwrap();
    ok(
        &m,
        &["key", "policy", "put"],
        &["alias/default", "--file", policy.to_str().unwrap()],
    );
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
    fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Sid":"admin","Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"},{"Sid":"group 4242","Effect":"Allow","Principal":{"Group":"4242"},"Action":"kms:Decrypt"}]}"#,
    )
    .unwrap();
    ok(
        &m,
        &["key", "policy", "put"],
        &["alias/default", "--file", policy.to_str().unwrap()],
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

#[test]
fn edited_audit_record_fails_verify_naming_it() {
    let Some(mut m) = Mounted::new() else { return };
    for i in 0..5 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
        fs::read(m.path(&format!("f{i}"))).unwrap();
    }
    let show = |m: &Mounted| {
        let out = common::output(tool(BIN).args(["audit", "show", "--json"]).arg(m.backing()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let creates = |text: &str| {
        text.lines()
            .filter(|l| l.contains("\"eventName\":\"GenerateDataKey\"") && l.contains("file-id"))
            .count()
    };
    // The daemon writes records on a background thread: they reach the trail while mounted,
    // within moments, not only at unmount.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while creates(&show(&m)) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mounted daemon's records did not reach the trail within 5 s: {}",
            show(&m)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(&m, &["key", "rotate"], &["alias/default"]);
    m.unmount();
    let text = ok(&m, &["audit", "verify"], &[]);
    assert!(text.contains("OK"), "{text}");
    let shown = show(&m);
    assert!(
        shown.contains("GenerateDataKey")
            && shown.contains("Decrypt")
            && shown.contains("RotateKeyOnDemand"),
        "{shown}"
    );
    assert_eq!(
        creates(&shown),
        5,
        "one GenerateDataKey per file created: {shown}"
    );

    let dir = m.backing().join("keystore.json.audit");
    let file = dir.join("audit-000001.jsonl");
    let content = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert!(
        lines.len() >= 6,
        "expected several records, got {}",
        lines.len()
    );
    let target = lines.len() / 2;
    let edited: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == target {
                l.replacen("\"uid\":0", "\"uid\":7", 1)
            } else {
                (*l).to_owned()
            }
        })
        .collect();
    assert_ne!(edited[target], lines[target], "the edit changed the record");
    fs::write(&file, edited.join("\n") + "\n").unwrap();
    let (success, text) = m.cli(&["audit", "verify"], &[]);
    assert!(!success, "verify must fail after an edit: {text}");
    assert!(
        text.contains(&format!("line {}", target + 1)),
        "names the edited record (line {}): {text}",
        target + 1
    );
}

/// Issue 11 item 8d: a denied open asked the key service once per header copy (both copies
/// carry the same slot), so every denial was in the trail twice.
#[test]
fn one_denied_open_writes_one_audit_record() {
    let Some(mut m) = Mounted::for_other_users(common::Options::default()) else {
        return;
    };
    fs::write(m.path("a"), b"secret contents").unwrap();
    fs::set_permissions(m.path("a"), fs::Permissions::from_mode(0o644)).unwrap();
    let policy = m.scratch().join("policy.json");
    fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Sid":"admin only","Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"}]}"#,
    )
    .unwrap();
    ok(
        &m,
        &["key", "policy", "put"],
        &["alias/default", "--file", policy.to_str().unwrap()],
    );
    let out = common::as_user_1000(m.mnt(), "cat a");
    assert!(!out.status.success(), "denied by the policy: {out:?}");
    ok(&m, &["key", "disable"], &["alias/default"]);
    let e = fs::read(m.path("a")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    m.unmount();

    let out = common::output(tool(BIN).args(["audit", "show", "--json"]).arg(m.backing()));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let refused = |code: &str| {
        shown
            .lines()
            .filter(|l| l.contains("\"eventName\":\"Decrypt\"") && l.contains(code))
            .count()
    };
    assert_eq!(
        refused("\"errorCode\":\"AccessDeniedException\""),
        1,
        "one record for one open denied by the policy:\n{shown}"
    );
    assert_eq!(
        refused("\"errorCode\":\"DisabledException\""),
        1,
        "one record for one open refused by a disabled key:\n{shown}"
    );
}

/// Issue 11 item 5: the daemon's own records (opens and creates) are covered by the
/// checkpoint it takes at unmount: cutting them off the trail is reported.
#[test]
fn cutting_the_daemons_last_records_fails_verify() {
    let Some(mut m) = Mounted::new() else { return };
    for i in 0..3 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
        fs::read(m.path(&format!("f{i}"))).unwrap();
    }
    m.unmount();
    let text = ok(&m, &["audit", "verify"], &[]);
    assert!(text.contains("checkpoints: the trail holds"), "{text}");
    let file = m.backing().join("keystore.json.audit/audit-000001.jsonl");
    let content = fs::read_to_string(&file).unwrap();
    let n = content.lines().count();
    let last = content.lines().last().unwrap();
    assert!(
        last.contains("\"eventName\":\"Decrypt\"") || last.contains("GenerateDataKey"),
        "the daemon wrote the last record: {last}"
    );
    let kept: String = content.split_inclusive('\n').take(n - 1).collect();
    fs::write(&file, kept).unwrap();
    let (success, text) = m.cli(&["audit", "verify"], &[]);
    assert!(!success, "{text}");
    assert!(
        text.contains(&format!(
            "trail truncated: the checkpoint says seq {n}, the trail ends at seq {}",
            n - 1
        )),
        "{text}"
    );
}

/// Issue 11 item 8b: ten `key create --alias` processes at once all succeed, and every new
/// key has its alias (before: some failed with "nothing was written" after creating the key).
#[test]
fn parallel_key_create_with_alias_all_land() {
    let Some(m) = Mounted::init_only(common::Options::default()) else {
        return;
    };
    let children: Vec<_> = (0..10)
        .map(|i| {
            tool(BIN)
                .args(["key", "create"])
                .arg(m.backing())
                .args(["--json", "--description", &format!("k{i}"), "--alias"])
                .arg(format!("alias/k{i}"))
                .arg("--keyfile")
                .arg(m.keyfile())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn envelopefs key create")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "key create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = common::output(
        tool(BIN)
            .args(["key", "list", "--json"])
            .arg(m.backing())
            .arg("--keyfile")
            .arg(m.keyfile()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 11, "{list:?}");
    for k in &list[1..] {
        let d = k["description"].as_str().unwrap();
        let want = format!("alias/{d}");
        assert_eq!(k["aliases"], serde_json::json!([want]), "{k}");
    }
}

/// Runs `envelopefs ARGS BACKING REST --keyfile KF` as uid 1000 (gid 1000, no groups).
fn cli_as_user_1000(m: &Mounted, args: &[&str], rest: &[&str]) -> (bool, String) {
    let out = common::output(
        tool("setpriv")
            .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
            .arg(BIN)
            .args(args)
            .arg(m.backing())
            .args(rest)
            .arg("--keyfile")
            .arg(m.keyfile())
            .current_dir(m.root()),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issue 11 item 3: a grantee who retires a grant on a group-writable keystore rewrites the
/// file (and, not being root, ends up owning it) but does not become an administrator: the
/// administrators are recorded inside the keystore. The rewrite keeps the file's mode.
#[test]
fn grantee_rewriting_a_shared_keystore_does_not_become_admin() {
    use std::os::unix::fs::MetadataExt;
    let Some(m) = Mounted::for_other_users(common::Options::default()) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to act as uid 1000");
        return;
    }
    let text = ok(
        &m,
        &["key", "grant", "create"],
        &[
            "alias/default",
            "--grantee",
            "uid:1000",
            "--operations",
            "Decrypt",
            "--retiring-principal",
            "uid:1000",
        ],
    );
    let grant_id = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no grant id in {text:?}"))
        .to_owned();
    let ks = m.backing().join("keystore.json");
    // A keystore shared with a group the grantee is in (here: writable by all, the same for
    // this test), in a directory the grantee may create the temporary file in.
    fs::set_permissions(m.backing(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&ks, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(
        m.backing().join("keystore.json.lock"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    fs::set_permissions(m.keyfile(), fs::Permissions::from_mode(0o644)).unwrap();
    let (retired, text) =
        cli_as_user_1000(&m, &["key", "grant", "retire"], &["--grant-id", &grant_id]);
    assert!(retired, "the retiring principal may retire: {text}");
    let (disabled, text) = cli_as_user_1000(&m, &["key", "disable"], &["alias/default"]);
    assert!(
        !disabled,
        "the last writer of the keystore is not an administrator: {text}"
    );
    assert!(text.contains("access denied"), "{text}");
    let (added, text) = cli_as_user_1000(&m, &["key", "admin", "add"], &["1000"]);
    assert!(!added, "nor may they make themselves one: {text}");
    let meta = fs::metadata(&ks).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o666, "the rewrite keeps the mode");
    assert_eq!(
        meta.uid(),
        1000,
        "uid 1000 cannot give the file back to root"
    );
    let listed = ok(&m, &["key", "admin", "list"], &[]);
    assert!(listed.contains("uid 0"), "{listed}");
    assert!(!listed.contains("uid 1000"), "{listed}");
    // The administrator still is one, and files still open through the mount.
    fs::write(m.path("f"), b"still works").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"still works");
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

/// Issue 11 item 8c: deleting the alias the volume's default_key names is refused (saying
/// what to do) and new files keep working; pointing it at a Disabled key is refused too;
/// pointing it at an Enabled key, or `--force`, is allowed.
#[test]
fn default_key_alias_is_not_deleted_or_pointed_at_an_unusable_key() {
    let Some(m) = Mounted::new() else { return };
    let (deleted, text) = m.cli(&["key", "alias", "delete"], &["alias/default"]);
    assert!(!deleted, "{text}");
    assert!(
        text.contains("default_key") && text.contains("--force") && text.contains("alias update"),
        "{text}"
    );
    fs::write(m.path("new"), b"still created").unwrap();
    assert_eq!(fs::read(m.path("new")).unwrap(), b"still created");

    let created = ok(
        &m,
        &["key", "create", "--json"],
        &["--description", "other"],
    );
    let other: serde_json::Value =
        serde_json::from_str(&created[created.find('{').unwrap()..=created.rfind('}').unwrap()])
            .unwrap();
    let other = other["key_id"].as_str().unwrap().to_owned();
    ok(&m, &["key", "disable"], &[&other]);
    let (updated, text) = m.cli(&["key", "alias", "update"], &["alias/default", &other]);
    assert!(!updated, "{text}");
    assert!(
        text.contains("Disabled") && text.contains("--force"),
        "{text}"
    );
    ok(&m, &["key", "enable"], &[&other]);
    ok(&m, &["key", "alias", "update"], &["alias/default", &other]);
    fs::write(m.path("under-other"), b"x").unwrap();

    ok(
        &m,
        &["key", "alias", "delete"],
        &["alias/default", "--force"],
    );
    assert!(fs::write(m.path("no-default"), b"x").is_err());
}

/// Issue 11 item 8e: a grant or key policy naming a user or group this system does not
/// know is refused, saying so; numeric ids are accepted, and --allow-unknown-principal
/// overrides.
#[test]
fn grants_and_policies_to_unknown_names_are_refused() {
    let Some(m) = Mounted::init_only(common::Options::default()) else {
        return;
    };
    let grant = |who: &str, extra: &[&str]| {
        let mut rest = vec!["alias/default", "--grantee", who, "--operations", "Decrypt"];
        rest.extend_from_slice(extra);
        m.cli(&["key", "grant", "create"], &rest)
    };
    let (made, text) = grant("user:no-such-user-envelopefs", &[]);
    assert!(!made, "{text}");
    assert!(
        text.contains("user no-such-user-envelopefs") && text.contains("--allow-unknown-principal"),
        "{text}"
    );
    let (made, text) = grant("group:no-such-group-envelopefs", &[]);
    assert!(
        !made && text.contains("group no-such-group-envelopefs"),
        "{text}"
    );
    let listed = ok(&m, &["key", "grant", "list"], &["alias/default"]);
    assert!(!listed.contains("no-such"), "nothing was granted: {listed}");
    assert!(grant("user:4242", &[]).0);
    assert!(grant("user:root", &[]).0);
    assert!(
        grant(
            "user:no-such-user-envelopefs",
            &["--allow-unknown-principal"]
        )
        .0
    );

    let policy = m.root().join("policy.json");
    fs::write(
        &policy,
        r#"{"Statement":[{"Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"},
            {"Effect":"Allow","Principal":{"Group":"no-such-group-envelopefs"},"Action":"kms:Decrypt"}]}"#,
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let (put, text) = m.cli(&["key", "policy", "put"], &["alias/default", "--file", p]);
    assert!(
        !put && text.contains("group no-such-group-envelopefs"),
        "{text}"
    );
    ok(
        &m,
        &["key", "policy", "put"],
        &["alias/default", "--file", p, "--allow-unknown-principal"],
    );
}

/// `init --admin-uid` records more administrators beside the user running init; an unknown
/// user name is refused before anything is created.
#[test]
fn init_records_the_admins_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("key");
    fs::write(&kf, common::random_bytes(32)).unwrap();
    let init = |backing: &std::path::Path, extra: &[&str]| {
        common::output(
            tool(BIN)
                .arg("init")
                .arg(backing)
                .arg("--keyfile")
                .arg(&kf)
                .args(extra),
        )
    };
    let bad = dir.path().join("bad");
    let out = init(&bad, &["--admin-uid", "no-such-user-envelopefs"]);
    assert!(!out.status.success());
    assert!(!bad.join("keystore.json").exists());
    let b = dir.path().join("b");
    let out = init(&b, &["--admin-uid", "4242", "--admin-uid", "4243"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::output(
        tool(BIN)
            .args(["key", "admin", "list", "--json"])
            .arg(&b)
            .arg("--keyfile")
            .arg(&kf),
    );
    let admins: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(admins, [me, 4242, 4243]);
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
