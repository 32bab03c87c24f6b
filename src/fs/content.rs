//! File contents: the shared per-inode state of an open file, header creation and loading,
//! and block-level read / read-modify-write (docs/FORMAT.md §Blocks, docs/DESIGN.md §How a
//! write flows).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::EncFs;
use super::error::{FsError, FsResult};
use super::plan::{self, WritePlan};
use crate::format::FormatError;
use crate::format::block::{BLOCK_OVERHEAD, BlockCipher, NONCE_LEN};
use crate::format::header::{FileHeader, HEADER_REGION};
use crate::keys::Caller;
use crate::store::sys::{self, SetTime};
use crate::store::{blocks, file_header};

/// The blocks a read covers.
struct ReadRange {
    first: u64,
    last: u64,
    disk_start: u64,
    disk_end: u64,
    /// Plaintext bytes of the blocks `first..=last`.
    plain_len: usize,
    /// Bytes of the first block before the read's offset.
    skip: usize,
    /// Bytes the read returns.
    len: usize,
}

impl ReadRange {
    /// `None` for an empty read (at or past the end, or size 0).
    fn new(fs: &EncFs, st: &FileState, offset: u64, size: u32) -> Option<ReadRange> {
        if offset >= st.size || size == 0 {
            return None;
        }
        let l = fs.layout;
        let bs = l.block_size();
        let end = (offset + u64::from(size)).min(st.size);
        let (first, last) = (offset / bs, (end - 1) / bs);
        let last_len = l.block_len(last, st.size);
        Some(ReadRange {
            first,
            last,
            disk_start: l.block_offset(first),
            disk_end: l.block_offset(last) + last_len + BLOCK_OVERHEAD as u64,
            plain_len: ((last - first) * bs + last_len) as usize,
            skip: (offset - first * bs) as usize,
            len: (end - offset) as usize,
        })
    }
}

/// Reads of at least this many blocks are decrypted on two threads (a thread costs tens of
/// microseconds; 64 blocks of 4 KiB take a few hundred to open).
const PARALLEL_OPEN_BLOCKS: u64 = 64;

/// The state of one open inode, shared by all its handles.
#[derive(Debug)]
pub struct OpenFile {
    /// Guards the cipher and the plaintext size: readers share it, writers and truncates
    /// take it exclusively, so a read never sees a half-applied write.
    pub(crate) state: RwLock<FileState>,
    /// Closed while [`crate::fs::file::Prefetch`] fills the kernel's page cache from this
    /// inode: every other open of the inode waits here, so no handle that could write exists
    /// until the fill is done (docs/DESIGN.md §Prefetch on open).
    pub(crate) filling: Mutex<bool>,
    pub(crate) filled: Condvar,
}

impl OpenFile {
    pub(crate) fn new(state: FileState) -> Self {
        OpenFile {
            state: RwLock::new(state),
            filling: Mutex::new(false),
            filled: Condvar::new(),
        }
    }

    /// Waits until no prefetch of this inode is in progress.
    pub(crate) fn wait_for_fill(&self) {
        let mut f = self.filling.lock().expect("fill gate poisoned");
        while *f {
            f = self.filled.wait(f).expect("fill gate poisoned");
        }
    }

    pub(crate) fn set_filling(&self, on: bool) {
        *self.filling.lock().expect("fill gate poisoned") = on;
        if !on {
            self.filled.notify_all();
        }
    }
}

/// A new file's data key and header, made before the file exists.
pub(crate) struct NewFileKeys {
    dek: crate::keys::DataKey,
    header: FileHeader,
}

/// What an open file knows about itself.
#[derive(Debug)]
pub(crate) struct FileState {
    /// The content cipher, once the header has been read or created (None: empty file
    /// without a header yet).
    pub(crate) cipher: Option<Arc<BlockCipher>>,
    /// The current header (for re-wrapping) and its sequence number.
    pub(crate) header: Option<FileHeader>,
    /// Plaintext size.
    pub(crate) size: u64,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    b
}

impl EncFs {
    /// Reads a backing file's header and unwraps its data key through the first slot that
    /// opens and whose key commits to the header MAC.
    pub(crate) fn load_state(&self, file: &File, caller: &Caller) -> FsResult<FileState> {
        let len = file.metadata()?.len();
        let size = self.layout.plaintext_size(len)?;
        if len == 0 {
            return Ok(FileState {
                cipher: None,
                header: None,
                size: 0,
            });
        }
        let u = self.unlock_header(file, caller)?;
        if u.header.sealed_holes && !self.layout.sealed_holes() {
            // The flag is under the header MAC; the config is not: someone took the feature
            // out of envelopefs.json to make zeroed blocks read as holes again.
            log::error!(
                "file {}: {}",
                crate::format::context::hex(&u.header.file_id),
                FormatError::SealedHolesRemoved
            );
            return Err(FormatError::SealedHolesRemoved.into());
        }
        let cipher = self.block_cipher(u.dek.expose_secret(), u.header.file_id);
        if size == 0 && self.layout.sealed_holes() {
            // An empty file's only block: without this check a file cut down to its header
            // and an empty block's length would read as empty.
            let mut sealed = [0u8; BLOCK_OVERHEAD];
            file.read_exact_at(&mut sealed, HEADER_REGION as u64)
                .map_err(|e| short_read(e, file))?;
            cipher.open_empty(&sealed)?;
        }
        Ok(FileState {
            cipher: Some(Arc::new(cipher)),
            header: Some(u.header),
            size,
        })
    }

    /// Gives an empty, header-less file its header: a fresh file id and data key wrapped
    /// under the volume's default CMK, written to both header copies.
    fn create_header(&self, st: &mut FileState, file: &File, caller: &Caller) -> FsResult<()> {
        let keys = self.new_file_keys(caller)?;
        self.install_header(st, file, keys)
    }

    /// Asks the key service for a new file's data key (with the caller's rights, so a
    /// caller the key policy refuses is stopped before anything is created).
    pub(crate) fn new_file_keys(&self, caller: &Caller) -> FsResult<NewFileKeys> {
        let file_id = loop {
            let id = random_bytes::<16>();
            if id != [0; 16] {
                break id;
            }
        };
        let ctx = self.file_context(&file_id);
        // The user's own key (SSE-C) if they chose it, and the volume's CMK unless they chose
        // it without recovery.
        let choice = self.customer.choice(caller);
        let cmk = (choice != Some(false)).then_some(self.default_key.as_str());
        let (dek, slots) = self.new_data_key(&ctx, caller, cmk, choice.is_some())?;
        let header = FileHeader {
            block_size: self.block_size,
            file_id,
            seq: 1,
            sealed_holes: self.layout.sealed_holes(),
            slots,
        };
        Ok(NewFileKeys { dek, header })
    }

    /// Reads a non-empty backing file's header and unlocks it for `caller`: the key decision
    /// of every path to a file's data (open, a handle's re-decision, xattr values,
    /// re-encryption). A file shorter than its header region is damage (EIO).
    pub(super) fn unlock_header(
        &self,
        file: &File,
        caller: &Caller,
    ) -> FsResult<file_header::Unlocked> {
        let region = file_header::read_region(file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FsError::from(FormatError::HeaderAuthFailed)
            } else {
                e.into()
            }
        })?;
        Ok(file_header::unlock(
            self.keys.as_ref(),
            self.customer.as_ref(),
            &self.volume_id,
            self.block_size,
            &region,
            caller,
        )?)
    }

    /// The content cipher of a file of this volume (no holes on a `sealed-holes` volume).
    pub(super) fn block_cipher(&self, dek: &[u8; 32], file_id: [u8; 16]) -> BlockCipher {
        let c = BlockCipher::new(dek, file_id);
        if self.layout.sealed_holes() {
            c.without_holes()
        } else {
            c
        }
    }

    /// The bytes that follow the header of an empty file: its empty sealed block on a
    /// `sealed-holes` volume, nothing otherwise.
    fn empty_tail(&self, cipher: &BlockCipher) -> Vec<u8> {
        if self.layout.sealed_holes() {
            cipher.seal_empty(random_bytes()).to_vec()
        } else {
            Vec::new()
        }
    }

    /// Writes a new file's header (both copies, and the empty block of a `sealed-holes`
    /// volume, in one write) and keeps its cipher in the open state.
    pub(crate) fn install_header(
        &self,
        st: &mut FileState,
        file: &File,
        keys: NewFileKeys,
    ) -> FsResult<()> {
        let cipher = self.block_cipher(keys.dek.expose_secret(), keys.header.file_id);
        let tail = self.empty_tail(&cipher);
        file_header::write_new(file, &keys.header, &keys.dek, &tail)?;
        st.cipher = Some(Arc::new(cipher));
        st.header = Some(keys.header);
        Ok(())
    }

    /// On a `sealed-holes` volume, grows the file with sealed zero blocks up to `upto` bytes,
    /// [`plan::FILL_BYTES`] at a time: memory stays bounded and every step leaves a valid file.
    fn fill_to(&self, st: &mut FileState, file: &File, upto: u64) -> FsResult<()> {
        while st.size < upto {
            let next = plan::fill_step(self.layout, st.size, upto);
            self.apply(st, file, None, next)?;
        }
        Ok(())
    }

    /// Reads `size` bytes at `offset` (short at end of file).
    pub(crate) fn read_content(
        &self,
        st: &FileState,
        file: &File,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let Some(r) = ReadRange::new(self, st, offset, size) else {
            return Ok(Vec::new());
        };
        let mut out = vec![0u8; r.plain_len];
        self.open_range(st, file, &r, &mut out)?;
        out.drain(..r.skip);
        out.truncate(r.len);
        Ok(out)
    }

    /// As [`EncFs::read_content`] into `out` (at least `size` bytes; a transport's buffer),
    /// without an allocation or a copy when the blocks fit it; returns the bytes read.
    pub(crate) fn read_content_into(
        &self,
        st: &FileState,
        file: &File,
        offset: u64,
        size: u32,
        out: &mut [u8],
    ) -> FsResult<usize> {
        let Some(r) = ReadRange::new(self, st, offset, size) else {
            return Ok(0);
        };
        if r.plain_len > out.len() {
            // The blocks around an unaligned range overhang the buffer.
            let v = self.read_content(st, file, offset, size)?;
            out[..v.len()].copy_from_slice(&v);
            return Ok(v.len());
        }
        self.open_range(st, file, &r, &mut out[..r.plain_len])?;
        if r.skip > 0 {
            out.copy_within(r.skip..r.skip + r.len, 0);
        }
        Ok(r.len)
    }

    /// Reads and opens the blocks of `r` into `out` (exactly `r.plain_len` bytes): the
    /// ciphertext is read in one call into a per-thread buffer and each block decrypted from
    /// there into its place in `out`; a large range is opened on two threads, half
    /// each, so both CPUs decrypt.
    fn open_range(
        &self,
        st: &FileState,
        file: &File,
        r: &ReadRange,
        out: &mut [u8],
    ) -> FsResult<()> {
        let cipher = st.cipher.as_ref().ok_or(FormatError::HeaderAuthFailed)?;
        let l = self.layout;
        let bs = l.block_size() as usize;
        let sealed_bs = l.sealed_block_size() as usize;
        let count = l.block_count(st.size);
        // The ciphertext goes through a per-thread buffer reused across requests (no
        // allocation or zero-fill per read; it only ever holds ciphertext).
        SEALED.with_borrow_mut(|sealed| -> FsResult<()> {
            let n = (r.disk_end - r.disk_start) as usize;
            if sealed.len() < n {
                sealed.resize(n, 0);
            }
            let sealed = &mut sealed[..n];
            file.read_exact_at(sealed, r.disk_start)
                .map_err(|e| short_read(e, file))?;
            let mut jobs = Vec::with_capacity((r.last - r.first + 1) as usize);
            for ((k, i), buf) in (r.first..=r.last).enumerate().zip(out.chunks_mut(bs)) {
                let blen = l.block_len(i, st.size) as usize;
                let s = &sealed[k * sealed_bs..k * sealed_bs + blen + BLOCK_OVERHEAD];
                let is_last = i == count - 1;
                if is_last && crate::format::block::is_hole(s) {
                    return Err(FormatError::BlockAuthFailed(i).into());
                }
                jobs.push((i, is_last, s, buf));
            }
            // Each block is decrypted from the ciphertext buffer straight into its place.
            let open = |jobs: &mut [(u64, bool, &[u8], &mut [u8])]| {
                jobs.iter_mut()
                    .try_for_each(|(i, is_last, s, b)| cipher.open(*i, *is_last, s, b))
            };
            if (jobs.len() as u64) < PARALLEL_OPEN_BLOCKS {
                return Ok(open(&mut jobs)?);
            }
            let mid = jobs.len() / 2;
            let (here, there) = jobs.split_at_mut(mid);
            std::thread::scope(|scope| -> FsResult<()> {
                let other = std::thread::Builder::new()
                    .name("open-blocks".into())
                    .spawn_scoped(scope, || open(there))?;
                let mine = open(here);
                let theirs = other
                    .join()
                    .unwrap_or(Err(FormatError::BlockAuthFailed(r.first)));
                Ok(mine.and(theirs)?)
            })
        })
    }

    /// Writes `data` at `offset`, growing the file as needed.
    pub(crate) fn write_content(
        &self,
        st: &mut FileState,
        file: &File,
        offset: u64,
        data: &[u8],
        caller: &Caller,
    ) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::Invalid("write past the largest offset"))?;
        if st.cipher.is_none() {
            self.create_header(st, file, caller)?;
        }
        let gap_end = offset / self.layout.block_size() * self.layout.block_size();
        if self.layout.sealed_holes() && gap_end > st.size {
            // No holes: the blocks between the old end and the write are sealed zeros.
            self.fill_to(st, file, gap_end)?;
        }
        let new_size = st.size.max(end);
        self.apply(st, file, Some((offset, data)), new_size)
    }

    /// Sets the plaintext size, zero-filling when growing.
    pub(crate) fn truncate_content(
        &self,
        st: &mut FileState,
        file: &File,
        new_size: u64,
        caller: &Caller,
    ) -> FsResult<()> {
        if new_size == st.size {
            // Nothing to re-seal, but open(O_TRUNC) must still mark mtime and ctime for update
            // (POSIX), as Linux also does for truncate(2); the kernel leaves that to us.
            sys::utimens(file.as_raw_fd(), SetTime::Omit, SetTime::Now)?;
            return Ok(());
        }
        if new_size == 0 && st.cipher.is_none() {
            file.set_len(0)?;
            st.size = 0;
            return Ok(());
        }
        if st.cipher.is_none() {
            self.create_header(st, file, caller)?;
        }
        if self.layout.sealed_holes() && new_size > st.size {
            return self.fill_to(st, file, new_size);
        }
        self.apply(st, file, None, new_size)
    }

    /// Re-seals every block whose contents, length or last-block flag change when the file
    /// goes from `st.size` to `new_size` with `write` applied, then fixes the backing length:
    /// the plan ([`WritePlan`]) says which blocks and where, this seals them, the store writes.
    fn apply(
        &self,
        st: &mut FileState,
        file: &File,
        write: Option<(u64, &[u8])>,
        new_size: u64,
    ) -> FsResult<()> {
        let cipher = st.cipher.clone().expect("BUG: apply without a cipher");
        let planned = write.map(|(off, d)| (off, d.len() as u64));
        let plan = WritePlan::new(self.layout, st.size, new_size, planned);
        let data = write.map_or(&[][..], |(_, d)| d);
        let runs = self.seal_plan(&plan, &cipher, file, data)?;
        blocks::write_runs(file, &runs, plan.old_backing, plan.truncate_to)?;
        st.size = new_size;
        Ok(())
    }

    /// Seals the blocks of `plan` (reading the old blocks it asks for first) into its runs:
    /// (backing offset, sealed bytes), everything sealed before anything is written.
    fn seal_plan(
        &self,
        plan: &WritePlan,
        cipher: &BlockCipher,
        file: &File,
        data: &[u8],
    ) -> FsResult<Vec<(u64, Vec<u8>)>> {
        let mut nonces = vec![0u8; plan.blocks.len() * NONCE_LEN];
        getrandom::fill(&mut nonces).expect("the OS random number generator failed");
        let mut plain = vec![0u8; self.layout.block_size() as usize];
        let mut runs = Vec::with_capacity(plan.runs.len() + 1);
        if plan.empty_block {
            runs.push((self.layout.block_offset(0), self.empty_tail(cipher)));
        }
        for run in &plan.runs {
            let mut sealed = vec![0u8; run.len as usize];
            let mut at = 0;
            for n in run.blocks.clone() {
                let b = &plan.blocks[n];
                let p = &mut plain[..b.len];
                if !b.fully_written() {
                    p.fill(0);
                    if let Some(o) = b.old {
                        let mut old = vec![0u8; o.len];
                        self.read_block(cipher, file, b.index, o.len, o.last, &mut old)?;
                        let keep = o.len.min(b.len);
                        p[..keep].copy_from_slice(&old[..keep]);
                    }
                }
                if let Some(d) = &b.data {
                    p[d.at..d.at + d.from.len()].copy_from_slice(&data[d.from.clone()]);
                }
                let nonce: [u8; NONCE_LEN] = nonces[n * NONCE_LEN..(n + 1) * NONCE_LEN]
                    .try_into()
                    .expect("nonce slice");
                let out = &mut sealed[at..at + b.sealed_len()];
                cipher.seal(b.index, b.last, nonce, p, out);
                at += b.sealed_len();
            }
            runs.push((run.offset, sealed));
        }
        Ok(runs)
    }

    /// Reads and opens one block of the current file.
    pub(super) fn read_block(
        &self,
        cipher: &BlockCipher,
        file: &File,
        i: u64,
        len: usize,
        last: bool,
        out: &mut [u8],
    ) -> FsResult<()> {
        let mut sealed = vec![0u8; len + BLOCK_OVERHEAD];
        file.read_exact_at(&mut sealed, self.layout.block_offset(i))
            .map_err(|e| short_read(e, file))?;
        if last && crate::format::block::is_hole(&sealed) {
            return Err(FormatError::BlockAuthFailed(i).into());
        }
        cipher.open(i, last, &sealed, out)?;
        Ok(())
    }
}

thread_local! {
    /// Scratch space for the ciphertext of a read (see [`EncFs::read_content`]).
    static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A short read inside the plaintext size means the backing file is not the length the
/// format implies (truncated behind our back): an integrity failure, not an I/O error.
fn short_read(e: std::io::Error, file: &File) -> FsError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FormatError::BadLength(file.metadata().map(|m| m.len()).unwrap_or(0)).into()
    } else {
        e.into()
    }
}

#[cfg(test)]
#[path = "content_tests.rs"]
mod tests;
