//! Directory operations: lookup, forget, mkdir, mknod, symlink, readlink, unlink, rmdir,
//! rename, link, opendir/readdir/releasedir, fsyncdir.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::EncFs;
use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use super::names::Placed;
use crate::keys::Caller;
use crate::store::sys;

/// Most entries one readdir call returns (the kernel's buffer holds far fewer anyway).
const READDIR_BATCH: usize = 512;

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Inode number.
    pub ino: u64,
    /// Type.
    pub kind: Kind,
    /// Name.
    pub name: std::ffi::OsString,
}

/// The set-user-id and set-group-id bits.
pub(crate) const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// Gives a freshly created inode to the caller: owner = caller, group = the parent's if the
/// parent is set-group-id, else the caller's (the kernel's own rule). Only root can do this;
/// an unprivileged daemon's files already belong to the mounting user.
///
/// Create-type operations make the inode without the set-id bits of `mode` (a chown clears
/// them on non-directories, and a root-owned set-id file must never exist, even briefly);
/// this puts them back once the inode belongs to the caller (`mode` is what the caller asked
/// for; 0 for symlinks). Linux ≥ 6.0 has already removed a set-group-id bit the caller may not
/// set; for older kernels the same rule is applied here.
pub(crate) fn give_to_caller(dir: RawFd, fd: RawFd, caller: &Caller, mode: u32) -> FsResult<()> {
    if sys::geteuid() == 0 {
        let parent = sys::fstat(dir)?;
        let gid = if parent.st_mode & libc::S_ISGID != 0 {
            parent.st_gid
        } else {
            caller.gid
        };
        sys::fchown(fd, caller.uid, gid)?;
    }
    let mut setid = mode & SETID_BITS;
    if setid == 0 {
        return Ok(());
    }
    let st = sys::fstat(fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Ok(());
    }
    // The kernel's rule (inode_init_owner): a new non-directory that is group-executable in a
    // group its creator is not in loses set-group-id.
    if setid & libc::S_ISGID != 0
        && kind != libc::S_IFDIR
        && mode & libc::S_IXGRP != 0
        && !in_group(caller, st.st_gid)
    {
        setid &= !libc::S_ISGID;
    }
    if setid != 0 {
        sys::chmod_fd(fd, (st.st_mode | setid) & 0o7777)?;
    }
    Ok(())
}

/// Whether `caller` is root or in group `gid` (primary, or supplementary as listed in
/// /proc/PID/status; unknown counts as not a member).
fn in_group(caller: &Caller, gid: u32) -> bool {
    if caller.uid == 0 || caller.gid == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

impl EncFs {
    /// lookup: counts one kernel reference on success.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let placed = self.place(parent, name)?;
        self.lookup_backing(parent, &placed.entry)
    }

    /// lookup by backing name.
    pub(crate) fn lookup_backing(&self, parent: u64, entry: &OsStr) -> FsResult<Attr> {
        let (ino, st) = self.inodes.lookup(parent, entry)?;
        Ok(self.attr_from_stat(ino, &st))
    }

    /// forget: drops `n` kernel references.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Finishes a create-type operation: hands the new inode (backing name `entry`) to the
    /// caller (restoring the set-id bits of `mode`, see [`give_to_caller`]) and looks it up.
    fn created(&self, parent: u64, entry: &OsStr, mode: u32, caller: &Caller) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        let fd = sys::open_path(pfd.as_raw_fd(), entry)?;
        if let Err(e) = give_to_caller(pfd.as_raw_fd(), fd.as_raw_fd(), caller, mode) {
            log::warn!("could not give a new inode to uid {}: {e}", caller.uid);
        }
        self.lookup_backing(parent, entry)
    }

    /// Runs `make` (which creates the backing entry `placed.entry` in `pdir`) with the long
    /// name's sidecar made before it and removed again if `make` fails.
    fn make_entry(
        &self,
        pdir: RawFd,
        placed: &Placed,
        make: impl FnOnce() -> std::io::Result<()>,
    ) -> FsResult<()> {
        self.before_create(pdir, placed)?;
        make().map_err(|e| {
            self.after_remove(pdir, placed);
            e.into()
        })
    }

    /// mkdir (`mode` already has the umask applied by the kernel). With encrypted names the new
    /// directory gets its id before anything can be put in it.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: &Caller) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        let perm = mode & 0o7777 & !SETID_BITS;
        let encrypted = self.names.encrypted_names();
        // An unprivileged daemon needs write access to put the id in.
        let first = if encrypted && sys::geteuid() != 0 {
            perm | 0o700
        } else {
            perm
        };
        self.make_entry(pfd.as_raw_fd(), &placed, || {
            sys::mkdirat(pfd.as_raw_fd(), &placed.entry, first)
        })?;
        let mut dirid = None;
        if encrypted {
            let id = sys::open_path(pfd.as_raw_fd(), &placed.entry)
                .map_err(FsError::from)
                .and_then(|d| {
                    let id = self.new_directory(d.as_raw_fd())?;
                    if first != perm {
                        sys::chmod_fd(d.as_raw_fd(), perm)?;
                    }
                    Ok(id)
                });
            match id {
                Ok(id) => dirid = id,
                Err(e) => {
                    let _ = sys::unlinkat(pfd.as_raw_fd(), &placed.entry, libc::AT_REMOVEDIR);
                    self.after_remove(pfd.as_raw_fd(), &placed);
                    return Err(e);
                }
            }
        }
        let attr = self.created(parent, &placed.entry, mode, caller)?;
        if let Some(id) = dirid {
            self.inodes.set_dirid(attr.ino, id);
        }
        Ok(attr)
    }

    /// mknod: fifos, sockets and (for root) device nodes. Regular files come through create.
    pub(crate) fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        let dir = pfd.as_raw_fd();
        self.make_entry(dir, &placed, || {
            if mode & libc::S_IFMT == libc::S_IFREG {
                sys::openat(
                    dir,
                    &placed.entry,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    mode & 0o7777 & !SETID_BITS,
                )
                .map(drop)
            } else {
                sys::mknodat(dir, &placed.entry, mode & !SETID_BITS, u64::from(rdev))
            }
        })?;
        self.created(parent, &placed.entry, mode, caller)
    }

    /// symlink. With encrypted names the target is stored encrypted (docs/FORMAT.md §10).
    pub(crate) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        let stored = self.store_target(target)?;
        self.make_entry(pfd.as_raw_fd(), &placed, || {
            sys::symlinkat(&stored, pfd.as_raw_fd(), &placed.entry)
        })?;
        self.created(parent, &placed.entry, 0, caller)
    }

    /// readlink.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let fd = self.inodes.get(ino)?;
        self.load_target(ino, sys::readlink(fd.as_raw_fd())?)
    }

    /// unlink.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        self.pin_target(pfd.as_raw_fd(), &placed.entry);
        sys::unlinkat(pfd.as_raw_fd(), &placed.entry, 0)?;
        self.after_remove(pfd.as_raw_fd(), &placed);
        Ok(())
    }

    /// rmdir. With encrypted names the directory's own metadata goes first (ENOTEMPTY if it
    /// holds anything else), and its id is put back if the removal then fails.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        self.pin_target(pfd.as_raw_fd(), &placed.entry);
        let id = self.prepare_rmdir(pfd.as_raw_fd(), &placed)?;
        if let Err(e) = sys::unlinkat(pfd.as_raw_fd(), &placed.entry, libc::AT_REMOVEDIR) {
            if let Some(id) = id
                && let Ok(d) = sys::open_path(pfd.as_raw_fd(), &placed.entry)
            {
                self.restore_dirid(d.as_raw_fd(), &id);
            }
            return Err(e.into());
        }
        self.after_remove(pfd.as_raw_fd(), &placed);
        Ok(())
    }

    /// rename, with RENAME_NOREPLACE / RENAME_EXCHANGE passed to the backing filesystem. With
    /// encrypted names a moved entry is renamed to its name encrypted for the new directory;
    /// a directory keeps its id, so nothing below it changes.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let pfd = self.inodes.get(parent)?;
        let npfd = self.inodes.get(newparent)?;
        let from = self.place(parent, name)?;
        let to = self.place(newparent, newname)?;
        let ino_of = |dir: RawFd, n: &OsStr| {
            sys::lstatat(dir, n)
                .ok()
                .map(|st| self.inodes.fuse_ino(st.st_ino))
        };
        let moving = ino_of(pfd.as_raw_fd(), &from.entry);
        let target = ino_of(npfd.as_raw_fd(), &to.entry);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if !exchange && let Some(t) = target {
            // The target's name is about to lead elsewhere: keep its inode reachable.
            self.inodes.pin(t);
        }
        let rename = || {
            sys::renameat2(
                pfd.as_raw_fd(),
                &from.entry,
                npfd.as_raw_fd(),
                &to.entry,
                flags,
            )
        };
        if exchange {
            // Both names stay where they are (only the inodes behind them swap), and so do
            // their sidecars.
            rename()?;
        } else {
            self.make_entry(npfd.as_raw_fd(), &to, rename)?;
            self.after_remove(pfd.as_raw_fd(), &from);
        }
        if let Some(m) = moving {
            self.inodes.renamed(m, newparent, &to.entry);
        }
        if exchange && let Some(t) = target {
            self.inodes.renamed(t, parent, &from.entry);
        }
        Ok(())
    }

    /// Pins the inode `entry` in `dir` leads to (see [`super::inode`]) before that name goes.
    fn pin_target(&self, dir: RawFd, entry: &OsStr) {
        if let Ok(st) = sys::lstatat(dir, entry) {
            self.inodes.pin(self.inodes.fuse_ino(st.st_ino));
        }
    }

    /// link: a new name for `ino` in `newparent`. The data key is per inode, so every name of a
    /// hard-linked file opens the same contents.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        let fd = self.inodes.get(ino)?;
        let npfd = self.inodes.get(newparent)?;
        let placed = self.place(newparent, newname)?;
        self.make_entry(npfd.as_raw_fd(), &placed, || {
            sys::link_fd(fd.as_raw_fd(), npfd.as_raw_fd(), &placed.entry)
        })?;
        self.lookup_backing(newparent, &placed.entry)
    }

    /// opendir: snapshots the listing (names decrypted); readdir serves it by offset.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let fd = self.inodes.get(ino)?;
        let entries = self.list_named(ino, fd.as_raw_fd())?;
        let fh = self.new_fh();
        self.dir_handles
            .lock()
            .expect("dir handles poisoned")
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// readdir: entries from index `offset` on ("." and ".." first).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<(u64, Entry)>> {
        Ok(self
            .listing(ino, fh, offset)?
            .into_iter()
            .map(|(next, e, _)| (next, e))
            .collect())
    }

    /// [`readdir`](Self::readdir) with each entry's backing name (None for "." and "..").
    fn listing(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> FsResult<Vec<(u64, Entry, Option<std::ffi::OsString>)>> {
        let list = self
            .dir_handles
            .lock()
            .expect("dir handles poisoned")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))?;
        let mut out = Vec::new();
        let dots = [(ino, "."), (ino, "..")];
        for (i, (dino, dname)) in dots.iter().enumerate() {
            if offset <= i as u64 {
                out.push((
                    i as u64 + 1,
                    Entry {
                        ino: *dino,
                        kind: Kind::Dir,
                        name: (*dname).into(),
                    },
                    None,
                ));
            }
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, e) in list.iter().enumerate().skip(skip).take(READDIR_BATCH) {
            let entry = Entry {
                ino: self.inodes.fuse_ino(e.ino),
                kind: Kind::from_dtype(e.kind),
                name: e.name.clone(),
            };
            out.push((i as u64 + 3, entry, Some(e.backing().to_owned())));
        }
        Ok(out)
    }

    /// readdirplus: like [`readdir`](Self::readdir) with each entry's attributes. Every entry
    /// but "." and ".." counts one kernel lookup, as FUSE requires; the caller must
    /// [`forget`](Self::forget) the entries it could not pass on. Entries that vanished since
    /// opendir are left out.
    pub(crate) fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> FsResult<Vec<(u64, Entry, Attr)>> {
        let entries = self.listing(ino, fh, offset)?;
        let mut out = Vec::with_capacity(entries.len());
        for (next, e, backing) in entries {
            let Some(backing) = backing else {
                let attr = self.getattr(ino)?;
                out.push((next, e, attr));
                continue;
            };
            let looked = self
                .inodes
                .lookup_hinted(ino, &backing, e.ino)
                .map(|(i, st)| self.attr_from_stat(i, &st));
            match looked {
                Ok(attr) => out.push((
                    next,
                    Entry {
                        ino: attr.ino,
                        kind: attr.kind,
                        name: e.name,
                    },
                    attr,
                )),
                Err(err) => log::debug!("readdirplus: {:?} vanished: {err}", e.name),
            }
        }
        Ok(out)
    }

    /// releasedir.
    pub fn releasedir(&self, fh: u64) {
        self.dir_handles
            .lock()
            .expect("dir handles poisoned")
            .remove(&fh);
    }

    /// fsyncdir.
    pub(crate) fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        let fd = self.inodes.get(ino)?;
        let d = sys::open_dir(fd.as_raw_fd())?;
        Ok(std::fs::File::from(d).sync_all()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::inode::ROOT_INO;
    use crate::fs::testing;

    #[test]
    fn created_inodes_keep_their_set_id_bits() {
        let (fs, _tmp, caller) = testing::fresh();
        let (attr, fh) = fs
            .create(
                ROOT_INO,
                OsStr::new("f"),
                libc::S_IFREG | 0o6755,
                libc::O_WRONLY,
                &caller,
            )
            .unwrap();
        fs.release(fh).unwrap();
        assert_eq!(attr.perm, 0o6755);
        let node = fs
            .mknod(
                ROOT_INO,
                OsStr::new("n"),
                libc::S_IFREG | 0o4700,
                0,
                &caller,
            )
            .unwrap();
        assert_eq!(node.perm, 0o4700);
        let fifo = fs
            .mknod(
                ROOT_INO,
                OsStr::new("p"),
                libc::S_IFIFO | 0o2644,
                0,
                &caller,
            )
            .unwrap();
        assert_eq!(fifo.perm, 0o2644);
        let plain = fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, &caller).unwrap();
        assert_eq!(plain.perm, 0o755);
    }

    #[test]
    fn group_membership_counts_primary_and_supplementary_groups() {
        let c = Caller {
            uid: 4242,
            gid: 4242,
            pid: std::process::id(),
        };
        assert!(in_group(&c, 4242));
        assert!(!in_group(&c, 0xffff_fff0));
        assert!(!in_group(&Caller { pid: 0, ..c }, 0xffff_fff0));
        assert!(in_group(&Caller { uid: 0, ..c }, 0xffff_fff0));
    }
}
