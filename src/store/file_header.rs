//! Reading, unlocking and rewriting a backing file's header (docs/FORMAT.md §4.2), shared by
//! the filesystem core (open) and `envelopefs rewrap`. Header writes take an exclusive
//! `flock` on the backing file so a re-wrap never races a mounted daemon's header creation.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::format::FormatError;
use crate::format::context::EncryptionContext;
use crate::format::header::{self, FileHeader, HEADER_COPY_LEN, HEADER_REGION, KeySlot};
use crate::keys::{Caller, DataKey, KeyError, KeyId, KeyService, WrappedKey};

/// Why a header could not be read or unlocked.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Malformed or failed authentication.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The key service refused or failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// I/O on the backing file.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A header whose data key has been unwrapped and whose MAC verified.
pub struct Unlocked {
    /// The accepted header copy.
    pub header: FileHeader,
    /// Which copy it was (0 = A, 1 = B).
    pub copy: usize,
    /// The highest sequence number among the structurally valid copies.
    pub max_seq: u64,
    /// The file's data key.
    pub dek: DataKey,
}

/// The header slot holding wrapped key `w` (the inverse of [`wrapped_slots`]).
pub fn cmk_slot(w: WrappedKey) -> KeySlot {
    KeySlot::Cmk {
        key_id: w.key_id.0,
        version: w.version,
        blob: w.blob,
    }
}

/// The CMK slots of a header as wrapped keys.
pub fn wrapped_slots(h: &FileHeader) -> impl Iterator<Item = (usize, WrappedKey)> + '_ {
    h.slots.iter().enumerate().filter_map(|(i, s)| match s {
        KeySlot::Cmk {
            key_id,
            version,
            blob,
        } => Some((
            i,
            WrappedKey {
                key_id: KeyId(*key_id),
                version: *version,
                blob: blob.clone(),
            },
        )),
        KeySlot::Unknown { .. } => None,
    })
}

/// Unlocks a header region: newest structurally valid copy first, any CMK slot that the key
/// service opens and whose DEK verifies the copy's MAC. A key-service refusal (disabled key,
/// access denied) is reported in preference to an authentication failure.
pub fn unlock(
    keys: &dyn KeyService,
    volume_id: &str,
    block_size: u32,
    region: &[u8],
    caller: &Caller,
) -> Result<Unlocked, HeaderError> {
    let mut candidates = header::candidates(region)?;
    // Byte-identical copies (every file until its first header rewrite) get identical answers:
    // ask the key service once, so one open is one audit record.
    if region[..HEADER_COPY_LEN] == region[HEADER_COPY_LEN..HEADER_REGION] {
        candidates.truncate(1);
    }
    let max_seq = candidates.iter().map(|c| c.header.seq).max().unwrap_or(0);
    let mut last_err: HeaderError = FormatError::HeaderAuthFailed.into();
    let refusal = |e: &HeaderError| {
        matches!(
            e,
            HeaderError::Key(
                KeyError::Disabled { .. }
                    | KeyError::PendingDeletion { .. }
                    | KeyError::InvalidState { .. }
                    | KeyError::Deleted { .. }
                    | KeyError::AccessDenied { .. }
            )
        )
    };
    for cand in candidates {
        if cand.header.block_size != block_size {
            if !refusal(&last_err) {
                last_err = FormatError::BlockSizeMismatch {
                    header: cand.header.block_size,
                    volume: block_size,
                }
                .into();
            }
            continue;
        }
        let copy_bytes = &region[cand.copy * HEADER_COPY_LEN..(cand.copy + 1) * HEADER_COPY_LEN];
        let ctx = EncryptionContext::for_file(volume_id, &cand.header.file_id);
        let slots: Vec<_> = wrapped_slots(&cand.header).collect();
        for (_, wrapped) in slots {
            let err: HeaderError = match keys.decrypt(&wrapped, &ctx, caller) {
                Ok(dek) => match header::verify_mac(copy_bytes, dek.expose_secret()) {
                    Ok(()) => {
                        return Ok(Unlocked {
                            header: cand.header,
                            copy: cand.copy,
                            max_seq,
                            dek,
                        });
                    }
                    Err(e) => e.into(),
                },
                Err(e) => e.into(),
            };
            if !refusal(&last_err) {
                last_err = err;
            }
        }
    }
    Err(last_err)
}

/// Reads the 1024-byte header region of a non-empty backing file.
pub fn read_region(file: &File) -> io::Result<[u8; HEADER_REGION]> {
    let mut region = [0u8; HEADER_REGION];
    file.read_exact_at(&mut region, 0)?;
    Ok(region)
}

/// Writes a new file's header: both copies, identical, sequence 1.
pub fn write_new(file: &File, h: &FileHeader, dek: &DataKey) -> Result<(), HeaderError> {
    let copy = h.encode(dek.expose_secret())?;
    let mut region = [0u8; HEADER_REGION];
    region[..HEADER_COPY_LEN].copy_from_slice(&copy);
    region[HEADER_COPY_LEN..].copy_from_slice(&copy);
    let _lock = FileLock::exclusive(file)?;
    file.write_all_at(&region, 0)?;
    Ok(())
}

/// Rewrites a header crash-safely: encodes `h` with sequence `max_seq + 1` into the copy
/// *other* than `current`, which stays untouched. The caller holds the file's [`FileLock`] and
/// must have made `current` durable before (a re-wrap run syncs the filesystem when it starts)
/// and must make the new copy durable before another rewrite of the same file (it syncs when
/// it ends): then a crash at any instant leaves at least one valid copy.
pub fn rewrite(
    file: &File,
    mut h: FileHeader,
    dek: &DataKey,
    current: usize,
    max_seq: u64,
) -> Result<FileHeader, HeaderError> {
    h.seq = max_seq + 1;
    let bytes = h.encode(dek.expose_secret())?;
    let target = 1 - current;
    file.write_all_at(&bytes, (target * HEADER_COPY_LEN) as u64)?;
    Ok(h)
}

/// An exclusive `flock` on a backing file, released on drop.
pub struct FileLock<'a> {
    file: &'a File,
}

impl<'a> FileLock<'a> {
    /// Blocks until the lock is held.
    pub fn exclusive(file: &'a File) -> io::Result<Self> {
        loop {
            // SAFETY: flock on a valid open fd has no memory-safety preconditions.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: unlocking a lock this process holds on a valid fd.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
