//! CloudHSM's user model in front of a SoftHSM2 token (docs/KEYS.md §2b): the crypto officer
//! (token SO PIN) creates crypto users; a CU logs in with `NAME:PASSWORD` and may use only the
//! keys shared with it; five wrong passwords in a row lock it (across processes) until the
//! officer unlocks it; all of it audited.
//!
//! Skipped (with a message) without FUSE or SoftHSM2; ENVELOPEFS_REQUIRE_HSM=1 makes a missing
//! SoftHSM2 a failure.

mod common;
mod hsm_volume;

use std::path::Path;

use common::{check, output};
use hsm_volume::{HsmVolume, read};

const PASSWORD: &str = "correct horse battery";

/// `envelopefs key describe BACKING alias/default` with the PIN in `pin`: (ok, stderr).
fn describe(v: &HsmVolume, pin: &Path) -> (bool, String) {
    let out = output(
        v.cmd()
            .args(["key", "describe"])
            .arg(v.backing())
            .arg("alias/default")
            .arg("--pin-file")
            .arg(pin),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn crypto_users_share_keys_and_lock_after_five_wrong_passwords() {
    let Some(mut v) = HsmVolume::new() else {
        return;
    };
    let pw = v.file("alice-password", PASSWORD);
    let alice = v.file("alice-pin", &format!("alice:{PASSWORD}"));
    let wrong = v.file("alice-wrong", "alice:not the password");

    // Only the officer creates users: a wrong SO PIN is refused by the token.
    let badso = v.file("badso", "0000");
    let out = output(
        v.cmd()
            .args(["hsm", "user", "create"])
            .arg(v.backing())
            .arg("alice")
            .arg("--user-password-file")
            .arg(&pw)
            .arg("--so-pin-file")
            .arg(&badso)
            .arg("--pin-file")
            .arg(v.root().join("pin")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("security officer"),
        "{err}"
    );
    check(
        v.officer(&["user", "create"])
            .arg(v.backing())
            .arg("alice")
            .arg("--user-password-file")
            .arg(&pw),
    );

    // Written by the token user; alice may not use the default key until it is shared.
    v.mount();
    std::fs::write(v.mnt().join("a.txt"), b"for alice").unwrap();
    v.unmount();
    let (ok, err) = describe(&v, &alice);
    assert!(
        !ok && err.contains("not shared with crypto user alice"),
        "{err}"
    );
    // The volume key is wrapped under the default key: without it alice mounts nothing.
    let out = output(
        v.cmd()
            .arg("mount")
            .arg(v.backing())
            .arg(v.mnt())
            .arg("--pin-file")
            .arg(&alice),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not shared with crypto user alice"),
        "{err}"
    );

    check(
        v.officer(&["user", "share"])
            .arg(v.backing())
            .args(["alice", "alias/default"]),
    );
    v.mount_with(&alice);
    assert_eq!(read(&v.mnt().join("a.txt")).unwrap(), b"for alice");
    std::fs::write(v.mnt().join("b.txt"), b"by alice").unwrap();
    v.unmount();
    // Another key, not shared: alice may not use it, though she uses the default one.
    let created = v.key(&["create", "--description", "not for alice"]);
    let other = created
        .split_whitespace()
        .find(|w| w.len() == 36 && w.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no key id in {created:?}"))
        .to_owned();
    let out = output(
        v.cmd()
            .args(["key", "describe"])
            .arg(v.backing())
            .arg(&other)
            .arg("--pin-file")
            .arg(&alice),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not shared with crypto user alice"),
        "{err}"
    );
    // A CU uses keys; it manages nothing (not even rotation of a shared key).
    let out = output(
        v.cmd()
            .args(["key", "rotate"])
            .arg(v.backing())
            .arg("alias/default")
            .arg("--pin-file")
            .arg(&alice),
    );
    assert!(!out.status.success(), "a crypto user rotated a key");

    // Five wrong passwords, each its own process: the fifth locks alice.
    for i in 1..=5 {
        let (ok, err) = describe(&v, &wrong);
        assert!(
            !ok && err.contains("wrong password for crypto user alice"),
            "{err}"
        );
        assert!(err.contains(&format!("{i} failed login")), "{err}");
        assert!(
            !err.contains("not the password") && !err.contains(PASSWORD),
            "{err}"
        );
    }
    let (ok, err) = describe(&v, &alice);
    assert!(
        !ok && err.contains("locked"),
        "the right password opened a locked CU: {err}"
    );
    let status = check(v.cmd().args(["hsm", "login-status"]).arg(v.backing()));
    assert!(
        status.contains("alice") && status.contains("LOCKED"),
        "{status}"
    );

    // Another user's successful login folds the failures into the keystore: still locked.
    let (ok, err) = describe(&v, &v.root().join("pin"));
    assert!(ok, "{err}");
    let (ok, err) = describe(&v, &alice);
    assert!(!ok && err.contains("locked"), "{err}");
    let list = check(
        v.cmd()
            .args(["hsm", "user", "list"])
            .arg(v.backing())
            .arg("--pin-file")
            .arg(v.root().join("pin")),
    );
    assert!(list.contains("LOCKED") && list.contains("5/5"), "{list}");

    // The officer unlocks alice; the right password works again.
    check(v.officer(&["user", "unlock"]).arg(v.backing()).arg("alice"));
    let (ok, err) = describe(&v, &alice);
    assert!(ok, "{err}");
    let status = check(v.cmd().args(["hsm", "login-status"]).arg(v.backing()));
    assert!(
        status.contains("0/5") && !status.contains("LOCKED"),
        "{status}"
    );

    // Audited: the failed logins (as failed-unlock notes), the lock, the officer's acts.
    let trail: String = std::fs::read_dir(v.backing().join("keystore.json.audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    for event in [
        "CreateCryptoUser",
        "ShareKey",
        "UnlockCryptoUser",
        "LoginCryptoUser",
        "wrong password for crypto user alice",
        "is locked after 5 failed logins",
    ] {
        assert!(trail.contains(event), "no {event:?} in the audit trail");
    }
    assert!(!trail.contains(PASSWORD) && !trail.contains("not the password"));

    // Deleted users cannot log in (the PIN is then taken as the token user's, and is wrong).
    check(v.officer(&["user", "delete"]).arg(v.backing()).arg("alice"));
    let (ok, err) = describe(&v, &alice);
    assert!(!ok && err.contains("wrong PIN"), "{err}");
}
