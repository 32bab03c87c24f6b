//! `envelopefs path`: plaintext paths ↔ backing paths (the CLI over `store::names`).

use std::path::{Path, PathBuf};

use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::keys::Caller;
use crate::keys::local::LocalKms;
use crate::store::names::{self, NamesError};
use crate::store::volume as vol;

/// Prints the translation of every path, one per line; the first failure ends the run.
pub(crate) fn run(
    backing: &Path,
    paths: &[PathBuf],
    decrypt: bool,
    secret: &SecretArgs,
) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    let cipher = if cfg.encrypted_names() {
        let unlock = read_unlock(secret, false)?;
        let kms = LocalKms::open(&vol::keystore_path(backing, &cfg), &unlock)?;
        drop(unlock);
        names::cipher_of(&cfg, &kms, &Caller::current()).map_err(names_error)?
    } else {
        None
    };
    let data = backing.join(vol::DATA_DIR);
    for p in paths {
        if decrypt {
            // A path through BACKING/data, or relative to it.
            let rel = if let Ok(r) = p.strip_prefix(&data) {
                r.to_owned()
            } else if p.is_absolute() {
                let d = std::path::absolute(&data).unwrap_or_else(|_| data.clone());
                p.strip_prefix(&d).map(Path::to_owned).map_err(|_| {
                    fail(
                        ExitCode::Usage,
                        format!("{} is not under {}", p.display(), d.display()),
                    )
                })?
            } else {
                p.clone()
            };
            let plain = names::decrypt_path(&data, cipher.as_ref(), &rel).map_err(names_error)?;
            println!("{}", plain.display());
        } else {
            let b = names::encrypt_path(&data, cipher.as_ref(), p).map_err(names_error)?;
            println!("{}", data.join(b).display());
        }
    }
    Ok(())
}

fn names_error(e: NamesError) -> CliError {
    match e {
        NamesError::Key(k) => CliError::from(k),
        NamesError::NotRelative(_) => fail(ExitCode::Usage, e.to_string()),
        NamesError::Format { .. } | NamesError::Io { .. } => fail(ExitCode::Failure, e.to_string()),
    }
}
