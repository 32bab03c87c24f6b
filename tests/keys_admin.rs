//! Key administration next to a mount: administrators (recorded at init, not taken over by a
//! grantee rewriting a shared keystore), parallel key creation with aliases, and the refusals
//! that protect the default key's alias and keep grants and policies from naming unknown users.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{BIN, Mounted, ok, tool};

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
