//! The inode table: FUSE inode number → O_PATH fd of the backing inode plus its kernel lookup
//! count. FUSE inode numbers are the backing inode numbers, except that the backing root and
//! backing inode 1 swap places (FUSE's root is always 1).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::error::{FsError, FsResult};
use crate::store::sys;

/// FUSE's root inode number.
pub const ROOT_INO: u64 = 1;

struct Node {
    fd: Arc<OwnedFd>,
    nlookup: u64,
}

/// The inode table.
pub struct InodeTable {
    root_backing_ino: u64,
    root: Arc<OwnedFd>,
    /// Guards the map of looked-up inodes (the root is not in it and never forgotten).
    map: Mutex<HashMap<u64, Node>>,
}

impl InodeTable {
    /// A table whose root is the O_PATH fd `root` (backing inode `root_backing_ino`).
    pub fn new(root: OwnedFd, root_backing_ino: u64) -> Self {
        InodeTable { root_backing_ino, root: Arc::new(root), map: Mutex::new(HashMap::new()) }
    }

    /// The FUSE inode number of a backing inode number.
    pub fn fuse_ino(&self, backing: u64) -> u64 {
        if backing == self.root_backing_ino {
            ROOT_INO
        } else if backing == ROOT_INO {
            self.root_backing_ino
        } else {
            backing
        }
    }

    /// The O_PATH fd of an inode.
    pub fn get(&self, ino: u64) -> FsResult<Arc<OwnedFd>> {
        if ino == ROOT_INO {
            return Ok(self.root.clone());
        }
        self.map.lock().expect("inode table poisoned").get(&ino).map(|n| n.fd.clone()).ok_or(FsError::StaleInode(ino))
    }

    /// Looks `name` up in directory `parent`, counting one kernel lookup of the result.
    /// Returns the inode number and its stat.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<(u64, libc::stat)> {
        let pfd = self.get(parent)?;
        let fd = sys::open_path(pfd.as_raw_fd(), name)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let ino = self.fuse_ino(st.st_ino);
        if ino != ROOT_INO {
            let mut map = self.map.lock().expect("inode table poisoned");
            map.entry(ino).and_modify(|n| n.nlookup += 1).or_insert(Node { fd: Arc::new(fd), nlookup: 1 });
        }
        Ok((ino, st))
    }

    /// Drops `n` kernel lookups of `ino`; the fd closes when none remain.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut map = self.map.lock().expect("inode table poisoned");
        if let Some(node) = map.get_mut(&ino) {
            node.nlookup = node.nlookup.saturating_sub(n);
            if node.nlookup == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Number of inodes currently remembered (the root excluded).
    pub fn len(&self) -> usize {
        self.map.lock().expect("inode table poisoned").len()
    }

    /// True when no inode but the root is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
