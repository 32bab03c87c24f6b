//! The writing side of a trail ([`Trail`]): appending records to the chain under the flock,
//! following other writers, rotating and pruning files, and taking checkpoints.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

use super::files::{
    Anchor, chain_hash, file_name, first_line, invalid_data, last_line, list_files,
    open_for_append, parse_record, unhex32,
};
use super::{
    ANCHOR_FILE, AuditOptions, AuditRecord, Checkpoint, FileLock, HASH_PREFIX, checkpoint,
};
use envelopefs_format::context::hex;

/// State that moves forward with every record.
pub(super) struct Chain {
    /// The newest file, opened for appending.
    pub(super) file: File,
    /// Its number.
    pub(super) file_no: u32,
    /// Its length: everything up to here is complete records.
    pub(super) len: u64,
    /// `seq` of the next record.
    pub(super) next_seq: u64,
    /// Hash of the last record (zeros before the first).
    pub(super) prev: [u8; 32],
    /// The line being built (reused, so appends do not allocate it afresh).
    pub(super) buf: Vec<u8>,
    /// A new file was created since the last [`AuditLog::sync`](super::AuditLog::sync): the
    /// directory needs an fsync.
    pub(super) dir_dirty: bool,
    /// A failed write may have left a partial line past `len` that could not be cut off yet.
    pub(super) needs_repair: bool,
    /// Why this process takes no more checkpoints: the trail does not hold the last one (its
    /// tail was cut, or it was replaced), so a new checkpoint would hide that.
    pub(super) diverged: Option<String>,
}

/// The files and the chain: what writing a record needs (shared with the writer thread).
pub(super) struct Trail {
    /// `DIR/.lock`, flock()ed around every append and rotation, so that several processes on
    /// one keystore (a mounted daemon and CLI commands) extend one chain.
    pub(super) lock_file: File,
    pub(super) dir: PathBuf,
    pub(super) key: Zeroizing<[u8; 32]>,
    pub(super) opts: AuditOptions,
    /// Guards the writer state: the current file, its number and length, the next seq and the
    /// previous record's hash. They advance together under this lock, so records reach the
    /// file in chain order and no two records share a seq.
    pub(super) writer: Mutex<Chain>,
}

impl Trail {
    /// Writes `recs` in order, extending the chain: under the writer mutex and the flock, one
    /// `write(2)` per file they go to (a batch that crosses the size limit is split around a
    /// rotation). Sets each record's `seq` and `prev`. On a failed write the partial batch is
    /// cut off, the chain does not advance, and the records of that write are not written.
    pub(super) fn write(&self, recs: &mut [AuditRecord]) -> io::Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut *guard;
        let _flock = FileLock::exclusive(&self.lock_file)?;
        self.catch_up(w)?;
        self.write_held(w, recs)
    }

    /// Before writing under the flock: cuts off what a failed write left, and continues after
    /// records other processes wrote.
    pub(super) fn catch_up(&self, w: &mut Chain) -> io::Result<()> {
        if w.needs_repair {
            w.file.set_len(w.len)?;
            w.needs_repair = false;
        }
        self.follow_other_writers(w)
    }

    /// [`Trail::write`] for a caller that holds the writer mutex and the flock and has caught
    /// up.
    pub(super) fn write_held(&self, w: &mut Chain, recs: &mut [AuditRecord]) -> io::Result<()> {
        let mut i = 0;
        while i < recs.len() {
            w.buf.clear();
            let (mut seq, mut prev) = (w.next_seq, w.prev);
            while let Some(rec) = recs.get_mut(i) {
                let start = w.buf.len();
                rec.seq = seq;
                rec.prev = hex(&prev);
                serde_json::to_writer(&mut w.buf, &*rec).map_err(io::Error::other)?;
                let hash = chain_hash(&self.key, &prev, &w.buf[start..]);
                w.buf.pop(); // the closing '}'
                w.buf.extend_from_slice(HASH_PREFIX);
                w.buf.extend_from_slice(hex(&hash).as_bytes());
                w.buf.extend_from_slice(b"\"}\n");
                if w.len + w.buf.len() as u64 > self.opts.max_bytes && (w.len > 0 || start > 0) {
                    w.buf.truncate(start);
                    if start > 0 {
                        break; // write what fits; this record starts the next file
                    }
                    self.rotate(w)?;
                    continue; // the same record again, first in the new file
                }
                seq += 1;
                prev = hash;
                i += 1;
            }
            if let Err(e) = w.file.write_all(&w.buf) {
                if w.file.set_len(w.len).is_err() {
                    w.needs_repair = true;
                }
                return Err(e);
            }
            w.len += w.buf.len() as u64;
            w.next_seq = seq;
            w.prev = prev;
        }
        Ok(())
    }

    /// Another process (holding the same flock) may have appended or started a new file since
    /// this one last wrote: if so, continue after its last record instead of forking the chain.
    /// A partial line found here, under the lock, can only be left by a writer that crashed:
    /// it is cut off.
    fn follow_other_writers(&self, w: &mut Chain) -> io::Result<()> {
        let moved_on = self
            .dir
            .join(file_name(w.file_no.saturating_add(1)))
            .exists();
        if !moved_on && w.file.metadata()?.len() == w.len {
            return Ok(());
        }
        let files = list_files(&self.dir)?;
        if let Some((n, path)) = files.last()
            && *n != w.file_no
        {
            w.file = open_for_append(path)?;
            w.file_no = *n;
        }
        for (i, (_, path)) in files.iter().enumerate().rev() {
            let newest = i + 1 == files.len();
            let mut f = OpenOptions::new().read(true).write(newest).open(path)?;
            let (line, good_len) = last_line(&mut f)?;
            if newest {
                if good_len < f.metadata()?.len() {
                    log::warn!(
                        "audit log {}: cutting off an incomplete line left by a crashed writer",
                        path.display()
                    );
                    f.set_len(good_len)?;
                }
                w.len = good_len;
            }
            if let Some(line) = line {
                let rec = parse_record(&line).map_err(invalid_data)?;
                w.next_seq = rec.seq + 1;
                w.prev = unhex32(&rec.hash).ok_or_else(|| {
                    invalid_data(format!("{}: last record has no valid hash", path.display()))
                })?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Starts the next file, then deletes the oldest beyond `max_files` (logging, not
    /// failing, when that does not work).
    fn rotate(&self, w: &mut Chain) -> io::Result<()> {
        let next = w
            .file_no
            .checked_add(1)
            .ok_or_else(|| io::Error::other("audit file numbers exhausted"))?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(file_name(next)))?;
        // A checkpoint in a later file vouches for this one's records: make them durable.
        w.file.sync_data()?;
        w.file = file;
        w.file_no = next;
        w.len = 0;
        w.dir_dirty = true;
        if let Err(e) = self.prune(w) {
            log::warn!(
                "audit log {}: could not delete old files: {e}",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Keeps the newest `max_files` files: writes the anchor for the oldest kept, then
    /// deletes older files, oldest first.
    fn prune(&self, w: &Chain) -> io::Result<()> {
        let Some(max) = self.opts.max_files else {
            return Ok(());
        };
        let files = list_files(&self.dir)?;
        if files.len() <= max as usize {
            return Ok(());
        }
        let keep = &files[files.len() - max as usize..];
        let keep_from = keep[0].0;
        // The first record at or after `keep_from`; if none is written yet, the next one.
        let mut start = None;
        for (_, path) in keep {
            if let Some(line) = first_line(path)? {
                let rec = parse_record(&line).map_err(invalid_data)?;
                let prev = unhex32(&rec.prev).ok_or_else(|| invalid_data("bad prev".into()))?;
                start = Some((rec.seq, prev));
                break;
            }
        }
        let (seq, prev) = start.unwrap_or((w.next_seq, w.prev));
        let anchor = Anchor::new(&self.key, keep_from, seq, &prev);
        let text = serde_json::to_vec(&anchor).map_err(io::Error::other)?;
        envelopefs_sys::atomic::atomic_write(&self.dir.join(ANCHOR_FILE), &text, 0o600)?;
        for (n, path) in &files {
            if *n < keep_from {
                fs::remove_file(path)?;
            }
        }
        envelopefs_sys::atomic::sync_dir(&self.dir)
    }

    /// Flushes the current file (and the directory after a rotation) to stable storage, then,
    /// under the flock and after catching up with other writers, writes the checkpoint when the
    /// head moved. Returns the checkpoint on disk (`None` when this process takes none).
    pub(super) fn sync(&self) -> io::Result<Option<Checkpoint>> {
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut *guard;
        let _flock = FileLock::exclusive(&self.lock_file)?;
        self.catch_up(w)?;
        if let Err(e) = self.import_failed_unlocks(w) {
            log::error!(
                "cannot move the failed-unlock notes of {} into the trail: {e}",
                self.dir.display()
            );
        }
        w.file.sync_data()?;
        if w.dir_dirty {
            envelopefs_sys::atomic::sync_dir(&self.dir)?;
            w.dir_dirty = false;
        }
        if w.diverged.is_some() {
            return Ok(None);
        }
        let head = Checkpoint {
            file: w.file_no,
            seq: w.next_seq - 1,
            hash: hex(&w.prev),
        };
        match checkpoint::read_checkpoint(&self.dir, &self.key) {
            Ok(Some(cp)) if cp == head => return Ok(Some(head)),
            Ok(Some(cp)) if cp.seq > head.seq || (cp.seq == head.seq && cp.hash != head.hash) => {
                let why = format!(
                    "audit trail {}: the checkpoint says seq {} but the trail ends at seq {}: \
                     records were deleted or the trail replaced; run `envelopefs audit verify`",
                    self.dir.display(),
                    cp.seq,
                    head.seq
                );
                log::error!("{why}");
                w.diverged = Some(why);
                return Ok(None);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                log::error!("{e}; not replacing it (run `envelopefs audit verify`)");
                w.diverged = Some(e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        checkpoint::write_checkpoint(&self.dir, &self.key, &head)?;
        Ok(Some(head))
    }
}
