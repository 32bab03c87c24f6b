//! `mount.envelopefs`, the mount(8) helper: an fstab-style invocation (what
//! `mount -t fuse.envelopefs BACKING MNT -o ...` runs) mounts in the background, the mount
//! works, and `envelopefs unmount` stops it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Mounted, Options, is_mounted, output};

/// The helper as built (cargo target names cannot contain a dot).
const BUILT: &str = env!("CARGO_BIN_EXE_mount_envelopefs");

/// Unmounts (lazily, then by force) on drop, so a failed test leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("unmount").arg(&self.0).status();
        if is_mounted(&self.0) {
            common::abort_mount(&self.0);
        }
    }
}

fn wait_unmounted(p: &Path) -> bool {
    let start = Instant::now();
    while is_mounted(p) {
        if start.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn an_fstab_style_mount_through_the_helper_works() {
    let Some(m) = Mounted::init_only(Options::default()) else {
        return;
    };
    // Installed under the name mount(8) runs (`install -m 755 ... /sbin/mount.envelopefs`).
    let helper = m.scratch().join("mount.envelopefs");
    fs::copy(BUILT, &helper).unwrap();
    let mnt = m.scratch().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = m.scratch().join("helper.log");
    let opts = format!(
        "rw,noauto,_netdev,nofail,x-systemd.automount,keyfile={},log_file={}",
        m.keyfile().display(),
        log.display()
    );
    let out = output(
        Command::new("timeout")
            .arg("60")
            .arg(&helper)
            .arg(m.backing())
            .arg(&mnt)
            .args(["-o", &opts])
            .env_remove("ENVELOPEFS_PASSPHRASE"),
    );
    let _guard = Unmount(mnt.clone());
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(is_mounted(&fs::canonicalize(&mnt).unwrap()), "mounted");
    fs::write(mnt.join("hello"), b"through the helper").unwrap();
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"through the helper");
    let st = Command::new(BIN).arg("unmount").arg(&mnt).status().unwrap();
    assert!(st.success());
    assert!(wait_unmounted(&mnt), "unmounted");
    // One entry besides the root's `.dirid` (encrypted names) or none (plaintext names).
    assert_eq!(
        fs::read_dir(m.data())
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .as_encoded_bytes()
                .starts_with(b"."))
            .count(),
        1,
        "the file went to BACKING"
    );
    // Unknown options are refused with a usage error, before anything happens.
    let out = output(
        Command::new(&helper)
            .arg(m.backing())
            .arg(&mnt)
            .args(["-o", "noexec"]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!is_mounted(&fs::canonicalize(&mnt).unwrap()));
}
