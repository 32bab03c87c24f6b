//! `envelopefs reencrypt`: parses, reads the secret when the run is offline, shows a progress
//! bar and prints the summary of [`crate::ops::reencrypt`].

use std::path::Path;

use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::ops::reencrypt::{Mode, OpsError, ReencryptOptions, run as run_ops};

impl From<OpsError> for CliError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Usage(m) => fail(ExitCode::Usage, m),
            OpsError::Busy(m) => fail(ExitCode::Busy, m),
            OpsError::Volume(v) => v.into(),
            OpsError::Key(k) => k.into(),
            OpsError::Io(m) => fail(ExitCode::Failure, m),
        }
    }
}

/// Runs a re-encryption of a volume (mounted or not) and prints its summary.
pub(crate) fn run(
    backing: &Path,
    opts: &ReencryptOptions,
    secret: &SecretArgs,
    json: bool,
) -> Result<(), CliError> {
    let mode = Mode::choose(backing, opts.mountpoint.clone())?;
    if let Mode::Offline(_, n) = &mode
        && *n > 0
        && !json
    {
        println!("finished {n} re-encryptions a crash had interrupted");
    }
    let unlock = if mode.needs_secret() {
        Some(read_unlock(secret, false)?)
    } else {
        None
    };
    let bar = crate::cli::rewrap::files_bar("reencrypt", 0, json);
    let summary = run_ops(
        backing,
        mode,
        unlock,
        opts,
        |already, total| {
            if already > 0 && !json {
                println!(
                    "resuming an interrupted run: {already} files already done (--restart starts over)"
                );
            }
            bar.set_length(total);
        },
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serialises")
        );
    } else {
        println!(
            "{} files ({}): re-encrypted {}, empty (no key yet) {}, done by the earlier run {}, failed {}",
            summary.files,
            summary.via,
            summary.reencrypted,
            summary.empty,
            summary.resumed,
            summary.failed.len()
        );
        crate::cli::rewrap::print_failed(&summary.failed);
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::Failure,
            format!(
                "{} files could not be re-encrypted (listed above); fix the cause and run \
                 reencrypt again: it resumes",
                summary.failed.len()
            ),
        ))
    }
}
