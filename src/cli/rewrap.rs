//! `envelopefs rewrap`: the CLI over `store::rewrap`, with a progress bar and a summary.

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `len` files for a tree-wide command (`what` names it), hidden when the
/// output is JSON for scripts (indicatif also hides it when stderr is not a terminal).
pub(crate) fn files_bar(what: &str, len: u64, json: bool) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} files {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::keys::Caller;
use crate::store::rewrap::{RewrapOptions, VolumeKeyError, rewrap_tree, rewrap_volume_key};
use crate::store::volume as vol;

/// Runs a re-wrap of a whole volume (mounted or not).
pub fn run(
    backing: &Path,
    opts: &RewrapOptions,
    secret: &SecretArgs,
    json: bool,
) -> Result<(), CliError> {
    let cfg = vol::read_config(backing)?;
    let unlock = read_unlock(secret, false)?;
    let kms = Arc::new(crate::custody::open_kms(
        &vol::keystore_path(backing, &cfg),
        &unlock,
    )?);
    if let Some(k) = &opts.to_key {
        crate::keys::KeyService::describe_key(kms.as_ref(), k)?;
    }
    let data = backing.join(vol::DATA_DIR);
    let bar = files_bar("rewrap", 0, json);
    let summary = rewrap_tree(
        &data,
        kms.as_ref(),
        &cfg.volume_id,
        cfg.block_size,
        opts,
        &Caller::current(),
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .map_err(|e| {
        fail(
            ExitCode::Failure,
            format!("cannot walk {}: {e}", data.display()),
        )
    })?;
    bar.finish_and_clear();
    let volume_key = rewrap_volume_key(backing, &cfg, kms.as_ref(), opts, &Caller::current())
        .map_err(|e| match e {
            VolumeKeyError::Volume(v) => CliError::from(v),
            VolumeKeyError::Key(k) => CliError::from(k),
        })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serialises")
        );
    } else {
        let verb = if opts.dry_run {
            "would re-wrap"
        } else {
            "re-wrapped"
        };
        println!(
            "{} files: {verb} {}, already current {}, empty (no header) {}, failed {}",
            summary.files,
            summary.rewrapped,
            summary.current,
            summary.empty,
            summary.failed.len()
        );
        print_failed(&summary.failed);
        if let Some((key, version)) = &volume_key {
            let verb = if opts.dry_run { "would move" } else { "moved" };
            println!("volume key: {verb} to {key} version {version}");
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            ExitCode::Failure,
            format!(
                "{} files could not be re-wrapped (listed above); fix the cause and run rewrap again: it resumes",
                summary.failed.len()
            ),
        ))
    }
}

/// Lists the files a tree-wide command could not do, one line each.
pub(crate) fn print_failed(failed: &[(std::path::PathBuf, String)]) {
    for (p, e) in failed {
        println!("  failed: {}: {e}", p.display());
    }
}
