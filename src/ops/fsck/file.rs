//! fsck of one regular file (docs/FORMAT.md §4): its length, both header copies (a damaged
//! copy beside one that verifies is repairable), every block.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Checker;
use crate::format::block::{BlockCipher, is_hole};
use crate::format::header::{FileHeader, HEADER_COPY_LEN, HEADER_REGION, verify_mac};
use crate::store::file_header::{self, Converge, FileLock, HeaderError};

/// Blocks read per `pread` while checking a file.
const CHUNK_BLOCKS: u64 = 64;

impl Checker<'_> {
    /// A regular file: its length, both header copies, every block.
    pub(super) fn check_file(&mut self, path: &Path, plain: &Option<PathBuf>) {
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(self.opts.repair)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => return self.unchecked(path, plain, "unreadable", e.to_string()),
        };
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return self.unchecked(path, plain, "unreadable", e.to_string()),
        };
        if len == 0 {
            return;
        }
        let size = match self.layout.plaintext_size(len) {
            Ok(s) => s,
            Err(e) => return self.damage(path, plain, "length", e.to_string()),
        };
        let region = match file_header::read_region(&file) {
            Ok(r) => r,
            Err(e) => return self.unchecked(path, plain, "unreadable", e.to_string()),
        };
        let u = match file_header::unlock(
            self.keys,
            &file_header::NoCustomerKeys,
            &self.cfg.volume_id,
            self.cfg.block_size,
            &region,
            &self.caller,
        ) {
            Ok(u) => u,
            Err(HeaderError::Key(e)) if is_refusal(&e) => {
                return self.unchecked(path, plain, "key-refused", e.to_string());
            }
            Err(e) => {
                return self.damage(
                    path,
                    plain,
                    "header",
                    format!("no header copy verifies: {e}"),
                );
            }
        };
        self.check_other_copy(&file, path, plain, &region, u.copy, u.dek.expose_secret());
        if u.header.sealed_holes && !self.layout.sealed_holes() {
            let e = crate::format::FormatError::SealedHolesRemoved;
            return self.damage(path, plain, "sealed-holes-removed", e.to_string());
        }
        let mut cipher = BlockCipher::new(u.dek.expose_secret(), u.header.file_id);
        if self.layout.sealed_holes() {
            cipher = cipher.without_holes();
        }
        drop(u);
        let bad = self.check_blocks(&file, &cipher, size);
        match bad {
            Ok(bad) if bad.is_empty() => {}
            Ok(bad) => {
                let shown: Vec<String> = bad.iter().take(10).map(u64::to_string).collect();
                let more = if bad.len() > 10 { ", …" } else { "" };
                let d = format!(
                    "{} block(s) fail authentication: {}{more} (of {})",
                    bad.len(),
                    shown.join(", "),
                    self.layout.block_count(size).max(1)
                );
                self.damage(path, plain, "block", d);
            }
            Err(e) => self.unchecked(path, plain, "unreadable", e.to_string()),
        }
    }

    /// The copy unlock did not accept: either the same bytes, or a copy that verifies under
    /// the same data key (a header change in progress); otherwise it is damaged, and
    /// `--repair` copies the accepted copy over it (the second half of a header change).
    fn check_other_copy(
        &mut self,
        file: &File,
        path: &Path,
        plain: &Option<PathBuf>,
        region: &[u8; HEADER_REGION],
        accepted: usize,
        dek: &[u8; 32],
    ) {
        let other = 1 - accepted;
        let bytes = &region[other * HEADER_COPY_LEN..(other + 1) * HEADER_COPY_LEN];
        if bytes == &region[accepted * HEADER_COPY_LEN..(accepted + 1) * HEADER_COPY_LEN] {
            return;
        }
        if FileHeader::decode(bytes).is_ok() && verify_mac(bytes, dek).is_ok() {
            return;
        }
        let copy = if other == 0 { "A" } else { "B" };
        let mut fixed = false;
        if self.opts.repair
            && let Some(c) = Converge::after_unlock(region, accepted)
        {
            fixed = FileLock::exclusive(file)
                .map_err(HeaderError::from)
                .and_then(|_lock| file_header::converge(file, &c))
                .is_ok_and(|done| done && file.sync_data().is_ok());
        }
        let d = format!("header copy {copy} is damaged; the other copy verifies");
        self.push(path, plain, "header-copy", d, fixed);
    }

    /// The indexes of the blocks that fail authentication.
    fn check_blocks(
        &mut self,
        file: &File,
        cipher: &BlockCipher,
        size: u64,
    ) -> io::Result<Vec<u64>> {
        let l = self.layout;
        let mut bad = Vec::new();
        if size == 0 {
            // Only a sealed-holes file with a header has P = 0 and L > 0: its empty block.
            let mut sealed = [0u8; crate::format::block::BLOCK_OVERHEAD];
            file.read_exact_at(&mut sealed, HEADER_REGION as u64)?;
            self.report.blocks += 1;
            if cipher.open_empty(&sealed).is_err() {
                bad.push(0);
            }
            return Ok(bad);
        }
        let count = l.block_count(size);
        let sbs = l.sealed_block_size() as usize;
        let mut buf = vec![0u8; sbs * CHUNK_BLOCKS as usize];
        let mut out = vec![0u8; l.block_size() as usize];
        let mut first = 0;
        while first < count {
            let n = CHUNK_BLOCKS.min(count - first);
            let last = first + n - 1;
            let end = l.block_offset(last)
                + l.block_len(last, size)
                + crate::format::block::BLOCK_OVERHEAD as u64;
            let span = (end - l.block_offset(first)) as usize;
            file.read_exact_at(&mut buf[..span], l.block_offset(first))?;
            for k in 0..n {
                let i = first + k;
                let blen = l.block_len(i, size) as usize;
                let at = k as usize * sbs;
                let s = &buf[at..at + blen + crate::format::block::BLOCK_OVERHEAD];
                let is_last = i == count - 1;
                self.report.blocks += 1;
                if (is_last && is_hole(s)) || cipher.open(i, is_last, s, &mut out[..blen]).is_err()
                {
                    bad.push(i);
                }
            }
            first += n;
        }
        Ok(bad)
    }
}

/// True for a key-service decision (the file cannot be checked by this caller) rather than
/// damage.
fn is_refusal(e: &crate::keys::KeyError) -> bool {
    use crate::keys::KeyError as K;
    matches!(
        e,
        K::NotFound(_)
            | K::Disabled { .. }
            | K::PendingDeletion { .. }
            | K::InvalidState { .. }
            | K::Deleted { .. }
            | K::AccessDenied { .. }
    )
}
