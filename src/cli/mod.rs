//! Command-line interface: clap parses, this module builds config structs and calls the
//! library. Exit codes are stable (see [`ExitCode`] and README.md §Exit codes).

mod args;
mod export;
mod fsck;
pub(crate) mod hsm;
mod hsm_backup;
pub(crate) mod keys;
mod keystore_backup;
mod path;
pub(crate) mod reencrypt;
pub(crate) mod rewrap;
mod ssec;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::daemon::background::{self, BackgroundError};
use crate::daemon::{Daemon, DaemonError, DaemonSettings};
use crate::keys::local::LocalKms;
use crate::keys::secret::{Unlock, passphrase_bytes};
use crate::keys::{Caller, KeyError};
use crate::store::volume::{self as vol, VolumeError};
pub use args::{Cli, Command, SecretArgs};

/// Environment variable that may hold the passphrase (for scripts; prefer --passfile).
pub(crate) const PASSPHRASE_ENV: &str = "ENVELOPEFS_PASSPHRASE";
/// The environment variable that may hold a PKCS#11 token's PIN.
pub(crate) const HSM_PIN_ENV: &str = "ENVELOPEFS_HSM_PIN";

/// Stable process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Any other failure.
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// Wrong passphrase or key file.
    WrongPassphrase = 3,
    /// BACKING is not a usable volume (missing, corrupt, unknown feature, already exists).
    BadVolume = 4,
    /// The mount itself failed.
    MountFailed = 5,
    /// The volume is already mounted.
    Busy = 6,
    /// `fsck`: damage found (with `--repair`: damage that remains).
    Damaged = 7,
    /// `fsck`: the volume could not be checked, or some of it not (busy, wrong secret, a key
    /// the key service refused, an unreadable directory).
    Unchecked = 8,
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: ExitCode,
    /// What to tell the user.
    pub message: String,
}

impl From<VolumeError> for CliError {
    fn from(e: VolumeError) -> Self {
        let code = match e {
            VolumeError::Busy(_) => ExitCode::Busy,
            VolumeError::Io { .. } => ExitCode::Failure,
            VolumeError::NotAVolume(_)
            | VolumeError::AlreadyExists(_)
            | VolumeError::NotEmpty(_)
            | VolumeError::Config { .. } => ExitCode::BadVolume,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<KeyError> for CliError {
    fn from(e: KeyError) -> Self {
        let code = if matches!(e, KeyError::WrongPassphrase { .. }) {
            ExitCode::WrongPassphrase
        } else {
            ExitCode::Failure
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<DaemonError> for CliError {
    fn from(e: DaemonError) -> Self {
        let code = match e {
            DaemonError::Volume(v) => return v.into(),
            DaemonError::Key(k) => return k.into(),
            DaemonError::NotADirectory(_)
            | DaemonError::Mount { .. }
            | DaemonError::Transport(_) => ExitCode::MountFailed,
            DaemonError::Recovery { .. }
            | DaemonError::OpenVolume(_)
            | DaemonError::SignalHandler(_)
            | DaemonError::Session(_)
            | DaemonError::LogFile { .. }
            | DaemonError::RedirectStderr(_) => ExitCode::Failure,
        };
        fail(code, e.to_string())
    }
}

impl From<BackgroundError> for CliError {
    fn from(e: BackgroundError) -> Self {
        let code = match &e {
            // The daemon's own exit code says why it did not mount.
            BackgroundError::Exited { status, .. } => match status.code() {
                Some(3) => ExitCode::WrongPassphrase,
                Some(4) => ExitCode::BadVolume,
                Some(6) => ExitCode::Busy,
                _ => ExitCode::MountFailed,
            },
            BackgroundError::Spawn(_)
            | BackgroundError::Handoff(_)
            | BackgroundError::Timeout { .. } => ExitCode::MountFailed,
            BackgroundError::OwnExecutable(_) | BackgroundError::Receive(_) => ExitCode::Failure,
        };
        fail(code, e.to_string())
    }
}

/// Starts logging to stderr: errors only with `quiet`, else warnings, `-v` info, `-vv` debug;
/// RUST_LOG overrides. fuser warns when the kernel mount is already gone at session end (an
/// unmount from outside, which is the normal way to stop): not worth a warning, so its
/// session module logs errors only unless -vv.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn,fuser::session=error",
            1 => "info,fuser::session=error",
            // Every request is traced once, by the dispatcher (target envelopefs::request),
            // whichever transport carried it; fuser's own trace would repeat the classic ones.
            _ => "debug,fuser::request=info",
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

pub(crate) fn fail(code: ExitCode, message: impl Into<String>) -> CliError {
    CliError {
        code,
        message: message.into(),
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the unlock secret: key file, pass file, environment, or the terminal.
pub(crate) fn read_unlock(args: &SecretArgs, confirm: bool) -> Result<Unlock, CliError> {
    if let Some(pin) = read_pin(args, false)? {
        return Ok(pin);
    }
    if let Some(p) = &args.keyfile {
        let bytes = Zeroizing::new(std::fs::read(p).map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot read key file {}: {e}", p.display()),
            )
        })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            fail(ExitCode::Failure, format!("key file {} must hold exactly 32 bytes (make one with `head -c 32 /dev/urandom > FILE`)", p.display()))
        })?;
        return Ok(Unlock::KeyFile(Zeroizing::new(key)));
    }
    // One rule for every source: crate::keys::secret::passphrase_bytes (docs/FORMAT.md §6.1).
    let pass = if let Some(p) = &args.passfile {
        let mut s = Zeroizing::new(Vec::new());
        let mut f = std::fs::File::open(p).map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot read pass file {}: {e}", p.display()),
            )
        })?;
        f.read_to_end(&mut s).map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot read pass file {}: {e}", p.display()),
            )
        })?;
        passphrase_bytes(s, true)
    } else if let Some(v) = std::env::var_os(PASSPHRASE_ENV) {
        passphrase_bytes(
            Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v)),
            false,
        )
    } else {
        let p = rpassword::prompt_password("Passphrase: ").map_err(|e| {
            fail(ExitCode::Failure, format!("cannot read a passphrase from the terminal ({e}); use --passfile FILE or ${PASSPHRASE_ENV}"))
        })?;
        let p = Zeroizing::new(p.into_bytes());
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Repeat passphrase: ")
                    .unwrap_or_default()
                    .into_bytes(),
            );
            if *again != *p {
                return Err(fail(
                    ExitCode::Failure,
                    "the passphrases differ; nothing was created",
                ));
            }
        }
        passphrase_bytes(p, false)
    };
    if pass.is_empty() {
        return Err(fail(
            ExitCode::Failure,
            "the passphrase is empty; pick a non-empty one",
        ));
    }
    Ok(Unlock::Passphrase(pass))
}

/// The PKCS#11 token PIN, when one is given: `--pin-file` (its first line), then
/// `$ENVELOPEFS_HSM_PIN`, then the terminal if `--pin` or `ask` says so. `None` when no PIN
/// was asked for (the volume is unlocked by a passphrase or key file).
pub(crate) fn read_pin(args: &SecretArgs, ask: bool) -> Result<Option<Unlock>, CliError> {
    let pin = if let Some(p) = &args.pin_file {
        let raw = Zeroizing::new(std::fs::read(p).map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot read PIN file {}: {e}", p.display()),
            )
        })?);
        passphrase_bytes(raw, true)
    } else if let Some(v) = std::env::var_os(HSM_PIN_ENV) {
        passphrase_bytes(
            Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v)),
            false,
        )
    } else if args.pin || ask {
        let p = rpassword::prompt_password("Token PIN: ").map_err(|e| {
            fail(ExitCode::Failure, format!("cannot read the PIN from the terminal ({e}); use --pin-file FILE or ${HSM_PIN_ENV}"))
        })?;
        Zeroizing::new(p.into_bytes())
    } else {
        return Ok(None);
    };
    if pin.is_empty() {
        return Err(fail(ExitCode::Failure, "the token PIN is empty"));
    }
    Ok(Some(Unlock::HsmPin(pin)))
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Init {
            backing,
            block_size,
            keystore,
            admin_uid,
            plaintext_names,
            hsm_module,
            token_label,
            hsm_backup,
            secret,
        } => {
            let hsm = hsm_module.zip(token_label).map(|(m, l)| (m, l, hsm_backup));
            init(
                &backing,
                block_size,
                keystore,
                &admin_uid,
                !plaintext_names,
                hsm,
                &secret,
            )
        }
        Command::Mount {
            backing,
            mountpoint,
            background,
            allow_other,
            read_only,
            threads,
            transport,
            no_kernel_cache,
            no_writeback_cache,
            no_xattr,
            suid,
            dev,
            log_file,
            secret,
        } => {
            if (suid || dev) && crate::store::sys::geteuid() != 0 {
                return Err(fail(
                    ExitCode::Usage,
                    "--suid and --dev need root: fusermount3 mounts every non-root FUSE \
                     filesystem nosuid,nodev; run the mount as root or drop the option",
                ));
            }
            let settings = DaemonSettings {
                backing,
                mountpoint,
                allow_other,
                read_only,
                threads,
                transport,
                kernel_cache: !no_kernel_cache,
                writeback_cache: !no_writeback_cache,
                xattrs: !no_xattr,
                suid,
                dev,
                log_file,
                verbose: cli.verbose,
                quiet: cli.quiet,
            };
            if background {
                let unlock = read_unlock(&secret, false)?;
                let started = background::spawn(
                    &settings,
                    unlock,
                    &[PASSPHRASE_ENV, HSM_PIN_ENV, hsm::HSM_SO_PIN_ENV],
                )?;
                println!(
                    "Mounted {} at {} (daemon pid {}, log {}).",
                    settings.backing.display(),
                    settings.mountpoint.display(),
                    started.pid,
                    started.log.display()
                );
                Ok(())
            } else {
                mount(settings, || read_unlock(&secret, false))
            }
        }
        Command::Daemon => {
            let (settings, unlock) = background::receive()?;
            init_logging(settings.verbose, settings.quiet);
            mount(settings, || Ok(unlock))
        }
        Command::Rewrap {
            backing,
            to_key,
            min_version,
            dry_run,
            json,
            secret,
        } => {
            let opts = crate::store::rewrap::RewrapOptions {
                to_key,
                min_version,
                dry_run,
            };
            crate::cli::rewrap::run(&backing, &opts, &secret, json)
        }
        Command::Reencrypt {
            backing,
            to_key,
            path,
            mountpoint,
            restart,
            json,
            secret,
        } => crate::cli::reencrypt::run(
            &backing,
            &crate::ops::reencrypt::ReencryptOptions {
                to_key,
                path,
                mountpoint,
                restart,
            },
            &secret,
            json,
        ),
        Command::Unmount { mountpoint } => {
            match crate::daemon::unmount_and_wait(&mountpoint, std::time::Duration::from_secs(10)) {
                Ok(crate::daemon::Unmounted::Detached(backing)) => {
                    eprintln!(
                        "note: {} is detached, but its daemon still serves files a process keeps \
                         open there; it exits (and frees {}) when they are closed \
                         (`fuser -m {}` lists them)",
                        mountpoint.display(),
                        backing.display(),
                        mountpoint.display()
                    );
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(fail(
                    ExitCode::Failure,
                    format!("cannot unmount {}: {e}", mountpoint.display()),
                )),
            }
        }
        Command::Info { backing } => info(&backing),
        Command::Key(args) => crate::cli::keys::run_key(args),
        Command::Ssec(args) => ssec::run(args),
        Command::Audit(args) => crate::cli::keys::run_audit(args),
        Command::Hsm(args) => crate::cli::hsm::run(args),
        Command::Scan { backing, json } => crate::cli::keys::run_scan(&backing, json),
        Command::Path {
            backing,
            paths,
            decrypt,
            secret,
        } => path::run(&backing, &paths, decrypt, &secret),
        Command::Fsck {
            backing,
            repair,
            json,
            secret,
        } => fsck::run(&backing, repair, json, &secret),
        Command::Export(a) => export::run(a),
        Command::Keystore(a) => keystore_backup::run(a),
    }
}

fn init(
    backing: &Path,
    block_size: u32,
    keystore: Option<PathBuf>,
    admin_uids: &[String],
    encrypted_names: bool,
    hsm: Option<(PathBuf, String, bool)>,
    secret: &SecretArgs,
) -> Result<(), CliError> {
    crate::format::header::check_block_size(block_size)
        .map_err(|e| fail(ExitCode::Usage, e.to_string()))?;
    let admin_uids = admin_uids
        .iter()
        .map(|u| crate::cli::keys::parse_uid(u))
        .collect::<Result<Vec<u32>, _>>()?;
    vol::prepare(backing)?;
    let ks_rel = keystore
        .map(|p| {
            std::path::absolute(p)
                .unwrap_or_default()
                .display()
                .to_string()
        })
        .unwrap_or_else(|| vol::KEYSTORE_NAME.to_owned());
    let ks_path = if Path::new(&ks_rel).is_absolute() {
        PathBuf::from(&ks_rel)
    } else {
        backing.join(&ks_rel)
    };
    let kms = match &hsm {
        Some((module, label, backup)) => {
            let pin = read_pin(secret, true)?.expect("asked");
            crate::custody::create_hsm_kms(&ks_path, module, label, &pin, *backup)?
        }
        None => {
            let unlock = read_unlock(secret, true)?;
            if matches!(unlock, Unlock::Passphrase(_)) {
                eprintln!(
                    "Deriving the keystore key from the passphrase with Argon2id (64 MiB)..."
                );
            }
            LocalKms::create(&ks_path, &unlock)?
        }
    };
    let me = Caller::current();
    for uid in admin_uids {
        kms.add_admin(uid, &me)?;
    }
    let cfg = vol::create(
        backing,
        &kms,
        "alias/default",
        block_size,
        ks_rel,
        now(),
        encrypted_names,
    )
    .map_err(|e| match e {
        vol::VolumeCreateError::Volume(v) => CliError::from(v),
        vol::VolumeCreateError::Key(k) => CliError::from(k),
    })?;
    println!(
        "Created envelopefs volume {} (volume id {}).",
        backing.display(),
        cfg.volume_id
    );
    println!("  keystore: {}", ks_path.display());
    println!(
        "  names:    {}",
        if cfg.encrypted_names() {
            "encrypted (file names, symlink targets, xattr names)"
        } else {
            "in the clear (--plaintext-names)"
        }
    );
    if let Some((module, label, backup)) = &hsm {
        println!(
            "  CMKs in PKCS#11 token {label:?} (module {}); unlock with its PIN; {}",
            module.display(),
            match backup {
                true => "backup-capable (envelopefs hsm backup)",
                false => "never extractable (no envelopefs hsm backup)",
            }
        );
    }
    println!("  administrators: uid {:?}", kms.admins());
    println!(
        "Next: mkdir -p MNT && envelopefs mount {} MNT",
        backing.display()
    );
    Ok(())
}

/// Mounts in the foreground until unmounted or signalled. The volume is opened and locked
/// before `unlock` is asked for the secret, so a bad or busy volume is reported first.
fn mount(
    settings: DaemonSettings,
    unlock: impl FnOnce() -> Result<Unlock, CliError>,
) -> Result<(), CliError> {
    let daemon = Daemon::open(settings)?;
    daemon.mount(unlock()?, |s| {
        eprintln!(
            "Mounted {} at {}. Press Ctrl-C or run `envelopefs unmount {}` to stop.",
            s.backing.display(),
            s.mountpoint.display(),
            s.mountpoint.display()
        );
    })?;
    Ok(())
}

fn info(backing: &Path) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    println!("volume:      {}", backing.display());
    println!("volume id:   {}", cfg.volume_id);
    println!("format:      {} v{}", cfg.format, cfg.version);
    println!("block size:  {} bytes", cfg.block_size);
    println!("default key: {}", cfg.default_key);
    println!(
        "keystore:    {}",
        vol::keystore_path(backing, &cfg).display()
    );
    println!("features:    {}", cfg.features.join(", "));
    println!(
        "names:       {}",
        if cfg.encrypted_names() {
            "encrypted"
        } else {
            "in the clear"
        }
    );
    println!("created:     {} (Unix seconds)", cfg.created);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::background::DAEMON_SUBCOMMAND;
    use clap::{CommandFactory, Parser};

    /// The background daemon's subcommand parses but is not offered to people.
    #[test]
    fn the_daemon_subcommand_is_hidden() {
        let cli = Cli::try_parse_from(["envelopefs", DAEMON_SUBCOMMAND]).unwrap();
        assert!(matches!(cli.command, Command::Daemon));
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("mount") && !help.contains(DAEMON_SUBCOMMAND),
            "{help}"
        );
    }
}
