//! Mount tests of a volume whose CMKs live in a SoftHSM2 token (docs/KEYS.md §5): init with
//! --hsm-module, write, remount, read; rotate and disable through the token; the token's
//! objects are sensitive and never extractable; the keystore holds no material.
//!
//! Skipped (with a message) without FUSE or SoftHSM2; ENVELOPEFS_REQUIRE_HSM=1 makes a missing
//! SoftHSM2 a failure.

mod common;
mod hsm_volume;

use std::process::Command;
use std::time::Duration;

use common::{check, output};
use envelopefs_hsm::softhsm::USER_PIN;
use hsm_volume::{HsmVolume, read};

#[test]
fn write_remount_read_rotate_disable_on_a_token() {
    let Some(mut v) = HsmVolume::new() else {
        return;
    };
    let ks = std::fs::read_to_string(v.backing().join("keystore.json")).unwrap();
    assert!(ks.contains(r#""alg": "pkcs11""#), "{ks}");
    assert!(
        ks.contains(r#"\"material\":null"#) && !ks.contains("passphrase"),
        "{ks}"
    );

    v.mount();
    std::fs::write(v.mnt().join("a.txt"), b"held by the token").unwrap();
    v.unmount();
    v.mount();
    assert_eq!(read(&v.mnt().join("a.txt")).unwrap(), b"held by the token");

    // Rotation and rewrap through the token; the old file still reads.
    let out = v.key(&["rotate", "alias/default"]);
    assert!(out.contains('2'), "{out}");
    std::fs::write(v.mnt().join("b.txt"), b"version two").unwrap();
    let mut rewrap = v.cmd();
    rewrap
        .arg("rewrap")
        .arg(v.backing())
        .arg("--pin-file")
        .arg(v.root().join("pin"));
    check(&mut rewrap);
    assert_eq!(read(&v.mnt().join("a.txt")).unwrap(), b"held by the token");

    // Disable cuts access on the live mount: EACCES; enable restores it.
    v.key(&["disable", "alias/default"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(&v.mnt().join("b.txt")), Err(libc::EACCES));
    v.key(&["enable", "alias/default"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(&v.mnt().join("b.txt")).unwrap(), b"version two");
    v.unmount();

    // A wrong PIN mounts nothing and says so.
    std::fs::write(v.root().join("badpin"), "0000\n").unwrap();
    let out = output(
        v.cmd()
            .arg("mount")
            .arg(v.backing())
            .arg(v.mnt())
            .arg("--pin-file")
            .arg(v.root().join("badpin")),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong PIN"), "{err}");
    assert!(!err.contains(USER_PIN) && !err.contains("0000"), "{err}");

    // The token's CMK objects (versions 1 and 2, and the keystore object) are sensitive and
    // never extractable, as pkcs11-tool (opensc) shows them.
    let Ok(list) = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &v.token.conf)
        .arg("--module")
        .arg(&v.token.module)
        .args([
            "--token-label",
            "envelopefs-live",
            "--login",
            "--pin",
            USER_PIN,
        ])
        .arg("--list-objects")
        .output()
    else {
        eprintln!("pkcs11-tool (opensc) is not installed; not listing the token's objects");
        return;
    };
    let list = String::from_utf8_lossy(&list.stdout);
    let cmks: Vec<&str> = list
        .split("Secret Key Object")
        .filter(|o| o.contains("envelopefs cmk"))
        .collect();
    assert_eq!(cmks.len(), 2, "{list}");
    for o in cmks.iter().chain(
        list.split("Secret Key Object")
            .filter(|o| o.contains("envelopefs keystore"))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(o.contains("AES length 32"), "{o}");
        assert!(
            o.contains("sensitive") && o.contains("never extractable"),
            "{o}"
        );
        assert!(!o.contains("\n  Access:       extractable"), "{o}");
    }
}

/// A key policy decides per uid on a token-backed volume as on a passphrase one: with a policy
/// that admits only the volume's administrators, uid 1000 gets EACCES on a live mount where
/// it read the same file before, root still reads it; the default policy back, uid 1000 reads.
#[test]
fn key_policy_per_uid_on_a_token() {
    let Some(mut v) = HsmVolume::new() else {
        return;
    };
    v.mount_for_other_users();
    std::fs::write(v.mnt().join("shared.txt"), b"for everyone").unwrap();
    let as_1000 = || common::as_user_1000(&v.mnt(), "cat shared.txt");
    let out = as_1000();
    assert!(
        out.status.success(),
        "uid 1000 under the default policy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let put = |policy: &str| {
        let f = v.root().join("policy.json");
        std::fs::write(&f, policy).unwrap();
        let mut c = v.cmd();
        c.args(["key", "policy", "put"])
            .arg(v.backing())
            .args(["alias/default", "--file"])
            .arg(&f)
            .arg("--pin-file")
            .arg(v.root().join("pin"));
        check(&mut c);
    };
    let before = {
        let mut c = v.cmd();
        c.args(["key", "policy", "get"])
            .arg(v.backing())
            .arg("alias/default")
            .arg("--pin-file")
            .arg(v.root().join("pin"));
        check(&mut c)
    };
    put(common::ADMIN_ONLY_POLICY);
    std::thread::sleep(Duration::from_millis(600));
    let out = as_1000();
    assert!(!out.status.success(), "uid 1000 under an admin-only policy");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&v.mnt().join("shared.txt")).unwrap(), b"for everyone");
    put(&before);
    std::thread::sleep(Duration::from_millis(600));
    assert!(as_1000().status.success(), "the default policy back");
}
