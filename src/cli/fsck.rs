//! `envelopefs fsck`: the CLI over `ops::fsck`, with a progress bar, a summary or a JSON
//! report, and its own exit codes (clean 0, damage found 7, could not check 8).

use std::path::Path;

use crate::cli::rewrap::files_bar;
use crate::cli::{CliError, ExitCode, SecretArgs, fail, read_unlock};
use crate::ops::fsck::{self, Options, Report};
use crate::ops::reencrypt::OpsError;

/// Runs a check: Ok when the volume is clean (or everything found was repaired), else the
/// error with exit code [`ExitCode::Damaged`] or [`ExitCode::Unchecked`].
pub(crate) fn run(
    backing: &Path,
    repair: bool,
    json: bool,
    secret: &SecretArgs,
) -> Result<(), CliError> {
    let unchecked = |e: CliError| {
        Err(fail(
            ExitCode::Unchecked,
            format!("could not check {}: {}", backing.display(), e.message),
        ))
    };
    let unlock = match read_unlock(secret, false) {
        Ok(u) => u,
        Err(e) => return unchecked(e),
    };
    let bar = files_bar("fsck", 0, json);
    let b2 = bar.clone();
    let result = fsck::run(
        backing,
        &unlock,
        Options { repair },
        move |n| b2.set_length(n),
        &mut || bar.inc(1),
    );
    drop(unlock);
    let report = match result {
        Ok(r) => r,
        Err(e) => return unchecked(ops_error(e)),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print_summary(&report, repair);
    }
    if report.unrepaired() > 0 {
        Err(fail(
            ExitCode::Damaged,
            format!(
                "{} damaged item(s) in {}",
                report.unrepaired(),
                backing.display()
            ),
        ))
    } else if !report.unchecked.is_empty() {
        Err(fail(
            ExitCode::Unchecked,
            format!(
                "{} item(s) of {} could not be checked",
                report.unchecked.len(),
                backing.display()
            ),
        ))
    } else {
        Ok(())
    }
}

fn ops_error(e: OpsError) -> CliError {
    match e {
        OpsError::Volume(v) => v.into(),
        OpsError::Key(k) => k.into(),
        OpsError::Busy(m) => fail(ExitCode::Busy, m),
        OpsError::Usage(m) => fail(ExitCode::Usage, m),
        OpsError::Io(m) => fail(ExitCode::Failure, m),
    }
}

fn print_summary(r: &Report, repair: bool) {
    for d in &r.damage {
        let plain = d
            .plain
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let fixed = if d.repaired { " [repaired]" } else { "" };
        println!(
            "damaged: {}{plain}: {}: {}{fixed}",
            d.path, d.kind, d.detail
        );
    }
    for d in &r.unchecked {
        let plain = d
            .plain
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        println!("not checked: {}{plain}: {}: {}", d.path, d.kind, d.detail);
    }
    println!(
        "checked {} directories, {} files ({} blocks), {} symlinks, {} xattrs, {} audit records",
        r.directories, r.files, r.blocks, r.symlinks, r.xattrs, r.audit_records
    );
    let left = r.unrepaired();
    let fixed = r.damage.len() - left;
    if r.damage.is_empty() && r.unchecked.is_empty() {
        println!("clean: no damage found");
    } else if left == 0 && r.unchecked.is_empty() {
        println!("repaired {fixed} problem(s); the volume is clean now");
    } else {
        println!(
            "{} problem(s) found{}, {} item(s) not checked",
            r.damage.len(),
            if repair {
                format!(", {fixed} repaired")
            } else {
                String::new()
            },
            r.unchecked.len()
        );
        if left > 0 {
            println!(
                "what to do: `fsck --repair` fixes damaged header copies, temp files and orphan \
                 sidecars; restore the other damaged files from a backup (docs/OPERATIONS.md \
                 §Disaster recovery)"
            );
        }
    }
}
