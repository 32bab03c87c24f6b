//! `mount --background`: starts this program again as a detached daemon (the hidden
//! subcommand [`DAEMON_SUBCOMMAND`], in a new session), hands it its settings and the unlock
//! secret once on its stdin, and waits until the mount is up or the daemon has failed.
//!
//! The hand-over on the daemon's stdin (a pipe; never the command line or the environment):
//!
//! ```text
//! header  JSON object on one line, then LF (0x0A):
//!         {"version":1,"secret":"passphrase"|"key_file","settings":{DaemonSettings}}
//! length  u32, big-endian: the secret's length in bytes
//! secret  the passphrase bytes exactly as the foreground would use them (after
//!         keys::secret::passphrase_bytes; any byte, LF and CR included), or a key file's
//!         32 bytes
//! then end of file.
//! ```
//!
//! The daemon reads all of it into one zeroizing buffer of fixed size (so no reallocation
//! leaves a copy behind), refuses trailing bytes, a short secret, an empty passphrase and a
//! key file that is not 32 bytes. Both sides zeroize the secret once it is handed on.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::DaemonSettings;
use crate::keys::secret::Unlock;
use crate::store::sys;

/// The hidden subcommand a background daemon runs as; it reads the hand-over on stdin.
pub(crate) const DAEMON_SUBCOMMAND: &str = "__daemon";

/// How long `mount --background` waits for the daemon to come up.
pub(crate) const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// The hand-over format this build writes and reads.
const HANDOFF_VERSION: u32 = 1;

/// The most a hand-over may hold: settings with a few paths and a passphrase.
const MAX_HANDOFF: usize = 1 << 20;

/// Why `mount --background` failed, or why a daemon could not read its hand-over.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    /// `current_exe` failed.
    #[error("cannot find my own executable: {0}")]
    OwnExecutable(std::io::Error),
    /// The daemon process did not start.
    #[error("cannot start the daemon: {0}")]
    Spawn(std::io::Error),
    /// Writing the hand-over to the daemon failed.
    #[error("cannot hand the secret to the daemon: {0}")]
    Handoff(std::io::Error),
    /// The daemon exited before the mount appeared.
    #[error("the daemon exited ({status}) before mounting; its log {}:\n{}", log.display(), log_text.trim_end())]
    Exited {
        /// How it exited (its exit code is the mount's).
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// What its log holds.
        log_text: String,
    },
    /// The mount did not appear within [`BACKGROUND_TIMEOUT`]; the daemon keeps running.
    #[error("the daemon (pid {pid}) did not mount within {BACKGROUND_TIMEOUT:?}; see {}", log.display())]
    Timeout {
        /// The daemon's pid.
        pid: u32,
        /// Its log file.
        log: PathBuf,
    },
    /// The daemon's stdin did not hold a valid hand-over.
    #[error(
        "cannot read the mount settings on stdin: {0} (`envelopefs {DAEMON_SUBCOMMAND}` is \
         started by `envelopefs mount --background`; run that instead)"
    )]
    Receive(String),
}

/// A daemon that is up: the mount is in place.
#[derive(Debug)]
pub struct Started {
    /// The daemon's pid.
    pub pid: u32,
    /// Where it logs.
    pub log: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum SecretKind {
    Passphrase,
    KeyFile,
    HsmPin,
}

/// The header line of the hand-over.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    version: u32,
    secret: SecretKind,
    settings: DaemonSettings,
}

/// The hand-over bytes for `settings` and `unlock` (module docs).
fn encode(settings: &DaemonSettings, unlock: &Unlock) -> Result<Zeroizing<Vec<u8>>, String> {
    let (kind, secret): (_, &[u8]) = match unlock {
        Unlock::Passphrase(p) => (SecretKind::Passphrase, p),
        Unlock::KeyFile(k) => (SecretKind::KeyFile, &k[..]),
        Unlock::HsmPin(p) => (SecretKind::HsmPin, p),
    };
    let header = serde_json::to_vec(&Header {
        version: HANDOFF_VERSION,
        secret: kind,
        settings: settings.clone(),
    })
    .map_err(|e| e.to_string())?;
    let len = u32::try_from(secret.len()).map_err(|_| "the secret is too long".to_owned())?;
    // Sized up front: growing would leave a copy of the secret in the old allocation.
    let mut out = Zeroizing::new(Vec::with_capacity(header.len() + 1 + 4 + secret.len()));
    out.extend_from_slice(&header);
    out.push(b'\n');
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(secret);
    Ok(out)
}

/// Reads back what [`encode`] wrote; `buf` is the whole of stdin.
fn decode(buf: &[u8]) -> Result<(DaemonSettings, Unlock), String> {
    let nl = buf
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no settings line")?;
    let header: Header =
        serde_json::from_slice(&buf[..nl]).map_err(|e| format!("bad settings line: {e}"))?;
    if header.version != HANDOFF_VERSION {
        return Err(format!(
            "hand-over version {}, this daemon reads version {HANDOFF_VERSION}",
            header.version
        ));
    }
    let rest = &buf[nl + 1..];
    let (len, secret) = rest.split_first_chunk::<4>().ok_or("no secret length")?;
    let len = u32::from_be_bytes(*len) as usize;
    if secret.len() != len {
        return Err(format!(
            "the secret should be {len} bytes, {} followed",
            secret.len()
        ));
    }
    let unlock = match header.secret {
        SecretKind::Passphrase if secret.is_empty() => return Err("empty passphrase".into()),
        SecretKind::Passphrase => {
            let mut p = Zeroizing::new(Vec::with_capacity(len));
            p.extend_from_slice(secret);
            Unlock::Passphrase(p)
        }
        SecretKind::HsmPin if secret.is_empty() => return Err("empty token PIN".into()),
        SecretKind::HsmPin => {
            let mut p = Zeroizing::new(Vec::with_capacity(len));
            p.extend_from_slice(secret);
            Unlock::HsmPin(p)
        }
        SecretKind::KeyFile => {
            let mut k = Zeroizing::new([0u8; 32]);
            if secret.len() != k.len() {
                return Err(format!("a key file is 32 bytes, not {len}"));
            }
            k.copy_from_slice(secret);
            Unlock::KeyFile(k)
        }
    };
    Ok((header.settings, unlock))
}

/// In the daemon: reads the hand-over from stdin (unbuffered, to end of file).
pub(crate) fn receive() -> Result<(DaemonSettings, Unlock), BackgroundError> {
    let fail = |e: String| BackgroundError::Receive(e);
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(fail("stdin is a terminal".into()));
    }
    // A duplicate of fd 0 read directly: Stdin's own buffer would keep a copy of the secret.
    let mut f = File::from(
        stdin
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| fail(e.to_string()))?,
    );
    let mut buf = Zeroizing::new(vec![0u8; MAX_HANDOFF]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(fail(format!("more than {MAX_HANDOFF} bytes")));
        }
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    decode(&buf[..n]).map_err(fail)
}

/// Starts a daemon for `settings` with this executable's [`DAEMON_SUBCOMMAND`], in a new
/// session, without the environment variables in `scrub_env` (secrets), hands it the
/// settings and `unlock`, and waits until the mount is up (it appears in
/// /proc/self/mountinfo), the daemon exits, or [`BACKGROUND_TIMEOUT`] passes. The daemon logs
/// to `settings.log_file`, by default `$TMPDIR/envelopefs-UID-PID.log`.
pub(crate) fn spawn(
    settings: &DaemonSettings,
    unlock: Unlock,
    scrub_env: &[&str],
) -> Result<Started, BackgroundError> {
    let log = settings.log_file.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "envelopefs-{}-{}.log",
            sys::getuid(),
            std::process::id()
        ))
    });
    let settings = DaemonSettings {
        log_file: Some(log.clone()),
        ..settings.clone()
    };
    let handoff = encode(&settings, &unlock)
        .map_err(|e| BackgroundError::Handoff(std::io::Error::other(e)))?;
    drop(unlock);
    let exe = std::env::current_exe().map_err(BackgroundError::OwnExecutable)?;
    let mut cmd = Command::new(exe);
    cmd.arg(DAEMON_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in scrub_env {
        cmd.env_remove(var);
    }
    sys::new_session_on_spawn(&mut cmd);
    let mut child = cmd.spawn().map_err(BackgroundError::Spawn)?;
    {
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin
            .write_all(&handoff)
            .map_err(BackgroundError::Handoff)?;
    }
    drop(handoff);
    let start = Instant::now();
    loop {
        if super::mounts::is_mounted(&settings.mountpoint) {
            return Ok(Started {
                pid: child.id(),
                log,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(BackgroundError::Exited {
                status,
                log,
                log_text,
            });
        }
        if start.elapsed() > BACKGROUND_TIMEOUT {
            return Err(BackgroundError::Timeout {
                pid: child.id(),
                log,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DaemonSettings {
        let mut s = DaemonSettings::new("b".into(), "m".into());
        s.log_file = Some("/tmp/log".into());
        s.verbose = 1;
        s
    }

    fn pass(p: &[u8]) -> Unlock {
        Unlock::Passphrase(Zeroizing::new(p.to_vec()))
    }

    /// Every passphrase arrives byte for byte, line feeds and carriage returns included.
    #[test]
    fn passphrases_arrive_unchanged() {
        for p in [
            &b"pw"[..],
            b"pw\r",
            b"two\nlines",
            b"\n",
            b"\r\n\r",
            b"\xff\x00 \"}",
        ] {
            let bytes = encode(&settings(), &pass(p)).unwrap();
            let (s, u) = decode(&bytes).unwrap();
            assert_eq!(s, settings());
            let Unlock::Passphrase(got) = u else {
                panic!("{p:?}")
            };
            assert_eq!(&got[..], p);
        }
    }

    #[test]
    fn key_files_arrive_unchanged() {
        let bytes = encode(&settings(), &Unlock::KeyFile(Zeroizing::new([7; 32]))).unwrap();
        let Ok((_, Unlock::KeyFile(k))) = decode(&bytes) else {
            panic!()
        };
        assert_eq!(*k, [7; 32]);
    }

    #[test]
    fn the_framing_is_as_documented() {
        let bytes = encode(&settings(), &pass(b"pw")).unwrap();
        let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&bytes[..nl]).unwrap();
        assert_eq!(header["version"], 1);
        assert_eq!(header["secret"], "passphrase");
        assert_eq!(header["settings"]["backing"], "b");
        assert_eq!(&bytes[nl + 1..], b"\0\0\0\x02pw");
        assert!(!String::from_utf8_lossy(&bytes[..nl]).contains("pw\""));
    }

    #[test]
    fn damaged_hand_overs_are_refused() {
        let good = encode(&settings(), &pass(b"pw")).unwrap();
        let nl = good.iter().position(|&b| b == b'\n').unwrap();
        // Truncated anywhere, or with a byte too many.
        for cut in [0, nl, nl + 1, nl + 3, nl + 5, good.len() - 1] {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.to_vec();
        long.push(b'x');
        assert!(decode(&long).is_err());
        // Another version, an empty passphrase, a key file of the wrong length.
        let other = String::from_utf8_lossy(&good).replacen("\"version\":1", "\"version\":2", 1);
        assert!(decode(other.as_bytes()).unwrap_err().contains("version 2"));
        assert!(decode(&encode(&settings(), &pass(b"")).unwrap()).is_err());
        let mut kf = encode(&settings(), &pass(b"short")).unwrap().to_vec();
        let at = kf.iter().position(|&b| b == b'\n').unwrap();
        let header = String::from_utf8_lossy(&kf[..at]).replace("passphrase", "key_file");
        kf.splice(..at, header.into_bytes());
        assert!(decode(&kf).unwrap_err().contains("32 bytes"));
    }
}
