//! `envelopefs export`: the CLI over `ops::export`, with a progress bar and a summary.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::rewrap::print_failed;
use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::ops::reencrypt::OpsError;

/// `envelopefs export BACKING DEST`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  envelopefs export ~/vault.enc /restore/vault\n  \
envelopefs export ~/vault.enc /restore/taxes --path taxes/2026"
)]
pub struct ExportArgs {
    /// An initialised volume (not mounted).
    pub backing: PathBuf,
    /// Where the plaintext tree goes: a new or empty directory.
    pub dest: PathBuf,
    /// Only this file or directory (relative to the volume root).
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// Runs an export.
pub(crate) fn run(a: ExportArgs) -> Result<(), CliError> {
    let unlock = read_unlock(&a.secret, false)?;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} export [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let b2 = bar.clone();
    let summary = crate::ops::export::run(
        &a.backing,
        unlock,
        &a.dest,
        a.path.as_deref(),
        move |n| b2.set_length(n),
        &mut |n| bar.inc(n),
    )
    .map_err(|e| match e {
        OpsError::Volume(v) => v.into(),
        OpsError::Key(k) => k.into(),
        OpsError::Busy(m) => fail(ExitCode::Busy, m),
        OpsError::Usage(m) => fail(ExitCode::Usage, m),
        OpsError::Io(m) => fail(ExitCode::Failure, m),
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serialises")
        );
    } else {
        println!(
            "exported {} files ({} bytes), {} hard links, {} directories, {} symlinks, {} special files into {}",
            summary.files,
            summary.bytes,
            summary.hard_links,
            summary.directories,
            summary.symlinks,
            summary.special,
            a.dest.display()
        );
        print_failed(&summary.failed);
        for (p, w) in &summary.warnings {
            println!("  warning: {}: {w}", p.display());
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::Failure,
            format!(
                "{} entries failed verification or could not be written and were left out \
                 (listed above); `envelopefs fsck` says what is damaged",
                summary.failed.len()
            ),
        ))
    }
}
