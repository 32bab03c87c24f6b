//! `envelopefs hsm backup` and `hsm restore` (docs/KEYS.md §2c, docs/FORMAT.md §6.6): the
//! crypto officer's encrypted export of every token object a volume's keystore names, and its
//! import into an empty token.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::cli::hsm::{OfficerArgs, keystore, open_as_officer_with, so_pin, token_pin};
use crate::cli::{CliError, ExitCode, fail, now};
use crate::keys::secret::Unlock;
use envelopefs_hsm::backup::{self, BackupKey};
use envelopefs_hsm::backup_file::Kind;

fn backup_key(p: &Path) -> Result<BackupKey, CliError> {
    let bytes = Zeroizing::new(std::fs::read(p).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read backup key file {}: {e}", p.display()),
        )
    })?);
    Ok(BackupKey::from_bytes(&bytes)?)
}

fn user_pin(officer: &OfficerArgs) -> Result<envelopefs_hsm::Pin, CliError> {
    let Unlock::HsmPin(pin) = token_pin(&officer.secret)? else {
        unreachable!("read_pin returns a PIN")
    };
    Ok(envelopefs_hsm::Pin::from_bytes(pin)?)
}

/// `envelopefs hsm backup BACKING FILE`.
pub(crate) fn backup(
    backing: &Path,
    file: &Path,
    officer: &OfficerArgs,
    backup_key_file: &Path,
) -> Result<(), CliError> {
    let bk = backup_key(backup_key_file)?;
    let so = so_pin(officer)?;
    let ks = keystore(backing)?;
    let (module, label) = envelopefs_hsm::token_of(&ks)?;
    // The keystore (verified) names the objects; its session ends before the officer's.
    let objects = {
        let (kms, _) = open_as_officer_with(backing, &so, &officer.secret)?;
        kms.token_objects()
    };
    let labels: Vec<(Kind, String)> = objects
        .into_iter()
        .map(|(root, l)| (if root { Kind::Keystore } else { Kind::Cmk }, l))
        .collect();
    let bytes = backup::backup(
        &module,
        &label,
        &user_pin(officer)?,
        &so,
        &bk,
        &labels,
        now(),
    )?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot create the backup {}: {e}", file.display()),
            )
        })?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| {
            fail(
                ExitCode::Failure,
                format!("cannot write the backup {}: {e}", file.display()),
            )
        })?;
    println!(
        "Backed up {} token object(s) of {} to {} ({} bytes); restore with `envelopefs hsm \
         restore {} {}` and the same backup key.",
        labels.len(),
        backing.display(),
        file.display(),
        bytes.len(),
        backing.display(),
        file.display()
    );
    Ok(())
}

/// `envelopefs hsm restore BACKING FILE`.
pub(crate) fn restore(
    backing: &Path,
    file: &Path,
    officer: &OfficerArgs,
    backup_key_file: &Path,
) -> Result<(), CliError> {
    let bk = backup_key(backup_key_file)?;
    let so = so_pin(officer)?;
    let bytes = std::fs::read(file).map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot read the backup {}: {e}", file.display()),
        )
    })?;
    let ks = keystore(backing)?;
    let (module, label) = envelopefs_hsm::token_of(&ks)?;
    let restored = backup::restore(&module, &label, &user_pin(officer)?, &so, &bk, &bytes)?;
    // The keystore opens (its MAC verifies with the restored root object) and names only
    // restored objects.
    let (kms, _) = open_as_officer_with(backing, &so, &officer.secret)?;
    let missing: Vec<String> = kms
        .token_objects()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| !restored.contains(l))
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            ExitCode::Failure,
            format!(
                "restored {} object(s), but the keystore also names {} the backup lacks \
                 (made after the backup?): {}",
                restored.len(),
                missing.len(),
                missing.join(", ")
            ),
        ));
    }
    println!(
        "Restored {} token object(s) into token {label:?}; the keystore of {} opens with them.",
        restored.len(),
        backing.display()
    );
    Ok(())
}
