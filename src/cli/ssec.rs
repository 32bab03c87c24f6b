//! `envelopefs ssec`: give a live mount your customer key (SSE-C), take it back, see what is
//! loaded, move your files to a new key. The CLI side of `daemon::control`.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::cli::{CliError, ExitCode, fail};
use crate::daemon::control::{Request, request};

/// `envelopefs ssec …`.
#[derive(Args, Debug)]
pub struct SsecArgs {
    #[command(subcommand)]
    command: SsecCommand,
}

/// Where a customer key comes from.
#[derive(Args, Debug, Clone)]
pub struct CustomerKeySource {
    /// A 32-byte key file (make one with `head -c 32 /dev/urandom > FILE`; keep it safe:
    /// files wrapped under it cannot be read without it).
    #[arg(long, value_name = "FILE", conflicts_with = "passfile")]
    keyfile: Option<PathBuf>,
    /// Derive the key from the passphrase in this file (Argon2id, 64 MiB); without --keyfile
    /// or --passfile the passphrase is asked on the terminal.
    #[arg(long, value_name = "FILE")]
    passfile: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum SsecCommand {
    /// Load your customer key into the mount (for as long as it is mounted, or until
    /// `forget` or the idle expiry). The daemon learns who you are from the socket, keeps only
    /// keys derived from it, in memory, and never stores it.
    #[command(
        after_help = "Example:\n  head -c 32 /dev/urandom > ~/.envelopefs-key && chmod 600 ~/.envelopefs-key\n  envelopefs ssec add /mnt/shared --keyfile ~/.envelopefs-key --default\n\nWith --default every file you create from now on is wrapped under this key only\n(add --recovery to also wrap it under the volume's CMK); nobody without the key,\nroot included, can read it. Files you create without --default use the CMK as usual."
    )]
    Add {
        /// The mount point.
        mountpoint: PathBuf,
        #[command(flatten)]
        key: CustomerKeySource,
        /// Wrap every file you create under this key.
        #[arg(long)]
        default: bool,
        /// With --default: also wrap new files under the volume's CMK, so the key service can
        /// open them (for whoever its key policy allows) if you lose your key.
        #[arg(long, requires = "default")]
        recovery: bool,
        /// Drop the key after this many seconds without use.
        #[arg(long, value_name = "SECS")]
        idle_expiry: Option<u64>,
    },
    /// Drop your customer keys from the mount (all, or the one with --key-id): your files
    /// are unreadable through it at once, open files included.
    Forget {
        /// The mount point.
        mountpoint: PathBuf,
        /// Only this key (its id, as `status` shows it).
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
    },
    /// Show which of your customer keys the mount holds (ids only).
    Status {
        /// The mount point.
        mountpoint: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move your files from one customer key to another (headers only; crash-safe).
    Rotate {
        /// The mount point.
        mountpoint: PathBuf,
        /// The key your files are wrapped under now (32-byte key file).
        #[arg(long, value_name = "FILE")]
        old: PathBuf,
        /// The key to wrap them under (32-byte key file); it stays loaded.
        #[arg(long, value_name = "FILE")]
        new: PathBuf,
    },
}

fn read_keyfile(p: &Path) -> Result<Zeroizing<[u8; 32]>, CliError> {
    let bytes = Zeroizing::new(std::fs::read(p).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read key file {}: {e}", p.display()),
        )
    })?);
    let k: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        fail(
            ExitCode::Failure,
            format!(
                "key file {} must hold exactly 32 bytes (make one with `head -c 32 /dev/urandom > FILE`)",
                p.display()
            ),
        )
    })?;
    Ok(Zeroizing::new(k))
}

/// The customer key from a passphrase (docs/FORMAT.md §4.6): Argon2id, 64 MiB, 3 passes, one
/// lane, salt = the first 16 bytes of derive_key("envelopefs sse-c passphrase salt v1", uid).
fn from_passphrase(pass: &[u8], uid: u32) -> Result<Zeroizing<[u8; 32]>, CliError> {
    let salt = blake3::derive_key("envelopefs sse-c passphrase salt v1", &uid.to_be_bytes());
    let params = argon2::Params::new(64 * 1024, 3, 1, Some(32)).expect("valid Argon2 parameters");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut k = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass, &salt[..16], &mut k[..])
        .map_err(|e| fail(ExitCode::Failure, format!("Argon2id failed: {e}")))?;
    Ok(k)
}

fn read_key(src: &CustomerKeySource) -> Result<Zeroizing<[u8; 32]>, CliError> {
    if let Some(p) = &src.keyfile {
        return read_keyfile(p);
    }
    let pass = if let Some(p) = &src.passfile {
        let mut v = Zeroizing::new(Vec::new());
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut v))
            .map_err(|e| {
                fail(
                    ExitCode::Failure,
                    format!("cannot read pass file {}: {e}", p.display()),
                )
            })?;
        while v.last() == Some(&b'\n') {
            v.pop();
        }
        v
    } else {
        let p = rpassword::prompt_password("Customer key passphrase: ").map_err(|e| {
            fail(
                ExitCode::Failure,
                format!(
                    "cannot read a passphrase from the terminal ({e}); use --keyfile or --passfile"
                ),
            )
        })?;
        Zeroizing::new(p.into_bytes())
    };
    if pass.is_empty() {
        return Err(fail(ExitCode::Usage, "the passphrase is empty"));
    }
    eprintln!("Deriving the customer key from the passphrase with Argon2id (64 MiB)...");
    from_passphrase(&pass, crate::store::sys::geteuid())
}

fn ask(mnt: &Path, req: Request, secret: &[u8]) -> Result<serde_json::Value, CliError> {
    request(mnt, &Request { version: 1, ..req }, secret)
        .map_err(|e| fail(ExitCode::Failure, format!("ssec: {e}")))
}

/// Runs `envelopefs ssec …`.
pub(crate) fn run(args: SsecArgs) -> Result<(), CliError> {
    match args.command {
        SsecCommand::Add {
            mountpoint,
            key,
            default,
            recovery,
            idle_expiry,
        } => {
            let k = read_key(&key)?;
            let v = ask(
                &mountpoint,
                Request {
                    op: "add".into(),
                    default,
                    recovery,
                    idle_secs: idle_expiry,
                    ..Request::default()
                },
                &k[..],
            )?;
            println!(
                "Loaded customer key {} into {}{}.",
                v["key_id"].as_str().unwrap_or("?"),
                mountpoint.display(),
                if default {
                    if recovery {
                        "; your new files are wrapped under it and under the volume's CMK"
                    } else {
                        "; your new files are wrapped under it only"
                    }
                } else {
                    ""
                }
            );
        }
        SsecCommand::Forget { mountpoint, key_id } => {
            let v = ask(
                &mountpoint,
                Request {
                    op: "forget".into(),
                    key_id,
                    ..Request::default()
                },
                &[],
            )?;
            println!("Dropped {} customer key(s).", v["forgotten"]);
        }
        SsecCommand::Status { mountpoint, json } => {
            let v = ask(
                &mountpoint,
                Request {
                    op: "status".into(),
                    ..Request::default()
                },
                &[],
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["status"]).expect("json")
                );
            } else {
                let st = &v["status"];
                let keys = st["keys"].as_array().cloned().unwrap_or_default();
                println!("uid {}: {} customer key(s) loaded", v["uid"], keys.len());
                for k in keys {
                    match k["idle_expires_in"].as_u64() {
                        Some(s) => println!(
                            "  {}  (dropped after {s} s more without use)",
                            k["id"].as_str().unwrap_or("?")
                        ),
                        None => println!("  {}", k["id"].as_str().unwrap_or("?")),
                    }
                }
                if st["default"] == true {
                    println!(
                        "new files: wrapped under your newest key{}",
                        if st["recovery"] == true {
                            " and the volume's CMK"
                        } else {
                            " only"
                        }
                    );
                }
            }
        }
        SsecCommand::Rotate {
            mountpoint,
            old,
            new,
        } => {
            let (o, n) = (read_keyfile(&old)?, read_keyfile(&new)?);
            let mut both = Zeroizing::new([0u8; 64]);
            both[..32].copy_from_slice(&o[..]);
            both[32..].copy_from_slice(&n[..]);
            let v = ask(
                &mountpoint,
                Request {
                    op: "rotate".into(),
                    ..Request::default()
                },
                &both[..],
            )?;
            println!(
                "Re-wrapped {} file(s) from customer key {} to {}{}.",
                v["rewrapped"],
                v["old_key_id"].as_str().unwrap_or("?"),
                v["new_key_id"].as_str().unwrap_or("?"),
                if v["failed"].as_u64().unwrap_or(0) > 0 {
                    format!("; {} failed (see the daemon's log)", v["failed"])
                } else {
                    String::new()
                }
            );
            if v["failed"].as_u64().unwrap_or(0) > 0 {
                return Err(fail(ExitCode::Failure, "some files were not re-wrapped"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// docs/FORMAT.md §4.6: the passphrase vector (computed with Python argon2-cffi).
    #[test]
    fn passphrase_key_vector() {
        let k = super::from_passphrase(b"correct horse battery staple", 4001).unwrap();
        assert_eq!(
            crate::format::context::hex(&k[..]),
            "b18a75fec92fd435fcc940d125cd1b9b634be1b4f011fa3bbd5c16c483b8eeb3"
        );
    }
}
