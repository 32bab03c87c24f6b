//! Reading, unlocking and rewriting a backing file's header (docs/FORMAT.md §4.2), shared by
//! the filesystem core (open) and `envelopefs rewrap`. Header writes take an exclusive
//! `flock` on the backing file so a re-wrap never races a mounted daemon's header creation.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::format::FormatError;
use crate::format::context::EncryptionContext;
use crate::format::customer::CustomerSlot;
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
pub(crate) fn wrapped_slots(h: &FileHeader) -> impl Iterator<Item = (usize, WrappedKey)> + '_ {
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
        KeySlot::Customer(_) | KeySlot::Unknown { .. } => None,
    })
}

/// Opens customer-key (SSE-C) slots for a caller: the mounted daemon's table of loaded keys
/// (`fs::customer`). Refusals are [`KeyError::AccessDenied`] (no key loaded, wrong key).
pub(crate) trait CustomerKeys: Send + Sync {
    /// Unwraps the data key of `slot` for `caller`.
    fn open(
        &self,
        slot: &CustomerSlot,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<DataKey, KeyError>;
}

/// No customer keys (the offline tools): every customer-key slot is refused.
pub(crate) struct NoCustomerKeys;

impl CustomerKeys for NoCustomerKeys {
    fn open(
        &self,
        slot: &CustomerSlot,
        _context: &EncryptionContext,
        _caller: &Caller,
    ) -> Result<DataKey, KeyError> {
        Err(KeyError::AccessDenied {
            key_id: format!("sse-c:{}", slot.uid),
            reason: "the file is wrapped under a customer key, which only a mount the key was                      given to (`envelopefs ssec add`) can use"
                .into(),
        })
    }
}

/// Unlocks a header region: newest structurally valid copy first (copy A first on equal
/// sequence numbers), through any CMK slot that the key service opens and whose DEK verifies
/// the copy's MAC.
///
/// An older copy is a crash-recovery fallback only: it is tried when the newer one is damaged
/// (a slot blob or MAC that does not verify, a wrong block size), never when the key service
/// *refused* every slot of the newer copy (disabled or deleted key, access denied). A key
/// decision taken on the file's current key therefore cannot be bypassed through a stale copy
/// still wrapped under an older key; the refusal is returned.
pub(crate) fn unlock(
    keys: &dyn KeyService,
    customer: &dyn CustomerKeys,
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
    for cand in candidates {
        if cand.header.block_size != block_size {
            last_err = FormatError::BlockSizeMismatch {
                header: cand.header.block_size,
                volume: block_size,
            }
            .into();
            continue;
        }
        let copy_bytes = &region[cand.copy * HEADER_COPY_LEN..(cand.copy + 1) * HEADER_COPY_LEN];
        let ctx = EncryptionContext::for_file(volume_id, &cand.header.file_id);
        let mut refused: Option<HeaderError> = None;
        for slot in &cand.header.slots {
            let opened = match slot {
                KeySlot::Cmk {
                    key_id,
                    version,
                    blob,
                } => keys.decrypt(
                    &WrappedKey {
                        key_id: KeyId(*key_id),
                        version: *version,
                        blob: blob.clone(),
                    },
                    &ctx,
                    caller,
                ),
                KeySlot::Customer(c) => customer.open(c, &ctx, caller),
                KeySlot::Unknown { .. } => continue,
            };
            let err: HeaderError = match opened {
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
            if is_refusal(&err) {
                refused.get_or_insert(err);
            } else {
                last_err = err;
            }
        }
        if let Some(r) = refused {
            // The newest usable copy's keys said no: that is the answer.
            return Err(r);
        }
    }
    Err(last_err)
}

/// True for a key-service decision (as opposed to damage): disabled, pending deletion,
/// deleted, unknown or not-yet-usable key, access denied.
fn is_refusal(e: &HeaderError) -> bool {
    matches!(
        e,
        HeaderError::Key(
            KeyError::NotFound(_)
                | KeyError::Disabled { .. }
                | KeyError::PendingDeletion { .. }
                | KeyError::InvalidState { .. }
                | KeyError::Deleted { .. }
                | KeyError::AccessDenied { .. }
        )
    )
}

/// Reads the 1024-byte header region of a non-empty backing file.
pub(crate) fn read_region(file: &File) -> io::Result<[u8; HEADER_REGION]> {
    let mut region = [0u8; HEADER_REGION];
    file.read_exact_at(&mut region, 0)?;
    Ok(region)
}

/// Writes a new file's header: both copies, identical, sequence 1, followed in the same write
/// by `tail` (the empty sealed block of a `sealed-holes` volume, or nothing).
pub(crate) fn write_new(
    file: &File,
    h: &FileHeader,
    dek: &DataKey,
    tail: &[u8],
) -> Result<(), HeaderError> {
    let copy = h.encode(dek.expose_secret())?;
    let mut bytes = Vec::with_capacity(HEADER_REGION + tail.len());
    bytes.extend_from_slice(&copy);
    bytes.extend_from_slice(&copy);
    bytes.extend_from_slice(tail);
    let _lock = FileLock::exclusive(file)?;
    file.write_all_at(&bytes, 0)?;
    Ok(())
}

/// Rewrites a header crash-safely, first half: encodes `h` with sequence `max_seq + 1` into
/// the copy *other* than `current`, which stays untouched. The caller holds the file's
/// [`FileLock`] and must have made `current` durable before (a re-wrap run syncs the
/// filesystem when it starts). Returns the header and a [`Converge`] for the second half: once
/// the new copy is durable (a sync), [`converge`] copies it over the old one, so that no slot
/// of a key the file no longer depends on survives in either copy. A crash at any instant
/// leaves at least one valid copy, and the newest copy always decides (see [`unlock`]).
pub(crate) fn rewrite(
    file: &File,
    mut h: FileHeader,
    dek: &DataKey,
    current: usize,
    max_seq: u64,
) -> Result<(FileHeader, Converge), HeaderError> {
    h.seq = max_seq + 1;
    let bytes = h.encode(dek.expose_secret())?;
    let target = 1 - current;
    file.write_all_at(&bytes, (target * HEADER_COPY_LEN) as u64)?;
    Ok((
        h,
        Converge {
            copy: target,
            digest: *blake3::hash(&bytes).as_bytes(),
        },
    ))
}

/// The second half of a header change: copy `copy`, whose bytes hash to `digest` (a copy that
/// was MAC-verified under the file's DEK, or was just written), is to be copied over the other
/// copy. Only a hash is kept, so a re-wrap of a large tree remembers 33 bytes per file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converge {
    /// The copy (0 = A, 1 = B) to keep.
    pub copy: usize,
    /// BLAKE3 of its 512 bytes.
    pub digest: [u8; 32],
}

impl Converge {
    /// What [`unlock`]'s accepted copy asks for: None when both copies already hold the same
    /// bytes.
    pub(crate) fn after_unlock(region: &[u8; HEADER_REGION], accepted: usize) -> Option<Converge> {
        let (a, b) = region.split_at(HEADER_COPY_LEN);
        if a == b {
            return None;
        }
        let keep = if accepted == 0 { a } else { b };
        Some(Converge {
            copy: accepted,
            digest: *blake3::hash(keep).as_bytes(),
        })
    }
}

/// Runs the second half of a header change on `file` (whose [`FileLock`] the caller holds):
/// if copy `c.copy` still holds the bytes `c.digest` names, writes them over the other copy
/// and returns true; otherwise (the file changed since) writes nothing and returns false.
pub(crate) fn converge(file: &File, c: &Converge) -> Result<bool, HeaderError> {
    let region = read_region(file)?;
    let keep = &region[c.copy * HEADER_COPY_LEN..(c.copy + 1) * HEADER_COPY_LEN];
    if blake3::hash(keep).as_bytes() != &c.digest {
        return Ok(false);
    }
    let other = 1 - c.copy;
    if region[other * HEADER_COPY_LEN..(other + 1) * HEADER_COPY_LEN] == *keep {
        return Ok(true);
    }
    file.write_all_at(keep, (other * HEADER_COPY_LEN) as u64)?;
    Ok(true)
}

pub use envelopefs_sys::FileLock;
