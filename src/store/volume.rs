//! The backing directory's layout (docs/FORMAT.md §Backing directory):
//!
//! ```text
//! BACKING/envelopefs.json   volume config (format::volume), not secret
//! BACKING/keystore.json     the embedded key service's keystore (unless kept elsewhere)
//! BACKING/data/             the encrypted tree: same names and shape as the plaintext tree
//! BACKING/.lock             flock()ed by a mounted daemon so a volume is mounted once
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::format::FormatError;
use crate::format::context::unhex;
use crate::format::volume::{VolumeConfig, WrappedKeyRecord};
use crate::keys::{KeyId, WrappedKey};

/// Name of the volume config file.
pub(crate) const CONFIG_NAME: &str = "envelopefs.json";
/// Default keystore file name.
pub(crate) const KEYSTORE_NAME: &str = "keystore.json";
/// Directory holding the encrypted tree.
pub(crate) const DATA_DIR: &str = "data";
/// Lock file name.
pub(crate) const LOCK_NAME: &str = ".lock";

/// Errors opening or creating a backing directory.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not a volume.
    #[error(
        "{0} is not an envelopefs volume (no {CONFIG_NAME}); create one with `envelopefs init {0}`"
    )]
    NotAVolume(PathBuf),
    /// Already a volume.
    #[error("{0} already holds an envelopefs volume; pick an empty directory")]
    AlreadyExists(PathBuf),
    /// Not empty.
    #[error("{0} is not empty; `envelopefs init` needs an empty or new directory")]
    NotEmpty(PathBuf),
    /// Bad config.
    #[error("{path}: {source}")]
    Config {
        /// Config path.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// Mounted elsewhere.
    #[error("{0} is already mounted by another envelopefs process; unmount it first")]
    Busy(PathBuf),
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An opened backing directory.
#[derive(Debug)]
pub struct Volume {
    /// The backing directory.
    pub root: PathBuf,
    /// Its config.
    pub config: VolumeConfig,
    /// O_PATH fd of `BACKING/data`.
    pub data: OwnedFd,
}

impl Volume {
    /// Where the keystore lives.
    pub fn keystore_path(&self) -> PathBuf {
        keystore_path(&self.root, &self.config)
    }
}

/// The keystore path a config names (relative paths are relative to the backing directory).
pub fn keystore_path(root: &Path, config: &VolumeConfig) -> PathBuf {
    let p = Path::new(&config.keystore);
    if p.is_absolute() {
        p.to_owned()
    } else {
        root.join(p)
    }
}

/// Makes sure `root` can receive a new volume: creates it if missing; it must be empty.
pub fn prepare(root: &Path) -> Result<(), VolumeError> {
    if root.join(CONFIG_NAME).exists() {
        return Err(VolumeError::AlreadyExists(root.to_owned()));
    }
    fs::create_dir_all(root).map_err(io_err(root))?;
    if fs::read_dir(root).map_err(io_err(root))?.next().is_some() {
        return Err(VolumeError::NotEmpty(root.to_owned()));
    }
    Ok(())
}

/// Lays out a new volume in `root` (after [`prepare`] and the keystore's creation) and writes
/// its config last, so a crash leaves no half-made volume that looks complete.
pub(crate) fn init_layout(root: &Path, config: &VolumeConfig) -> Result<(), VolumeError> {
    if root.join(CONFIG_NAME).exists() {
        return Err(VolumeError::AlreadyExists(root.to_owned()));
    }
    let data = root.join(DATA_DIR);
    fs::create_dir(&data).map_err(io_err(&data))?;
    if config.encrypted_names() {
        let mut id = [0u8; crate::format::names::DIRID_LEN];
        getrandom::fill(&mut id).expect("the OS random number generator failed");
        let target = crate::format::names::dirid_target(&id);
        std::os::unix::fs::symlink(&target, data.join(crate::format::names::DIRID_NAME))
            .map_err(io_err(&data))?;
        crate::atomic::sync_dir(&data).map_err(io_err(&data))?;
    }
    crate::atomic::sync_dir(root).map_err(io_err(root))?;
    write_config(root, config)
}

/// Replaces a volume's config atomically (temp file, fsync, rename).
pub(crate) fn write_config(root: &Path, config: &VolumeConfig) -> Result<(), VolumeError> {
    let cfg = root.join(CONFIG_NAME);
    crate::atomic::atomic_write(&cfg, &config.to_bytes(), 0o644).map_err(io_err(&cfg))
}

/// The wrapped volume key a config records, as the key service takes it.
pub(crate) fn wrapped_volume_key(config: &VolumeConfig) -> Result<WrappedKey, FormatError> {
    let rec = &config.volume_key;
    let bad = || FormatError::BadConfig("volume_key is malformed".into());
    Ok(WrappedKey {
        key_id: rec.key_id.parse::<KeyId>().map_err(|_| bad())?,
        version: rec.version,
        blob: unhex(&rec.blob).ok_or_else(bad)?,
    })
}

/// The config record of a wrapped volume key.
pub(crate) fn volume_key_record(wrapped: &WrappedKey) -> WrappedKeyRecord {
    WrappedKeyRecord {
        key_id: wrapped.key_id.to_string(),
        version: wrapped.version,
        blob: crate::format::context::hex(&wrapped.blob),
    }
}

/// Creates a complete volume in `root` (after [`prepare`]): asks `keys` for the volume key
/// under `default_key`, then lays the volume out. `keystore` is the path recorded in the config.
pub fn create(
    root: &Path,
    keys: &dyn crate::keys::KeyService,
    default_key: &str,
    block_size: u32,
    keystore: String,
    created: u64,
    encrypted_names: bool,
) -> Result<VolumeConfig, VolumeCreateError> {
    crate::format::header::check_block_size(block_size).map_err(|source| VolumeError::Config {
        path: root.to_owned(),
        source,
    })?;
    let volume_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let ctx = crate::format::context::EncryptionContext::for_volume_key(&volume_id);
    let (_vk, wrapped) =
        keys.generate_data_key(default_key, &ctx, &crate::keys::Caller::current())?;
    let record = volume_key_record(&wrapped);
    let mut cfg = VolumeConfig::new(
        volume_id,
        created,
        block_size,
        default_key.to_owned(),
        keystore,
        record,
    );
    if !encrypted_names {
        cfg.features
            .retain(|f| f != crate::format::volume::ENCRYPTED_NAMES);
    }
    init_layout(root, &cfg)?;
    Ok(cfg)
}

/// Errors of [`create`].
#[derive(Debug, thiserror::Error)]
pub enum VolumeCreateError {
    /// Layout.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Key service.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Reads and validates a volume's config.
pub(crate) fn read_config(root: &Path) -> Result<VolumeConfig, VolumeError> {
    let cfg = root.join(CONFIG_NAME);
    let bytes = match fs::read(&cfg) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VolumeError::NotAVolume(root.to_owned()));
        }
        Err(e) => {
            return Err(VolumeError::Io {
                path: cfg,
                source: e,
            });
        }
    };
    VolumeConfig::parse(&bytes).map_err(|source| VolumeError::Config { path: cfg, source })
}

/// Opens an existing volume.
pub fn open(root: &Path) -> Result<Volume, VolumeError> {
    let config = read_config(root)?;
    let data_path = root.join(DATA_DIR);
    let data = File::open(&data_path).map_err(io_err(&data_path))?;
    let data = crate::store::sys::open_path(data.as_raw_fd(), std::ffi::OsStr::new("."))
        .map_err(io_err(&data_path))?;
    if !config.encrypted_names()
        && crate::store::sys::lstatat(
            data.as_raw_fd(),
            std::ffi::OsStr::new(crate::format::names::DIRID_NAME),
        )
        .is_ok()
    {
        // Names are encrypted (the root has an id) but the unauthenticated config says not:
        // mounting would show ciphertext names and store new ones in the clear.
        return Err(VolumeError::Config {
            path: root.join(CONFIG_NAME),
            source: FormatError::BadConfig(format!(
                "the volume encrypts names ({DATA_DIR}/{}) but the config does not list                  `{}`: the config was edited; put the feature back",
                crate::format::names::DIRID_NAME,
                crate::format::volume::ENCRYPTED_NAMES
            )),
        });
    }
    Ok(Volume {
        root: root.to_owned(),
        config,
        data,
    })
}

/// An exclusive lock on a volume, held while it is mounted; released on drop.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

/// Takes the volume's mount lock without waiting.
pub(crate) fn lock(root: &Path) -> Result<VolumeLock, VolumeError> {
    let p = root.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io_err(&p))?;
    match crate::store::sys::try_lock_exclusive(&file) {
        Ok(true) => Ok(VolumeLock { _file: file }),
        Ok(false) => Err(VolumeError::Busy(root.to_owned())),
        Err(e) => Err(VolumeError::Io { path: p, source: e }),
    }
}
