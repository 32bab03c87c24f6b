//! Encrypted backup of a SoftHSM2 token's keys (docs/KEYS.md §2c): back up, wipe the token
//! (a new, empty one with the same label), restore, mount and read every file; a tampered
//! backup or another backup key is refused; keys made without --hsm-backup never leave.
//!
//! Skipped (with a message) without FUSE or SoftHSM2; ENVELOPEFS_REQUIRE_HSM=1 makes a missing
//! SoftHSM2 a failure.

mod common;
mod hsm_volume;

use std::path::Path;

use common::{check, output};
use hsm_volume::{HsmVolume, read};

/// `envelopefs hsm backup|restore BACKING FILE --backup-key-file KEY` as the officer.
fn run(v: &HsmVolume, what: &str, file: &Path, key: &Path) -> (bool, String) {
    let out = output(
        v.officer(&[what])
            .arg(v.backing())
            .arg(file)
            .arg("--backup-key-file")
            .arg(key),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn backup_wipe_restore_reads_every_file() {
    let Some(mut v) = HsmVolume::new_with(&["--hsm-backup"]) else {
        return;
    };
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}.txt"),
                format!("file {i} ").repeat(100 * i + 1).into_bytes(),
            )
        })
        .collect();
    v.mount();
    for (name, data) in &files[..3] {
        std::fs::write(v.mnt().join(name), data).unwrap();
    }
    v.key(&["rotate", "alias/default"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (name, data) in &files[3..] {
        std::fs::write(v.mnt().join(name), data).unwrap();
    }
    v.unmount();

    let key = v.root().join("backup.key");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let other_key = v.root().join("other.key");
    std::fs::write(&other_key, [0xa5; 32]).unwrap();
    let backup = v.root().join("token.backup");
    let (ok, err) = run(&v, "backup", &backup, &key);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&backup).unwrap();
    assert_eq!(&bytes[..8], b"EFSHSMBK");
    // keystore object + versions 1 and 2 of the default key.
    assert_eq!(u16::from_be_bytes([bytes[10], bytes[11]]), 3);

    // The token dies; a new one with the same label and PINs replaces it.
    v.token.wipe();
    v.token.init_token("envelopefs-live");
    let out = output(
        v.cmd()
            .args(["key", "list"])
            .arg(v.backing())
            .arg("--pin-file")
            .arg(v.root().join("pin")),
    );
    assert!(
        !out.status.success(),
        "the keystore opened without its token object"
    );

    // Tampered backups and another backup key are refused, and leave the token empty.
    let tampered = v.root().join("tampered.backup");
    for at in [30, 80, bytes.len() - 50, bytes.len() - 1] {
        let mut t = bytes.clone();
        t[at] ^= 1;
        std::fs::write(&tampered, &t).unwrap();
        let (ok, err) = run(&v, "restore", &tampered, &key);
        assert!(!ok, "a backup tampered at byte {at} was restored");
        assert!(
            err.contains("altered") || err.contains("another backup key"),
            "byte {at}: {err}"
        );
    }
    let (ok, err) = run(&v, "restore", &backup, &other_key);
    assert!(!ok && err.contains("another backup key"), "{err}");

    let (ok, err) = run(&v, "restore", &backup, &key);
    assert!(ok, "{err}");
    v.mount();
    for (name, data) in &files {
        assert_eq!(&read(&v.mnt().join(name)).unwrap(), data, "{name}");
    }
    v.unmount();
    // Restoring again into the now non-empty token is refused.
    let (ok, err) = run(&v, "restore", &backup, &key);
    assert!(!ok && err.contains("empty"), "{err}");
}

#[test]
fn keys_made_without_hsm_backup_never_leave_the_token() {
    let Some(v) = HsmVolume::new() else {
        return;
    };
    let key = v.root().join("backup.key");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let (ok, err) = run(&v, "backup", &v.root().join("b"), &key);
    assert!(!ok && err.contains("never extractable"), "{err}");
    assert!(!v.root().join("b").exists());
    check(v.cmd().arg("info").arg(v.backing()));
}
