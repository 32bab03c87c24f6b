//! Failed unlocks. A process that cannot unlock the keystore (wrong passphrase or key file)
//! cannot derive the audit key, so it cannot extend the chain. It appends a note instead, one
//! JSON line, to `failed-unlocks.jsonl` in the audit directory (under the directory's flock):
//!
//! ```text
//! {"time":"2026-12-06T18:00:00.123Z","uid":1000,"pid":4242,"processName"?:"envelopefs",
//!  "parentPid":4100,"parentProcessName"?:"bash",
//!  "errorCode":"AccessDeniedException","errorMessage":"wrong passphrase or key file …"}
//! ```
//!
//! The next process that does unlock it (opening the trail: every CLI command, a mount) and a
//! mounted daemon at every sync (each minute) move the notes into the chain, one
//! `UnlockKeystore` record each (its caller the note's uid, pid and process; `attemptTime`,
//! `parentPid`, `parentProcessName` among its parameters; the note's error), then empty the
//! file, all under the flock. Until then a note is unauthenticated: whoever can write the
//! directory can delete or forge it. At most [`MAX_NOTE_BYTES`] of notes are kept and
//! [`MAX_RECORDS`] moved one by one; what is beyond is counted in one last record.
//! A crash between writing the records and emptying the file records those notes twice.

use super::*;
use crate::{Caller, KeyError};

/// Name of the notes file in the audit directory.
pub const FAILED_UNLOCKS_FILE: &str = "failed-unlocks.jsonl";
/// `eventName` of the records made from notes.
pub const FAILED_UNLOCK_EVENT: &str = "UnlockKeystore";
/// Notes are not appended past this size (and no more is read).
pub(crate) const MAX_NOTE_BYTES: u64 = 1 << 20;
/// Notes moved into the chain one record each; the rest are counted.
pub(crate) const MAX_RECORDS: usize = 1000;

/// One failed unlock, as the failing process saw it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Note {
    time: String,
    uid: u32,
    pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process_name: Option<String>,
    #[serde(default)]
    parent_pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_process_name: Option<String>,
    error_code: String,
    error_message: String,
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

/// Notes that `caller` failed to unlock the keystore whose trail is in `dir` with error `e`.
/// Does nothing (`Ok`) when `dir` does not exist: the directory belongs to the key service
/// and is not created here. Fails when the directory is not writable by this user.
pub fn note_failed_unlock(dir: &Path, caller: &Caller, e: &KeyError) -> io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let parent_pid = envelopefs_sys::parent_pid();
    let note = Note {
        time: format_event_time(SystemTime::now()),
        uid: caller.uid,
        pid: caller.pid,
        process_name: comm(caller.pid),
        parent_pid,
        parent_process_name: comm(parent_pid),
        error_code: e.code().to_owned(),
        error_message: e.to_string(),
    };
    let mut line = serde_json::to_vec(&note).map_err(io::Error::other)?;
    line.push(b'\n');
    let lock = open_lock_file(dir)?;
    let _flock = FileLock::exclusive(&lock)?;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(FAILED_UNLOCKS_FILE))?;
    if f.metadata()?.len() + line.len() as u64 > MAX_NOTE_BYTES {
        return Err(io::Error::other(format!(
            "{} is full ({MAX_NOTE_BYTES} bytes); unlock the keystore to move its notes into the \
             trail",
            dir.join(FAILED_UNLOCKS_FILE).display()
        )));
    }
    f.write_all(&line)?;
    f.sync_data()
}

impl Trail {
    /// Moves the notes of failed unlocks into the chain (see the module docs). The caller
    /// holds the writer mutex and the flock and has caught up. Returns how many notes.
    pub(super) fn import_failed_unlocks(&self, w: &mut Chain) -> io::Result<usize> {
        let path = self.dir.join(FAILED_UNLOCKS_FILE);
        let mut f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len == 0 {
            return Ok(0);
        }
        let mut text = Vec::new();
        (&mut f).take(MAX_NOTE_BYTES).read_to_end(&mut text)?;
        let (mut notes, mut malformed) = (Vec::new(), 0u64);
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Note>(line) {
                Ok(n) => notes.push(n),
                Err(_) => malformed += 1,
            }
        }
        let count = notes.len();
        let more = notes.len().saturating_sub(MAX_RECORDS);
        notes.truncate(MAX_RECORDS);
        let now = format_event_time(SystemTime::now());
        let mut recs: Vec<AuditRecord> = notes
            .into_iter()
            .map(|n| {
                let mut rec = failed_unlock_record(&now, n.uid, n.pid, n.process_name);
                let other = &mut rec.request_parameters.other;
                other.insert("attemptTime".into(), n.time);
                other.insert("parentPid".into(), n.parent_pid.to_string());
                if let Some(p) = n.parent_process_name {
                    other.insert("parentProcessName".into(), p);
                }
                rec.error_code = Some(n.error_code);
                rec.error_message = Some(n.error_message);
                rec
            })
            .collect();
        let unread = len.saturating_sub(text.len() as u64);
        if more > 0 || malformed > 0 || unread > 0 {
            // Said by the process that moves the notes, about the notes it could not move.
            let me = Caller::current();
            let mut rec = failed_unlock_record(&now, me.uid, me.pid, comm(me.pid));
            let other = &mut rec.request_parameters.other;
            other.insert("moreFailedUnlocks".into(), more.to_string());
            other.insert("malformedNotes".into(), malformed.to_string());
            other.insert("bytesNotRead".into(), unread.to_string());
            rec.error_code = Some("AccessDeniedException".into());
            rec.error_message = Some(format!(
                "more failed unlocks than are recorded one by one, or notes that do not parse \
                 (in {})",
                path.display()
            ));
            recs.push(rec);
        }
        self.write_held(w, &mut recs)?;
        f.set_len(0)?;
        f.sync_data()?;
        log::warn!(
            "{count} failed attempt(s) to unlock the keystore since it was last unlocked; \
             recorded in the audit trail {} (`envelopefs audit show`)",
            self.dir.display()
        );
        Ok(count)
    }
}

fn failed_unlock_record(now: &str, uid: u32, pid: u32, process: Option<String>) -> AuditRecord {
    let mut other = std::collections::BTreeMap::new();
    other.insert(
        "recordedFrom".to_owned(),
        format!("{FAILED_UNLOCKS_FILE} (unauthenticated until now)"),
    );
    AuditRecord {
        event_time: now.to_owned(),
        event_name: FAILED_UNLOCK_EVENT.to_owned(),
        event_source: EVENT_SOURCE.to_owned(),
        user_identity: UserIdentity {
            uid,
            user_name: principal::user_name(uid),
            pid,
            process_name: process,
        },
        request_parameters: RequestParameters {
            other,
            ..RequestParameters::default()
        },
        read_only: true,
        ..AuditRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const KEY: [u8; 32] = [3; 32];

    fn wrong() -> KeyError {
        KeyError::WrongPassphrase {
            path: PathBuf::from("/v/keystore.json"),
        }
    }

    fn alice() -> Caller {
        Caller {
            uid: 4242,
            gid: 4242,
            pid: std::process::id(),
        }
    }

    #[test]
    fn notes_move_into_the_chain_at_the_next_open_and_at_sync() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("audit");
        note_failed_unlock(&dir, &alice(), &wrong()).unwrap();
        assert!(!dir.exists(), "a note does not create the directory");
        drop(AuditLog::open(&dir, KEY, 0).unwrap());
        for _ in 0..2 {
            note_failed_unlock(&dir, &alice(), &wrong()).unwrap();
        }
        let log = AuditLog::open(&dir, KEY, 0).unwrap();
        assert_eq!(
            fs::metadata(dir.join(FAILED_UNLOCKS_FILE)).unwrap().len(),
            0
        );
        let recs = read_all(&dir).unwrap();
        assert_eq!(recs.len(), 2);
        for r in &recs {
            assert_eq!(r.event_name, FAILED_UNLOCK_EVENT);
            assert_eq!(r.user_identity.uid, 4242);
            assert_eq!(r.user_identity.pid, std::process::id());
            assert_eq!(r.error_code.as_deref(), Some("AccessDeniedException"));
            assert!(
                r.error_message
                    .as_deref()
                    .unwrap()
                    .contains("wrong passphrase")
            );
            let q = &r.request_parameters.other;
            assert!(
                q.contains_key("attemptTime") && q.contains_key("parentPid"),
                "{q:?}"
            );
        }
        // While the trail is open (a mounted daemon): moved at the next sync.
        note_failed_unlock(&dir, &alice(), &wrong()).unwrap();
        log.sync().unwrap();
        assert_eq!(read_all(&dir).unwrap().len(), 3);
        let r = verify(&dir, &KEY).unwrap();
        assert_eq!((r.records, r.checkpoint_seq), (3, Some(3)));
    }

    #[test]
    fn too_many_or_malformed_notes_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("audit");
        drop(AuditLog::open(&dir, KEY, 0).unwrap());
        let note = serde_json::to_string(&Note {
            time: "t".into(),
            uid: 1,
            pid: 2,
            process_name: None,
            parent_pid: 0,
            parent_process_name: None,
            error_code: "AccessDeniedException".into(),
            error_message: "wrong".into(),
        })
        .unwrap();
        let mut text = format!("{note}\n").repeat(MAX_RECORDS + 5);
        text.push_str("not json\n");
        fs::write(dir.join(FAILED_UNLOCKS_FILE), text).unwrap();
        drop(AuditLog::open(&dir, KEY, 0).unwrap());
        let recs = read_all(&dir).unwrap();
        assert_eq!(recs.len(), MAX_RECORDS + 1);
        let q = &recs[MAX_RECORDS].request_parameters.other;
        assert_eq!(q["moreFailedUnlocks"], "5");
        assert_eq!(q["malformedNotes"], "1");
    }
}
