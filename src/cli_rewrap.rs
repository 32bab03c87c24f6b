//! `envelopefs rewrap`: the CLI over `store::rewrap`, with a progress bar and a summary.

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{fail, read_unlock, CliError, ExitCode, SecretArgs};
use crate::keys::local::LocalKms;
use crate::keys::Caller;
use crate::store::rewrap::{rewrap_tree, RewrapOptions};
use crate::store::volume as vol;

/// Runs a re-wrap of a whole volume (mounted or not).
pub fn run(backing: &Path, opts: &RewrapOptions, secret: &SecretArgs, json: bool) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    let unlock = read_unlock(secret, false)?;
    let kms = Arc::new(LocalKms::open(&vol::keystore_path(backing, &cfg), &unlock)?);
    if let Some(k) = &opts.to_key {
        crate::keys::KeyService::describe_key(kms.as_ref(), k)?;
    }
    let data = backing.join(vol::DATA_DIR);
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} rewrap [{bar:40}] {pos}/{len} files {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summary = rewrap_tree(&data, kms.as_ref(), &cfg.volume_id, cfg.block_size, opts, &Caller::current(), |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(|e| fail(ExitCode::Failure, format!("cannot walk {}: {e}", data.display())))?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("summary serialises"));
    } else {
        let verb = if opts.dry_run { "would re-wrap" } else { "re-wrapped" };
        println!(
            "{} files: {verb} {}, already current {}, empty (no header) {}, failed {}",
            summary.files,
            summary.rewrapped,
            summary.current,
            summary.empty,
            summary.failed.len()
        );
        for (p, e) in &summary.failed {
            println!("  failed: {}: {e}", p.display());
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(ExitCode::Failure, format!("{} files could not be re-wrapped (listed above); fix the cause and run rewrap again: it resumes", summary.failed.len())))
    }
}
