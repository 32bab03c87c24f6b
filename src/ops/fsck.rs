//! `envelopefs fsck`: verifies a volume offline, under its lock, without a mount: the volume
//! config and volume key, the keystore and its audit chain, then every entry of the backing
//! tree: names (encrypted names: each directory's `.dirid`, each entry name, long-name
//! sidecars, symlink targets, `user.*` xattr names), every header copy and every block of every
//! regular file, every `user.*` xattr value. Damage is collected, never fixed silently;
//! [`Options::repair`] fixes only what is safe (a damaged header copy rewritten from the copy
//! that verifies, an orphan long-name sidecar, a temporary file left by a crash, an
//! interrupted re-encryption finished from its journal).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::format::layout::Layout;
use crate::format::names::{BackingKind, DIRID_NAME, DirId, NameCipher, classify};
use crate::format::volume::VolumeConfig;
use crate::fs::xattr::XattrCipher;
use crate::keys::{Caller, KeyService};
mod file;

use crate::ops::reencrypt::OpsError;
use crate::store::names::decrypt_entry;
use crate::store::volume as vol;

/// What fsck may do.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    /// Fix what is safely fixable.
    pub(crate) repair: bool,
}

/// One finding: where, what kind, the details, and whether `--repair` fixed it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Finding {
    /// The backing path, relative to BACKING.
    pub(crate) path: String,
    /// The plaintext path, relative to the volume root, when its names decrypt.
    pub(crate) plain: Option<String>,
    /// The kind of damage (a stable token, docs/OPERATIONS.md §Verification).
    pub(crate) kind: &'static str,
    /// What exactly.
    pub(crate) detail: String,
    /// True when `--repair` fixed it.
    pub(crate) repaired: bool,
}

/// The outcome of a check.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) directories: u64,
    pub(crate) files: u64,
    pub(crate) symlinks: u64,
    pub(crate) blocks: u64,
    pub(crate) xattrs: u64,
    /// Audit records verified.
    pub(crate) audit_records: u64,
    /// Damage found (fixed or not).
    pub(crate) damage: Vec<Finding>,
    /// What could not be checked (a key the key service refused, an unreadable directory).
    pub(crate) unchecked: Vec<Finding>,
}

impl Report {
    /// Damage that is still there.
    pub(crate) fn unrepaired(&self) -> usize {
        self.damage.iter().filter(|d| !d.repaired).count()
    }
}

/// Per-run state of the tree check.
pub(crate) struct Checker<'a> {
    backing: &'a Path,
    keys: &'a dyn KeyService,
    cfg: &'a VolumeConfig,
    layout: Layout,
    names: Option<NameCipher>,
    xattrs: XattrCipher,
    opts: Options,
    caller: Caller,
    seen: HashSet<(u64, u64)>,
    pub(crate) report: Report,
}

fn plain_str(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| {
        if p.as_os_str().is_empty() {
            "/".into()
        } else {
            p.display().to_string()
        }
    })
}

impl<'a> Checker<'a> {
    /// A checker of the volume at `backing` whose keys are `keys`.
    pub(crate) fn new(
        backing: &'a Path,
        cfg: &'a VolumeConfig,
        keys: &'a dyn KeyService,
        opts: Options,
    ) -> Result<Self, String> {
        let caller = Caller::current();
        let wrapped = vol::wrapped_volume_key(cfg)
            .map_err(|e| format!("the volume key record in the config is damaged: {e}"))?;
        let ctx = crate::format::context::EncryptionContext::for_volume_key(&cfg.volume_id);
        let vk = keys
            .decrypt(&wrapped, &ctx, &caller)
            .map_err(|e| format!("cannot unwrap the volume key: {e}"))?;
        let names = cfg
            .encrypted_names()
            .then(|| NameCipher::from_volume_key(vk.expose_secret()));
        let xattrs = XattrCipher::from_volume_key(vk.expose_secret());
        Ok(Checker {
            backing,
            keys,
            cfg,
            layout: Layout::with_sealed_holes(cfg.block_size, cfg.sealed_holes()),
            names,
            xattrs,
            opts,
            caller,
            seen: HashSet::new(),
            report: Report::default(),
        })
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(self.backing)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn damage(&mut self, p: &Path, plain: &Option<PathBuf>, kind: &'static str, detail: String) {
        self.push(p, plain, kind, detail, false);
    }

    fn push(
        &mut self,
        p: &Path,
        plain: &Option<PathBuf>,
        kind: &'static str,
        detail: String,
        repaired: bool,
    ) {
        let f = Finding {
            path: self.rel(p),
            plain: plain_str(plain),
            kind,
            detail,
            repaired,
        };
        self.report.damage.push(f);
    }

    fn unchecked(&mut self, p: &Path, plain: &Option<PathBuf>, kind: &'static str, d: String) {
        let f = Finding {
            path: self.rel(p),
            plain: plain_str(plain),
            kind,
            detail: d,
            repaired: false,
        };
        self.report.unchecked.push(f);
    }

    /// Checks the files BACKING holds besides the tree: temporary files left by a crash, an
    /// unfinished re-encryption.
    pub(crate) fn check_leftovers(&mut self, keystore: &Path) {
        let mut dirs = vec![self.backing.to_owned()];
        if let Some(d) = keystore.parent() {
            dirs.push(d.to_owned());
        }
        dirs.push(crate::keys::local::audit_dir(keystore));
        dirs.dedup();
        for d in dirs {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if let Some(pid) = atomic_temp_pid(&name)
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let p = e.path();
                    let fixed = self.opts.repair && fs::remove_file(&p).is_ok();
                    let what = "a temporary file of an atomic replace interrupted by a crash (the \
                                file it was replacing is intact)";
                    self.push(&p, &None, "temp-file", what.into(), fixed);
                }
            }
        }
        let journal = self.backing.join(crate::store::reencrypt::JOURNAL_DIR);
        let Ok(entries) = fs::read_dir(&journal) else {
            return;
        };
        let mut pending = Vec::new();
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.ends_with(".tmp") || n.ends_with(".redo") {
                pending.push(e.path());
            }
        }
        if pending.is_empty() {
            return;
        }
        let fixed = self.opts.repair
            && crate::store::reencrypt::recover(self.backing, &self.backing.join(vol::DATA_DIR))
                .is_ok();
        for p in pending {
            self.push(
                &p,
                &None,
                "unfinished-reencryption",
                "a re-encryption journal: mounting the volume or `envelopefs reencrypt` \
                 finishes it (or `fsck --repair`)"
                    .into(),
                fixed,
            );
        }
    }

    /// Checks the tree under BACKING/data.
    pub(crate) fn check_tree(&mut self, on_file: &mut dyn FnMut()) {
        let data = self.backing.join(vol::DATA_DIR);
        self.check_dir(&data, Some(PathBuf::new()), on_file);
    }

    fn check_dir(&mut self, dir: &Path, plain: Option<PathBuf>, on_file: &mut dyn FnMut()) {
        self.report.directories += 1;
        self.check_xattrs(dir, &plain);
        let mut entries: Vec<OsString> = match fs::read_dir(dir) {
            Ok(it) => it.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                self.unchecked(dir, &plain, "unreadable-directory", e.to_string());
                return;
            }
        };
        entries.sort();
        let id: Option<DirId> = match &self.names {
            None => None,
            Some(_) => match crate::store::names::read_dirid(dir) {
                Ok(id) => Some(id),
                Err(e) => {
                    let only_meta = entries.iter().all(|n| n.as_bytes().starts_with(b"."));
                    if !only_meta {
                        let detail = format!(
                            "{e}: the names in this directory cannot be read (a directory \
                             without entries would get a fresh id at its next use)"
                        );
                        self.damage(&dir.join(DIRID_NAME), &plain, "dirid", detail);
                    }
                    None
                }
            },
        };
        let names: HashSet<&[u8]> = entries.iter().map(|n| n.as_bytes()).collect();
        let mut orphans = Vec::new();
        let mut children = Vec::new();
        for name in &entries {
            let path = dir.join(name);
            let child_plain = match (&self.names, &id) {
                (None, _) => plain.as_ref().map(|p| p.join(name)),
                (Some(cipher), _) => match classify(name.as_bytes()) {
                    Some(BackingKind::Meta) => {
                        if let Some(hash) = name.as_bytes().strip_prefix(b".name.") {
                            let entry = [b"long.", hash].concat();
                            if !names.contains(entry.as_slice()) {
                                orphans.push(path);
                            }
                        }
                        continue;
                    }
                    _ => match &id {
                        Some(id) => match decrypt_entry(cipher, dir, id, name) {
                            Ok(Some(n)) => plain.as_ref().map(|p| p.join(n)),
                            Ok(None) => continue,
                            Err(e) => {
                                let kind = if name.as_bytes().starts_with(b"long.") {
                                    "long-name"
                                } else {
                                    "name"
                                };
                                self.damage(&path, &plain, kind, e.to_string());
                                None
                            }
                        },
                        None => None,
                    },
                },
            };
            children.push((path, child_plain));
        }
        for p in orphans {
            let fixed = self.opts.repair && fs::remove_file(&p).is_ok();
            let detail = "a long-name sidecar whose `long.*` entry is gone (harmless)".into();
            self.push(&p, &plain, "orphan-sidecar", detail, fixed);
        }
        for (path, child_plain) in children {
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.unchecked(&path, &child_plain, "unreadable", e.to_string());
                    continue;
                }
            };
            let t = meta.file_type();
            if t.is_dir() {
                self.check_dir(&path, child_plain, on_file);
            } else if t.is_symlink() {
                self.check_symlink(&path, &child_plain);
            } else if t.is_file() {
                on_file();
                self.report.files += 1;
                // Hard links: contents and xattrs once per inode.
                if self.seen.insert((meta.dev(), meta.ino())) {
                    self.check_xattrs(&path, &child_plain);
                    self.check_file(&path, &child_plain);
                }
            }
        }
    }

    fn check_symlink(&mut self, path: &Path, plain: &Option<PathBuf>) {
        self.report.symlinks += 1;
        let Some(cipher) = &self.names else { return };
        match fs::read_link(path) {
            Ok(t) => {
                if let Err(e) = cipher.decode_target(t.as_os_str().as_bytes()) {
                    self.damage(path, plain, "symlink-target", e.to_string());
                }
            }
            Err(e) => self.unchecked(path, plain, "unreadable", e.to_string()),
        }
    }

    /// Every `user.*` xattr of a regular file or directory: its name decrypts (encrypted
    /// names) and its value authenticates under that name.
    fn check_xattrs(&mut self, path: &Path, plain: &Option<PathBuf>) {
        let f = match open_no_follow(path) {
            Ok(f) => f,
            Err(e) => return self.unchecked(path, plain, "unreadable", e.to_string()),
        };
        let list = match crate::store::sys::flistxattr(&f) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return,
            Err(e) => return self.unchecked(path, plain, "unreadable-xattrs", e.to_string()),
        };
        for stored in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !stored.starts_with(b"user.") {
                continue;
            }
            self.report.xattrs += 1;
            let name = match &self.names {
                None => stored.to_vec(),
                Some(c) => match c.decode_xattr_name(stored) {
                    Ok(Some(n)) => n,
                    Ok(None) => stored.to_vec(),
                    Err(e) => {
                        let d = format!("{}: {e}", String::from_utf8_lossy(stored));
                        self.damage(path, plain, "xattr-name", d);
                        continue;
                    }
                },
            };
            let mut buf = vec![0u8; 65536];
            let n = match crate::store::sys::getxattr(
                f.as_raw_fd(),
                OsStr::from_bytes(stored),
                &mut buf,
            ) {
                Ok(n) => n,
                Err(e) => {
                    self.unchecked(path, plain, "unreadable-xattrs", e.to_string());
                    continue;
                }
            };
            if let Err(e) = self.xattrs.open(OsStr::from_bytes(&name), &buf[..n]) {
                let d = format!("{}: {e}", String::from_utf8_lossy(&name));
                self.damage(path, plain, "xattr-value", d);
            }
        }
    }
}

/// The pid in the name of an atomic replace's temporary file (`.NAME.tmpPID`).
fn atomic_temp_pid(name: &OsStr) -> Option<u32> {
    let s = name.to_str()?;
    let rest = s.strip_prefix('.')?;
    let (_, pid) = rest.rsplit_once(".tmp")?;
    pid.parse().ok()
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Checks the volume at `backing` (which must not be mounted): config, keystore and audit
/// chain, leftovers, the whole tree. `on_start` gets the number of regular files, `on_file`
/// is called for each. Errors are the reasons nothing could be checked.
pub(crate) fn run(
    backing: &Path,
    unlock: &crate::keys::secret::Unlock,
    opts: Options,
    on_start: impl FnOnce(u64),
    on_file: &mut dyn FnMut(),
) -> Result<Report, OpsError> {
    let cfg = vol::read_config(backing)?;
    let _lock = vol::lock(backing).map_err(|e| match e {
        vol::VolumeError::Busy(_) => OpsError::Busy(format!(
            "{} is mounted (or being re-encrypted): unmount it first, fsck checks a volume at rest",
            backing.display()
        )),
        e => e.into(),
    })?;
    let ks_path = vol::keystore_path(backing, &cfg);
    // The audit chain first, before this run's own key uses add records to it.
    let audit = verify_audit(&ks_path, unlock)?;
    let kms = crate::custody::open_kms(&ks_path, unlock)?;
    let mut c = Checker::new(backing, &cfg, &kms, opts).map_err(OpsError::Io)?;
    c.report.audit_records = audit.as_ref().map_or(0, |r| r.0);
    if let Some((_, Some(bad))) = audit {
        let ks = ks_path.clone();
        c.push(
            &crate::keys::local::audit_dir(&ks),
            &None,
            "audit",
            bad,
            false,
        );
    }
    c.check_leftovers(&ks_path);
    let data = backing.join(vol::DATA_DIR);
    let total = crate::store::walk::Walk::new(&data)
        .filter(Result::is_ok)
        .count();
    on_start(total as u64);
    c.check_tree(on_file);
    Ok(c.report)
}

/// Verifies the keystore's audit chain as `envelopefs audit verify` does: the records it
/// verified and, if the chain is broken, why. None when the keystore has no audit trail.
fn verify_audit(
    ks_path: &Path,
    unlock: &crate::keys::secret::Unlock,
) -> Result<Option<(u64, Option<String>)>, OpsError> {
    let dir = crate::keys::local::audit_dir(ks_path);
    let ks = crate::keys::keystore::Keystore::open(ks_path, unlock)?;
    let key = zeroize::Zeroizing::new(ks.audit_key());
    let recorded = ks.audit_checkpoint();
    drop(ks);
    if !dir.exists() && recorded.is_none() {
        return Ok(None);
    }
    Ok(Some(
        match crate::keys::audit::verify_with_keystore(&dir, &key, recorded.as_ref()) {
            Ok(r) => (r.records, None),
            Err(e) => (0, Some(e.to_string())),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_of_atomic_replaces_are_recognised() {
        assert_eq!(
            atomic_temp_pid(OsStr::new(".keystore.json.tmp123")),
            Some(123)
        );
        assert_eq!(atomic_temp_pid(OsStr::new("keystore.json.tmp123")), None);
        assert_eq!(atomic_temp_pid(OsStr::new(".dirid")), None);
        assert_eq!(atomic_temp_pid(OsStr::new(".x.tmpabc")), None);
    }
}
