//! Directory operations: lookup, forget, mkdir, mknod, symlink, readlink, unlink, rmdir,
//! rename, link, opendir/readdir/releasedir, fsyncdir.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::EncFs;
use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use crate::keys::Caller;
use crate::store::sys;

/// Most entries one readdir call returns (the kernel's buffer holds far fewer anyway).
const READDIR_BATCH: usize = 512;

/// One entry of a directory listing.
#[derive(Clone, Debug)]
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
        let (ino, st) = self.inodes.lookup(parent, name)?;
        Ok(self.attr_from_stat(ino, &st))
    }

    /// forget: drops `n` kernel references.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Finishes a create-type operation: hands the new inode to the caller (restoring the
    /// set-id bits of `mode`, see [`give_to_caller`]) and looks it up.
    fn created(&self, parent: u64, name: &OsStr, mode: u32, caller: &Caller) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        let fd = sys::open_path(pfd.as_raw_fd(), name)?;
        if let Err(e) = give_to_caller(pfd.as_raw_fd(), fd.as_raw_fd(), caller, mode) {
            log::warn!("could not give a new inode to uid {}: {e}", caller.uid);
        }
        self.lookup(parent, name)
    }

    /// mkdir (`mode` already has the umask applied by the kernel).
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: &Caller) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        sys::mkdirat(pfd.as_raw_fd(), name, mode & 0o7777 & !SETID_BITS)?;
        self.created(parent, name, mode, caller)
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
        if mode & libc::S_IFMT == libc::S_IFREG {
            let f = sys::openat(
                pfd.as_raw_fd(),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                mode & 0o7777 & !SETID_BITS,
            )?;
            drop(f);
        } else {
            sys::mknodat(pfd.as_raw_fd(), name, mode & !SETID_BITS, u64::from(rdev))?;
        }
        self.created(parent, name, mode, caller)
    }

    /// symlink. The target is stored as given (see docs/SECURITY.md: link targets are not
    /// encrypted).
    pub(crate) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let pfd = self.inodes.get(parent)?;
        sys::symlinkat(target, pfd.as_raw_fd(), name)?;
        self.created(parent, name, 0, caller)
    }

    /// readlink.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let fd = self.inodes.get(ino)?;
        Ok(sys::readlink(fd.as_raw_fd())?)
    }

    /// unlink.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let pfd = self.inodes.get(parent)?;
        self.pin_target(pfd.as_raw_fd(), name);
        Ok(sys::unlinkat(pfd.as_raw_fd(), name, 0)?)
    }

    /// rmdir.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let pfd = self.inodes.get(parent)?;
        self.pin_target(pfd.as_raw_fd(), name);
        Ok(sys::unlinkat(pfd.as_raw_fd(), name, libc::AT_REMOVEDIR)?)
    }

    /// rename, with RENAME_NOREPLACE / RENAME_EXCHANGE passed to the backing filesystem.
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
        let ino_of = |dir: RawFd, n: &OsStr| {
            sys::lstatat(dir, n)
                .ok()
                .map(|st| self.inodes.fuse_ino(st.st_ino))
        };
        let moving = ino_of(pfd.as_raw_fd(), name);
        let target = ino_of(npfd.as_raw_fd(), newname);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if !exchange && let Some(t) = target {
            // The target's name is about to lead elsewhere: keep its inode reachable.
            self.inodes.pin(t);
        }
        sys::renameat2(pfd.as_raw_fd(), name, npfd.as_raw_fd(), newname, flags)?;
        if let Some(m) = moving {
            self.inodes.renamed(m, newparent, newname);
        }
        if exchange && let Some(t) = target {
            self.inodes.renamed(t, parent, name);
        }
        Ok(())
    }

    /// Pins the inode `name` in `dir` leads to (see [`super::inode`]) before that name goes.
    fn pin_target(&self, dir: RawFd, name: &OsStr) {
        if let Ok(st) = sys::lstatat(dir, name) {
            self.inodes.pin(self.inodes.fuse_ino(st.st_ino));
        }
    }

    /// link: a new name for `ino` in `newparent`. The data key is per inode, so every name of a
    /// hard-linked file opens the same contents.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        let fd = self.inodes.get(ino)?;
        let npfd = self.inodes.get(newparent)?;
        sys::link_fd(fd.as_raw_fd(), npfd.as_raw_fd(), newname)?;
        self.lookup(newparent, newname)
    }

    /// opendir: snapshots the listing; readdir serves it by offset.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let fd = self.inodes.get(ino)?;
        let entries = sys::list_dir(fd.as_raw_fd())?;
        let fh = self.new_fh();
        self.dir_handles
            .lock()
            .expect("dir handles poisoned")
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// readdir: entries from index `offset` on ("." and ".." first).
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<(u64, Entry)>> {
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
            out.push((i as u64 + 3, entry));
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
        let entries = self.readdir(ino, fh, offset)?;
        let mut out = Vec::with_capacity(entries.len());
        for (next, e) in entries {
            if e.name == "." || e.name == ".." {
                let attr = self.getattr(ino)?;
                out.push((next, e, attr));
                continue;
            }
            match self.lookup(ino, &e.name) {
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
