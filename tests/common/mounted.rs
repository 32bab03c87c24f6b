//! A mounted test volume ([`Mounted`]): its temp dir, the daemon in the foreground, the
//! watchdog that kills the daemon if a test runs too long, and the ways to stop it (clean
//! unmount, signals, SIGKILL, a forced detach).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BIN, abort_mount, fuse_available, is_mounted, output, random_bytes, tool};

/// How long a mount may take to appear in /proc/self/mountinfo.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after an unmount.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long (or `ENVELOPEFS_TEST_WATCHDOG_SECS`), the watchdog kills the daemon so
/// blocked calls on the mount fail (ENOTCONN) instead of hanging the test run.
pub const WATCHDOG: Duration = Duration::from_secs(150);

fn watchdog_limit() -> Duration {
    std::env::var("ENVELOPEFS_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(WATCHDOG)
}

/// Polls `child` until it exits or `limit` passes.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Lazily detaches whatever is mounted at `mnt` (dead or alive), quietly.
fn force_unmount(mnt: &Path) {
    let _ = Command::new("timeout")
        .arg("10")
        .arg("umount")
        .arg("-l")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("timeout")
        .arg("10")
        .arg("fusermount3")
        .arg("-uz")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// Mount options of a test mount.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of `-v` flags given to `mount` (1: info, 2: debug).
    pub verbose: u8,
    /// Mount with `--allow-other` and make the temp dir reachable by other users.
    pub allow_other: bool,
    /// Put BACKING on its own tmpfs of this many bytes (to run out of space). Needs root;
    /// the test is skipped otherwise.
    pub backing_fs_size: Option<u64>,
    /// Let the kernel buffer writes (the daemon's default); false mounts with
    /// `--no-writeback-cache`, where every write reaches the daemon before it returns.
    pub writeback: bool,
    /// Extended attributes on; false mounts with `--no-xattr`.
    pub xattrs: bool,
    /// More arguments for `envelopefs mount` (e.g. `--suid`).
    pub extra_args: Vec<String>,
    /// Environment variables for the daemon (e.g. a failpoint).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verbose: 1,
            allow_other: false,
            backing_fs_size: None,
            writeback: true,
            xattrs: true,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// The daemon's pid while it may still be signalled. The lock is held while signalling and
/// while clearing it (before the child is reaped), so a pid is never signalled after reuse.
type DaemonPid = Arc<Mutex<Option<i32>>>;

/// A mounted test volume: temp dir with `backing/`, `mnt/`, `key` (32 random bytes) and
/// `mount.log`; unmounted (and the daemon reaped or killed) in `Drop`.
pub struct Mounted {
    dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    keyfile: PathBuf,
    key: Vec<u8>,
    opts: Options,
    child: Option<Child>,
    pid: DaemonPid,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// The tmpfs holding BACKING, if [`Options::backing_fs_size`] asked for one.
    small_fs: Option<PathBuf>,
}

impl Mounted {
    /// Creates, initialises and mounts a fresh volume, or returns None (with a message) when
    /// FUSE is not available here (a panic instead with `ENVELOPEFS_REQUIRE_FUSE=1`: see
    /// [`fuse_available`]).
    pub fn new() -> Option<Mounted> {
        Self::with_options(Options::default())
    }

    /// As [`Mounted::new`] with options.
    pub fn with_options(opts: Options) -> Option<Mounted> {
        let mut m = Self::init_only(opts)?;
        m.mount();
        Some(m)
    }

    /// As [`Mounted::with_options`] with `--allow-other` and the mount point opened to
    /// everyone (mode 0755), for tests that act as another user ([`super::as_user_1000`]).
    pub fn for_other_users(opts: Options) -> Option<Mounted> {
        let m = Self::with_options(Options {
            allow_other: true,
            ..opts
        })?;
        fs::set_permissions(m.mnt(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the mount point");
        Some(m)
    }

    /// Creates and initialises a volume without mounting it (call [`Mounted::mount`]).
    pub fn init_only(opts: Options) -> Option<Mounted> {
        if !fuse_available() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("envelopefs-test-")
            .tempdir()
            .expect("tempdir");
        let root = fs::canonicalize(dir.path()).expect("canonical tempdir");
        let (mut backing, mnt, log, keyfile) = (
            root.join("backing"),
            root.join("mnt"),
            root.join("mount.log"),
            root.join("key"),
        );
        let mut small_fs = None;
        if let Some(size) = opts.backing_fs_size {
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!(
                    "skipping: a size-limited backing filesystem needs root (mount -t tmpfs)"
                );
                return None;
            }
            let small = root.join("small");
            fs::create_dir(&small).expect("mkdir small");
            let out = output(
                tool("mount")
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={size},mode=0755"))
                    .arg("tmpfs")
                    .arg(&small),
            );
            if !out.status.success() {
                eprintln!(
                    "skipping: cannot mount a tmpfs ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            backing = small.join("backing");
            small_fs = Some(small);
        }
        fs::create_dir(&mnt).expect("mkdir mnt");
        if opts.allow_other {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        }
        fs::create_dir(root.join("scratch")).expect("mkdir scratch");
        let key = random_bytes(32);
        fs::write(&keyfile, &key).expect("write keyfile");
        let init = output(
            tool(BIN)
                .arg("init")
                .arg(&backing)
                .arg("--keyfile")
                .arg(&keyfile)
                .args(plaintext_names().then_some("--plaintext-names"))
                .env_remove("RUST_LOG"),
        );
        if !init.status.success() {
            if let Some(small) = &small_fs {
                let _ = Command::new("umount").arg("-l").arg(small).status();
            }
            panic!(
                "envelopefs init failed ({}):\n{}",
                init.status,
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let pid: DaemonPid = Arc::new(Mutex::new(None));
        let watchdog = Some(spawn_watchdog(pid.clone(), mnt.clone()));
        Some(Mounted {
            dir,
            backing,
            mnt,
            log,
            keyfile,
            key,
            opts,
            child: None,
            pid,
            watchdog,
            small_fs,
        })
    }

    /// Starts the daemon in the foreground and waits until the mount is up.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.stderr"))
            .expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(&self.backing)
            .arg(&self.mnt)
            .arg("--keyfile")
            .arg(&self.keyfile)
            .arg("--log-file")
            .arg(&self.log);
        for _ in 0..self.opts.verbose {
            cmd.arg("-v");
        }
        if self.opts.allow_other {
            cmd.arg("--allow-other");
        }
        if !self.opts.writeback {
            cmd.arg("--no-writeback-cache");
        }
        if !self.opts.xattrs {
            cmd.arg("--no-xattr");
        }
        cmd.args(&self.opts.extra_args);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn envelopefs mount");
        *self.pid.lock().unwrap() = Some(child.id() as i32);
        let start = Instant::now();
        loop {
            if is_mounted(&self.mnt) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                *self.pid.lock().unwrap() = None;
                panic!(
                    "the daemon exited ({status}) before mounting\n{}",
                    self.diagnostics()
                );
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                *self.pid.lock().unwrap() = None;
                let _ = child.kill();
                let _ = child.wait();
                force_unmount(&self.mnt);
                panic!(
                    "no mount at {} after {MOUNT_TIMEOUT:?}\n{}",
                    self.mnt.display(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The options the next [`Mounted::mount`] uses.
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.opts
    }

    /// Unmounts cleanly (`envelopefs unmount`, falling back to `umount -l` / `fusermount3 -uz`,
    /// finally SIGKILL by pid) and returns the daemon's exit status (None if it was killed).
    pub fn unmount(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("timeout")
            .args(["-k", "5", "20"])
            .arg(BIN)
            .arg("unmount")
            .arg(&self.mnt)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut status = wait_timeout(&mut child, EXIT_TIMEOUT);
        if status.is_none() {
            eprintln!(
                "daemon {} still running after `envelopefs unmount`; forcing",
                child.id()
            );
            // Ends every pending request, in case the daemon is stuck inside the kernel.
            abort_mount(&self.mnt);
            force_unmount(&self.mnt);
            status = wait_timeout(&mut child, Duration::from_secs(5));
        }
        if status.is_none() {
            eprintln!(
                "daemon {} still running after umount -l; killing it",
                child.id()
            );
            self.kill_child(&mut child);
        } else {
            *self.pid.lock().unwrap() = None;
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        status
    }

    fn kill_child(&self, child: &mut Child) {
        {
            let mut pid = self.pid.lock().unwrap();
            // Child::kill sends SIGKILL to this child's pid (not reaped yet, so not reused).
            let _ = child.kill();
            *pid = None;
        }
        let _ = wait_timeout(child, Duration::from_secs(10));
    }

    /// Kills the daemon with SIGKILL (by pid) mid-whatever and reaps it. The dead mount stays
    /// attached (calls on it fail with ENOTCONN) until [`Mounted::detach`].
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("not mounted");
        self.kill_child(&mut child);
    }

    /// Sends `sig` to the daemon (by pid) and waits for it to exit; returns its status, or
    /// None if it did not exit in time (it is then unmounted the hard way).
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("not mounted");
        {
            let _pid = self.pid.lock().unwrap();
            // SAFETY: kill has no memory effects; the child is not reaped yet (pid not reused).
            unsafe { libc::kill(child.id() as i32, sig) };
        }
        let status = wait_timeout(&mut child, EXIT_TIMEOUT);
        if status.is_some() {
            *self.pid.lock().unwrap() = None;
        } else {
            self.child = Some(child);
            self.unmount();
        }
        status
    }

    /// Detaches a dead mount with `umount -l` (after [`Mounted::kill9`]).
    pub fn detach(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        force_unmount(&self.mnt);
        assert!(
            !is_mounted(&self.mnt),
            "the dead mount at {} is still attached",
            self.mnt.display()
        );
    }

    /// Unmounts (asserting the daemon exits successfully), then mounts again.
    pub fn remount(&mut self) {
        let status = self.unmount();
        assert!(
            status.is_some_and(|s| s.success()),
            "the daemon did not exit cleanly on unmount: {status:?}\n{}",
            self.diagnostics()
        );
        self.mount();
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The ciphertext tree `BACKING/data`.
    pub fn data(&self) -> PathBuf {
        self.backing.join("data")
    }

    /// The mountpoint.
    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    /// `rel` under the mountpoint.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The backing path of the plaintext path `rel` (its parent directories must exist):
    /// `BACKING/data/rel` on a volume with plaintext names, the encrypted path otherwise
    /// (`envelopefs path`, which reads the keystore with the key file).
    pub fn backing_path(&self, rel: &str) -> PathBuf {
        let out = output(
            tool(BIN)
                .arg("path")
                .arg(&self.backing)
                .arg(rel)
                .arg("--keyfile")
                .arg(&self.keyfile)
                .env_remove("RUST_LOG"),
        );
        assert!(
            out.status.success(),
            "envelopefs path {rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("UTF-8 path");
        PathBuf::from(line.trim_end_matches('\n'))
    }

    /// Whether this volume stores names in the clear (`ENVELOPEFS_TEST_PLAINTEXT_NAMES=1`
    /// runs every mount test on such volumes).
    pub fn plaintext_names(&self) -> bool {
        plaintext_names()
    }

    /// A plain directory outside the mount for reference files.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// The temp dir holding everything.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log file (`--log-file`).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The daemon's log text so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log so far contain every one of `parts` (with `verbose: 2`, one
    /// line per FUSE request: for counting requests).
    pub fn log_lines_with(&self, parts: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Where the daemon's stderr went before it redirected itself to the log.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("daemon.stderr")
    }

    /// The key file's path.
    pub fn keyfile(&self) -> &Path {
        &self.keyfile
    }

    /// Runs `envelopefs ARGS... BACKING REST... --keyfile KF` (a key-management CLI command
    /// next to the mount) and returns (success, stdout+stderr).
    pub fn cli(&self, args: &[&str], rest: &[&str]) -> (bool, String) {
        let out = output(
            tool(BIN)
                .args(args)
                .arg(&self.backing)
                .args(rest)
                .arg("--keyfile")
                .arg(&self.keyfile),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// The key file's 32 bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the daemon is running and the mount attached.
    pub fn is_mounted(&self) -> bool {
        self.child.is_some() && is_mounted(&self.mnt)
    }

    /// The log and early stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- daemon stderr ---\n{}\n--- log {} (last 40 lines) ---\n{}",
            tail(fs::read_to_string(self.stderr_path()).unwrap_or_default()),
            self.log.display(),
            tail(self.log_text())
        )
    }
}

/// [`Mounted::cli`] that must succeed: returns its output, or fails the test with it and the
/// daemon's diagnostics.
pub fn ok(m: &Mounted, args: &[&str], rest: &[&str]) -> String {
    let (success, text) = m.cli(args, rest);
    assert!(
        success,
        "envelopefs {args:?} {rest:?} failed:\n{text}\n{}",
        m.diagnostics()
    );
    text
}

/// The policy that allows the volume administrator everything and nobody else anything.
pub const ADMIN_ONLY_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"admin only","Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"}]}"#;

/// Puts `policy` (a JSON key policy) on `key` with `envelopefs key policy put`, which must
/// succeed.
pub fn put_key_policy(m: &Mounted, key: &str, policy: &str) {
    let file = m.scratch().join("policy.json");
    fs::write(&file, policy).expect("write the policy file");
    ok(
        m,
        &["key", "policy", "put"],
        &[key, "--file", file.to_str().expect("UTF-8 temp path")],
    );
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "test failed with {} mounted\n{}",
                self.mnt.display(),
                self.diagnostics()
            );
            // A failed test may have left the daemon stuck; nothing it buffers matters now.
            abort_mount(&self.mnt);
        }
        self.unmount();
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
        if let Some(small) = self.small_fs.take() {
            let _ = Command::new("timeout")
                .arg("10")
                .arg("umount")
                .arg("-l")
                .arg(&small)
                .stderr(Stdio::null())
                .status();
        }
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// Kills the daemon after [`WATCHDOG`] unless told to stop (by the sender being dropped).
fn spawn_watchdog(pid: DaemonPid, mnt: PathBuf) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let limit = watchdog_limit();
        let deadline = Instant::now() + limit;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        let guard = pid.lock().unwrap();
        if let Some(p) = *guard {
            eprintln!(
                "watchdog: test still running after {limit:?}; killing daemon {p} of {}",
                mnt.display()
            );
            // SAFETY: kill has no memory effects; `p` is our unreaped child (see DaemonPid).
            unsafe { libc::kill(p, libc::SIGKILL) };
            // A daemon stuck inside the kernel cannot die until its requests end.
            abort_mount(&mnt);
        }
    });
    (tx, handle)
}

/// Whether the mount tests run on volumes with plaintext names (`ENVELOPEFS_TEST_PLAINTEXT_NAMES=1`;
/// default: encrypted names, as `init` makes them).
pub fn plaintext_names() -> bool {
    std::env::var_os("ENVELOPEFS_TEST_PLAINTEXT_NAMES").is_some_and(|v| v == "1")
}
