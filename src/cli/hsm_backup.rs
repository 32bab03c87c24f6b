//! `envelopefs hsm backup` and `hsm restore` (docs/KEYS.md §2c, docs/FORMAT.md §6.6).

use std::path::Path;

use crate::cli::hsm::OfficerArgs;
use crate::cli::{CliError, ExitCode, fail};

/// `envelopefs hsm backup BACKING FILE`.
pub(crate) fn backup(
    _backing: &Path,
    _file: &Path,
    _officer: &OfficerArgs,
    _backup_key: &Path,
) -> Result<(), CliError> {
    Err(fail(ExitCode::Failure, "not yet"))
}

/// `envelopefs hsm restore BACKING FILE`.
pub(crate) fn restore(
    _backing: &Path,
    _file: &Path,
    _officer: &OfficerArgs,
    _backup_key: &Path,
) -> Result<(), CliError> {
    Err(fail(ExitCode::Failure, "not yet"))
}
