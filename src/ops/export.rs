//! `envelopefs export`: decrypts a volume's tree (or a subtree) into a plain directory
//! without FUSE, through the filesystem core opened offline under the volume lock (as an
//! offline re-encryption does), so names, contents, link targets and xattrs are exactly what a
//! mount shows. Owners (when run as root), modes, times, hard links, symlinks, FIFOs, device
//! nodes and xattrs are kept. A file is written under a temporary name and renamed only when
//! whole; a file that fails verification is reported and left out.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fs::EncFs;
use crate::fs::attr::{Attr, Kind};
use crate::fs::inode::ROOT_INO;
use crate::keys::Caller;
use crate::keys::secret::Unlock;
use crate::ops::reencrypt::OpsError;
use crate::store::sys;
use crate::store::volume as vol;

/// Bytes read from the core per call.
const READ_CHUNK: u32 = 1 << 20;

/// What was exported and what was not.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) directories: u64,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    pub(crate) hard_links: u64,
    pub(crate) symlinks: u64,
    pub(crate) special: u64,
    /// Entries left out (plaintext path relative to the volume root, why).
    pub(crate) failed: Vec<(PathBuf, String)>,
    /// Metadata that could not be set (the entry itself was exported).
    pub(crate) warnings: Vec<(PathBuf, String)>,
}

struct Exporter<'a> {
    fs: &'a EncFs,
    caller: Caller,
    root: bool,
    /// Backing inode number → exported path of its first name (hard links).
    linked: HashMap<u64, PathBuf>,
    summary: Summary,
}

fn path_fd(p: &Path) -> std::io::Result<OwnedFd> {
    sys::openat(
        libc::AT_FDCWD,
        p.as_os_str(),
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

fn set_time(t: SystemTime) -> sys::SetTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => sys::SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            sys::SetTime::At(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
        }
    }
}

impl Exporter<'_> {
    fn fail(&mut self, rel: &Path, why: impl std::fmt::Display) {
        log::warn!("export {}: {why}", rel.display());
        self.summary.failed.push((rel.to_owned(), why.to_string()));
    }

    fn warn(&mut self, rel: &Path, why: impl std::fmt::Display) {
        self.summary
            .warnings
            .push((rel.to_owned(), why.to_string()));
    }

    /// Copies xattrs, owner, mode and times of `ino` onto `dest` (times last).
    fn finish(&mut self, ino: u64, a: &Attr, dest: &Path, rel: &Path) {
        let fd = match path_fd(dest) {
            Ok(fd) => fd,
            Err(e) => return self.warn(rel, format!("cannot set its metadata: {e}")),
        };
        if a.kind != Kind::Symlink
            && let Err(e) = self.copy_xattrs(ino, fd.as_raw_fd())
        {
            self.warn(rel, format!("xattrs: {e}"));
        }
        if self.root
            && let Err(e) = sys::fchown(fd.as_raw_fd(), a.uid, a.gid)
        {
            self.warn(rel, format!("owner: {e}"));
        }
        if a.kind != Kind::Symlink
            && let Err(e) = sys::chmod_fd(fd.as_raw_fd(), u32::from(a.perm))
        {
            self.warn(rel, format!("mode: {e}"));
        }
        if let Err(e) = sys::utimens(fd.as_raw_fd(), set_time(a.atime), set_time(a.mtime)) {
            self.warn(rel, format!("times: {e}"));
        }
    }

    fn copy_xattrs(&mut self, ino: u64, fd: i32) -> Result<(), String> {
        let list = self.fs.listxattr(ino).map_err(|e| e.to_string())?;
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = OsStr::from_bytes(name);
            let value = self
                .fs
                .getxattr(ino, name, &self.caller)
                .map_err(|e| format!("{}: {e}", name.to_string_lossy()))?;
            sys::setxattr(fd, name, &value, 0)
                .map_err(|e| format!("{}: {e}", name.to_string_lossy()))?;
        }
        Ok(())
    }

    /// Exports the entry `name` of directory `parent` as `dest`.
    fn entry(
        &mut self,
        parent: u64,
        name: &OsStr,
        dest: &Path,
        rel: &Path,
        on_file: &mut dyn FnMut(u64),
    ) {
        let a = match self.fs.lookup(parent, name) {
            Ok(a) => a,
            Err(e) => return self.fail(rel, e),
        };
        self.node(a, dest, rel, on_file);
        self.fs.forget(a.ino, 1);
    }

    fn node(&mut self, a: Attr, dest: &Path, rel: &Path, on_file: &mut dyn FnMut(u64)) {
        match a.kind {
            Kind::Dir => {
                if let Err(e) = fs::create_dir(dest) {
                    return self.fail(rel, format!("cannot create {}: {e}", dest.display()));
                }
                self.summary.directories += 1;
                self.dir(a.ino, dest, rel, on_file);
                self.finish(a.ino, &a, dest, rel);
            }
            Kind::File => {
                if a.nlink > 1
                    && let Some(first) = self.linked.get(&a.ino).cloned()
                {
                    match fs::hard_link(&first, dest) {
                        Ok(()) => self.summary.hard_links += 1,
                        Err(e) => self.fail(rel, format!("hard link: {e}")),
                    }
                    return;
                }
                match self.file(a, dest, rel) {
                    Ok(()) => {
                        self.summary.files += 1;
                        self.summary.bytes += a.size;
                        on_file(a.size);
                        if a.nlink > 1 {
                            self.linked.insert(a.ino, dest.to_owned());
                        }
                    }
                    Err(e) => self.fail(rel, e),
                }
            }
            Kind::Symlink => {
                let target = match self.fs.readlink(a.ino) {
                    Ok(t) => t,
                    Err(e) => return self.fail(rel, e),
                };
                if let Err(e) = std::os::unix::fs::symlink(OsStr::from_bytes(&target), dest) {
                    return self.fail(rel, format!("cannot create {}: {e}", dest.display()));
                }
                self.summary.symlinks += 1;
                self.finish(a.ino, &a, dest, rel);
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                let t = match a.kind {
                    Kind::Fifo => libc::S_IFIFO,
                    Kind::Socket => libc::S_IFSOCK,
                    Kind::CharDev => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                let (Some(dir), Some(n)) = (dest.parent(), dest.file_name()) else {
                    return;
                };
                let made = path_dir_fd(dir)
                    .and_then(|d| sys::mknodat(d.as_raw_fd(), n, t | 0o600, u64::from(a.rdev)));
                match made {
                    Ok(()) => {
                        self.summary.special += 1;
                        self.finish(a.ino, &a, dest, rel);
                    }
                    Err(e) => self.fail(rel, format!("mknod: {e}")),
                }
            }
        }
    }

    /// A regular file: contents through the core into `.NAME.export-tmp`, metadata, rename.
    fn file(&mut self, a: Attr, dest: &Path, rel: &Path) -> Result<(), String> {
        let name = dest.file_name().ok_or("no file name")?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".export-tmp");
        let tmp = dest.with_file_name(tmp_name);
        let written = self.write_contents(a.ino, &tmp);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.finish(a.ino, &a, &tmp, rel);
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot rename into {}: {e}", dest.display())
        })
    }

    fn write_contents(&mut self, ino: u64, tmp: &Path) -> Result<(), String> {
        let fh = self
            .fs
            .open(ino, libc::O_RDONLY, &self.caller)
            .map_err(|e| e.to_string())?;
        let res = (|| {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let mut off = 0u64;
            loop {
                let buf = self
                    .fs
                    .read(fh, off, READ_CHUNK)
                    .map_err(|e| e.to_string())?;
                if buf.is_empty() {
                    break;
                }
                out.write_all(&buf)
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                off += buf.len() as u64;
            }
            Ok::<_, String>(())
        })();
        let _ = self.fs.release(fh);
        res
    }

    fn dir(&mut self, ino: u64, dest: &Path, rel: &Path, on_file: &mut dyn FnMut(u64)) {
        let names = match self.list(ino) {
            Ok(n) => n,
            Err(e) => return self.fail(rel, format!("cannot list: {e}")),
        };
        for n in names {
            self.entry(ino, &n, &dest.join(&n), &rel.join(&n), on_file);
        }
    }

    fn list(&self, ino: u64) -> crate::fs::error::FsResult<Vec<OsString>> {
        let fh = self.fs.opendir(ino)?;
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let batch = match self.fs.readdir(ino, fh, off) {
                Ok(b) => b,
                Err(e) => {
                    self.fs.releasedir(fh);
                    return Err(e);
                }
            };
            let Some((last, _)) = batch.last() else { break };
            off = *last;
            out.extend(
                batch
                    .into_iter()
                    .map(|(_, e)| e.name)
                    .filter(|n| n != "." && n != ".."),
            );
        }
        self.fs.releasedir(fh);
        Ok(out)
    }
}

fn path_dir_fd(p: &Path) -> std::io::Result<OwnedFd> {
    sys::openat(
        libc::AT_FDCWD,
        p.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
}

/// Exports the volume at `backing` (not mounted) into `dest` (missing or an empty
/// directory). `sub`: only this path (relative to the volume root). `on_start` gets the
/// number of bytes to export (an estimate from the backing sizes), `on_file` each file's size.
pub(crate) fn run(
    backing: &Path,
    unlock: Unlock,
    dest: &Path,
    sub: Option<&Path>,
    on_start: impl FnOnce(u64),
    on_file: &mut dyn FnMut(u64),
) -> Result<Summary, OpsError> {
    if let Some(p) = sub
        && p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(OpsError::Usage(format!(
            "--path {}: give a path inside the volume, relative to its root, without `..`",
            p.display()
        )));
    }
    match fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(OpsError::Usage(format!(
                    "{} is not empty: export into a new or empty directory",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(OpsError::Io(format!("{}: {e}", dest.display()))),
    }
    let cfg = vol::read_config(backing)?;
    let lock = vol::lock(backing).map_err(|e| match e {
        vol::VolumeError::Busy(_) => OpsError::Busy(format!(
            "{} is mounted: unmount it first, or copy the tree out of the mount",
            backing.display()
        )),
        e => e.into(),
    })?;
    crate::store::reencrypt::recover(backing, &backing.join(vol::DATA_DIR))
        .map_err(|e| OpsError::Io(format!("cannot finish an interrupted re-encryption: {e}")))?;
    let kms = Arc::new(crate::custody::open_kms(
        &vol::keystore_path(backing, &cfg),
        &unlock,
    )?);
    drop(unlock);
    let caller = Caller::current();
    let core = EncFs::new(vol::open(backing)?, kms, &caller)
        .map_err(|e| OpsError::Io(format!("cannot open the volume: {e}")))?;
    let total: u64 = crate::store::walk::Walk::new(&backing.join(vol::DATA_DIR))
        .filter_map(Result::ok)
        .filter_map(|e| fs::metadata(&e.path).ok())
        .map(|m| m.len())
        .sum();
    on_start(total);
    let mut ex = Exporter {
        fs: &core,
        caller,
        root: sys::geteuid() == 0,
        linked: HashMap::new(),
        summary: Summary::default(),
    };
    // Resolve --path to an inode, then export it as DEST itself.
    let mut ino = ROOT_INO;
    let mut looked = Vec::new();
    for c in sub.into_iter().flat_map(Path::components) {
        if let Component::Normal(n) = c {
            ino = core
                .lookup(ino, n)
                .map_err(|e| OpsError::Usage(format!("--path: {}: {e}", n.to_string_lossy())))?
                .ino;
            looked.push(ino);
        }
    }
    let a = core
        .getattr(ino)
        .map_err(|e| OpsError::Io(format!("cannot read the volume root: {e}")))?;
    let rel = sub.map(Path::to_owned).unwrap_or_default();
    if a.kind == Kind::Dir && fs::symlink_metadata(dest).is_ok() {
        // An existing empty DEST receives the tree.
        ex.summary.directories += 1;
        ex.dir(ino, dest, &rel, on_file);
        ex.finish(ino, &a, dest, &rel);
    } else {
        ex.node(a, dest, &rel, on_file);
    }
    for i in looked {
        core.forget(i, 1);
    }
    if let Ok(f) = File::open(dest) {
        let _ = sys::syncfs(&f);
    }
    let summary = ex.summary;
    drop(core);
    drop(lock);
    Ok(summary)
}
