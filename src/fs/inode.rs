//! The inode table: FUSE inode number → where the backing inode is, plus the kernel's lookup
//! count. FUSE inode numbers are the backing inode numbers, except that the backing root and
//! backing inode 1 swap places (FUSE's root is always 1).
//!
//! Each inode is known by its parent inode and name (updated by lookups and by renames made
//! through the mount) and reached through an O_PATH file descriptor. Descriptors are cached in
//! a bounded LRU, so a tree of any size works under a small open-file limit: an evicted inode
//! is reopened by parent fd + name and checked to be the same inode (ESTALE otherwise, which
//! only happens if the backing tree was changed behind the mount's back). An inode whose last
//! known name is about to go away (unlink, rmdir, rename over it) is *pinned*: its descriptor
//! is opened first and kept until the kernel forgets the inode, so open-but-unlinked files and
//! other hard links keep working.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::error::{FsError, FsResult};
use crate::format::names::DirId;
use crate::store::sys;

/// FUSE's root inode number.
pub(crate) const ROOT_INO: u64 = 1;

struct Node {
    nlookup: u64,
    /// Last known parent and name.
    parent: u64,
    name: OsString,
    /// The O_PATH descriptor, when cached (always, when pinned).
    fd: Option<Arc<OwnedFd>>,
    /// Never evict the descriptor: the name may no longer lead here.
    pinned: bool,
    /// The inode behind `fd` is known to have no extended attributes at all. Only valid
    /// while that descriptor is held (it keeps the inode, so its number cannot be reused);
    /// cleared whenever the descriptor is dropped or replaced.
    xattr_free: bool,
    /// Bumped by every xattr change through the mount, so a listing that raced with a change
    /// cannot set `xattr_free`.
    xattr_gen: u64,
    /// The kernel's page cache was given this inode's contents by a prefetch (a hint only:
    /// the kernel may have dropped them since, and then simply asks with READ).
    filled: bool,
    /// A directory's id (encrypted names; see [`super::names`]), once read.
    dirid: Option<DirId>,
}

struct Table {
    nodes: HashMap<u64, Node>,
    /// Inodes whose descriptor is cached and not pinned, least recently used first.
    lru: lru::LruCache<u64, ()>,
    /// The root directory's id, once read.
    root_dirid: Option<DirId>,
}

/// The inode table.
pub struct InodeTable {
    root_backing_ino: u64,
    root: Arc<OwnedFd>,
    /// Guards every node (lookup count, name, descriptor) and the descriptor LRU. Never held
    /// across a system call that resolves a name.
    table: Mutex<Table>,
}

impl InodeTable {
    /// A table whose root is the O_PATH fd `root` (backing inode `root_backing_ino`), caching
    /// at most `max_fds` descriptors of unpinned inodes.
    pub fn new(root: OwnedFd, root_backing_ino: u64, max_fds: usize) -> Self {
        let cap = NonZeroUsize::new(max_fds.max(16)).expect("non-zero");
        InodeTable {
            root_backing_ino,
            root: Arc::new(root),
            table: Mutex::new(Table {
                nodes: HashMap::new(),
                lru: lru::LruCache::new(cap),
                root_dirid: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("inode table poisoned")
    }

    /// The FUSE inode number of a backing inode number.
    pub(crate) fn fuse_ino(&self, backing: u64) -> u64 {
        if backing == self.root_backing_ino {
            ROOT_INO
        } else if backing == ROOT_INO {
            self.root_backing_ino
        } else {
            backing
        }
    }

    /// Caches `fd` for `ino`, evicting the least recently used unpinned descriptor if full.
    fn cache(t: &mut Table, ino: u64, fd: Arc<OwnedFd>) {
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.fd = Some(fd);
            node.xattr_free = false;
            if !node.pinned
                && let Some((old, ())) = t.lru.push(ino, ())
                && old != ino
                && let Some(n) = t.nodes.get_mut(&old)
                && !n.pinned
            {
                n.fd = None;
                n.xattr_free = false;
            }
        }
    }

    /// The O_PATH fd of an inode, reopening it by parent and name if it was evicted.
    pub(crate) fn get(&self, ino: u64) -> FsResult<Arc<OwnedFd>> {
        if ino == ROOT_INO {
            return Ok(self.root.clone());
        }
        let (parent, name) = {
            let mut t = self.lock();
            let node = t.nodes.get(&ino).ok_or(FsError::StaleInode(ino))?;
            if let Some(fd) = &node.fd {
                let fd = fd.clone();
                if !node.pinned {
                    t.lru.promote(&ino);
                }
                return Ok(fd);
            }
            (node.parent, node.name.clone())
        };
        let pfd = self.get(parent)?;
        let fd = sys::open_path(pfd.as_raw_fd(), &name).map_err(|_| FsError::StaleInode(ino))?;
        let st = sys::fstat(fd.as_raw_fd())?;
        if self.fuse_ino(st.st_ino) != ino {
            return Err(FsError::StaleInode(ino));
        }
        let fd = Arc::new(fd);
        let mut t = self.lock();
        match t.nodes.get(&ino).and_then(|n| n.fd.clone()) {
            Some(existing) => Ok(existing),
            None if t.nodes.contains_key(&ino) => {
                Self::cache(&mut t, ino, fd.clone());
                Ok(fd)
            }
            None => Err(FsError::StaleInode(ino)),
        }
    }

    /// Opens the regular file `ino` for I/O with `flags`. By its last known parent and name
    /// when that still leads to it (an `openat`, checked by inode number: 3.5-6.7 µs here),
    /// otherwise (pinned inodes, whose name may be gone; names changed behind the mount's back)
    /// through its O_PATH descriptor and /proc/self/fd, which always works but costs twice as
    /// much (6.6-15 µs): it walks /proc for every open.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<File> {
        let by_name = if ino == ROOT_INO {
            None
        } else {
            let t = self.lock();
            t.nodes
                .get(&ino)
                .filter(|n| !n.pinned)
                .map(|n| (n.parent, n.name.clone()))
        };
        if let Some((parent, name)) = by_name
            && let Ok(pfd) = self.get(parent)
            && let Ok((file, st)) = sys::open_regular_at(pfd.as_raw_fd(), &name, flags)
            && self.fuse_ino(st.st_ino) == ino
        {
            return Ok(file);
        }
        let fd = self.get(ino)?;
        Ok(sys::reopen(fd.as_raw_fd(), flags)?)
    }

    /// Looks `name` up in directory `parent`, counting one kernel lookup of the result.
    /// Returns the inode number and its stat.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<(u64, libc::stat)> {
        let pfd = self.get(parent)?;
        let fd = sys::open_path(pfd.as_raw_fd(), name)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        Ok((self.count_lookup(parent, name, &st, Some(fd)), st))
    }

    /// Counts one kernel lookup of the inode `st` describes, reached as `name` in `parent`,
    /// and caches `fd` (its O_PATH descriptor) when none is held. Returns the inode number.
    fn count_lookup(&self, parent: u64, name: &OsStr, st: &libc::stat, fd: Option<OwnedFd>) -> u64 {
        let ino = self.fuse_ino(st.st_ino);
        if ino != ROOT_INO {
            let mut t = self.lock();
            let node = t.nodes.entry(ino).or_insert_with(|| Node {
                nlookup: 0,
                parent,
                name: name.to_owned(),
                fd: None,
                pinned: false,
                xattr_free: false,
                xattr_gen: 0,
                filled: false,
                dirid: None,
            });
            node.nlookup += 1;
            if !node.pinned {
                node.parent = parent;
                node.name = name.to_owned();
            }
            let (held, pinned) = (node.fd.is_some(), node.pinned);
            match fd {
                Some(fd) if !held => Self::cache(&mut t, ino, Arc::new(fd)),
                _ if held && !pinned => {
                    t.lru.promote(&ino);
                }
                _ => {}
            }
        }
        ino
    }

    /// [`lookup`](Self::lookup) of a name that a directory listing said leads to `hint`. When
    /// the table holds a descriptor for `hint` and the name still leads to that inode (one
    /// `fstatat`), the kernel's new reference is counted on it, with no second descriptor
    /// opened and closed: READDIRPLUS of a directory whose inodes the kernel already knows
    /// (`rm -rf` lists each directory twice) costs one system call per entry instead of three.
    /// The held descriptor keeps the backing inode alive, so its number cannot have been
    /// reused. Otherwise, the plain lookup.
    pub fn lookup_hinted(
        &self,
        parent: u64,
        name: &OsStr,
        hint: u64,
    ) -> FsResult<(u64, libc::stat)> {
        let known =
            hint != ROOT_INO && self.lock().nodes.get(&hint).is_some_and(|n| n.fd.is_some());
        if known {
            let pfd = self.get(parent)?;
            if let Ok(st) = sys::lstatat(pfd.as_raw_fd(), name)
                && self.fuse_ino(st.st_ino) == hint
            {
                return Ok((self.count_lookup(parent, name, &st, None), st));
            }
        }
        self.lookup(parent, name)
    }

    /// Keeps `ino`'s descriptor for as long as the kernel remembers the inode: call before
    /// the name that leads to it is removed or replaced.
    pub(crate) fn pin(&self, ino: u64) {
        if ino == ROOT_INO || !self.lock().nodes.contains_key(&ino) {
            return;
        }
        if self.get(ino).is_ok() {
            let mut t = self.lock();
            if let Some(n) = t.nodes.get_mut(&ino)
                && n.fd.is_some()
            {
                n.pinned = true;
                t.lru.pop(&ino);
            }
        }
    }

    /// Whether `ino` is known to have no extended attributes, and the xattr generation to
    /// pass to [`InodeTable::mark_xattr_free`] after listing them.
    pub(crate) fn xattr_state(&self, ino: u64) -> (bool, u64) {
        let t = self.lock();
        t.nodes.get(&ino).map_or((false, 0), |n| {
            (n.fd.is_some() && n.xattr_free, n.xattr_gen)
        })
    }

    /// Records that the inode behind `fd` had no extended attributes when listed, unless an
    /// xattr changed since [`InodeTable::xattr_state`] returned `generation` or the
    /// descriptor was replaced.
    pub(crate) fn mark_xattr_free(&self, ino: u64, generation: u64, fd: &Arc<OwnedFd>) {
        let mut t = self.lock();
        if let Some(n) = t.nodes.get_mut(&ino)
            && n.xattr_gen == generation
            && n.fd.as_ref().is_some_and(|f| Arc::ptr_eq(f, fd))
        {
            n.xattr_free = true;
        }
    }

    /// Call after setting or removing an xattr of `ino`.
    pub(crate) fn xattrs_changed(&self, ino: u64) {
        let mut t = self.lock();
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.xattr_free = false;
            n.xattr_gen += 1;
        }
    }

    /// Whether a prefetch of `ino` is still worth doing (see [`InodeTable::mark_filled`]).
    pub(crate) fn wants_fill(&self, ino: u64) -> bool {
        self.lock().nodes.get(&ino).is_some_and(|n| !n.filled)
    }

    /// Records that the kernel was given `ino`'s contents; forgotten with the inode.
    pub(crate) fn mark_filled(&self, ino: u64) {
        if let Some(n) = self.lock().nodes.get_mut(&ino) {
            n.filled = true;
        }
    }

    /// The cached id of directory `ino`.
    pub(crate) fn dirid(&self, ino: u64) -> Option<DirId> {
        let t = self.lock();
        if ino == ROOT_INO {
            t.root_dirid
        } else {
            t.nodes.get(&ino).and_then(|n| n.dirid)
        }
    }

    /// Caches the id of directory `ino` (forgotten with the inode).
    pub(crate) fn set_dirid(&self, ino: u64, id: DirId) {
        let mut t = self.lock();
        if ino == ROOT_INO {
            t.root_dirid = Some(id);
        } else if let Some(n) = t.nodes.get_mut(&ino) {
            n.dirid = Some(id);
        }
    }

    /// Records that `ino` is now called `name` in `parent` (after a rename through the mount).
    pub(crate) fn renamed(&self, ino: u64, parent: u64, name: &OsStr) {
        let mut t = self.lock();
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.parent = parent;
            n.name = name.to_owned();
        }
    }

    /// Drops `n` kernel lookups of `ino`; the node goes when none remain.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let mut gone = None;
        if let Some(node) = t.nodes.get_mut(&ino) {
            node.nlookup = node.nlookup.saturating_sub(n);
            if node.nlookup == 0 {
                gone = t.nodes.remove(&ino);
                t.lru.pop(&ino);
            }
        }
        drop(t);
        // Closed outside the table lock: for an unlinked file this close is where the backing
        // filesystem frees the inode and its blocks (measured: 28 % of the daemon's time in
        // `rm -rf`, which held up every other request while under the lock).
        drop(gone);
    }

    /// Number of cached descriptors (pinned ones included).
    #[cfg(test)]
    pub(crate) fn open_fds(&self) -> usize {
        self.lock()
            .nodes
            .values()
            .filter(|n| n.fd.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &std::path::Path, max: usize) -> InodeTable {
        let f = std::fs::File::open(dir).unwrap();
        let root = sys::open_path(f.as_raw_fd(), OsStr::new(".")).unwrap();
        let st = sys::fstat(root.as_raw_fd()).unwrap();
        InodeTable::new(root, st.st_ino, max)
    }

    #[test]
    fn evicted_inodes_reopen_by_name_and_descriptors_stay_bounded() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
        }
        let t = table(d.path(), 16);
        let inos: Vec<u64> = (0..100)
            .map(|i| t.lookup(ROOT_INO, OsStr::new(&format!("f{i}"))).unwrap().0)
            .collect();
        assert!(t.open_fds() <= 16, "{} descriptors cached", t.open_fds());
        for ino in &inos {
            let fd = t.get(*ino).unwrap();
            assert_eq!(t.fuse_ino(sys::fstat(fd.as_raw_fd()).unwrap().st_ino), *ino);
        }
        assert!(t.open_fds() <= 16);
    }

    #[test]
    fn renamed_and_pinned_inodes_stay_reachable() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), b"x").unwrap();
        std::fs::write(d.path().join("gone"), b"y").unwrap();
        let t = table(d.path(), 16);
        let sub = t.lookup(ROOT_INO, OsStr::new("sub")).unwrap().0;
        let a = t.lookup(sub, OsStr::new("a")).unwrap().0;
        let gone = t.lookup(ROOT_INO, OsStr::new("gone")).unwrap().0;
        std::fs::rename(d.path().join("sub/a"), d.path().join("b")).unwrap();
        t.renamed(a, ROOT_INO, OsStr::new("b"));
        t.pin(gone);
        std::fs::remove_file(d.path().join("gone")).unwrap();
        // Push everything else out of the cache.
        for i in 0..40 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
            t.lookup(ROOT_INO, OsStr::new(&format!("f{i}"))).unwrap();
        }
        assert!(t.get(a).is_ok(), "renamed inode reopens under its new name");
        assert!(t.get(gone).is_ok(), "pinned inode survives its unlink");
        t.forget(a, 1);
        assert!(matches!(t.get(a), Err(FsError::StaleInode(_))));
    }

    fn contents(mut f: File) -> String {
        use std::io::Read;
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn open_reaches_the_same_inode_whatever_became_of_its_name() {
        let d = tempfile::tempdir().unwrap();
        for (n, c) in [("a", "A"), ("b", "B"), ("p", "P")] {
            std::fs::write(d.path().join(n), c).unwrap();
        }
        let t = table(d.path(), 16);
        let a = t.lookup(ROOT_INO, OsStr::new("a")).unwrap().0;
        let b = t.lookup(ROOT_INO, OsStr::new("b")).unwrap().0;
        let p = t.lookup(ROOT_INO, OsStr::new("p")).unwrap().0;
        assert_eq!(contents(t.open(a, libc::O_RDONLY).unwrap()), "A");
        // Swapped behind the table's back: the name "a" now leads to b's inode, "b" to a FIFO
        // (which must neither be opened nor block the open).
        std::fs::rename(d.path().join("a"), d.path().join("tmp")).unwrap();
        std::fs::rename(d.path().join("b"), d.path().join("a")).unwrap();
        let fifo = std::ffi::CString::new(d.path().join("b").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: a valid C string for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(contents(t.open(a, libc::O_RDONLY).unwrap()), "A");
        assert_eq!(contents(t.open(b, libc::O_RDONLY).unwrap()), "B");
        // A pinned inode whose name is gone still opens, for writing too.
        t.pin(p);
        std::fs::remove_file(d.path().join("p")).unwrap();
        std::fs::write(d.path().join("p"), "other").unwrap();
        use std::io::Write;
        t.open(p, libc::O_RDWR).unwrap().write_all(b"Q").unwrap();
        assert_eq!(contents(t.open(p, libc::O_RDONLY).unwrap()), "Q");
        assert_eq!(
            std::fs::read_to_string(d.path().join("p")).unwrap(),
            "other"
        );
    }

    #[test]
    fn hinted_lookups_count_on_the_held_descriptor_and_follow_a_replaced_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "A").unwrap();
        std::fs::write(d.path().join("b"), "B").unwrap();
        let t = table(d.path(), 16);
        let (a, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        let fds = t.open_fds();
        let (got, st) = t.lookup_hinted(ROOT_INO, OsStr::new("a"), a).unwrap();
        assert_eq!((got, t.fuse_ino(st.st_ino)), (a, a));
        assert_eq!(t.open_fds(), fds, "no second descriptor");
        // Two references now: the first forget leaves the inode reachable, the second ends it.
        t.forget(a, 1);
        assert_eq!(contents(t.open(a, libc::O_RDONLY).unwrap()), "A");
        t.forget(a, 1);
        assert!(matches!(t.get(a), Err(FsError::StaleInode(_))));
        // The name now leads elsewhere: the hint is not trusted.
        let (a, _) = t.lookup(ROOT_INO, OsStr::new("a")).unwrap();
        std::fs::rename(d.path().join("b"), d.path().join("a")).unwrap();
        let (got, _) = t.lookup_hinted(ROOT_INO, OsStr::new("a"), a).unwrap();
        assert_ne!(got, a);
        assert_eq!(contents(t.open(got, libc::O_RDONLY).unwrap()), "B");
        // An unknown hint is a plain lookup; a vanished name is an error.
        let (again, _) = t.lookup_hinted(ROOT_INO, OsStr::new("a"), 999_999).unwrap();
        assert_eq!(again, got);
        assert!(t.lookup_hinted(ROOT_INO, OsStr::new("b"), a).is_err());
    }
}
