//! Backups of BACKING with real tools while the volume is mounted and idle: rsync and restic
//! copies restore into a new place, mount, and show every byte, mode, owner, time, link and
//! xattr of the original; an unchanged file's ciphertext is byte-identical between runs, so
//! incremental backups move only what changed.

mod backup_common;
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_common::{populate, settle, snapshot};
use common::{Mounted, check, tool};

/// BLAKE3 of every regular file under BACKING/data (relative path → hash).
fn ciphertexts(data: &Path) -> BTreeMap<PathBuf, String> {
    common::walk_files(data)
        .into_iter()
        .map(|p| {
            let h = blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string();
            (p.strip_prefix(data).unwrap().to_owned(), h)
        })
        .collect()
}

fn have(tool_name: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool_name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: {tool_name} is not installed (scripts/install-deps.sh)");
    }
    ok
}

/// Unmounts `m`, puts `restored` where BACKING was, mounts it, and returns its snapshot.
fn mount_restored(m: &mut Mounted, restored: &Path) -> BTreeMap<String, String> {
    assert!(m.unmount().is_some_and(|s| s.success()));
    let aside = m.scratch().join(format!(
        "original-{}",
        restored.file_name().unwrap().to_string_lossy()
    ));
    fs::rename(m.backing(), &aside).unwrap();
    fs::rename(restored, m.backing()).unwrap();
    m.mount();
    let snap = snapshot(m.mnt());
    assert!(m.unmount().is_some_and(|s| s.success()));
    fs::rename(m.backing(), restored).unwrap();
    fs::rename(&aside, m.backing()).unwrap();
    m.mount();
    snap
}

#[test]
fn rsync_and_restic_round_trips_compare_equal_and_increments_are_small() {
    if !have("rsync") || !have("restic") {
        return;
    }
    let Some(mut m) = Mounted::new() else { return };
    populate(&m);
    // Idle: everything the kernel buffered has reached BACKING.
    settle(&mut m);
    let before = snapshot(m.mnt());
    let cipher_before = ciphertexts(&m.data());
    let backing = m.backing().to_owned();
    let src = format!("{}/", backing.display());

    // rsync, mounted and idle.
    let r1 = m.scratch().join("rsync");
    check(
        tool("rsync")
            .args(["-aHAX", "--numeric-ids", &src])
            .arg(&r1),
    );
    // restic, mounted and idle.
    let repo = m.scratch().join("repo");
    let restic = |args: &[&str]| {
        let mut c = tool("restic");
        c.args(["--no-cache", "-q", "-r"])
            .arg(&repo)
            .args(args)
            .env("RESTIC_PASSWORD", "test repo password");
        c
    };
    check(&mut restic(&["init"]));
    check(restic(&["backup"]).arg(&backing));

    // A change through the mount, then a remount: only that file's ciphertext changes.
    fs::write(m.path("b"), b"changed").unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    m.mount();
    let cipher_after = ciphertexts(&m.data());
    let changed: Vec<&PathBuf> = cipher_after
        .iter()
        .filter(|(p, h)| cipher_before.get(*p) != Some(h))
        .map(|(p, _)| p)
        .collect();
    let b = m.backing_path("b");
    let b_rel = b.strip_prefix(m.data()).unwrap().to_owned();
    let b_again = m.backing_path("docs/b-again");
    let b_again_rel = b_again.strip_prefix(m.data()).unwrap().to_owned();
    let mut want = vec![&b_rel, &b_again_rel]; // two names of one inode
    want.sort();
    let mut changed = changed;
    changed.sort();
    assert_eq!(changed, want, "only the changed file's ciphertext differs");
    // An incremental rsync moves only that file among the data files.
    let items = check(
        tool("rsync")
            .args(["-aHAXi", "--dry-run", "--numeric-ids", &src])
            .arg(&r1),
    );
    let data_files: Vec<&str> = items
        .lines()
        .filter(|l| l.starts_with(">f") && l.contains("data/"))
        .collect();
    assert_eq!(data_files.len(), 1, "one data file to send:\n{items}");
    assert!(
        data_files[0].ends_with(b_rel.to_str().unwrap())
            || data_files[0].ends_with(b_again_rel.to_str().unwrap()),
        "{items}"
    );

    // Restore both copies elsewhere, mount, compare every byte and attribute.
    assert_eq!(mount_restored(&mut m, &r1), before, "rsync round trip");
    let r2 = m.scratch().join("restic-restore");
    check(restic(&["restore", "latest", "--target"]).arg(&r2));
    let restored = r2.join(backing.strip_prefix("/").unwrap());
    let restic_copy = m.scratch().join("restic");
    fs::rename(&restored, &restic_copy).unwrap();
    assert_eq!(
        mount_restored(&mut m, &restic_copy),
        before,
        "restic round trip"
    );
}
