//! The filesystem core: plain methods returning [`FsResult`], no fuser types, so tests drive it
//! without a mount. The fuser adapter (`crate::fuse`) only translates.
//!
//! The backing tree mirrors the plaintext tree (same names, directories, links, modes and
//! times); regular files are stored in the format of `crate::format`. Inodes are tracked by
//! O_PATH fds (see [`inode`]), so operations never resolve paths and stay correct across
//! renames and hard links.

pub mod attr;
pub mod content;
pub mod customer;
#[cfg(test)]
mod customer_tests;
pub mod dir;
pub mod error;
pub mod file;
pub mod inode;
pub(crate) mod names;
#[cfg(test)]
mod names_tests;
pub(crate) mod plan;
pub mod reencrypt;
pub mod xattr;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub use attr::{Attr, Kind, SetAttr};
pub use error::{FsError, FsResult};

use crate::format::context::EncryptionContext;
use crate::format::layout::Layout;
use crate::keys::{Caller, KeyService};
use crate::store::volume::Volume;
use content::OpenFile;
use file::Handle;
use inode::InodeTable;

/// The filesystem core over one opened volume.
pub struct EncFs {
    volume_id: String,
    /// BACKING (the re-encryption journal lives in it).
    backing_root: std::path::PathBuf,
    layout: Layout,
    block_size: u32,
    default_key: String,
    keys: Arc<dyn KeyService>,
    /// The users' customer-provided keys (SSE-C), in memory only.
    customer: Arc<customer::CustomerTable>,
    xattr: xattr::XattrCipher,
    /// How names are stored (plain, or encrypted: `encrypted-names`).
    names: names::Names,
    inodes: InodeTable,
    /// Guards the map from inode to its shared open-file state (one per open inode, shared by
    /// all its handles); the state itself has its own lock.
    open_files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Guards the map of open file handles.
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Guards the map of open directory handles (each a listing snapshot).
    dir_handles: Mutex<HashMap<u64, Arc<Vec<names::Listed>>>>,
    next_fh: AtomicU64,
}

impl std::fmt::Debug for EncFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncFs")
            .field("volume_id", &self.volume_id)
            .finish_non_exhaustive()
    }
}

/// How many inode descriptors to cache: half the open-file limit (the rest is for open files,
/// directory listings and the key service), between 256 and 65536.
fn fd_cache_size() -> usize {
    (crate::store::sys::fd_limit() / 2).clamp(256, 65536) as usize
}

impl EncFs {
    /// Opens the core over `volume`, unwrapping the volume key with `caller`'s rights.
    pub fn new(volume: Volume, keys: Arc<dyn KeyService>, caller: &Caller) -> FsResult<Self> {
        Self::with_fd_cache(volume, keys, caller, fd_cache_size())
    }

    /// [`new`](Self::new) with an explicit bound on cached inode descriptors (tests use a
    /// tiny one to exercise eviction).
    pub fn with_fd_cache(
        volume: Volume,
        keys: Arc<dyn KeyService>,
        caller: &Caller,
        max_fds: usize,
    ) -> FsResult<Self> {
        let cfg = &volume.config;
        let (xattr, names) = xattr::XattrCipher::unwrap(keys.as_ref(), cfg, caller)?;
        let root_st = crate::store::sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&volume.data))?;
        Ok(EncFs {
            volume_id: cfg.volume_id.clone(),
            backing_root: volume.root.clone(),
            layout: Layout::with_sealed_holes(cfg.block_size, cfg.sealed_holes()),
            block_size: cfg.block_size,
            default_key: cfg.default_key.clone(),
            customer: Arc::new(customer::CustomerTable::new(keys.clone())),
            keys,
            xattr,
            names,
            inodes: InodeTable::new(volume.data, root_st.st_ino, max_fds),
            open_files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    /// The encryption context of a file's data key.
    pub(crate) fn file_context(&self, file_id: &[u8; 16]) -> EncryptionContext {
        EncryptionContext::for_file(&self.volume_id, file_id)
    }

    /// The table of customer-provided keys (the daemon's control socket adds and drops them).
    pub fn customer_keys(&self) -> &Arc<customer::CustomerTable> {
        &self.customer
    }

    /// The volume's block layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn new_fh(&self) -> u64 {
        self.next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A core over a fresh volume in a temp dir with an in-memory key service, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::EncFs;
    use crate::keys::Caller;
    use crate::keys::local::LocalKms;
    use crate::store::volume;

    /// The core, the temp dir that holds its volume, and the caller it was opened with.
    pub(crate) fn fresh() -> (EncFs, tempfile::TempDir, Caller) {
        let (fs, tmp, caller, _) = fresh_with_kms();
        (fs, tmp, caller)
    }

    /// [`fresh`] and the key service the core uses (to change key states under it).
    pub(crate) fn fresh_with_kms() -> (EncFs, tempfile::TempDir, Caller, Arc<LocalKms>) {
        let kms = Arc::new(LocalKms::in_memory_for_tests());
        let (fs, tmp, caller) = core_over(kms.clone());
        (fs, tmp, caller, kms)
    }

    /// A second core over the volume of `tmp` (made by [`fresh_with_kms`] with `kms`).
    pub(crate) fn reopen(tmp: &tempfile::TempDir, kms: Arc<LocalKms>) -> EncFs {
        let root = tmp.path().join("vol");
        EncFs::new(volume::open(&root).expect("open"), kms, &Caller::current()).expect("core")
    }

    /// A fresh volume in a temp dir made with `keys`, and the core over it.
    fn core_over<K: crate::keys::KeyService + 'static>(
        keys: Arc<K>,
    ) -> (EncFs, tempfile::TempDir, Caller) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("vol");
        volume::prepare(&root).expect("prepare");
        volume::create(
            &root,
            keys.as_ref(),
            "alias/default",
            4096,
            "keystore.json".into(),
            0,
            true,
        )
        .expect("create");
        let caller = Caller::current();
        let fs = EncFs::new(volume::open(&root).expect("open"), keys, &caller).expect("core");
        (fs, tmp, caller)
    }

    /// A key service for injecting key-service errors into the core: it forwards to a real
    /// in-memory service until [`FailingKeys::fail_with`] arms it, then fails every call.
    pub(crate) struct FailingKeys {
        inner: LocalKms,
        fail: std::sync::Mutex<Option<fn() -> crate::keys::KeyError>>,
    }

    impl FailingKeys {
        /// Every later call fails with `make()` (None: calls go through again).
        pub(crate) fn fail_with(&self, make: Option<fn() -> crate::keys::KeyError>) {
            *self.fail.lock().unwrap() = make;
        }

        fn check(&self) -> Result<(), crate::keys::KeyError> {
            match *self.fail.lock().unwrap() {
                Some(make) => Err(make()),
                None => Ok(()),
            }
        }
    }

    impl crate::keys::KeyService for FailingKeys {
        fn generate_data_key(
            &self,
            key: &str,
            context: &crate::format::context::EncryptionContext,
            caller: &Caller,
        ) -> Result<(crate::keys::DataKey, crate::keys::WrappedKey), crate::keys::KeyError>
        {
            self.check()?;
            self.inner.generate_data_key(key, context, caller)
        }

        fn decrypt(
            &self,
            wrapped: &crate::keys::WrappedKey,
            context: &crate::format::context::EncryptionContext,
            caller: &Caller,
        ) -> Result<crate::keys::DataKey, crate::keys::KeyError> {
            self.check()?;
            self.inner.decrypt(wrapped, context, caller)
        }

        fn re_encrypt(
            &self,
            wrapped: &crate::keys::WrappedKey,
            context: &crate::format::context::EncryptionContext,
            destination: &str,
            caller: &Caller,
        ) -> Result<crate::keys::WrappedKey, crate::keys::KeyError> {
            self.check()?;
            self.inner.re_encrypt(wrapped, context, destination, caller)
        }

        fn describe_key(
            &self,
            key: &str,
        ) -> Result<crate::keys::KeyMetadata, crate::keys::KeyError> {
            self.check()?;
            self.inner.describe_key(key)
        }

        fn generation(&self) -> u64 {
            self.inner.generation()
        }
    }

    /// A core over a fresh volume whose key service can be made to fail.
    pub(crate) fn with_failing_keys() -> (EncFs, tempfile::TempDir, Caller, Arc<FailingKeys>) {
        let keys = Arc::new(FailingKeys {
            inner: LocalKms::in_memory_for_tests(),
            fail: std::sync::Mutex::new(None),
        });
        let (fs, tmp, caller) = core_over(keys.clone());
        (fs, tmp, caller, keys)
    }

    /// Key-service errors injected into the core reach the caller as the errno table says:
    /// refusals as EACCES, failures of the service as EIO; nothing is created on a refusal.
    #[test]
    fn injected_key_service_errors_map_to_errno() {
        use crate::keys::KeyError;
        let (fs, _tmp, caller, keys) = with_failing_keys();
        let (a, fh) = fs
            .create(1, std::ffi::OsStr::new("f"), 0o600, libc::O_RDWR, &caller)
            .unwrap();
        fs.write(fh, 0, b"x", &caller).unwrap();
        fs.release(fh).unwrap();
        let cases: [(fn() -> KeyError, i32); 4] = [
            (
                || KeyError::AccessDenied {
                    key_id: "k".into(),
                    reason: "injected".into(),
                },
                libc::EACCES,
            ),
            (|| KeyError::Disabled { key_id: "k".into() }, libc::EACCES),
            (|| KeyError::Internal("injected".into()), libc::EIO),
            (|| KeyError::InvalidCiphertext, libc::EIO),
        ];
        for (make, want) in cases {
            keys.fail_with(Some(make));
            let got = fs
                .open(a.ino, libc::O_RDONLY, &caller)
                .map_err(|e| e.errno());
            assert_eq!(got, Err(want), "open under {}", make());
            let got = fs
                .create(1, std::ffi::OsStr::new("g"), 0o600, libc::O_RDWR, &caller)
                .map(|_| ())
                .map_err(|e| e.errno());
            assert_eq!(got, Err(want), "create under {}", make());
            assert!(
                fs.lookup(1, std::ffi::OsStr::new("g")).is_err(),
                "a refused create leaves nothing"
            );
        }
        keys.fail_with(None);
        let fh = fs.open(a.ino, libc::O_RDONLY, &caller).unwrap();
        assert_eq!(fs.read(fh, 0, 10).unwrap(), b"x");
        fs.release(fh).unwrap();
    }

    /// The backing path of the entry `name` of the root directory (encrypted or not).
    pub(crate) fn backing_path(
        fs: &EncFs,
        tmp: &tempfile::TempDir,
        name: &str,
    ) -> std::path::PathBuf {
        let placed = fs
            .place(super::inode::ROOT_INO, std::ffi::OsStr::new(name))
            .expect("place");
        tmp.path().join("vol/data").join(placed.entry)
    }

    /// [`fresh`] with a regular file "f" created in the root: also its inode and the
    /// read-write handle `create` returned (still open).
    pub(crate) fn with_file() -> (EncFs, tempfile::TempDir, Caller, u64, u64) {
        let (fs, tmp, caller) = fresh();
        let (attr, fh) = fs
            .create(
                super::inode::ROOT_INO,
                std::ffi::OsStr::new("f"),
                libc::S_IFREG | 0o644,
                libc::O_RDWR,
                &caller,
            )
            .expect("create f");
        (fs, tmp, caller, attr.ino, fh)
    }
}
