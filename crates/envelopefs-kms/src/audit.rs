//! The audit trail of the key service: one JSON record per key-service call, in a keyed
//! blake3 hash chain, in size-rotated files.
//!
//! # Files
//!
//! A directory (created mode 0700) holds `audit-000001.jsonl`, `audit-000002.jsonl`, … (mode
//! 0600), one record per line, each line ending in `\n`. A new file is started when the next
//! record would take the current one past `max_bytes` (default 16 MiB); the chain continues
//! across files. When at most N files are kept, the oldest are deleted after
//! `audit-anchor.json` has been written (see *Anchor*). `audit-checkpoint.json` seals the
//! head of the chain and `failed-unlocks.jsonl` holds notes of failed unlocks (docs/FORMAT.md
//! §9 lists every file). Only the newest file is ever written;
//! a torn last line (a crash during a write) is cut off when the log is next opened.
//!
//! # Record
//!
//! Field names follow AWS CloudTrail where they fit. Members appear in this order; those marked
//! `?` are left out when absent:
//!
//! ```text
//! {"seq":7,                                  1 for the first record of a trail, then +1
//!  "eventTime":"2026-11-23T10:00:00.123Z",   UTC, milliseconds
//!  "eventName":"Decrypt",                    the KMS operation (no "kms:" prefix)
//!  "eventSource":"envelopefs-kms",
//!  "userIdentity":{"uid":1000,"userName"?:"alice","pid":4242,"processName"?:"cat"},
//!  "requestParameters":{"keyId"?:"…","keyVersion"?:2,
//!                       "destinationKeyId"?:"…","destinationKeyVersion"?:3,
//!                       "encryptionContext"?:{…pairs sorted by key…},"path"?:"/a/b",
//!                       …other non-secret request parameters, as strings, sorted by name…},
//!  "additionalEventData"?:{"authorizedBy":"key policy statement \"…\""},
//!  "errorCode"?:"AccessDeniedException","errorMessage"?:"…",
//!  "readOnly":true,
//!  "prev":"<64 hex digits>",
//!  "hash":"<64 hex digits>"}
//! ```
//!
//! (shown wrapped; on disk a record is compact JSON on one line, as serde_json writes it: no
//! spaces, non-ASCII as raw UTF-8, `"` `\` and control characters escaped). `pid` is 0 when
//! unknown. A record has no field that can hold bytes: key material, data keys, wrapped keys
//! and plaintext have no way in.
//!
//! # Hash chain
//!
//! ```text
//! line      = B[..len(B)-1] ‖ ",\"hash\":\"" ‖ hex(H) ‖ "\"}" ‖ "\n"
//! B         = the record's JSON text without the "hash" member (it ends with '}')
//! H         = blake3::keyed_hash(audit_key, P ‖ B)                  (32 bytes)
//! P         = the previous record's H (32 raw bytes); 32 zero bytes for seq 1
//! "prev"    = hex(P), inside B
//! audit_key = 32 bytes from the key service (derive_audit_key: blake3::derive_key(
//!             "envelopefs audit key v1", keystore root key)), so only a holder of the
//!             keystore passphrase or key file can compute or check the chain.
//! ```
//!
//! The hash covers the exact bytes of the line (less its own `"hash"` member), so a verifier
//! needs no canonical form: take the line, cut the last 75 bytes (`,"hash":"` + 64 hex +
//! `"}`), append `}`, prefix the previous hash. hex is lowercase.
//!
//! # Anchor (only when old files are deleted)
//!
//! ```text
//! audit-anchor.json = {"file":N,"seq":S,"prev":"<hex P>","mac":"<hex M>"}
//! M = blake3::keyed_hash(blake3::derive_key("envelopefs audit anchor v1", audit_key),
//!                        "file=N;seq=S;prev=<hex P>")            (decimal N and S)
//! ```
//!
//! It vouches that the first record in file N or later has seq S and prev P: [`verify`]
//! trusts that record's start instead of the zero start of seq 1. It is written (atomically)
//! before any file is deleted.
//!
//! # What verify detects, and what it cannot
//!
//! Detected, naming the file, line and seq of the first bad record: an edited field or byte
//! (hash), a deleted, inserted, duplicated or reordered record (prev or seq), a deleted file
//! in the middle or at the start (numbering gap, anchor), a forged or replaced anchor (mac,
//! or a file it needs is gone), a wrong audit key (the first record fails). With the
//! checkpoints ([`checkpoint`]: `audit-checkpoint.json`, and the keystore body's copy that
//! [`verify_with_keystore`] is given): records cut off at the end, back to the last
//! checkpoint; the directory or the checkpoint file deleted; a trail replaced or rolled back
//! behind either checkpoint. Not detectable: records written since the last checkpoint, and
//! a rollback of both the trail and the keystore to older copies.
//!
//! Failed unlocks, which cannot compute the audit key, leave notes that the next unlock moves
//! into the chain ([`unlocks`]).
//!
//! # Cost
//!
//! One `write(2)` per record (the line is built in memory and written with `O_APPEND`), no
//! fsync; [`AuditLog::sync`] at unmount. User names come from a cache (see
//! [`crate::principal::user_name`]); process names from `/proc/<pid>/comm`, cached for a
//! second.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::principal;
use envelopefs_format::context::hex;

/// `eventSource` of every record.
pub(crate) const EVENT_SOURCE: &str = "envelopefs-kms";
/// Default size at which a new audit file is started.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// blake3 `derive_key` context of the audit key (derived from the keystore root key in `kdf`).
pub(crate) const AUDIT_KEY_CONTEXT: &str = "envelopefs audit key v1";
/// blake3 `derive_key` context of the anchor MAC key, derived from the audit key.
const ANCHOR_KEY_CONTEXT: &str = "envelopefs audit anchor v1";
/// Name of the anchor file in the audit directory.
pub(crate) const ANCHOR_FILE: &str = "audit-anchor.json";
/// What precedes the hex hash at the end of a line.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// Length of the hash member at the end of a line: `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;
/// How long a pid → process name entry is reused.
const PROC_NAME_TTL: Duration = Duration::from_secs(1);
/// Entries kept in the process-name cache before it is emptied.
const PROC_NAME_CACHE_MAX: usize = 4096;
/// `requestParameters` members that [`AuditEvent::parameters`] may not reuse.
const RESERVED_PARAMETERS: &[&str] = &[
    "keyId",
    "keyVersion",
    "destinationKeyId",
    "destinationKeyVersion",
    "encryptionContext",
    "path",
];

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// How an [`AuditLog`] rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Start a new file before one would grow past this many bytes (0 = the default).
    pub max_bytes: u64,
    /// Keep at most this many files, deleting the oldest (`None` = keep all).
    pub max_files: Option<u32>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            max_files: None,
        }
    }
}

/// An open audit trail. `Send + Sync`; share it behind an `Arc`.
///
/// Records are written by the calling thread ([`AuditLog::append`] returns once its line is
/// written), or, after [`AuditLog::write_in_background`], by a writer thread that takes them
/// from a bounded queue and writes each batch under one lock with one `write(2)`
/// ([`background`]). Dropping the log, [`AuditLog::flush`] and [`AuditLog::sync`] write out
/// everything queued.
pub struct AuditLog {
    trail: Arc<Trail>,
    /// The writer thread, when records are written in the background.
    background: Mutex<Option<background::Writer>>,
    /// Guards the pid → (process name, when read) cache; entries live [`PROC_NAME_TTL`].
    proc_names: Mutex<HashMap<u32, (Option<String>, Instant)>>,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0700) the trail in `dir`, keeping every file.
    /// `max_bytes` 0 means [`DEFAULT_MAX_BYTES`]. See [`AuditLog::open_with`].
    pub fn open(dir: &Path, audit_key: [u8; 32], max_bytes: u64) -> io::Result<Self> {
        Self::open_with(
            dir,
            audit_key,
            AuditOptions {
                max_bytes,
                max_files: None,
            },
        )
    }

    /// Opens the trail and continues its chain: reads the tail of the newest file for the
    /// last seq and hash. An incomplete last line (a crash during a write) is cut off and
    /// logged. A last record that does not parse is an error (the trail must not fork); one
    /// whose hash does not verify under `audit_key` is logged as a warning and chained to.
    ///
    /// The key is copied into zeroize-on-drop memory and the argument wiped; a caller that
    /// keeps its own copy must wipe that itself.
    pub(crate) fn open_with(
        dir: &Path,
        mut audit_key: [u8; 32],
        opts: AuditOptions,
    ) -> io::Result<Self> {
        let key = Zeroizing::new(audit_key);
        zeroize::Zeroize::zeroize(&mut audit_key);
        let opts = AuditOptions {
            max_bytes: if opts.max_bytes == 0 {
                DEFAULT_MAX_BYTES
            } else {
                opts.max_bytes
            },
            max_files: opts.max_files.map(|n| n.max(1)),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let files = list_files(dir)?;
        let anchor = Anchor::read(dir)?.filter(|a| {
            let ok = a.mac_ok(&key);
            if !ok {
                log::warn!(
                    "audit anchor {} does not verify under this audit key; ignoring it \
                     (run `envelopefs audit verify`)",
                    dir.join(ANCHOR_FILE).display()
                );
            }
            ok
        });

        // Continue after the last complete record, searching back over empty files.
        let mut last: Option<(AuditRecord, Vec<u8>, PathBuf)> = None;
        for (i, (_, path)) in files.iter().enumerate().rev() {
            let newest = i + 1 == files.len();
            let mut f = OpenOptions::new().read(true).write(newest).open(path)?;
            let (line, good_len) = last_line(&mut f)?;
            let len = f.metadata()?.len();
            if newest && good_len < len {
                log::warn!(
                    "audit log {}: cutting off an incomplete last line ({} bytes) left by a \
                     crash",
                    path.display(),
                    len - good_len
                );
                f.set_len(good_len)?;
                f.sync_all()?;
            }
            if let Some(line) = line {
                let rec = parse_record(&line).map_err(|e| {
                    invalid_data(format!(
                        "audit log {}: the last record is damaged ({e}); move the file aside \
                         and run `envelopefs audit verify`",
                        path.display()
                    ))
                })?;
                last = Some((rec, line, path.clone()));
                break;
            }
        }
        let (next_seq, prev) = match &last {
            Some((rec, line, path)) => {
                let hash = unhex32(&rec.hash).ok_or_else(|| {
                    invalid_data(format!(
                        "audit log {}: the last record has no valid hash",
                        path.display()
                    ))
                })?;
                let verifies = split_line(line).is_some_and(|(body, h)| {
                    unhex32(&rec.prev).is_some_and(|p| chain_hash(&key, &p, &body) == h)
                });
                if !verifies {
                    log::warn!(
                        "audit log {}: the last record (seq {}) does not verify under this audit \
                         key: the trail was edited or the key changed; run `envelopefs audit \
                         verify`",
                        path.display(),
                        rec.seq
                    );
                }
                (rec.seq + 1, hash)
            }
            None => match &anchor {
                Some(a) => (a.seq, unhex32(&a.prev).unwrap_or([0; 32])),
                None => (1, [0; 32]),
            },
        };
        if last.is_none() && anchor.is_some() && files.is_empty() {
            log::warn!(
                "audit directory {} has an anchor but no audit files: the trail was deleted",
                dir.display()
            );
        }
        let (file_no, mut dir_dirty) = match files.last() {
            Some((n, _)) => (*n, false),
            None => (anchor.as_ref().map_or(1, |a| a.file.max(1)), true),
        };
        let file = open_for_append(&dir.join(file_name(file_no)))?;
        let len = file.metadata()?.len();
        if dir_dirty {
            envelopefs_sys::atomic::sync_dir(dir)?;
            dir_dirty = false;
        }
        let diverged = match checkpoint::read_checkpoint(dir, &key) {
            Ok(Some(cp))
                if cp.seq >= next_seq || (cp.seq + 1 == next_seq && cp.hash != hex(&prev)) =>
            {
                let why = format!(
                    "audit trail {}: the checkpoint says seq {} but the trail ends at seq {}: \
                     records were deleted or the trail replaced; run `envelopefs audit verify`",
                    dir.display(),
                    cp.seq,
                    next_seq - 1
                );
                log::error!("{why}");
                Some(why)
            }
            Ok(_) => None,
            Err(e) => {
                log::error!("{e}; run `envelopefs audit verify`");
                Some(e.to_string())
            }
        };
        let lock_file = open_lock_file(dir)?;
        let trail = Trail {
            lock_file,
            dir: dir.to_owned(),
            key,
            opts,
            writer: Mutex::new(Chain {
                file,
                file_no,
                len,
                next_seq,
                prev,
                buf: Vec::with_capacity(1024),
                dir_dirty,
                needs_repair: false,
                diverged,
            }),
        };
        {
            let mut w = trail.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let _flock = FileLock::exclusive(&trail.lock_file)?;
            trail.catch_up(&mut w)?;
            if let Err(e) = trail.import_failed_unlocks(&mut w) {
                log::error!(
                    "cannot move the failed-unlock notes of {} into the trail: {e}",
                    dir.display()
                );
            }
        }
        Ok(AuditLog {
            trail: Arc::new(trail),
            background: Mutex::new(None),
            proc_names: Mutex::new(HashMap::new()),
        })
    }

    /// The directory of the trail.
    pub(crate) fn dir(&self) -> &Path {
        &self.trail.dir
    }

    /// From now on, [`AuditLog::append`] queues records for a writer thread instead of writing
    /// them itself (see [`background`] for what that changes). Does nothing if already on.
    pub fn write_in_background(&self) -> io::Result<()> {
        let mut bg = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if bg.is_none() {
            *bg = Some(background::Writer::start(Arc::clone(&self.trail))?);
        }
        Ok(())
    }

    /// Waits until every record queued so far is written (returns at once when there is no
    /// writer thread).
    pub(crate) fn flush(&self) {
        if let Some(queue) = self.queue() {
            background::flush(&queue);
        }
    }

    /// The writer thread's queue, when there is one (the mutex is not held while sending).
    fn queue(&self) -> Option<std::sync::mpsc::SyncSender<background::Msg>> {
        self.background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(background::Writer::queue)
    }

    /// Appends one record, with no fsync. User and process names missing from `ev` are
    /// looked up (cached). Fails with `InvalidInput` when a parameter name collides with a
    /// fixed `requestParameters` member. Written by this thread: one `write(2)`, and the I/O
    /// error when it fails (a partial line is then cut off, and the chain does not advance).
    /// With a writer thread: queued (waiting while the queue is full), and a failed write is
    /// logged by that thread.
    pub(crate) fn append(&self, ev: AuditEvent) -> io::Result<()> {
        if let Some(bad) = ev
            .parameters
            .keys()
            .find(|k| RESERVED_PARAMETERS.contains(&k.as_str()))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("audit parameter name {bad:?} is reserved"),
            ));
        }
        let user_name = ev.user_name.or_else(|| principal::user_name(ev.uid));
        let process_name = match ev.process_name {
            Some(n) => Some(n),
            None if ev.pid != 0 => self.process_name(ev.pid),
            None => None,
        };
        let mut rec = AuditRecord {
            seq: 0,
            event_time: format_event_time(SystemTime::now()),
            event_name: ev.event_name,
            event_source: EVENT_SOURCE.to_owned(),
            user_identity: UserIdentity {
                uid: ev.uid,
                user_name,
                pid: ev.pid,
                process_name,
            },
            request_parameters: RequestParameters {
                key_id: ev.key_id,
                key_version: ev.key_version,
                destination_key_id: ev.destination_key_id,
                destination_key_version: ev.destination_key_version,
                encryption_context: ev.encryption_context,
                path: ev.path,
                other: ev.parameters,
            },
            additional_event_data: ev.authorized_by.map(|by| AdditionalEventData {
                authorized_by: Some(by),
            }),
            error_code: ev.error_code,
            error_message: ev.error_message,
            read_only: ev.read_only,
            prev: String::new(),
            hash: String::new(),
        };

        if let Some(queue) = self.queue() {
            match background::send(&queue, Box::new(rec)) {
                Ok(()) => return Ok(()),
                Err(back) => rec = *back, // the writer thread is gone: write it here
            }
        }
        self.trail.write(std::slice::from_mut(&mut rec))
    }

    /// Writes out what is queued, flushes the trail to stable storage and takes a checkpoint
    /// ([`checkpoint`]); call at unmount and after administrative commands.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.checkpoint().map(|_| ())
    }

    /// [`AuditLog::sync`], returning the checkpoint now on disk: the head of the chain, all of
    /// it durable. `None` when this process takes no checkpoints because the trail does not
    /// hold the last one (see [`AuditLog::mark_diverged`]).
    pub(crate) fn checkpoint(&self) -> io::Result<Option<Checkpoint>> {
        self.flush();
        self.trail.sync()
    }

    /// Stops taking checkpoints (logging `why`): the trail was found not to hold a checkpoint
    /// recorded elsewhere (the keystore's), so moving the checkpoint on would hide that.
    pub(crate) fn mark_diverged(&self, why: String) {
        let mut w = self
            .trail
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if w.diverged.is_none() {
            log::error!("{why}");
            w.diverged = Some(why);
        }
    }

    /// `seq` the next record will get (after those queued are written).
    pub(crate) fn next_seq(&self) -> u64 {
        self.trail
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_seq
    }

    /// The name of process `pid`, from `/proc/<pid>/comm`, cached for a second.
    fn process_name(&self, pid: u32) -> Option<String> {
        let now = Instant::now();
        if let Some((name, at)) = self
            .proc_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            && now.duration_since(*at) < PROC_NAME_TTL
        {
            return name.clone();
        }
        let name = fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| s.trim_end_matches('\n').to_owned());
        let mut cache = self
            .proc_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= PROC_NAME_CACHE_MAX {
            cache.clear();
        }
        cache.insert(pid, (name.clone(), now));
        name
    }
}

/// Name of the lock file in an audit directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Opens (creating it, mode 0600) the lock file of the audit directory `dir`, which every
/// writer of the trail and of its failed-unlock notes `flock`s.
pub(crate) fn open_lock_file(dir: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
}

use envelopefs_sys::FileLock;

pub mod background;
pub mod checkpoint;
mod files;
mod read;
mod record;
mod trail;
pub mod unlocks;
// Also what the child modules (`use super::*`) take from here.
pub use checkpoint::{CHECKPOINT_FILE, Checkpoint, holds, read_checkpoint};
pub(crate) use files::file_name;
use files::{
    Anchor, chain_hash, first_line, for_each_line, invalid_data, last_line, list_files,
    open_for_append, parse_record, split_line, unhex32,
};
pub use read::{
    VerifyError, VerifyReport, for_each_record, read_all, verify, verify_with_keystore,
};
pub use record::{
    AdditionalEventData, AuditEvent, AuditRecord, RequestParameters, UserIdentity,
    format_event_time, is_read_only_event, parse_event_time,
};
use trail::{Chain, Trail};
pub use unlocks::{FAILED_UNLOCK_EVENT, FAILED_UNLOCKS_FILE, note_failed_unlock};

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
