//! `mount --background`: re-runs this program as a detached foreground mount, hands it the
//! unlock secret through a pipe (never the command line or environment), and waits until the
//! mount is up or the daemon has failed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cli::{BACKGROUND_TIMEOUT, CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::fuse::MountOptions;
use crate::keys::secret::{Unlock, as_passfile};

/// True when `mountpoint` appears in /proc/self/mountinfo.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mountpoint) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Redirects this process's stderr to `path` (appending), for a daemon's log.
pub fn redirect_stderr(path: &Path) -> Result<(), CliError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot open log file {}: {e}", path.display()),
            )
        })?;
    // SAFETY: dup2 onto fd 2 with a valid open fd; the old stderr is closed atomically.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&f), 2) } < 0 {
        return Err(fail(
            ExitCode::Failure,
            format!(
                "cannot redirect stderr: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Starts the daemon and waits for the mount.
pub fn spawn_background(
    backing: &Path,
    mountpoint: &Path,
    secret: &SecretArgs,
    opts: &MountOptions,
    log_file: Option<PathBuf>,
    verbose: u8,
) -> Result<(), CliError> {
    let unlock = read_unlock(secret, false)?;
    // The daemon reads the secret from its stdin as `--passfile`/`--keyfile`: a passphrase is
    // written so that the pass-file rule gives back exactly its bytes.
    let handed = match &unlock {
        Unlock::Passphrase(p) => as_passfile(p).ok_or_else(|| {
            fail(
                ExitCode::Failure,
                "the passphrase contains a line feed, which cannot be handed to a background \
                 daemon (it reads a pass file's first line); mount in the foreground instead",
            )
        })?,
        Unlock::KeyFile(k) => zeroize::Zeroizing::new(k.to_vec()),
    };
    let log = log_file.unwrap_or_else(|| {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        std::env::temp_dir().join(format!("envelopefs-{uid}-{}.log", std::process::id()))
    });
    let exe = std::env::current_exe().map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot find my own executable: {e}"),
        )
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(backing)
        .arg(mountpoint)
        .arg("--log-file")
        .arg(&log);
    cmd.arg("--threads").arg(opts.threads.to_string());
    if opts.allow_other {
        cmd.arg("--allow-other");
    }
    if opts.read_only {
        cmd.arg("--read-only");
    }
    if !opts.kernel_cache {
        cmd.arg("--no-kernel-cache");
    }
    if !opts.writeback_cache {
        cmd.arg("--no-writeback-cache");
    }
    if !opts.xattrs {
        cmd.arg("--no-xattr");
    }
    if opts.suid {
        cmd.arg("--suid");
    }
    if opts.dev {
        cmd.arg("--dev");
    }
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    match &unlock {
        Unlock::Passphrase(_) => cmd.arg("--passfile").arg("/dev/stdin"),
        Unlock::KeyFile(_) => cmd.arg("--keyfile").arg("/dev/stdin"),
    };
    cmd.env_remove(crate::cli::PASSPHRASE_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and only detaches the child from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        fail(
            ExitCode::MountFailed,
            format!("cannot start the daemon: {e}"),
        )
    })?;
    {
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(&handed).map_err(|e| {
            fail(
                ExitCode::MountFailed,
                format!("cannot hand the secret to the daemon: {e}"),
            )
        })?;
    }
    let start = Instant::now();
    loop {
        if is_mounted(mountpoint) {
            println!(
                "Mounted {} at {} (daemon pid {}, log {}).",
                backing.display(),
                mountpoint.display(),
                child.id(),
                log.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let code = match status.code() {
                Some(3) => ExitCode::WrongPassphrase,
                Some(4) => ExitCode::BadVolume,
                Some(6) => ExitCode::Busy,
                _ => ExitCode::MountFailed,
            };
            return Err(fail(
                code,
                format!(
                    "the daemon exited ({status}) before mounting; its log {}:\n{}",
                    log.display(),
                    text.trim_end()
                ),
            ));
        }
        if start.elapsed() > BACKGROUND_TIMEOUT {
            return Err(fail(
                ExitCode::MountFailed,
                format!(
                    "the daemon (pid {}) did not mount within {:?}; see {}",
                    child.id(),
                    BACKGROUND_TIMEOUT,
                    log.display()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
