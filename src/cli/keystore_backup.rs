//! `envelopefs keystore backup|restore`: the CLI over `store::keystore_backup`
//! (docs/FORMAT.md §11): reads the backup secret, the files, and prints.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::cli::{CliError, ExitCode, SecretArgs, fail, now, read_unlock};
use crate::keys::secret::passphrase_bytes;
use crate::store::keystore_backup::{self as kb, BackupError, BackupSecret, Payload, Prefix};
use crate::store::volume as vol;

/// The environment variable that may hold the backup passphrase.
pub(crate) const BACKUP_PASSPHRASE_ENV: &str = "ENVELOPEFS_BACKUP_PASSPHRASE";

/// `envelopefs keystore`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  envelopefs keystore backup ~/vault.enc /media/usb/vault-keys.ekb --passfile pw.txt
  envelopefs keystore restore ~/vault.enc /media/usb/vault-keys.ekb

The backup is sealed under its own passphrase (asked twice) or --backup-keyfile; keep it
apart from the ciphertext. Restore needs only that secret.")]
pub struct KeystoreArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeystoreCommand,
}

/// The backup secret.
#[derive(Args, Debug, Clone, Default)]
pub struct BackupSecretArgs {
    /// Read the backup passphrase from FILE (first line; docs/FORMAT.md §6.1). Without it:
    /// $ENVELOPEFS_BACKUP_PASSPHRASE, then the terminal.
    #[arg(long, value_name = "FILE", conflicts_with = "backup_keyfile")]
    pub backup_passfile: Option<PathBuf>,
    /// Seal (or open) the backup with a 32-byte key file instead of a passphrase.
    #[arg(long, value_name = "FILE")]
    pub backup_keyfile: Option<PathBuf>,
}

/// Keystore subcommands.
#[derive(Subcommand, Debug)]
pub enum KeystoreCommand {
    /// Write an encrypted, self-contained copy of the keystore and the volume-key record to
    /// FILE. The keystore is opened first (with the volume's passphrase, key file or PIN), so
    /// a damaged keystore is never backed up.
    Backup {
        /// An initialised volume (mounted or not).
        backing: PathBuf,
        /// The backup file to write (replaced atomically; mode 0600).
        file: PathBuf,
        #[command(flatten)]
        backup: BackupSecretArgs,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Put the keystore (and the volume-key record) of a backup back in place, e.g. after
    /// keystore.json was lost or damaged. Refuses a backup of another volume.
    Restore {
        /// The volume (not mounted).
        backing: PathBuf,
        /// The backup file.
        file: PathBuf,
        /// Replace an existing keystore that differs from the backup's (it is kept beside
        /// as `<keystore>.before-restore-<time>`).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        backup: BackupSecretArgs,
    },
}

/// The backup secret's bytes: key file, pass file, environment, terminal.
enum Secret {
    Pass(Zeroizing<Vec<u8>>),
    Key(Zeroizing<[u8; 32]>),
}

impl Secret {
    fn as_backup(&self) -> BackupSecret<'_> {
        match self {
            Secret::Pass(p) => BackupSecret::Passphrase(p),
            Secret::Key(k) => BackupSecret::KeyFile(k),
        }
    }
}

fn read_backup_secret(a: &BackupSecretArgs, confirm: bool) -> Result<Secret, CliError> {
    let io = |p: &Path, e: std::io::Error| {
        fail(
            ExitCode::Failure,
            format!("cannot read {}: {e}", p.display()),
        )
    };
    if let Some(p) = &a.backup_keyfile {
        let b = Zeroizing::new(std::fs::read(p).map_err(|e| io(p, e))?);
        let k: [u8; 32] = b.as_slice().try_into().map_err(|_| {
            fail(
                ExitCode::Failure,
                format!(
                    "backup key file {} must hold exactly 32 bytes (make one with `head -c 32 /dev/urandom > FILE`)",
                    p.display()
                ),
            )
        })?;
        return Ok(Secret::Key(Zeroizing::new(k)));
    }
    let pass = if let Some(p) = &a.backup_passfile {
        let mut s = Zeroizing::new(Vec::new());
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut s))
            .map_err(|e| io(p, e))?;
        passphrase_bytes(s, true)
    } else if let Some(v) = std::env::var_os(BACKUP_PASSPHRASE_ENV) {
        passphrase_bytes(
            Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v)),
            false,
        )
    } else {
        let p = rpassword::prompt_password("Backup passphrase: ").map_err(|e| {
            fail(ExitCode::Failure, format!("cannot read the backup passphrase from the terminal ({e}); use --backup-passfile FILE or ${BACKUP_PASSPHRASE_ENV}"))
        })?;
        let p = Zeroizing::new(p.into_bytes());
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("Repeat backup passphrase: ")
                    .unwrap_or_default()
                    .into_bytes(),
            );
            if *again != *p {
                return Err(fail(
                    ExitCode::Failure,
                    "the passphrases differ; nothing was written",
                ));
            }
        }
        passphrase_bytes(p, false)
    };
    if pass.is_empty() {
        return Err(fail(
            ExitCode::Failure,
            "the backup passphrase is empty; pick a non-empty one",
        ));
    }
    Ok(Secret::Pass(pass))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    b
}

/// Runs `envelopefs keystore ...`.
pub(crate) fn run(a: KeystoreArgs) -> Result<(), CliError> {
    match a.command {
        KeystoreCommand::Backup {
            backing,
            file,
            backup,
            secret,
        } => backup_cmd(&backing, &file, &backup, &secret),
        KeystoreCommand::Restore {
            backing,
            file,
            force,
            backup,
        } => restore_cmd(&backing, &file, force, &backup),
    }
}

fn backup_cmd(
    backing: &Path,
    file: &Path,
    b: &BackupSecretArgs,
    secret: &SecretArgs,
) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    let ks_path = vol::keystore_path(backing, &cfg);
    // Read the bytes first, then check that exactly these bytes open.
    let text = std::fs::read_to_string(&ks_path).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read the keystore {}: {e}", ks_path.display()),
        )
    })?;
    let unlock = read_unlock(secret, false)?;
    let opened = crate::keys::keystore::Keystore::open(&ks_path, &unlock);
    drop(unlock);
    let again = std::fs::read_to_string(&ks_path).unwrap_or_default();
    if again != text {
        return Err(fail(
            ExitCode::Failure,
            "the keystore changed while it was being backed up; run the backup again",
        ));
    }
    opened.map_err(|e| {
        let mut c = CliError::from(e);
        c.message = format!(
            "{}; no backup was written (a keystore that does not open is not worth keeping)",
            c.message
        );
        c
    })?;
    let s = read_backup_secret(b, true)?;
    let volume_id = *uuid::Uuid::parse_str(&cfg.volume_id)
        .map_err(|e| fail(ExitCode::BadVolume, format!("the config's volume id: {e}")))?
        .as_bytes();
    let (kdf, costs) = match s {
        Secret::Pass(_) => (1, kb::ARGON2_COSTS),
        Secret::Key(_) => (2, (0, 0, 0)),
    };
    let prefix = Prefix {
        kdf,
        salt: random(),
        costs,
        volume_id,
        nonce: random(),
    };
    let payload = Payload {
        volume_id: cfg.volume_id.clone(),
        created: now(),
        keystore: text,
        volume_key: cfg.volume_key.clone(),
    };
    if kdf == 1 {
        eprintln!("Deriving the backup key from the passphrase with Argon2id (64 MiB)...");
    }
    let bytes = kb::seal(&prefix, &s.as_backup(), &payload)
        .ok_or_else(|| fail(ExitCode::Failure, "cannot seal the backup"))?;
    crate::atomic::atomic_write(file, &bytes, 0o600).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot write {}: {e}", file.display()),
        )
    })?;
    println!(
        "Backed up the keystore of volume {} to {} ({} bytes).",
        cfg.volume_id,
        file.display(),
        bytes.len()
    );
    println!("Keep it apart from BACKING; `envelopefs keystore restore` puts it back.");
    Ok(())
}

fn restore_cmd(
    backing: &Path,
    file: &Path,
    force: bool,
    b: &BackupSecretArgs,
) -> Result<(), CliError> {
    let mut cfg = vol::read_config(backing)?;
    let _lock = vol::lock(backing).map_err(|e| match e {
        vol::VolumeError::Busy(_) => fail(
            ExitCode::Busy,
            format!(
                "{} is mounted: unmount it before restoring its keystore",
                backing.display()
            ),
        ),
        e => e.into(),
    })?;
    let bytes = std::fs::read(file).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    // Refuse another volume's backup before asking for any secret.
    let prefix = Prefix::decode(&bytes).map_err(backup_err)?;
    kb::check_volume(&prefix, &cfg.volume_id).map_err(backup_err)?;
    let s = read_backup_secret(b, false)?;
    if prefix.kdf == 1 {
        eprintln!("Deriving the backup key from the passphrase with Argon2id (64 MiB)...");
    }
    let payload = kb::open(&bytes, &cfg.volume_id, &s.as_backup()).map_err(backup_err)?;
    drop(s);
    let ks_path = vol::keystore_path(backing, &cfg);
    match std::fs::read(&ks_path) {
        Ok(old) if old == payload.keystore.as_bytes() => {}
        Ok(old) => {
            if !force {
                return Err(fail(
                    ExitCode::Failure,
                    format!(
                        "{} exists and differs from the backup: pass --force to replace it (the \
                         current file is kept beside it)",
                        ks_path.display()
                    ),
                ));
            }
            let kept = ks_path.with_file_name(format!(
                "{}.before-restore-{}",
                ks_path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("keystore.json"),
                now()
            ));
            crate::atomic::atomic_write(&kept, &old, 0o600).map_err(|e| {
                fail(
                    ExitCode::Failure,
                    format!("cannot keep {}: {e}", kept.display()),
                )
            })?;
            println!("kept the replaced keystore as {}", kept.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(fail(
                ExitCode::Failure,
                format!("{}: {e}", ks_path.display()),
            ));
        }
    }
    crate::atomic::atomic_write(&ks_path, payload.keystore.as_bytes(), 0o600).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot write {}: {e}", ks_path.display()),
        )
    })?;
    if cfg.volume_key != payload.volume_key {
        cfg.volume_key = payload.volume_key.clone();
        vol::write_config(backing, &cfg)?;
        println!("restored the volume key record in {}", vol::CONFIG_NAME);
    }
    println!(
        "Restored the keystore of volume {} (backed up at {} Unix seconds) to {}.",
        payload.volume_id,
        payload.created,
        ks_path.display()
    );
    println!(
        "It opens with the passphrase or key file it had then; keys made since are not in it."
    );
    Ok(())
}

fn backup_err(e: BackupError) -> CliError {
    let code = match e {
        BackupError::WrongSecret => ExitCode::WrongPassphrase,
        BackupError::OtherVolume { .. } | BackupError::Malformed(_) => ExitCode::Failure,
    };
    fail(code, e.to_string())
}
