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
            FsError::Format(f) => format_errno(f),
            FsError::Key(k) => key_errno(k),
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::Invalid(_) => libc::EINVAL,
        }
    }

    /// Whether the error is worth a warning in the log (integrity and key failures), as
    /// opposed to ordinary results such as ENOENT.
    pub(crate) fn is_alarming(&self) -> bool {
        matches!(self, FsError::Format(_) | FsError::Key(_))
            || matches!(self, FsError::Io(e) if e.raw_os_error() == Some(libc::EIO))
    }
}

/// The errno of a format error: every one is damage or a file this build cannot read, so EIO
/// (plus the log line `is_alarming` asks for). Listed one by one, without a catch-all, so a new
/// variant must be placed here before the crate compiles.
fn format_errno(e: &FormatError) -> i32 {
    match e {
        FormatError::Truncated { .. }
        | FormatError::BadMagic
        | FormatError::UnsupportedVersion(_)
        | FormatError::UnsupportedSuite(_)
        | FormatError::BadBlockSize(_)
        | FormatError::BlockSizeMismatch { .. }
        | FormatError::BadSlot(_)
        | FormatError::ReservedNotZero
        | FormatError::SealedHolesRemoved
        | FormatError::ZeroFileId
        | FormatError::HeaderAuthFailed
        | FormatError::BlockAuthFailed(_)
        | FormatError::BadLength(_)
        | FormatError::UnknownFeature(_)
        | FormatError::BadConfig(_)
        | FormatError::NameAuthFailed
        | FormatError::BadDirId => libc::EIO,
        // A name the caller gave that cannot be stored: the caller's error.
        FormatError::BadName => libc::EINVAL,
        FormatError::NameTooLong => libc::ENAMETOOLONG,
    }
}

/// The errno of a key-service error. Listed one by one, without a catch-all, so a new variant
/// must be placed here before the crate compiles (docs/KEYS.md: a key decision that refuses
/// is EACCES; anything else the key service cannot do is EIO).
fn key_errno(e: &KeyError) -> i32 {
    match e {
        // The key decision refused this caller or this key's state: a permission answer.
        KeyError::Disabled { .. }
        | KeyError::PendingDeletion { .. }
        | KeyError::InvalidState { .. }
        | KeyError::Deleted { .. }
        | KeyError::AccessDenied { .. } => libc::EACCES,
        // The wrapped key or the keystore is damaged, or names a key this keystore does not
        // have: the file cannot be read, as for damaged ciphertext.
        KeyError::NotFound(_)
        | KeyError::InvalidCiphertext
        | KeyError::WrongPassphrase { .. }
        | KeyError::Corrupt { .. }
        | KeyError::Conflict { .. }
        | KeyError::Io { .. }
        | KeyError::Unavailable(_)
        | KeyError::Internal(_) => libc::EIO,
        // Key management errors: the filesystem core never asks for these operations, so
        // reaching one from a file operation is an internal failure.
        KeyError::AlreadyExists(_)
        | KeyError::InvalidArgument(_)
        | KeyError::InvalidAliasName(_)
        | KeyError::LimitExceeded(_)
        | KeyError::InvalidImportToken(_)
        | KeyError::ExpiredImportToken(_)
        | KeyError::IncorrectKeyMaterial(_)
        | KeyError::MalformedPolicy(_)
        | KeyError::InvalidGrantId(_)
        | KeyError::Unsupported(_) => libc::EIO,
    }
}

/// Result alias of the core.
pub type FsResult<T> = Result<T, FsError>;

/// Shorthand for an errno error.
pub fn errno(e: i32) -> FsError {
    FsError::Io(std::io::Error::from_raw_os_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(e: KeyError) -> i32 {
        FsError::from(e).errno()
    }

    #[test]
    fn key_refusals_are_eacces_and_everything_else_eio() {
        let k = || "k".to_string();
        assert_eq!(key(KeyError::Disabled { key_id: k() }), libc::EACCES);
        assert_eq!(key(KeyError::PendingDeletion { key_id: k() }), libc::EACCES);
        assert_eq!(
            key(KeyError::InvalidState {
                key_id: k(),
                state: "PendingImport".into()
            }),
            libc::EACCES
        );
        assert_eq!(
            key(KeyError::Deleted {
                key_id: k(),
                deletion_date: 1
            }),
            libc::EACCES
        );
        assert_eq!(
            key(KeyError::AccessDenied {
                key_id: k(),
                reason: "policy".into()
            }),
            libc::EACCES
        );
        assert_eq!(key(KeyError::NotFound(k())), libc::EIO);
        assert_eq!(key(KeyError::InvalidCiphertext), libc::EIO);
        assert_eq!(key(KeyError::Internal("rng".into())), libc::EIO);
        assert_eq!(
            key(KeyError::Io {
                path: "/k".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC)
            }),
            libc::EIO
        );
        assert_eq!(key(KeyError::InvalidArgument("x".into())), libc::EIO);
        assert_eq!(key(KeyError::Unsupported("x".into())), libc::EIO);
    }

    #[test]
    fn format_damage_is_eio_and_the_rest_keep_their_errno() {
        assert_eq!(
            FsError::from(FormatError::BlockAuthFailed(3)).errno(),
            libc::EIO
        );
        assert_eq!(
            FsError::from(FormatError::HeaderAuthFailed).errno(),
            libc::EIO
        );
        assert_eq!(FsError::from(FormatError::BadLength(5)).errno(), libc::EIO);
        assert_eq!(
            FsError::from(FormatError::UnsupportedVersion(9)).errno(),
            libc::EIO
        );
        assert_eq!(errno(libc::ENOENT).errno(), libc::ENOENT);
        assert_eq!(
            FsError::Io(std::io::Error::other("no errno")).errno(),
            libc::EIO
        );
        assert_eq!(FsError::StaleInode(1).errno(), libc::ESTALE);
        assert_eq!(FsError::BadHandle(1).errno(), libc::EBADF);
        assert_eq!(FsError::Unsupported("x").errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::Invalid("x").errno(), libc::EINVAL);
    }
}
