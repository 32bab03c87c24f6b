//! Mount tests of a volume whose CMKs live in a SoftHSM2 token (docs/KEYS.md §5): init with
//! --hsm-module, write, remount, read; rotate and disable through the token; the token's
//! objects are sensitive and never extractable; the keystore holds no material.
//!
//! Skipped (with a message) without FUSE or SoftHSM2; ENVELOPEFS_REQUIRE_HSM=1 makes a missing
//! SoftHSM2 a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, check, fuse_available, is_mounted, output, tool};
use envelopefs_hsm::softhsm::{TestToken, USER_PIN};

/// A volume in a temp dir over a throwaway token; unmounts (or kills) its daemon on drop.
struct HsmVolume {
    token: TestToken,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl HsmVolume {
    fn new() -> Option<Self> {
        if !fuse_available() {
            return None;
        }
        let token = TestToken::new("envelopefs-live")?;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("mnt")).unwrap();
        std::fs::write(root.join("pin"), format!("{USER_PIN}\n")).unwrap();
        let v = HsmVolume {
            token,
            dir,
            child: None,
        };
        check(
            v.cmd()
                .arg("init")
                .arg(v.backing())
                .arg("--hsm-module")
                .arg(&v.token.module)
                .args(["--token-label", "envelopefs-live", "--pin-file"])
                .arg(v.root().join("pin")),
        );
        Some(v)
    }

    fn root(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }
    fn backing(&self) -> PathBuf {
        self.root().join("backing")
    }
    fn mnt(&self) -> PathBuf {
        self.root().join("mnt")
    }

    /// The envelopefs binary under `timeout`, with the token directory in its environment.
    fn cmd(&self) -> Command {
        let mut c = tool(BIN);
        c.env("SOFTHSM2_CONF", &self.token.conf)
            .env_remove("RUST_LOG")
            .env_remove("ENVELOPEFS_HSM_PIN");
        c
    }

    /// `envelopefs key ARGS... BACKING-first` as the docs write it.
    fn key(&self, args: &[&str]) -> String {
        let mut c = self.cmd();
        c.arg("key")
            .arg(args[0])
            .arg(self.backing())
            .args(&args[1..]);
        c.arg("--pin-file").arg(self.root().join("pin"));
        check(&mut c)
    }

    fn mount(&mut self) {
        let mut c = Command::new(BIN);
        c.arg("mount")
            .arg(self.backing())
            .arg(self.mnt())
            .arg("--pin-file")
            .arg(self.root().join("pin"))
            .arg("--log-file")
            .arg(self.root().join("mount.log"))
            .arg("-v")
            .env("SOFTHSM2_CONF", &self.token.conf)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let start = Instant::now();
        while !is_mounted(&self.mnt()) {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the daemon exited ({st}):\n{}", self.log());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no mount after 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = output(tool(BIN).arg("unmount").arg(self.mnt()));
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("mount.log")).unwrap_or_default()
    }
}

impl Drop for HsmVolume {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn read(p: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(0))
}

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
