//! Audit records through a live mount: the daemon's records reach the trail while mounted, an
//! edited record makes `audit verify` fail naming it, one denied open is one record, and
//! cutting the daemon's last records off the trail is reported.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use common::{BIN, Mounted, ok, tool};

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
    common::put_key_policy(&m, "alias/default", common::ADMIN_ONLY_POLICY);
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
