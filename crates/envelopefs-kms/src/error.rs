//! Errors of the key service.
//!
//! Each variant maps to the AWS KMS exception a real KMS would return ([`KeyError::code`]), so
//! a KMS-compatible front end can report them unchanged. Messages say what happened and what to
//! do next; they never contain key material, data keys or passphrases.

use std::path::PathBuf;

/// An error from the key service or the keystore.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No CMK or alias has this id or name.
    #[error("key not found: {0}; list keys with `envelopefs key list`")]
    NotFound(String),

    /// The CMK was deleted: its deletion window passed and its material was destroyed.
    #[error(
        "key {key_id} was deleted (its material was destroyed at Unix time {deletion_date}); \
         data wrapped only under it cannot be decrypted"
    )]
    Deleted {
        /// The CMK.
        key_id: String,
        /// When the material was destroyed (seconds since the epoch).
        deletion_date: u64,
    },

    /// The CMK is disabled.
    #[error("key {key_id} is disabled; enable it with `envelopefs key enable {key_id}`")]
    Disabled {
        /// The CMK.
        key_id: String,
    },

    /// The CMK is scheduled for deletion.
    #[error(
        "key {key_id} is pending deletion and cannot be used; cancel the deletion with \
         `envelopefs key cancel-deletion {key_id}` if it is still needed"
    )]
    PendingDeletion {
        /// The CMK.
        key_id: String,
    },

    /// The CMK's state does not allow the operation (for example PendingImport).
    #[error("key {key_id} is in state {state}, which does not allow this operation")]
    InvalidState {
        /// The CMK.
        key_id: String,
        /// The state it is in, as KMS names it.
        state: String,
    },

    /// A wrapped key could not be unwrapped: the blob or the encryption context was altered,
    /// or it was wrapped under a different key or key version.
    #[error(
        "wrapped data key is invalid: it was altered, its encryption context does not match, \
         or it belongs to a different key"
    )]
    InvalidCiphertext,

    /// The caller may not perform the operation on the CMK.
    #[error("access denied to key {key_id}: {reason}")]
    AccessDenied {
        /// The CMK.
        key_id: String,
        /// Why (policy statement, grant, ...).
        reason: String,
    },

    /// The keystore's MAC did not verify under the key derived from the passphrase or key file.
    #[error(
        "wrong passphrase or key file for keystore {} (or the keystore was modified); try again, \
         or pass the right one with --passfile/--keyfile",
        path.display()
    )]
    WrongPassphrase {
        /// The keystore file.
        path: PathBuf,
    },

    /// The keystore file is not a readable envelopefs keystore.
    #[error("keystore {} is damaged or unreadable: {reason}; restore it from a backup", path.display())]
    Corrupt {
        /// The keystore file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The keystore changed on disk after it was opened; nothing was written.
    #[error(
        "keystore {} was changed by another process since it was opened; nothing was written; \
         retry the command",
        path.display()
    )]
    Conflict {
        /// The keystore file.
        path: PathBuf,
    },

    /// A keystore, key or alias with this name already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// An argument is malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An alias name breaks the naming rules.
    #[error(
        "invalid alias name {0:?}: use alias/ followed by 1 to 250 of A-Z a-z 0-9 / _ - : (alias/aws/ is reserved)"
    )]
    InvalidAliasName(String),

    /// A per-key limit was reached (for example 25 on-demand rotations).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),

    /// An import token is malformed, belongs to another key, or was replaced by newer
    /// import parameters.
    #[error("invalid import token: {0}")]
    InvalidImportToken(String),

    /// An import token's 24 hours have passed.
    #[error("import token expired: {0}")]
    ExpiredImportToken(String),

    /// Imported material is not what the key expects (a re-import of different material, or
    /// material that does not unwrap with the import parameters).
    #[error("incorrect key material: {0}")]
    IncorrectKeyMaterial(String),

    /// A key policy document is malformed.
    #[error("malformed key policy: {0}")]
    MalformedPolicy(String),

    /// No grant has this id (on this key).
    #[error("invalid grant id: {0}")]
    InvalidGrantId(String),

    /// The operation is not supported for this key.
    #[error("unsupported operation: {0}")]
    Unsupported(String),

    /// Reading or writing a keystore file failed.
    #[error("cannot access keystore {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The key custody (a PKCS#11 token) cannot be reached or failed; the filesystem maps it
    /// to EIO. The message says which token and what to check.
    #[error("key custody unavailable: {0}")]
    Unavailable(String),

    /// An internal failure (the system random generator, a cipher refusing its input).
    #[error("internal key service error: {0}")]
    Internal(String),
}

impl KeyError {
    /// The AWS KMS exception name for this error (`__type` in a KMS JSON error response).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            KeyError::NotFound(_) | KeyError::Deleted { .. } => "NotFoundException",
            KeyError::InvalidAliasName(_) => "InvalidAliasNameException",
            KeyError::LimitExceeded(_) => "LimitExceededException",
            KeyError::InvalidImportToken(_) => "InvalidImportTokenException",
            KeyError::ExpiredImportToken(_) => "ExpiredImportTokenException",
            KeyError::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            KeyError::MalformedPolicy(_) => "MalformedPolicyDocumentException",
            KeyError::InvalidGrantId(_) => "InvalidGrantIdException",
            KeyError::Disabled { .. } => "DisabledException",
            KeyError::PendingDeletion { .. } | KeyError::InvalidState { .. } => {
                "KMSInvalidStateException"
            }
            KeyError::InvalidCiphertext => "InvalidCiphertextException",
            KeyError::AccessDenied { .. } | KeyError::WrongPassphrase { .. } => {
                "AccessDeniedException"
            }
            KeyError::Corrupt { .. } | KeyError::Io { .. } | KeyError::Internal(_) => {
                "KMSInternalException"
            }
            KeyError::Conflict { .. } => "ConflictException",
            // KMS's name for a custom key store (CloudHSM) that cannot be reached.
            KeyError::Unavailable(_) => "CustomKeyStoreInvalidStateException",
            KeyError::AlreadyExists(_) => "AlreadyExistsException",
            KeyError::InvalidArgument(_) => "ValidationException",
            KeyError::Unsupported(_) => "UnsupportedOperationException",
        }
    }

    /// Shorthand for [`KeyError::Io`].
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        KeyError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Shorthand for [`KeyError::Corrupt`].
    pub(crate) fn corrupt(path: &std::path::Path, reason: impl Into<String>) -> Self {
        KeyError::Corrupt {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_kms_names() {
        assert_eq!(KeyError::NotFound("x".into()).code(), "NotFoundException");
        assert_eq!(
            KeyError::Disabled { key_id: "k".into() }.code(),
            "DisabledException"
        );
        assert_eq!(
            KeyError::PendingDeletion { key_id: "k".into() }.code(),
            "KMSInvalidStateException"
        );
        assert_eq!(
            KeyError::InvalidCiphertext.code(),
            "InvalidCiphertextException"
        );
        let d = KeyError::Deleted {
            key_id: "k".into(),
            deletion_date: 1,
        };
        assert_eq!(d.code(), "NotFoundException");
        assert_eq!(
            KeyError::LimitExceeded("x".into()).code(),
            "LimitExceededException"
        );
        assert_eq!(
            KeyError::IncorrectKeyMaterial("x".into()).code(),
            "IncorrectKeyMaterialException"
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = KeyError::WrongPassphrase {
            path: "/v/keystore.json".into(),
        };
        let m = e.to_string();
        assert!(
            m.contains("/v/keystore.json") && m.contains("--passfile"),
            "{m}"
        );
        let m = KeyError::NotFound("alias/x".into()).to_string();
        assert!(m.contains("envelopefs key list"), "{m}");
    }
}
