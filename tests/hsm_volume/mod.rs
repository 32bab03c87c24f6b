//! A volume over a throwaway SoftHSM2 token, mounted by the `envelopefs` binary, for the
//! `tests/hsm_*.rs` mount tests (docs/KEYS.md §2a).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, check, fuse_available, is_mounted, output, tool};
use envelopefs_hsm::softhsm::{SO_PIN, TestToken, USER_PIN};

/// A volume in a temp dir over a throwaway token; unmounts (or kills) its daemon on drop.
pub struct HsmVolume {
    pub token: TestToken,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl HsmVolume {
    pub fn new() -> Option<Self> {
        Self::new_with(&[])
    }

    /// A volume made with `init ... EXTRA` (e.g. `--hsm-backup`).
    pub fn new_with(extra: &[&str]) -> Option<Self> {
        if !fuse_available() {
            return None;
        }
        let token = TestToken::new("envelopefs-live")?;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("mnt")).unwrap();
        std::fs::write(root.join("pin"), format!("{USER_PIN}\n")).unwrap();
        std::fs::write(root.join("sopin"), format!("{SO_PIN}\n")).unwrap();
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
                .arg(v.root().join("pin"))
                .args(extra),
        );
        Some(v)
    }

    pub fn root(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }
    pub fn backing(&self) -> PathBuf {
        self.root().join("backing")
    }
    pub fn mnt(&self) -> PathBuf {
        self.root().join("mnt")
    }

    /// The envelopefs binary under `timeout`, with the token directory in its environment.
    pub fn cmd(&self) -> Command {
        let mut c = tool(BIN);
        c.env("SOFTHSM2_CONF", &self.token.conf)
            .env_remove("RUST_LOG")
            .env_remove("ENVELOPEFS_HSM_PIN");
        c
    }

    /// `envelopefs key ARGS... BACKING-first` as the docs write it.
    pub fn key(&self, args: &[&str]) -> String {
        let mut c = self.cmd();
        c.arg("key")
            .arg(args[0])
            .arg(self.backing())
            .args(&args[1..]);
        c.arg("--pin-file").arg(self.root().join("pin"));
        check(&mut c)
    }

    pub fn mount(&mut self) {
        let pin = self.root().join("pin");
        self.mount_with(&pin);
    }

    /// Mounts with the PIN in `pin_file` (the token user's or `NAME:PASSWORD`).
    pub fn mount_with(&mut self, pin_file: &Path) {
        self.mount_with_args(pin_file, &[]);
    }

    /// Mounts with `--allow-other`, the test directory and mount point open to every user.
    pub fn mount_for_other_users(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(self.root(), mode.clone()).unwrap();
        let pin = self.root().join("pin");
        self.mount_with_args(&pin, &["--allow-other"]);
        std::fs::set_permissions(self.mnt(), mode).unwrap();
    }

    /// Mounts with the PIN in `pin_file` and `extra` mount flags.
    pub fn mount_with_args(&mut self, pin_file: &Path, extra: &[&str]) {
        let mut c = Command::new(BIN);
        c.arg("mount")
            .arg(self.backing())
            .arg(self.mnt())
            .arg("--pin-file")
            .arg(pin_file)
            .arg("--log-file")
            .arg(self.root().join("mount.log"))
            .arg("-v")
            .args(extra)
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

    /// `envelopefs hsm ARGS...` as the crypto officer (SO PIN and token user PIN files).
    pub fn officer(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("hsm").args(args);
        c.arg("--so-pin-file").arg(self.root().join("sopin"));
        c.arg("--pin-file").arg(self.root().join("pin"));
        c
    }

    /// Writes `text` and a newline to `name` in the test's directory; returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p
    }

    pub fn unmount(&mut self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("mount.log")).unwrap_or_default()
    }
}

impl Drop for HsmVolume {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Reads a file, or the errno of the failure.
pub fn read(p: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(0))
}
