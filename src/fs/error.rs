//! The filesystem core's one error type; [`FsError::errno`] is the only errno table.

use crate::format::FormatError;
use crate::keys::KeyError;

/// An error from a filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call on the backing tree failed; its errno passes through.
    #[error("backing store: {0}")]
    Io(#[from] std::io::Error),
    /// Ciphertext, header or size failed to verify: tampering, corruption or a torn write.
    #[error("integrity check failed: {0}")]
    Format(#[from] FormatError),
    /// The key service refused or failed.
    #[error("key service: {0}")]
    Key(#[from] KeyError),
    /// An inode the kernel named is not known (stale).
    #[error("unknown inode {0}")]
    StaleInode(u64),
    /// A file handle the kernel named is not known.
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// The operation is not supported.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
}

impl From<crate::store::file_header::HeaderError> for FsError {
    fn from(e: crate::store::file_header::HeaderError) -> Self {
        use crate::store::file_header::HeaderError;
        match e {
            HeaderError::Format(f) => FsError::Format(f),
            HeaderError::Key(k) => FsError::Key(k),
            HeaderError::Io(i) => FsError::Io(i),
        }
    }
}

impl FsError {
    /// The errno the kernel sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Format(_) => libc::EIO,
            FsError::Key(k) => match k {
                KeyError::Disabled { .. }
                | KeyError::PendingDeletion { .. }
                | KeyError::InvalidState { .. }
                | KeyError::Deleted { .. }
                | KeyError::AccessDenied { .. } => libc::EACCES,
                _ => libc::EIO,
            },
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::Invalid(_) => libc::EINVAL,
        }
    }

    /// Whether the error is worth a warning in the log (integrity and key failures), as
    /// opposed to ordinary results such as ENOENT.
    pub fn is_alarming(&self) -> bool {
        matches!(self, FsError::Format(_) | FsError::Key(_))
            || matches!(self, FsError::Io(e) if e.raw_os_error() == Some(libc::EIO))
    }
}

/// Result alias of the core.
pub type FsResult<T> = Result<T, FsError>;

/// Shorthand for an errno error.
pub fn errno(e: i32) -> FsError {
    FsError::Io(std::io::Error::from_raw_os_error(e))
}
