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
    let unlocked = file_header::unlock(keys, volume_id, block_size, &region, caller)?;
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
mod tests {
    use super::*;
    use crate::format::header::{FileHeader, HEADER_COPY_LEN};
    use crate::keys::local::LocalKms;
    use crate::store::file_header::Unlocked;
    use std::os::unix::fs::FileExt;

    /// A backing `data` dir (re-wrap keeps its lock file beside it) holding one wrapped file
    /// `f`, and the key service that wrapped it.
    struct Fixture {
        _tmp: tempfile::TempDir,
        data: PathBuf,
        kms: LocalKms,
        file: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let data = tmp.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let kms = LocalKms::in_memory_for_tests();
            let file = make_file(&data, "f", &kms);
            Fixture {
                _tmp: tmp,
                data,
                kms,
                file,
            }
        }

        fn rewrap(&self, opts: &RewrapOptions) -> RewrapSummary {
            rewrap_tree(
                &self.data,
                &self.kms,
                "vol",
                4096,
                opts,
                &Caller::current(),
                |_, _| {},
            )
            .unwrap()
        }

        /// The file's header, unlocked.
        fn unlock(&self) -> Unlocked {
            let f = File::open(&self.file).unwrap();
            let region = file_header::read_region(&f).unwrap();
            file_header::unlock(&self.kms, "vol", 4096, &region, &Caller::current()).unwrap()
        }

        /// The key-material version of the file's slot, and the header's sequence number.
        fn slot_version(&self) -> (u32, u64) {
            let u = self.unlock();
            (
                file_header::wrapped_slots(&u.header)
                    .next()
                    .unwrap()
                    .1
                    .version,
                u.header.seq,
            )
        }
    }

    fn make_file(dir: &Path, name: &str, kms: &LocalKms) -> PathBuf {
        let file_id = [7u8; 16];
        let ctx = EncryptionContext::for_file("vol", &file_id);
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx, &Caller::current())
            .unwrap();
        let h = FileHeader {
            block_size: 4096,
            file_id,
            seq: 1,
            slots: vec![file_header::cmk_slot(w)],
        };
        let p = dir.join(name);
        let f = File::create_new(&p).unwrap();
        file_header::write_new(&f, &h, &dek, &[]).unwrap();
        p
    }

    #[test]
    fn rewrap_moves_to_newest_version_once_and_keeps_the_key() {
        let fx = Fixture::new();
        let before = fx.unlock().dek.expose_secret().to_vec();
        fx.kms.rotate("alias/default", &Caller::current()).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&fx.file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let opts = RewrapOptions::default();
        let s = fx.rewrap(&opts);
        assert_eq!((s.files, s.rewrapped, s.current), (1, 1, 0));
        assert_eq!(fx.slot_version(), (2, 2));
        assert_eq!(
            std::fs::metadata(&fx.file).unwrap().modified().unwrap(),
            old,
            "mtime kept"
        );
        let after = fx.unlock().dek.expose_secret().to_vec();
        assert_eq!(before, after, "the data key must not change");
        let again = fx.rewrap(&opts);
        assert_eq!((again.rewrapped, again.current), (0, 1), "idempotent");
    }

    /// Both header copies, decoded (structurally; no MAC check).
    fn copies(path: &Path) -> Vec<FileHeader> {
        let f = File::open(path).unwrap();
        let region = file_header::read_region(&f).unwrap();
        (0..2)
            .map(|c| {
                FileHeader::decode(&region[c * HEADER_COPY_LEN..(c + 1) * HEADER_COPY_LEN]).unwrap()
            })
            .collect()
    }

    /// The first half of a re-wrap of `fx.file` alone, as a run interrupted between its
    /// passes leaves it.
    fn first_half(fx: &Fixture, opts: &RewrapOptions) {
        let (outcome, conv) = rewrap_file(
            &fx.file,
            &fx.kms,
            "vol",
            4096,
            opts,
            &mut HashMap::new(),
            &Caller::current(),
        )
        .unwrap();
        assert_eq!(outcome, FileOutcome::Rewrapped);
        assert!(conv.is_some());
    }

    #[test]
    fn torn_new_copy_leaves_the_old_header_usable() {
        let fx = Fixture::new();
        fx.kms.rotate("alias/default", &Caller::current()).unwrap();
        first_half(&fx, &RewrapOptions::default());
        // The rewrite went to copy B (tie → B). Tear it as a crash mid-write would.
        let f = OpenOptions::new().write(true).open(&fx.file).unwrap();
        f.write_all_at(&[0xAA; 100], (HEADER_COPY_LEN + 50) as u64)
            .unwrap();
        assert_eq!(
            fx.slot_version(),
            (1, 1),
            "falls back to the intact old copy"
        );
    }

    #[test]
    fn a_finished_rewrap_leaves_no_slot_of_the_old_key_in_either_copy() {
        let fx = Fixture::new();
        let old = fx.unlock();
        let old_key = file_header::wrapped_slots(&old.header)
            .next()
            .unwrap()
            .1
            .key_id;
        let other = fx.kms.create_key("other", &Caller::current()).unwrap();
        fx.rewrap(&RewrapOptions {
            to_key: Some(other.key_id.clone()),
            ..Default::default()
        });
        let copies = copies(&fx.file);
        assert_eq!(copies[0], copies[1], "both copies carry the new header");
        for h in &copies {
            for (_, w) in file_header::wrapped_slots(h) {
                assert_ne!(w.key_id, old_key, "a slot of the old key survived");
                assert_eq!(w.key_id.to_string(), other.key_id);
            }
        }
        // And so disabling the new key cuts access: nothing falls back to the old key.
        fx.kms
            .disable_key(&other.key_id, &Caller::current())
            .unwrap();
        let f = File::open(&fx.file).unwrap();
        let region = file_header::read_region(&f).unwrap();
        assert!(matches!(
            file_header::unlock(&fx.kms, "vol", 4096, &region, &Caller::current()),
            Err(HeaderError::Key(crate::keys::KeyError::Disabled { .. }))
        ));
    }

    #[test]
    fn a_refusal_on_the_newest_copy_is_final_even_while_a_stale_copy_remains() {
        let fx = Fixture::new();
        let other = fx.kms.create_key("other", &Caller::current()).unwrap();
        first_half(
            &fx,
            &RewrapOptions {
                to_key: Some(other.key_id.clone()),
                ..Default::default()
            },
        );
        let copies = copies(&fx.file);
        assert_ne!(copies[0], copies[1], "interrupted between the passes");
        fx.kms
            .disable_key(&other.key_id, &Caller::current())
            .unwrap();
        let f = File::open(&fx.file).unwrap();
        let region = file_header::read_region(&f).unwrap();
        assert!(
            matches!(
                file_header::unlock(&fx.kms, "vol", 4096, &region, &Caller::current()),
                Err(HeaderError::Key(crate::keys::KeyError::Disabled { .. }))
            ),
            "the stale copy under alias/default must not be used"
        );
    }

    #[test]
    fn an_interrupted_run_is_converged_by_the_next_one() {
        let fx = Fixture::new();
        fx.kms.rotate("alias/default", &Caller::current()).unwrap();
        first_half(&fx, &RewrapOptions::default());
        assert_ne!(copies(&fx.file)[0], copies(&fx.file)[1]);
        let s = fx.rewrap(&RewrapOptions::default());
        assert_eq!((s.rewrapped, s.current, s.converged), (0, 1, 1));
        let c = copies(&fx.file);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[0].seq, 2);
        let again = fx.rewrap(&RewrapOptions::default());
        assert_eq!((again.current, again.converged), (1, 0), "idempotent");
    }

    #[test]
    fn dry_run_writes_nothing_and_empty_files_are_skipped() {
        let fx = Fixture::new();
        File::create_new(fx.data.join("empty")).unwrap();
        fx.kms.rotate("alias/default", &Caller::current()).unwrap();
        let before = std::fs::read(&fx.file).unwrap();
        let s = fx.rewrap(&RewrapOptions {
            dry_run: true,
            ..Default::default()
        });
        assert_eq!((s.rewrapped, s.empty), (1, 1));
        assert_eq!(std::fs::read(&fx.file).unwrap(), before);
    }

    #[test]
    fn to_key_moves_files_to_another_cmk() {
        let fx = Fixture::new();
        let other = fx.kms.create_key("other", &Caller::current()).unwrap();
        let s = fx.rewrap(&RewrapOptions {
            to_key: Some(other.key_id.clone()),
            ..Default::default()
        });
        assert_eq!(s.rewrapped, 1);
        let u = fx.unlock();
        assert_eq!(
            file_header::wrapped_slots(&u.header)
                .next()
                .unwrap()
                .1
                .key_id
                .to_string(),
            other.key_id
        );
    }

    #[test]
    fn the_volume_key_follows_the_same_rule_and_the_config_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let kms = LocalKms::in_memory_for_tests();
        let caller = Caller::current();
        volume::prepare(&root).unwrap();
        let cfg = volume::create(&root, &kms, "alias/default", 4096, "k.json".into(), 0).unwrap();
        let opts = RewrapOptions::default();
        let run = |opts: &RewrapOptions| {
            let cfg = volume::read_config(&root).unwrap();
            rewrap_volume_key(&root, &cfg, &kms, opts, &caller).unwrap()
        };
        assert_eq!(run(&opts), None, "already current");
        kms.rotate("alias/default", &caller).unwrap();
        let dry = RewrapOptions {
            dry_run: true,
            ..Default::default()
        };
        let id = cfg.volume_key.key_id.clone();
        assert_eq!(run(&dry), Some((id.clone(), 2)));
        assert_eq!(
            volume::read_config(&root).unwrap(),
            cfg,
            "dry run writes nothing"
        );
        assert_eq!(run(&opts), Some((id.clone(), 2)));
        let after = volume::read_config(&root).unwrap();
        assert_eq!(after.volume_key.version, 2);
        assert_eq!(run(&opts), None, "idempotent");
        // The new record unwraps to the same volume key.
        let ctx = EncryptionContext::for_volume_key(&cfg.volume_id);
        let old = kms
            .decrypt(&volume::wrapped_volume_key(&cfg).unwrap(), &ctx, &caller)
            .unwrap();
        let new = kms
            .decrypt(&volume::wrapped_volume_key(&after).unwrap(), &ctx, &caller)
            .unwrap();
        assert_eq!(old.expose_secret(), new.expose_secret());
        // --to-key moves it; a malformed record is a volume error, not a key error.
        let other = kms.create_key("other", &caller).unwrap();
        let to = RewrapOptions {
            to_key: Some(other.key_id.clone()),
            ..Default::default()
        };
        assert_eq!(run(&to), Some((other.key_id.clone(), 1)));
        kms.rotate(&other.key_id, &caller).unwrap();
        let mut bad = volume::read_config(&root).unwrap();
        bad.volume_key.blob = "xyz".into();
        assert!(matches!(
            rewrap_volume_key(&root, &bad, &kms, &opts, &caller),
            Err(VolumeKeyError::Volume(VolumeError::Config { .. }))
        ));
    }
}
