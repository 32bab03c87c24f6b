//! Checkpoints: the head of the chain (file, seq, hash of the last record), sealed, kept
//! where dropping the trail's tail or the whole trail is noticed.
//!
//! ```text
//! audit-checkpoint.json = {"file":F,"seq":S,"hash":"<hex H>","mac":"<hex M>"}
//! M = blake3::keyed_hash(blake3::derive_key("envelopefs audit checkpoint v1", audit_key),
//!                        "file=F;seq=S;hash=<hex H>")               (decimal F and S)
//! ```
//!
//! S is the seq of the last record when the checkpoint was taken (0: none yet), H its hash
//! (64 zero hex digits for S = 0), F the file it is in. The writer takes a checkpoint in
//! [`AuditLog::sync`](super::AuditLog::sync) (every minute and at unmount in the daemon, at
//! the end of every CLI command), under the trail's flock, after fsyncing the records it
//! covers, and never moves it backwards: a process that finds the file ahead of the trail (the
//! tail was cut) stops checkpointing and logs an error.
//!
//! The same head, without a MAC of its own, is stored in the keystore body as
//! `audit_checkpoint` whenever the key service writes the keystore (any key-management
//! change; the body's MAC covers it). That copy cannot be deleted without breaking the
//! keystore, so it also vouches that the trail and its checkpoint file exist. It only moves
//! forward along the same chain: a trail that no longer holds the recorded head does not
//! replace it.

use super::*;

/// Name of the checkpoint file in the audit directory.
pub const CHECKPOINT_FILE: &str = "audit-checkpoint.json";
/// blake3 `derive_key` context of the checkpoint MAC key, derived from the audit key.
const CHECKPOINT_KEY_CONTEXT: &str = "envelopefs audit checkpoint v1";

/// The head of the chain at some moment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The audit file holding record `seq` (for `seq` 0, the file the trail starts in).
    pub file: u32,
    /// seq of the last record (0 before the first).
    pub seq: u64,
    /// Hex of that record's hash (zeros for `seq` 0).
    pub hash: String,
}

/// The checkpoint file's contents.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    file: u32,
    seq: u64,
    hash: String,
    mac: String,
}

impl Checkpoint {
    fn mac(&self, audit_key: &[u8; 32]) -> String {
        let k = Zeroizing::new(blake3::derive_key(CHECKPOINT_KEY_CONTEXT, audit_key));
        let msg = format!("file={};seq={};hash={}", self.file, self.seq, self.hash);
        hex(blake3::keyed_hash(&k, msg.as_bytes()).as_bytes())
    }
}

/// Reads the checkpoint file of `dir`: `Ok(None)` when there is none, an `InvalidData` error
/// when it does not parse or its MAC does not verify under `audit_key`.
pub fn read_checkpoint(dir: &Path, audit_key: &[u8; 32]) -> io::Result<Option<Checkpoint>> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let s: Sealed = serde_json::from_slice(&bytes).map_err(|e| {
        invalid_data(format!(
            "{} is not an audit checkpoint: {e}",
            path.display()
        ))
    })?;
    let cp = Checkpoint {
        file: s.file,
        seq: s.seq,
        hash: s.hash,
    };
    // Not secret-dependent timing worth guarding: the MAC is stored in the clear beside it.
    if unhex32(&cp.hash).is_none() || cp.mac(audit_key) != s.mac {
        return Err(invalid_data(format!(
            "{}: the checkpoint's MAC does not verify: it was edited or forged, or the audit \
             key is wrong",
            path.display()
        )));
    }
    Ok(Some(cp))
}

/// Writes `cp` as the checkpoint file of `dir` (atomic replace, fsynced).
pub(super) fn write_checkpoint(
    dir: &Path,
    audit_key: &[u8; 32],
    cp: &Checkpoint,
) -> io::Result<()> {
    let sealed = Sealed {
        file: cp.file,
        seq: cp.seq,
        hash: cp.hash.clone(),
        mac: cp.mac(audit_key),
    };
    let text = serde_json::to_vec(&sealed).map_err(io::Error::other)?;
    envelopefs_sys::atomic::atomic_write(&dir.join(CHECKPOINT_FILE), &text, 0o600)
}

/// Whether the trail in `dir` holds `cp`: its record `cp.seq` has hash `cp.hash` (read from the
/// record, not re-checked: [`verify`] checks the chain). A checkpoint at seq 0,
/// or older than the trail's first kept record (older files deleted under an anchor), is held.
pub fn holds(dir: &Path, cp: &Checkpoint) -> io::Result<bool> {
    if cp.seq == 0 {
        return Ok(true);
    }
    let files = list_files(dir)?;
    // The file named first, then the others from the newest back (a rotation may have moved
    // on since; the recorded file may have been pruned).
    let order = files
        .iter()
        .filter(|(n, _)| *n == cp.file)
        .chain(files.iter().rev().filter(|(n, _)| *n != cp.file));
    for (_, path) in order {
        let Some(first) = first_line(path)? else {
            continue;
        };
        let first = parse_record(&first).map_err(invalid_data)?;
        if first.seq > cp.seq {
            continue;
        }
        let mut found = None;
        for_each_line(path, |_, line| {
            let rec = parse_record(line).map_err(invalid_data)?;
            if rec.seq == cp.seq {
                found = Some(rec.hash);
                return Ok(false);
            }
            Ok(true)
        })?;
        if let Some(hash) = found {
            return Ok(hash == cp.hash);
        }
    }
    // Not found: held only if every kept record is newer (older files pruned).
    let oldest = match files.first() {
        Some((_, p)) => first_line(p)?
            .map(|l| parse_record(&l).map_err(invalid_data))
            .transpose()?,
        None => None,
    };
    Ok(oldest.is_some_and(|r| r.seq > cp.seq && files[0].0 > 1))
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
