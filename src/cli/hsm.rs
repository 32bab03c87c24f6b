//! `envelopefs hsm ...`: CloudHSM's user model in front of the PKCS#11 token that holds a
//! volume's CMKs (docs/KEYS.md §2b), and encrypted backups of the token's keys (§2c).
//!
//! The crypto officer proves itself with the token's SO PIN (`--so-pin-file`,
//! `$ENVELOPEFS_HSM_SO_PIN`, or the terminal), checked by the token; officer commands also
//! open the keystore with the token user PIN (`--pin-file`, ...), which they seal for new
//! crypto users.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_pin};
use crate::keys::secret::{Unlock, passphrase_bytes};
use crate::keys::{Caller, KeyError};
use crate::store::volume as vol;

/// The environment variable that may hold the token's security officer PIN.
pub(crate) const HSM_SO_PIN_ENV: &str = "ENVELOPEFS_HSM_SO_PIN";

/// `envelopefs hsm`.
#[derive(Args, Debug)]
pub struct HsmArgs {
    #[command(subcommand)]
    command: HsmCommand,
}

#[derive(Subcommand, Debug)]
enum HsmCommand {
    /// Crypto users: create, list, delete, unlock, share and unshare keys (the crypto
    /// officer; `list` needs only the token user PIN).
    #[command(subcommand)]
    User(UserCommand),
    /// Each crypto user's failed logins in a row and whether it is locked, read from the
    /// keystore without a PIN (unverified).
    LoginStatus {
        /// An initialised volume whose CMKs live in a PKCS#11 token.
        backing: PathBuf,
    },
    /// Export every CMK version of the token, wrapped under a fresh ephemeral key that the
    /// officer's backup key wraps (the crypto officer).
    Backup {
        /// The volume.
        backing: PathBuf,
        /// The backup file to write (refused if it exists).
        file: PathBuf,
        #[command(flatten)]
        officer: OfficerArgs,
        /// The 32-byte backup key (make one with `head -c 32 /dev/urandom > FILE` and keep it
        /// with the officer, away from the backup).
        #[arg(long, value_name = "FILE")]
        backup_key_file: PathBuf,
    },
    /// Put the keys of a backup into the volume's token (freshly initialised, same label).
    Restore {
        /// The volume.
        backing: PathBuf,
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        officer: OfficerArgs,
        /// The backup key the backup was made with.
        #[arg(long, value_name = "FILE")]
        backup_key_file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create crypto user NAME (its password from --user-password-file or the terminal);
    /// it logs in with the PIN NAME:PASSWORD and may use only the keys shared with it.
    Create {
        backing: PathBuf,
        name: String,
        /// Keys (ids or aliases) to share with it now.
        #[arg(long = "share", value_name = "KEY")]
        share: Vec<String>,
        /// Read its password from FILE (first line; at least 8 characters).
        #[arg(long, value_name = "FILE")]
        user_password_file: Option<PathBuf>,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// List the crypto users, their shared keys and login state.
    List {
        backing: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Delete crypto user NAME.
    Delete {
        backing: PathBuf,
        name: String,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// Unlock crypto user NAME after failed logins.
    Unlock {
        backing: PathBuf,
        name: String,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// Let crypto user NAME use KEY.
    Share {
        backing: PathBuf,
        name: String,
        key: String,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// Stop crypto user NAME from using KEY.
    Unshare {
        backing: PathBuf,
        name: String,
        key: String,
        #[command(flatten)]
        officer: OfficerArgs,
    },
}

/// The crypto officer's secrets: the token SO PIN and the token user PIN.
#[derive(Args, Debug, Clone)]
pub(crate) struct OfficerArgs {
    /// Read the token's security officer PIN from FILE (else $ENVELOPEFS_HSM_SO_PIN, else
    /// the terminal).
    #[arg(long, value_name = "FILE")]
    so_pin_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

/// Runs `envelopefs hsm ...`.
pub(crate) fn run(args: HsmArgs) -> Result<(), CliError> {
    match args.command {
        HsmCommand::LoginStatus { backing } => {
            let ks = keystore(&backing)?;
            let st = crate::keys::cusers::login_status_unverified(&ks)?;
            print_status(&st);
            Ok(())
        }
        HsmCommand::User(UserCommand::List { backing, secret }) => {
            let ks = keystore(&backing)?;
            let unlock = token_pin(&secret)?;
            let kms = crate::custody::open_kms(&ks, &unlock)?;
            print_status(&kms.crypto_user_status()?);
            Ok(())
        }
        HsmCommand::User(cmd) => user(cmd),
        HsmCommand::Backup {
            backing,
            file,
            officer,
            backup_key_file,
        } => crate::cli::hsm_backup::backup(&backing, &file, &officer, &backup_key_file),
        HsmCommand::Restore {
            backing,
            file,
            officer,
            backup_key_file,
        } => crate::cli::hsm_backup::restore(&backing, &file, &officer, &backup_key_file),
    }
}

fn user(cmd: UserCommand) -> Result<(), CliError> {
    let me = Caller::current();
    match cmd {
        UserCommand::Create {
            backing,
            name,
            share,
            user_password_file,
            officer,
        } => {
            let password = match &user_password_file {
                Some(p) => passphrase_bytes(read_file(p, "password file")?, true),
                None => {
                    let p = rpassword::prompt_password(format!("Password for {name}: ")).map_err(
                        |e| {
                            fail(
                                ExitCode::Failure,
                                format!(
                                    "cannot read a password from the terminal ({e}); use \
                                     --user-password-file FILE"
                                ),
                            )
                        },
                    )?;
                    Zeroizing::new(p.into_bytes())
                }
            };
            let (kms, pin) = open_as_officer(&backing, &officer)?;
            kms.create_crypto_user(&name, &password, &pin, &me)?;
            for key in &share {
                kms.share_key(&name, key, true, &me)?;
            }
            println!(
                "Created crypto user {name}; it logs in with the PIN {name}:PASSWORD and uses \
                 {} key(s).",
                share.len()
            );
            finish(&kms)
        }
        UserCommand::Delete {
            backing,
            name,
            officer,
        } => {
            let (kms, _) = open_as_officer(&backing, &officer)?;
            kms.delete_crypto_user(&name, &me)?;
            println!("Deleted crypto user {name}.");
            finish(&kms)
        }
        UserCommand::Unlock {
            backing,
            name,
            officer,
        } => {
            let (kms, _) = open_as_officer(&backing, &officer)?;
            kms.unlock_crypto_user(&name, &me)?;
            println!("Unlocked crypto user {name}.");
            finish(&kms)
        }
        UserCommand::Share {
            backing,
            name,
            key,
            officer,
        } => share(&backing, &name, &key, &officer, true),
        UserCommand::Unshare {
            backing,
            name,
            key,
            officer,
        } => share(&backing, &name, &key, &officer, false),
        UserCommand::List { .. } => unreachable!("handled by run"),
    }
}

fn share(
    backing: &Path,
    name: &str,
    key: &str,
    officer: &OfficerArgs,
    on: bool,
) -> Result<(), CliError> {
    let (kms, _) = open_as_officer(backing, officer)?;
    kms.share_key(name, key, on, &Caller::current())?;
    match on {
        true => println!("Shared {key} with crypto user {name}."),
        false => println!("Crypto user {name} may no longer use {key}."),
    }
    finish(&kms)
}

fn finish(kms: &crate::keys::local::LocalKms) -> Result<(), CliError> {
    kms.sync_audit().map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot sync the audit trail: {e}"),
        )
    })
}

fn print_status(st: &[crate::keys::cusers::LoginStatus]) {
    if st.is_empty() {
        println!("no crypto users (create one with `envelopefs hsm user create BACKING NAME`)");
    }
    for s in st {
        println!(
            "{:<20} failed logins {}/{}  {}  keys: {}",
            s.name,
            s.failed_logins,
            crate::keys::cusers::MAX_FAILED_LOGINS,
            if s.locked { "LOCKED" } else { "active" },
            if s.shared.is_empty() {
                "(none)".to_owned()
            } else {
                s.shared.join(", ")
            }
        );
    }
}

/// The keystore of the volume in `backing`.
pub(crate) fn keystore(backing: &Path) -> Result<PathBuf, CliError> {
    let cfg = vol::read_config(backing)?;
    Ok(vol::keystore_path(backing, &cfg))
}

fn read_file(p: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    Ok(Zeroizing::new(std::fs::read(p).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read {what} {}: {e}", p.display()),
        )
    })?))
}

/// The token user PIN (asked on the terminal when no other source gives it).
pub(crate) fn token_pin(secret: &SecretArgs) -> Result<Unlock, CliError> {
    Ok(read_pin(secret, true)?.expect("asked"))
}

/// The token's SO PIN: `--so-pin-file`, `$ENVELOPEFS_HSM_SO_PIN`, or the terminal.
pub(crate) fn so_pin(args: &OfficerArgs) -> Result<envelopefs_hsm::Pin, CliError> {
    let raw = if let Some(p) = &args.so_pin_file {
        passphrase_bytes(read_file(p, "SO PIN file")?, true)
    } else if let Some(v) = std::env::var_os(HSM_SO_PIN_ENV) {
        Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(v))
    } else {
        let p = rpassword::prompt_password("Token SO PIN (crypto officer): ").map_err(|e| {
            fail(
                ExitCode::Failure,
                format!(
                    "cannot read the SO PIN from the terminal ({e}); use --so-pin-file FILE or \
                     ${HSM_SO_PIN_ENV}"
                ),
            )
        })?;
        Zeroizing::new(p.into_bytes())
    };
    Ok(envelopefs_hsm::Pin::from_bytes(raw)?)
}

/// Checks the officer's SO PIN with the token, then opens the keystore with the token user
/// PIN (not a crypto user's); returns the service and that PIN.
pub(crate) fn open_as_officer_with(
    backing: &Path,
    so: &envelopefs_hsm::Pin,
    secret: &SecretArgs,
) -> Result<(crate::keys::local::LocalKms, Zeroizing<Vec<u8>>), CliError> {
    let ks = keystore(backing)?;
    let (module, label) = envelopefs_hsm::token_of(&ks)?;
    envelopefs_hsm::Token::check_officer(&module, &label, so)?;
    let Unlock::HsmPin(pin) = token_pin(secret)? else {
        unreachable!("read_pin returns a PIN")
    };
    if envelopefs_hsm::Pin::from_bytes(pin.clone())?
        .crypto_user()
        .is_some_and(|(n, _)| {
            crate::keys::cusers::login_status_unverified(&ks)
                .is_ok_and(|st| st.iter().any(|s| s.name == n))
        })
    {
        return Err(KeyError::InvalidArgument(
            "officer commands take the token user PIN, not a crypto user's NAME:PASSWORD".into(),
        )
        .into());
    }
    let kms = crate::custody::open_kms(&ks, &Unlock::HsmPin(pin.clone()))?;
    Ok((kms, pin))
}

fn open_as_officer(
    backing: &Path,
    args: &OfficerArgs,
) -> Result<(crate::keys::local::LocalKms, Zeroizing<Vec<u8>>), CliError> {
    let so = so_pin(args)?;
    open_as_officer_with(backing, &so, &args.secret)
}
