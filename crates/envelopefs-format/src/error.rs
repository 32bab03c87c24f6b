//! Errors of the pure format layer. None of them carries secret bytes.

/// Something in a header, block, size or volume config is not what the format allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes required.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The magic bytes are wrong: not an envelopefs file header.
    #[error("not an envelopefs file header (bad magic)")]
    BadMagic,
    /// A header written by a newer format version.
    #[error("unsupported header format version {0}; upgrade envelopefs")]
    UnsupportedVersion(u16),
    /// A cipher suite this build does not know.
    #[error("unsupported cipher suite {0}")]
    UnsupportedSuite(u16),
    /// Block size not a power of two in the allowed range.
    #[error("invalid block size {0} (must be a power of two from 512 to 1048576)")]
    BadBlockSize(u32),
    /// The header's block size differs from the volume's.
    #[error("header block size {header} differs from the volume's {volume}")]
    BlockSizeMismatch {
        /// In the header.
        header: u32,
        /// In the volume config.
        volume: u32,
    },
    /// Slot count or slot encoding out of bounds.
    #[error("malformed key slot: {0}")]
    BadSlot(&'static str),
    /// Reserved bytes that must be zero are not.
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,

    #[error(
        "the file was written with sealed-holes but the volume config does not list that feature \
         (the config was edited: restore `sealed-holes` in envelopefs.json)"
    )]
    SealedHolesRemoved,
    /// The all-zero file id is reserved.
    #[error("all-zero file id")]
    ZeroFileId,
    /// No header copy carries a valid MAC under the unwrapped data key.
    #[error("file header authentication failed")]
    HeaderAuthFailed,
    /// A block's authentication tag did not verify.
    #[error("block {0} authentication failed (tampered, moved, truncated or torn)")]
    BlockAuthFailed(u64),
    /// The backing file's length cannot be produced by the format.
    #[error("backing length {0} is not a valid envelopefs file length")]
    BadLength(u64),
    /// The volume config uses a feature this build does not know.
    #[error(
        "volume uses unknown feature '{0}'; it was made by a newer envelopefs: upgrade to mount it"
    )]
    UnknownFeature(String),
    /// An encrypted name, link target or xattr name did not authenticate (tampered, or moved
    /// from another directory).
    #[error("encrypted name authentication failed (tampered, or moved from another directory)")]
    NameAuthFailed,
    /// A directory's `.dirid` is not 32 lowercase hex digits.
    #[error("malformed directory id (.dirid)")]
    BadDirId,
    /// A name that no file system entry can have (empty, `.`, `..`, a `/` or a NUL in it).
    #[error("invalid name")]
    BadName,
    /// A name, link target or xattr name too long to be stored encrypted.
    #[error("name too long to store encrypted")]
    NameTooLong,
    /// The volume config cannot be parsed.
    #[error("invalid volume config: {0}")]
    BadConfig(String),
}
