//! Open files: open, create, read, write, truncate, fallocate, flush, fsync, release.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::EncFs;
use super::attr::Attr;
use super::content::OpenFile;
use super::dir::{SETID_BITS, give_to_caller};
use super::error::{FsError, FsResult, errno};
use crate::keys::Caller;
use crate::store::sys;

/// One open file handle.
#[derive(Debug)]
pub struct Handle {
    /// The backing file, opened read-write whenever the handle may write (read-modify-write
    /// of partial blocks needs to read).
    pub(crate) file: File,
    /// Shared state of the inode.
    pub(crate) open: Arc<OpenFile>,
    /// Inode number.
    pub(crate) ino: u64,
    /// Who opened it: every later key decision for this handle is taken for them.
    pub(crate) opener: Caller,
    /// The key decision this handle's reads and writes stand on, and the key-service
    /// generation it was taken at ([`EncFs::check_handle`]). Guards only itself.
    pub(crate) decided: std::sync::Mutex<Decided>,
}

/// A handle's last key decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decided {
    /// [`EncFs::key_generation`] when it was taken: the key service's generation and the
    /// customer keys'.
    generation: (u64, u64),
    /// Whether the key service allowed the opener.
    allowed: bool,
}

/// Backing open flags for a kernel open: writers get O_RDWR; flags the format must handle
/// itself (append, truncate, direct I/O, create) are stripped. A write-only handle reads only
/// for the format (the header, partial blocks to re-seal), and those reads must not update the
/// file's atime, so it gets O_NOATIME.
fn backing_flags(flags: i32) -> i32 {
    let acc = if flags & libc::O_ACCMODE == libc::O_RDONLY {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    let keep = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
    let noatime = if flags & libc::O_ACCMODE == libc::O_WRONLY {
        libc::O_NOATIME
    } else {
        0
    };
    acc | keep | noatime
}

impl EncFs {
    /// Opens the backing file of `ino` with `flags`. O_NOATIME needs ownership or
    /// CAP_FOWNER; when the daemon has neither, the file is opened without it.
    pub(super) fn open_backing(&self, ino: u64, flags: i32) -> FsResult<File> {
        match self.inodes.open(ino, flags) {
            Err(FsError::Io(e))
                if e.raw_os_error() == Some(libc::EPERM) && flags & libc::O_NOATIME != 0 =>
            {
                self.inodes.open(ino, flags & !libc::O_NOATIME)
            }
            r => r,
        }
    }
}

impl EncFs {
    /// Finds or builds the shared state of an inode, reading its header on first open.
    /// The open-file map lock is held across the header read so two first opens of the same
    /// inode cannot build two states.
    pub(super) fn open_state(
        &self,
        ino: u64,
        file: &File,
        caller: &Caller,
    ) -> FsResult<Arc<OpenFile>> {
        Ok(self.open_state_loaded(ino, file, caller)?.0)
    }

    /// [`Self::open_state`], and whether this call loaded the state (and so took `caller`'s
    /// key decision) rather than joining a state another open already loaded.
    fn open_state_loaded(
        &self,
        ino: u64,
        file: &File,
        caller: &Caller,
    ) -> FsResult<(Arc<OpenFile>, bool)> {
        let mut map = self.open_files.lock().expect("open files poisoned");
        if let Some(of) = map.get(&ino) {
            let of = of.clone();
            drop(map);
            of.wait_for_fill();
            return Ok((of, false));
        }
        let state = self.load_state(file, caller)?;
        let of = Arc::new(OpenFile::new(state));
        map.insert(ino, of.clone());
        Ok((of, true))
    }

    /// The key decision for `caller` on the file whose state is `open`: its header must
    /// unlock for them (nothing to decide for an empty file without a header). Taken when a
    /// handle joins a state someone else loaded, and again when the key service's generation
    /// moves.
    fn decide(&self, open: &OpenFile, file: &File, caller: &Caller) -> FsResult<()> {
        if open
            .state
            .read()
            .expect("file state poisoned")
            .header
            .is_none()
        {
            return Ok(());
        }
        self.unlock_header(file, caller).map(drop)
    }

    /// Every read and write through a handle stands on a key decision for its opener: when a
    /// key's state, policy or grants may have changed since it was taken (the key service's
    /// generation moved), it is taken again, so disabling a key or revoking a grant reaches
    /// files that are already open. A refusal is remembered until the next change.
    pub(crate) fn check_handle(&self, h: &Handle) -> FsResult<()> {
        let now = self.key_generation();
        let mut d = h.decided.lock().expect("handle decision poisoned");
        if d.generation == now {
            return if d.allowed {
                Ok(())
            } else {
                Err(errno(libc::EACCES))
            };
        }
        match self.decide(&h.open, &h.file, &h.opener) {
            Ok(()) => {
                *d = Decided {
                    generation: now,
                    allowed: true,
                };
                Ok(())
            }
            Err(e) => {
                if e.errno() == libc::EACCES {
                    log::warn!(
                        "inode {}: the key service no longer allows uid {} ({e}); its open handle is cut off",
                        h.ino,
                        h.opener.uid
                    );
                    *d = Decided {
                        generation: now,
                        allowed: false,
                    };
                }
                Err(e)
            }
        }
    }

    fn register(&self, ino: u64, file: File, caller: &Caller, flags: i32) -> FsResult<u64> {
        // Read before the decision, so a change during it makes the first read decide again.
        let generation = self.key_generation();
        let (open, loaded) = self.open_state_loaded(ino, &file, caller)?;
        if !loaded && let Err(e) = self.decide(&open, &file, caller) {
            self.drop_state_if_unused(ino, &open);
            return Err(e);
        }
        let handle = Arc::new(Handle {
            file,
            open,
            ino,
            opener: *caller,
            decided: std::sync::Mutex::new(Decided {
                generation,
                allowed: true,
            }),
        });
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let mut st = handle.open.state.write().expect("file state poisoned");
            self.truncate_content(&mut st, &handle.file, 0, caller)?;
            drop(st);
            super::attr::drop_setid_fd(handle.file.as_raw_fd(), Some(caller))?;
        }
        let fh = self.new_fh();
        self.handles
            .lock()
            .expect("handles poisoned")
            .insert(fh, handle);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .expect("handles poisoned")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// open: returns a file handle.
    pub fn open(&self, ino: u64, flags: i32, caller: &Caller) -> FsResult<u64> {
        let file = self.open_backing(ino, backing_flags(flags))?;
        self.register(ino, file, caller, flags)
    }

    /// create: makes a new regular file (empty, no header until the first write) and opens it.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: &Caller,
    ) -> FsResult<(Attr, u64)> {
        let pfd = self.inodes.get(parent)?;
        let placed = self.place(parent, name)?;
        // The key service decides first: a caller it refuses gets EACCES and nothing is made.
        let keys = self.new_file_keys(caller)?;
        self.before_create(pfd.as_raw_fd(), &placed)?;
        // Read-write whatever the caller asked for: the header is written through this fd
        // (the kernel still enforces the caller's access mode on its own file descriptor).
        let bflags = backing_flags((flags & !libc::O_ACCMODE) | libc::O_RDWR) | libc::O_CREAT;
        let mut fresh = false;
        let file: File = match sys::openat(
            pfd.as_raw_fd(),
            &placed.entry,
            bflags | libc::O_EXCL,
            mode & 0o7777 & !SETID_BITS,
        ) {
            Ok(fd) => {
                let f = File::from(fd);
                if let Err(e) = give_to_caller(pfd.as_raw_fd(), f.as_raw_fd(), caller, mode) {
                    log::warn!("could not give a new file to uid {}: {e}", caller.uid);
                }
                fresh = true;
                f
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                File::from(sys::openat(
                    pfd.as_raw_fd(),
                    &placed.entry,
                    backing_flags(flags) | libc::O_NOFOLLOW,
                    0,
                )?)
            }
            Err(e) => {
                self.after_remove(pfd.as_raw_fd(), &placed);
                return Err(e.into());
            }
        };
        let mut attr = self.lookup_backing(parent, &placed.entry)?;
        let fh = self.register(attr.ino, file, caller, flags)?;
        if fresh {
            let h = self.handle(fh)?;
            let mut st = h.open.state.write().expect("file state poisoned");
            if st.cipher.is_none()
                && let Err(e) = self.install_header(&mut st, &h.file, keys)
            {
                drop(st);
                let _ = self.release(fh);
                let _ = self.unlink(parent, name);
                self.forget(attr.ino, 1);
                return Err(e);
            }
            drop(st);
            self.learn_new_file_xattrs(attr.ino, &h.file);
            // The kernel caches what create replies: the times and blocks after the header.
            attr = self.getattr(attr.ino)?;
        }
        Ok((attr, fh))
    }

    /// The whole plaintext of the file behind `fh`, just opened read-only, for the adapter to
    /// put in the kernel's page cache before it answers the open (so reading the file costs
    /// no READ request). `None` when the file is empty or larger than `max`, when any other
    /// handle on the inode exists or is being opened, or when the kernel was already given
    /// this inode's contents. Until the returned [`Prefetch`] is dropped, every other open of
    /// the inode waits (docs/DESIGN.md §Prefetch on open).
    pub(crate) fn prefetch(&self, fh: u64, max: u64) -> Option<Prefetch> {
        let h = self.handle(fh).ok()?;
        let size = h.open.state.read().expect("file state poisoned").size;
        if size == 0 || size > max || !self.inodes.wants_fill(h.ino) {
            return None;
        }
        {
            let _map = self.open_files.lock().expect("open files poisoned");
            // References: the map's and this handle's. Any other handle, or an open or
            // truncate that has taken the state, holds one more; new ones clone it under
            // the map lock and then wait for the gate.
            if Arc::strong_count(&h.open) != 2 {
                return None;
            }
            h.open.set_filling(true);
        }
        let mut gate = Prefetch {
            data: Vec::new(),
            ino: h.ino,
            open: h.open.clone(),
        };
        let st = h.open.state.read().expect("file state poisoned");
        let data = self
            .read_content(&st, &h.file, 0, st.size.min(max) as u32)
            .ok()?;
        drop(st);
        gate.data = data;
        Some(gate)
    }

    /// Records that the kernel's page cache was given `ino`'s contents (see
    /// [`EncFs::prefetch`]); later opens do not prefetch it again while the kernel knows
    /// the inode.
    pub(crate) fn prefetched(&self, ino: u64) {
        self.inodes.mark_filled(ino);
    }

    /// read.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        self.check_handle(&h)?;
        let st = h.open.state.read().expect("file state poisoned");
        self.read_content(&st, &h.file, offset, size)
    }

    /// As [`EncFs::read`] into a transport's buffer (at least `size` bytes); returns the bytes
    /// read.
    pub fn read_into(&self, fh: u64, offset: u64, size: u32, out: &mut [u8]) -> FsResult<usize> {
        let h = self.handle(fh)?;
        self.check_handle(&h)?;
        let st = h.open.state.read().expect("file state poisoned");
        self.read_content_into(&st, &h.file, offset, size, out)
    }

    /// write: returns the bytes written (all of them, or an error).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], caller: &Caller) -> FsResult<u32> {
        let h = self.handle(fh)?;
        self.check_handle(&h)?;
        let mut st = h.open.state.write().expect("file state poisoned");
        self.write_content(&mut st, &h.file, offset, data, caller)?;
        Ok(data.len() as u32)
    }

    /// Truncates through a handle if one is given or the inode is open, else through a
    /// temporary read-write open.
    pub(crate) fn truncate(
        &self,
        ino: u64,
        fh: Option<u64>,
        size: u64,
        caller: &Caller,
    ) -> FsResult<()> {
        let handle = match fh {
            Some(fh) => Some(self.handle(fh)?),
            None => None,
        };
        let (file, open) = match handle {
            Some(h) if h.file.metadata().is_ok() && can_write(&h.file) => {
                self.check_handle(&h)?;
                (h.file.try_clone()?, h.open.clone())
            }
            _ => {
                let fd = self.inodes.get(ino)?;
                let st = sys::fstat(fd.as_raw_fd())?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(errno(libc::EISDIR));
                }
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(errno(libc::EINVAL));
                }
                // Internal reads (header, last block) must not update atime.
                let file = self.open_backing(ino, libc::O_RDWR | libc::O_NOATIME)?;
                let (open, loaded) = self.open_state_loaded(ino, &file, caller)?;
                // Joining a state someone else opened: this caller's own key decision.
                if !loaded && let Err(e) = self.decide(&open, &file, caller) {
                    self.drop_state_if_unused(ino, &open);
                    return Err(e);
                }
                (file, open)
            }
        };
        let result = {
            let mut st = open.state.write().expect("file state poisoned");
            self.truncate_content(&mut st, &file, size, caller)
        };
        self.drop_state_if_unused(ino, &open);
        result
    }

    /// fallocate: mode 0 grows the file to cover the range (blocks are written, so the space
    /// is really allocated); FALLOC_FL_KEEP_SIZE preallocates the backing range; other modes
    /// are not supported (EOPNOTSUPP).
    pub(crate) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: &Caller,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.check_handle(&h)?;
        let end = offset
            .checked_add(length)
            .ok_or(FsError::Invalid("fallocate range overflows"))?;
        let mut st = h.open.state.write().expect("file state poisoned");
        match mode {
            0 => {
                if end > st.size {
                    self.truncate_content(&mut st, &h.file, end, caller)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => {
                let l = self.layout;
                let start = l.block_offset(offset / l.block_size());
                let stop = l.block_offset(end.div_ceil(l.block_size()));
                Ok(sys::fallocate(&h.file, mode, start, stop - start)?)
            }
            _ => Err(FsError::Unsupported(
                "fallocate mode other than 0 or KEEP_SIZE",
            )),
        }
    }

    /// fsync.
    pub(crate) fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.handle(fh)?;
        if datasync {
            h.file.sync_data()?
        } else {
            h.file.sync_all()?
        }
        Ok(())
    }

    /// release: closes the handle; the inode's state goes when its last handle does.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .expect("handles poisoned")
            .remove(&fh)
            .ok_or(FsError::BadHandle(fh))?;
        let (ino, open) = (h.ino, h.open.clone());
        drop(h);
        self.drop_state_if_unused(ino, &open);
        Ok(())
    }

    pub(super) fn drop_state_if_unused(&self, ino: u64, open: &Arc<OpenFile>) {
        let mut map = self.open_files.lock().expect("open files poisoned");
        // References: the map's, the caller's `open`, and one per live handle.
        if map.get(&ino).is_some_and(|of| Arc::ptr_eq(of, open)) && Arc::strong_count(open) <= 2 {
            map.remove(&ino);
        }
    }

    /// The key service's generation ([`crate::keys::KeyService::generation`]).
    pub(crate) fn key_generation(&self) -> (u64, u64) {
        (self.keys.generation(), self.customer.generation())
    }

    /// The inodes that have open handles.
    pub(crate) fn open_inodes(&self) -> Vec<u64> {
        self.open_files
            .lock()
            .expect("open files poisoned")
            .keys()
            .copied()
            .collect()
    }

    /// Number of open file handles (for tests and leak checks).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().expect("handles poisoned").len()
    }
}

/// A file's plaintext on its way to the kernel's page cache (see [`EncFs::prefetch`]). Other
/// opens of the inode wait until this is dropped.
pub struct Prefetch {
    /// The plaintext, from offset 0.
    pub data: Vec<u8>,
    /// The inode.
    pub ino: u64,
    open: Arc<OpenFile>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefetch(inode {}, {} bytes)", self.ino, self.data.len())
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.open.set_filling(false);
    }
}

fn can_write(f: &File) -> bool {
    sys::status_flags(f).is_ok_and(|fl| fl & libc::O_ACCMODE == libc::O_RDWR)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::fs::testing::with_file;

    #[test]
    fn prefetch_gives_the_contents_once_and_only_to_a_lone_reader() {
        let (fs, _tmp, caller, ino, fh) = with_file();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs.write(fh, 0, &data, &caller).unwrap();
        // Another handle (here the writer's) is open: no prefetch.
        let r = fs.open(ino, libc::O_RDONLY, &caller).unwrap();
        assert!(fs.prefetch(r, 1 << 20).is_none(), "a writer is open");
        fs.release(r).unwrap();
        fs.release(fh).unwrap();
        // Too large for the limit: no prefetch.
        let r = fs.open(ino, libc::O_RDONLY, &caller).unwrap();
        assert!(fs.prefetch(r, 9_999).is_none(), "larger than max");
        let p = fs
            .prefetch(r, 10_000)
            .expect("a lone reader of a small file");
        assert_eq!(p.data, data);
        assert_eq!(p.ino, ino);
        drop(p);
        fs.prefetched(ino);
        fs.release(r).unwrap();
        // The kernel was given the contents: not again while it knows the inode.
        let r = fs.open(ino, libc::O_RDONLY, &caller).unwrap();
        assert!(fs.prefetch(r, 1 << 20).is_none(), "already given");
        fs.release(r).unwrap();
    }

    #[test]
    fn other_opens_wait_until_the_prefetch_is_done() {
        let (fs, _tmp, caller, ino, fh) = with_file();
        fs.write(fh, 0, b"old contents", &caller).unwrap();
        fs.release(fh).unwrap();
        let r = fs.open(ino, libc::O_RDONLY, &caller).unwrap();
        let p = fs.prefetch(r, 1 << 20).expect("lone reader");
        assert_eq!(p.data, b"old contents");
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                // A writer's open must not complete while the contents are on their way to
                // the kernel, or its writes could be overwritten by them.
                let w = fs.open(ino, libc::O_WRONLY, &caller).unwrap();
                tx.send(()).unwrap();
                fs.write(w, 0, b"new", &caller).unwrap();
                fs.release(w).unwrap();
            });
            assert!(
                rx.recv_timeout(Duration::from_millis(300)).is_err(),
                "the writer's open finished during the prefetch"
            );
            drop(p);
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the writer's open finishes once the prefetch is done");
        });
        assert_eq!(&fs.read(r, 0, 100).unwrap()[..], b"new contents");
        fs.release(r).unwrap();
    }
}

#[cfg(test)]
mod revocation_tests {
    use crate::fs::testing;
    use crate::keys::Caller;

    fn errno<T: std::fmt::Debug>(r: crate::fs::FsResult<T>) -> Result<T, i32> {
        r.map_err(|e| e.errno())
    }

    /// Disabling the key reaches handles opened before it: reads and writes fail with EACCES
    /// until the key is enabled again, and a second open of a file someone already has open
    /// takes its own decision instead of joining the first one's.
    #[test]
    fn a_key_decision_reaches_open_handles_and_joining_opens() {
        let (fs, _tmp, caller, kms) = testing::fresh_with_kms();
        let (a, fh) = fs
            .create(1, std::ffi::OsStr::new("f"), 0o644, libc::O_RDWR, &caller)
            .unwrap();
        fs.write(fh, 0, b"before", &caller).unwrap();
        assert_eq!(errno(fs.read(fh, 0, 100)), Ok(b"before".to_vec()));
        kms.disable_key("alias/default", &Caller::current())
            .unwrap();
        assert_eq!(errno(fs.read(fh, 0, 100)), Err(libc::EACCES));
        assert_eq!(errno(fs.write(fh, 0, b"x", &caller)), Err(libc::EACCES));
        assert_eq!(
            errno(fs.open(a.ino, libc::O_RDONLY, &caller)),
            Err(libc::EACCES),
            "joining the open state still asks the key service"
        );
        kms.enable_key("alias/default", &Caller::current()).unwrap();
        assert_eq!(errno(fs.read(fh, 0, 100)), Ok(b"before".to_vec()));
        let fh2 = fs.open(a.ino, libc::O_RDONLY, &caller).unwrap();
        assert_eq!(errno(fs.read(fh2, 0, 100)), Ok(b"before".to_vec()));
        fs.release(fh2).unwrap();
        fs.release(fh).unwrap();
    }
}
