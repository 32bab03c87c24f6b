//! Shared helpers of the mount tests: a real `envelopefs` mount in its own temp dir that
//! unmounts in `Drop`, a watchdog that kills the daemon (by pid) if a test runs too long so no
//! test can hang on a blocked FUSE call, and external tools run under `timeout`.
//!
//! Every test gets its own backing directory, mountpoint and daemon, so tests run in parallel.
//! The mount and its watchdog are in [`mounted`], the libc wrappers the mount tests share in
//! [`sys`].
#![allow(dead_code)]

pub mod mounted;
pub mod sys;

// Not every test binary uses them all.
#[allow(unused_imports)]
pub use mounted::{ADMIN_ONLY_POLICY, Mounted, Options, ok, put_key_policy};

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_envelopefs");
/// Seconds an external tool may run (`timeout` kills it after that).
pub const TOOL_TIMEOUT_SECS: u32 = 60;

/// Format constants (docs/FORMAT.md) for the default volume: 4096-byte blocks, a 1024-byte
/// header region, 28 bytes (nonce 12 + tag 16) per sealed block.
pub const BLOCK: u64 = 4096;
/// Bytes of the two header copies before block 0.
pub const HEADER_REGION: u64 = 1024;
/// Bytes a sealed block adds.
pub const OVERHEAD: u64 = 28;

/// Backing length of a non-empty file of `size` plaintext bytes.
pub fn backing_len(size: u64) -> u64 {
    let full = size / BLOCK;
    let rem = size % BLOCK;
    HEADER_REGION + full * (BLOCK + OVERHEAD) + if rem == 0 { 0 } else { rem + OVERHEAD }
}

/// Backing offset of sealed block `i`.
pub fn block_offset(i: u64) -> u64 {
    HEADER_REGION + i * (BLOCK + OVERHEAD)
}

/// With this set to `1` (as .ci/run does) a mount test that cannot mount for want of FUSE
/// fails instead of passing as skipped.
pub const REQUIRE_FUSE: &str = "ENVELOPEFS_REQUIRE_FUSE";

/// True when FUSE mounts can work here; prints why not otherwise, or panics saying why when
/// [`REQUIRE_FUSE`] is `1`.
pub fn fuse_available() -> bool {
    let why = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse is missing (no FUSE in this environment)".to_string()
    } else if let Err(e) = File::options().read(true).write(true).open("/dev/fuse") {
        format!("cannot open /dev/fuse ({e})")
    } else {
        return true;
    };
    if std::env::var(REQUIRE_FUSE).as_deref() == Ok("1") {
        panic!("{REQUIRE_FUSE}=1 but FUSE is not available: {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// Random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut v))
        .expect("read /dev/urandom");
    v
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A small deterministic PRNG (xorshift64*) so failing runs can be reproduced from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A seed from the clock, printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("ENVELOPEFS_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {s} (set ENVELOPEFS_TEST_SEED={s} to replay)");
    s
}

/// Decodes the octal escapes (`\040` etc.) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `canonical` (an already canonical path) is a mountpoint in /proc/self/mountinfo.
pub fn is_mounted(canonical: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canonical.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*want))
}

/// Aborts the FUSE connection of the mount at `mnt`: `umount -f` (MNT_FORCE) makes the kernel
/// fail every pending request of a FUSE mount before it tries to unmount, so a daemon stuck
/// inside the kernel (waiting on a page its own pending request holds) can exit. The unmount
/// itself may fail (busy); callers detach afterwards. Best effort.
pub fn abort_mount(mnt: &Path) {
    let _ = Command::new("timeout")
        .args(["-k", "5", "10", "umount", "-f"])
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// A `Command` for `program` run under `timeout` (SIGTERM after [`TOOL_TIMEOUT_SECS`], SIGKILL
/// 5 s later), with stdin closed.
pub fn tool(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.arg("-k")
        .arg("5")
        .arg(TOOL_TIMEOUT_SECS.to_string())
        .arg(program)
        .stdin(Stdio::null());
    c
}

/// Runs `cmd` and returns its output; panics if it could not be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, panicking with its output unless it succeeded; returns its stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}{})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        if out.status.code() == Some(124) {
            ", timed out"
        } else {
            ""
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell script in `cwd` under `timeout`, panicking unless it succeeded; returns stdout.
pub fn sh(script: &str, cwd: &Path) -> String {
    check(tool("sh").arg("-c").arg(script).current_dir(cwd))
}

/// Runs `sh -c script` in `dir` as uid 1000, gid 1000, without supplementary groups.
pub fn as_user_1000(dir: &Path, script: &str) -> Output {
    output(
        tool("setpriv")
            .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
            .args(["sh", "-c", script])
            .current_dir(dir),
    )
}

/// Reads a whole file, returning the raw errno on failure.
pub fn read_errno(path: &Path) -> Result<Vec<u8>, i32> {
    fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Every regular file under `dir` (recursively, symlinks not followed).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Name, type, mode, size, mtime (ns) and link count of every entry under `dir`, sorted.
pub fn tree_listing(dir: &Path) -> String {
    sh("find . -printf '%p %y %m %s %T@ %n %l\\n' | sort", dir)
}
