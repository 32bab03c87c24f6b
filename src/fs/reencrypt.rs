//! Re-encryption of one file under a fresh data key: the real revocation after a key or a user
//! is compromised (a re-wrap moves the data key to another CMK but whoever unwrapped it once
//! can still read every later write; a re-encryption gives the file a new key).
//!
//! The new header (one slot, under the destination CMK, sequence max + 1 in both copies) and
//! every block sealed under the new key are written through the redo journal of
//! [`crate::store::reencrypt`], so a crash leaves the old or the new file. The file keeps its
//! inode, and the open state of a mounted daemon switches to the new cipher under its write
//! lock, so reads and writes through the mount stay coherent.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::EncFs;
use super::content::FileState;
use super::error::{FsError, FsResult};
use crate::format::block::{BLOCK_OVERHEAD, NONCE_LEN};
use crate::format::header::FileHeader;
use crate::keys::Caller;
use crate::store::file_header;
use crate::store::reencrypt::Journal;
use crate::store::sys::{self, SetTime};

/// The attribute name a mounted daemon takes as a request to re-encrypt a file (`setxattr`
/// through the mount, value: the destination key or empty for the file's own key). It is never
/// stored. `envelopefs reencrypt` uses it on a mounted volume.
pub(crate) const REENCRYPT_XATTR: &str = "user.envelopefs.reencrypt";

impl EncFs {
    /// Gives regular file `ino` a fresh data key, wrapped under `to_key` (default: the CMK of
    /// its first slot), and re-encrypts its contents with `caller`'s rights (Decrypt of the
    /// old key, GenerateDataKey on the new one). Returns false for an empty file that has no
    /// key yet.
    pub(crate) fn reencrypt(
        &self,
        ino: u64,
        to_key: Option<&str>,
        caller: &Caller,
    ) -> FsResult<bool> {
        let fd = self.inodes.get(ino)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(FsError::Invalid("only regular files have a data key"));
        }
        let file = self.open_backing(ino, libc::O_RDWR | libc::O_NOATIME)?;
        let open = self.open_state(ino, &file, caller)?;
        let result = {
            let mut s = open.state.write().expect("file state poisoned");
            self.reencrypt_locked(&mut s, &file, to_key, caller)
        };
        self.drop_state_if_unused(ino, &open);
        result
    }

    fn reencrypt_locked(
        &self,
        st: &mut FileState,
        file: &File,
        to_key: Option<&str>,
        caller: &Caller,
    ) -> FsResult<bool> {
        if st.cipher.is_none() {
            return Ok(false);
        }
        // The caller's own key decision on the current key, even when the file is already
        // open for someone else.
        let old = self.unlock_header(file, caller)?;
        let file_id = old.header.file_id;
        let dest = match to_key {
            Some(k) => Some(k.to_owned()),
            None => file_header::wrapped_slots(&old.header)
                .next()
                .map(|(_, w)| w.key_id.to_string()),
        };
        // A file under the caller's customer key (SSE-C) stays under it (their newest key).
        let customer = old.header.slots.iter().any(
            |s| matches!(s, crate::format::header::KeySlot::Customer(c) if c.uid == caller.uid),
        );
        if dest.is_none() && !customer {
            return Err(crate::format::FormatError::HeaderAuthFailed.into());
        }
        let ctx = self.file_context(&file_id);
        let (dek, slots) = self.new_data_key(&ctx, caller, dest.as_deref(), customer)?;
        let header = FileHeader {
            block_size: self.block_size,
            file_id,
            seq: old.max_seq + 1,
            sealed_holes: old.header.sealed_holes || self.layout.sealed_holes(),
            slots,
        };
        let copy = header.encode(dek.expose_secret())?;
        let old_cipher = self.block_cipher(old.dek.expose_secret(), file_id);
        let new_cipher = self.block_cipher(dek.expose_secret(), file_id);
        drop(old);
        let times = sys::fstat(file.as_raw_fd())?;

        let mut journal = Journal::begin(&self.backing_root, file)?;
        journal.write(&copy)?;
        journal.write(&copy)?;
        let l = self.layout;
        let count = l.block_count(st.size);
        if count == 0 && l.sealed_holes() {
            journal.write(&new_cipher.seal_empty(random_nonce()))?;
        }
        let mut plain = Zeroizing::new(vec![0u8; l.block_size() as usize]);
        let mut sealed = vec![0u8; l.sealed_block_size() as usize];
        for i in 0..count {
            let len = l.block_len(i, st.size) as usize;
            let last = i + 1 == count;
            self.read_block(&old_cipher, file, i, len, last, &mut plain[..len])?;
            let out = &mut sealed[..len + BLOCK_OVERHEAD];
            new_cipher.seal(i, last, random_nonce(), &plain[..len], out);
            journal.write(out)?;
        }
        journal.apply(file)?;
        // Not a change of contents: the times stay (ctime moves, as for any rewrite).
        sys::utimens(
            file.as_raw_fd(),
            SetTime::At(times.st_atime, times.st_atime_nsec as u32),
            SetTime::At(times.st_mtime, times.st_mtime_nsec as u32),
        )?;
        st.cipher = Some(Arc::new(new_cipher));
        st.header = Some(header);
        Ok(true)
    }

    /// The header copy (A) of a file as stored: for tests and tools that check what a
    /// re-encryption changed.
    #[cfg(test)]
    pub(crate) fn stored_header(&self, ino: u64) -> FsResult<FileHeader> {
        let file = self.open_backing(ino, libc::O_RDONLY | libc::O_NOATIME)?;
        let mut copy = [0u8; crate::format::header::HEADER_COPY_LEN];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut copy, 0)?;
        Ok(FileHeader::decode(&copy)?)
    }
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random number generator failed");
    n
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::format::block::BlockCipher;
    use crate::fs::inode::ROOT_INO;
    use crate::fs::testing;
    use crate::keys::KeyService;

    fn read_all(fs: &EncFs, ino: u64, caller: &Caller) -> Result<Vec<u8>, i32> {
        let fh = fs
            .open(ino, libc::O_RDONLY, caller)
            .map_err(|e| e.errno())?;
        let r = fs.read(fh, 0, 1 << 24).map_err(|e| e.errno());
        fs.release(fh).unwrap();
        r
    }

    /// The data key of the file at `path`, unwrapped from its stored header.
    fn dek_of(fs: &EncFs, path: &std::path::Path, caller: &Caller) -> [u8; 32] {
        let f = File::open(path).unwrap();
        let region = file_header::read_region(&f).unwrap();
        let u = file_header::unlock(
            fs.keys.as_ref(),
            &file_header::NoCustomerKeys,
            &fs.volume_id,
            4096,
            &region,
            caller,
        )
        .unwrap();
        *u.dek.expose_secret()
    }

    #[test]
    fn a_fresh_key_the_old_one_cannot_open_same_contents_and_times() {
        let (fs, tmp, caller) = testing::fresh();
        let (a, fh) = fs
            .create(ROOT_INO, OsStr::new("f"), 0o600, libc::O_RDWR, &caller)
            .unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 77).map(|i| (i * 7 % 251) as u8).collect();
        fs.write(fh, 0, &data, &caller).unwrap();
        let path = testing::backing_path(&fs, &tmp, "f");
        let old_dek = dek_of(&fs, &path, &caller);
        // With a handle open across it: the open state switches to the new key.
        assert!(fs.reencrypt(a.ino, None, &caller).unwrap());
        fs.write(fh, 10, b"after", &caller).unwrap();
        fs.release(fh).unwrap();
        let mut expect = data.clone();
        expect[10..15].copy_from_slice(b"after");
        assert_eq!(read_all(&fs, a.ino, &caller), Ok(expect));
        let new_dek = dek_of(&fs, &path, &caller);
        assert_ne!(old_dek, new_dek, "a new data key");
        let h = fs.stored_header(a.ino).unwrap();
        assert_eq!(h.seq, 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes[..512],
            bytes[512..1024],
            "both header copies rewritten"
        );
        let l = fs.layout();
        let b1 = &bytes
            [l.block_offset(1) as usize..(l.block_offset(1) + l.sealed_block_size()) as usize];
        let mut out = vec![0u8; 4096];
        let old = BlockCipher::new(&old_dek, h.file_id).without_holes();
        assert!(
            old.open(1, false, b1, &mut out).is_err(),
            "the old key opens nothing"
        );
        let new = BlockCipher::new(&new_dek, h.file_id).without_holes();
        new.open(1, false, b1, &mut out).unwrap();
        assert_eq!(out, data[4096..8192]);
        // The write after it changed mtime, but the re-encryption alone does not.
        let (b, fh) = fs
            .create(ROOT_INO, OsStr::new("g"), 0o600, libc::O_RDWR, &caller)
            .unwrap();
        fs.write(fh, 0, b"g", &caller).unwrap();
        fs.release(fh).unwrap();
        let gpath = testing::backing_path(&fs, &tmp, "g");
        let before = std::fs::metadata(&gpath).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs.reencrypt(b.ino, None, &caller).unwrap();
        assert_eq!(
            std::fs::metadata(&gpath).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn to_another_key_cuts_the_old_key_out_and_empty_files_work() {
        let (fs, _tmp, caller, kms) = testing::fresh_with_kms();
        let other = kms.create_key("other", &caller).unwrap();
        let mut inos = Vec::new();
        for (name, content) in [("f", &b"contents"[..]), ("e", b"")] {
            let (a, fh) = fs
                .create(ROOT_INO, OsStr::new(name), 0o600, libc::O_RDWR, &caller)
                .unwrap();
            fs.write(fh, 0, content, &caller).unwrap();
            fs.release(fh).unwrap();
            inos.push((a.ino, content));
        }
        for (ino, _) in &inos {
            assert!(fs.reencrypt(*ino, Some(&other.key_id), &caller).unwrap());
            let h = fs.stored_header(*ino).unwrap();
            let (_, w) = file_header::wrapped_slots(&h).next().unwrap();
            assert_eq!(w.key_id.to_string(), other.key_id);
        }
        // The volume key (and so this volume's default key) can go; the files still read.
        let default = kms.describe_key("alias/default").unwrap().key_id;
        kms.disable_key(&default, &caller).unwrap();
        for (ino, content) in &inos {
            assert_eq!(read_all(&fs, *ino, &caller).as_deref(), Ok(*content));
        }
        kms.enable_key(&default, &caller).unwrap();
        kms.disable_key(&other.key_id, &caller).unwrap();
        for (ino, _) in &inos {
            assert_eq!(read_all(&fs, *ino, &caller), Err(libc::EACCES));
            assert_eq!(
                fs.reencrypt(*ino, None, &caller).map_err(|e| e.errno()),
                Err(libc::EACCES),
                "a caller who cannot open the file cannot re-encrypt it"
            );
        }
    }

    #[test]
    fn through_setxattr_as_a_mounted_daemon_is_asked() {
        let (fs, tmp, caller, ino, fh) = testing::with_file();
        fs.write(fh, 0, b"x", &caller).unwrap();
        fs.release(fh).unwrap();
        let path = testing::backing_path(&fs, &tmp, "f");
        let before = dek_of(&fs, &path, &caller);
        fs.setxattr(ino, OsStr::new(REENCRYPT_XATTR), b"", 0, &caller)
            .unwrap();
        assert_ne!(before, dek_of(&fs, &path, &caller));
        assert!(
            fs.getxattr(ino, OsStr::new(REENCRYPT_XATTR), &caller)
                .is_err(),
            "never stored"
        );
        assert_eq!(read_all(&fs, ino, &caller), Ok(b"x".to_vec()));
    }
}
