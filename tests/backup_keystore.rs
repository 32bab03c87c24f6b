//! `envelopefs keystore backup|restore`: after keystore.json is deleted, a restore from the
//! backup brings every file back; a backup of another volume, or a wrong backup secret, is
//! refused and writes nothing.

mod backup_common;
mod common;

use std::fs;
use std::process::Command;

use backup_common::{populate, settle, snapshot};
use common::{BIN, Mounted, Options, output, random_bytes};

fn run(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("ENVELOPEFS_BACKUP_PASSPHRASE");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = output(&mut c);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn a_restored_keystore_brings_every_file_back() {
    let Some(mut m) = Mounted::new() else { return };
    populate(&m);
    settle(&mut m);
    let before = snapshot(m.mnt());
    let bkey = m.scratch().join("backup.key");
    fs::write(&bkey, random_bytes(32)).unwrap();
    let file = m.scratch().join("keys.ekb");
    // While mounted: a backup works (it only reads the keystore).
    let (code, text) = run(
        &[
            os("keystore"),
            os("backup"),
            m.backing().as_os_str(),
            file.as_os_str(),
            os("--backup-keyfile"),
            bkey.as_os_str(),
            os("--keyfile"),
            m.keyfile().as_os_str(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    assert!(m.unmount().is_some_and(|s| s.success()));
    let ks = m.backing().join("keystore.json");
    let original = fs::read(&ks).unwrap();
    fs::remove_file(&ks).unwrap();

    // A wrong backup key: refused (exit 3), nothing written.
    let wrong = m.scratch().join("wrong.key");
    fs::write(&wrong, random_bytes(32)).unwrap();
    let restore = |key: &std::path::Path| {
        run(
            &[
                os("keystore"),
                os("restore"),
                m.backing().as_os_str(),
                file.as_os_str(),
                os("--backup-keyfile"),
                key.as_os_str(),
            ],
            &[],
        )
    };
    let (code, text) = restore(&wrong);
    assert_eq!(code, 3, "{text}");
    assert!(!ks.exists());
    let (code, text) = restore(&bkey);
    assert_eq!(code, 0, "{text}");
    assert_eq!(fs::read(&ks).unwrap(), original, "the very same keystore");
    m.mount();
    assert_eq!(snapshot(m.mnt()), before, "every file is back");
}

#[test]
fn a_backup_of_another_volume_is_refused_and_a_passphrase_backup_round_trips() {
    let Some(m) = Mounted::init_only(Options::default()) else {
        return;
    };
    let Some(other) = Mounted::init_only(Options::default()) else {
        return;
    };
    let file = m.scratch().join("keys.ekb");
    let pw = [("ENVELOPEFS_BACKUP_PASSPHRASE", "backup pass phrase")];
    let (code, text) = run(
        &[
            os("keystore"),
            os("backup"),
            m.backing().as_os_str(),
            file.as_os_str(),
            os("--keyfile"),
            m.keyfile().as_os_str(),
        ],
        &pw,
    );
    assert_eq!(code, 0, "{text}");
    let restore = |backing: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            os("keystore"),
            os("restore"),
            backing.as_os_str(),
            file.as_os_str(),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        run(&args, &pw)
    };
    let other_ks = fs::read(other.backing().join("keystore.json")).unwrap();
    let (code, text) = restore(other.backing(), &["--force"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not of this volume"), "{text}");
    assert_eq!(
        fs::read(other.backing().join("keystore.json")).unwrap(),
        other_ks
    );
    // Same keystore in place: nothing to replace.
    let (code, text) = restore(m.backing(), &[]);
    assert_eq!(code, 0, "{text}");
    // A different keystore in place needs --force, and is kept beside.
    fs::write(m.backing().join("keystore.json"), b"{}").unwrap();
    let (code, text) = restore(m.backing(), &[]);
    assert_eq!(code, 1, "{text}");
    let (code, text) = restore(m.backing(), &["--force"]);
    assert_eq!(code, 0, "{text}");
    let kept = fs::read_dir(m.backing())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("keystore.json.before-restore-")
        })
        .count();
    assert_eq!(kept, 1);
    let (ok, text) = m.cli(&["key", "list"], &[]);
    assert!(ok, "the restored keystore opens: {text}");
}
