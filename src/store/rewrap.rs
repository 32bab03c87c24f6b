//! `envelopefs rewrap`: re-wraps every file's data key to the newest key-material version of
//! its CMK (or moves it to another CMK), touching only headers — never data — with the
//! crash-safe two-copy rewrite of [`super::file_header::rewrite`]: the new copy is written and
//! made durable first, then copied over the old one ([`super::file_header::converge`]), so that
//! when a run ends no copy keeps a slot of a key the file no longer depends on. Idempotent and
//! resumable: files already current are skipped (their copies still brought to the same
//! bytes), so an interrupted run is finished by running it again.
//! Safe while the volume is mounted: each header is rewritten under the file's `flock`, which
//! the daemon also takes when it writes a header, and the data key never changes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::file_header::{self, Converge, FileLock, HeaderError};
use super::volume::{self, VolumeError};
use crate::format::context::EncryptionContext;
use crate::format::volume::VolumeConfig;
use crate::keys::{Caller, KeyError, KeyId, KeyService};

/// Lock file (in the backing directory) held for the length of a re-wrap run.
pub(crate) const REWRAP_LOCK: &str = ".rewrap.lock";

/// What to re-wrap.
#[derive(Clone, Debug, Default)]
pub struct RewrapOptions {
    /// Move every file's first CMK slot to this key (id or alias); other slots stay on their
    /// own key. None: every slot stays on its own key.
    pub to_key: Option<String>,
    /// Re-wrap only slots below this key-material version (default: below the newest).
    pub min_version: Option<u32>,
    /// Report what would change without writing.
    pub dry_run: bool,
}

/// Outcome counts of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewrapSummary {
    /// Regular files examined.
    pub files: u64,
    /// Headers rewritten (or that would be, with dry_run).
    pub rewrapped: u64,
    /// Already current.
    pub current: u64,
    /// Files whose two header copies differed (an interrupted earlier run, a damaged copy)
    /// and were brought to the same bytes.
    pub converged: u64,
    /// Empty files without a header.
    pub empty: u64,
    /// Files that failed, with the reason (the run goes on).
    pub failed: Vec<(PathBuf, String)>,
}

/// The key-material version below which a slot under a key whose newest version is `latest`
/// is re-wrapped.
fn threshold(opts: &RewrapOptions, latest: u32) -> u32 {
    opts.min_version.unwrap_or(latest).min(latest)
}

/// Errors of [`rewrap_volume_key`].
#[derive(Debug, thiserror::Error)]
pub enum VolumeKeyError {
    /// The config's volume key record is malformed, or the config cannot be written.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The key service refused or failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Re-wraps the volume key in `envelopefs.json` like a file's data key (same key choice and
/// version rule); the config is replaced atomically. Returns the new (key id, version) if it
/// moved (or, with dry_run, would move).
pub(crate) fn rewrap_volume_key(
    backing: &Path,
    cfg: &VolumeConfig,
    keys: &dyn KeyService,
    opts: &RewrapOptions,
    caller: &Caller,
) -> Result<Option<(String, u32)>, VolumeKeyError> {
    let rec = &cfg.volume_key;
    let dest = opts.to_key.clone().unwrap_or_else(|| rec.key_id.clone());
    let meta = keys.describe_key(&dest)?;
    if meta.key_id == rec.key_id && rec.version >= threshold(opts, meta.current_version) {
        return Ok(None);
    }
    if opts.dry_run {
        return Ok(Some((meta.key_id, meta.current_version)));
    }
    let wrapped = volume::wrapped_volume_key(cfg).map_err(|source| VolumeError::Config {
        path: backing.join(volume::CONFIG_NAME),
        source,
    })?;
    let ctx = EncryptionContext::for_volume_key(&cfg.volume_id);
    let new = keys.re_encrypt(&wrapped, &ctx, &dest, caller)?;
    let mut cfg = cfg.clone();
    cfg.volume_key = volume::volume_key_record(&new);
    volume::write_config(backing, &cfg)?;
    Ok(Some((cfg.volume_key.key_id, new.version)))
}

/// What [`rewrap_file`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// An empty file without a header.
    Empty,
    /// Every slot already current.
    Current,
    /// The header was (or, with dry_run, would be) rewritten.
    Rewrapped,
}

/// Re-wraps one file (first half of the header change). Returns what it found and, when the
/// two header copies differ afterwards, the [`Converge`] that the run's second pass applies
/// once the new copy is durable.
pub(crate) fn rewrap_file(
    path: &Path,
    keys: &dyn KeyService,
    volume_id: &str,
    block_size: u32,
    opts: &RewrapOptions,
    newest: &mut HashMap<String, (KeyId, u32)>,
    caller: &Caller,
) -> Result<(FileOutcome, Option<Converge>), HeaderError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(!opts.dry_run)
        .open(path)?;
    let _lock = FileLock::exclusive(&file)?;
    if file.metadata()?.len() == 0 {
        return Ok((FileOutcome::Empty, None));
    }
    let region = file_header::read_region(&file)?;
    let unlocked = file_header::unlock(
        keys,
        &file_header::NoCustomerKeys,
        volume_id,
        block_size,
        &region,
        caller,
    )?;
    let ctx = EncryptionContext::for_file(volume_id, &unlocked.header.file_id);
    let mut header = unlocked.header.clone();
    let mut changed = false;
    let mut first = true;
    for (i, wrapped) in file_header::wrapped_slots(&unlocked.header) {
        let dest = match (&opts.to_key, first) {
            (Some(k), true) => k.clone(),
            _ => wrapped.key_id.to_string(),
        };
        first = false;
        let (dest_id, latest) = match newest.get(&dest) {
            Some(v) => *v,
            None => {
                let meta = keys.describe_key(&dest)?;
                let v = (meta.key_id.parse::<KeyId>()?, meta.current_version);
                newest.insert(dest.clone(), v);
                v
            }
        };
        if dest_id == wrapped.key_id && wrapped.version >= threshold(opts, latest) {
            continue;
        }
        changed = true;
        if opts.dry_run {
            continue;
        }
        let new = keys.re_encrypt(&wrapped, &ctx, &dest, caller)?;
        header.slots[i] = file_header::cmk_slot(new);
    }
    let outcome = if changed {
        FileOutcome::Rewrapped
    } else {
        FileOutcome::Current
    };
    if opts.dry_run {
        return Ok((outcome, None));
    }
    if !changed {
        // Current, but an interrupted run (or a damaged copy) may have left the copies apart.
        return Ok((outcome, Converge::after_unlock(&region, unlocked.copy)));
    }
    // A re-wrap is not a change of contents: keep the file's times as they were.
    let st = super::sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&file))?;
    let (_, converge) = file_header::rewrite(
        &file,
        header,
        &unlocked.dek,
        unlocked.copy,
        unlocked.max_seq,
    )?;
    let (at, mt) = (
        super::sys::SetTime::At(st.st_atime, st.st_atime_nsec as u32),
        super::sys::SetTime::At(st.st_mtime, st.st_mtime_nsec as u32),
    );
    super::sys::utimens(std::os::fd::AsRawFd::as_raw_fd(&file), at, mt)?;
    Ok((outcome, Some(converge)))
}

/// Second half of a header change for one file: under its lock, copies the kept copy over the
/// other one (keeping the file's times). Returns whether the copies now agree.
fn converge_file(path: &Path, c: &Converge) -> Result<bool, HeaderError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let _lock = FileLock::exclusive(&file)?;
    let st = super::sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&file))?;
    let done = file_header::converge(&file, c)?;
    let (at, mt) = (
        super::sys::SetTime::At(st.st_atime, st.st_atime_nsec as u32),
        super::sys::SetTime::At(st.st_mtime, st.st_mtime_nsec as u32),
    );
    super::sys::utimens(std::os::fd::AsRawFd::as_raw_fd(&file), at, mt)?;
    Ok(done)
}

/// Re-wraps every file under `data_dir`, calling `progress` after each file.
///
/// Two passes: the first writes every changed header's new copy; a filesystem sync makes them
/// durable; the second copies each new copy over its old one; a last sync ends the run. A
/// crash in between leaves files whose newest copy is current and whose other copy is stale:
/// readers use the newest one (a key refusal on it is final), and the next run finds and
/// converges them.
pub(crate) fn rewrap_tree(
    data_dir: &Path,
    keys: &dyn KeyService,
    volume_id: &str,
    block_size: u32,
    opts: &RewrapOptions,
    caller: &Caller,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<RewrapSummary> {
    // One re-wrap at a time per volume, and everything written before this run durable first:
    // each header rewrite below overwrites only the copy it did not read, so the copy it read
    // must already be on disk (see file_header::rewrite).
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_dir.join("..").join(REWRAP_LOCK))?;
    let _run_lock = FileLock::exclusive(&lock_file)?;
    super::sys::syncfs(&lock_file)?;
    let files = super::walk::regular_files(data_dir)?;
    let total = files.len() as u64;
    let mut summary = RewrapSummary::default();
    let mut newest = HashMap::new();
    let mut second_pass: Vec<(usize, Converge, bool)> = Vec::new();
    for (n, path) in files.iter().enumerate() {
        summary.files += 1;
        match rewrap_file(path, keys, volume_id, block_size, opts, &mut newest, caller) {
            Ok((FileOutcome::Empty, _)) => summary.empty += 1,
            Ok((outcome, conv)) => {
                let rewrapped = outcome == FileOutcome::Rewrapped;
                if rewrapped {
                    summary.rewrapped += 1;
                } else {
                    summary.current += 1;
                }
                if let Some(c) = conv {
                    second_pass.push((n, c, rewrapped));
                }
            }
            Err(e) => {
                let rel = path.strip_prefix(data_dir).unwrap_or(path).to_owned();
                log::warn!("rewrap {}: {e}", rel.display());
                summary.failed.push((rel, e.to_string()));
            }
        }
        progress(n as u64 + 1, total);
    }
    if second_pass.is_empty() {
        return Ok(summary);
    }
    super::sys::syncfs(&lock_file)?;
    for (n, c, rewrapped) in second_pass {
        let path = &files[n];
        match converge_file(path, &c) {
            Ok(true) => {
                if !rewrapped {
                    summary.converged += 1;
                }
            }
            Ok(false) => {
                let rel = path.strip_prefix(data_dir).unwrap_or(path).to_owned();
                log::warn!(
                    "rewrap {}: header changed during the run; run rewrap again",
                    rel.display()
                );
                summary.failed.push((
                    rel,
                    "its header changed during the run; run rewrap again".into(),
                ));
            }
            Err(e) => {
                let rel = path.strip_prefix(data_dir).unwrap_or(path).to_owned();
                log::warn!("rewrap {}: {e}", rel.display());
                summary.failed.push((rel, e.to_string()));
            }
        }
    }
    super::sys::syncfs(&lock_file)?;
    Ok(summary)
}

#[cfg(test)]
#[path = "rewrap_tests.rs"]
mod tests;
