//! Tests of checkpoints: a cut tail, a replaced trail, a deleted checkpoint or directory.

use super::*;
use crate::Caller;

const KEY: [u8; 32] = [9; 32];

fn ev() -> AuditEvent {
    let me = Caller {
        uid: 1000,
        gid: 1000,
        pid: 0,
    };
    AuditEvent::new("Decrypt", &me).key("k", Some(1))
}

/// Appends `n` records and syncs (which takes a checkpoint).
fn append_synced(dir: &Path, n: u64, max_bytes: u64) -> AuditLog {
    let log = AuditLog::open(dir, KEY, max_bytes).unwrap();
    for _ in 0..n {
        log.append(ev()).unwrap();
    }
    log.sync().unwrap();
    log
}

/// Keeps the first `n` lines of audit file 1.
fn cut_to(dir: &Path, n: usize) {
    let path = dir.join(file_name(1));
    let text = fs::read_to_string(&path).unwrap();
    let kept: String = text.split_inclusive('\n').take(n).collect();
    fs::write(&path, kept).unwrap();
}

fn reason(r: Result<VerifyReport, VerifyError>) -> String {
    match r {
        Ok(r) => panic!("verify passed: {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sync_takes_a_checkpoint_that_verify_checks() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    drop(append_synced(&dir, 5, 0));
    let cp = read_checkpoint(&dir, &KEY).unwrap().unwrap();
    assert_eq!((cp.file, cp.seq), (1, 5));
    let r = verify(&dir, &KEY).unwrap();
    assert_eq!((r.checkpoint_seq, r.last_seq), (Some(5), 5));
    assert_eq!(cp.hash, r.last_hash);
}

#[test]
fn a_cut_tail_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    drop(append_synced(&dir, 5, 0));
    cut_to(&dir, 3);
    let why = reason(verify(&dir, &KEY));
    assert!(
        why.contains("trail truncated: the checkpoint says seq 5, the trail ends at seq 3"),
        "{why}"
    );
    // Every record gone, the files still there.
    cut_to(&dir, 0);
    let why = reason(verify(&dir, &KEY));
    assert!(why.contains("seq 5, the trail has no records"), "{why}");
}

#[test]
fn a_writer_never_moves_the_checkpoint_back_over_a_cut_tail() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    drop(append_synced(&dir, 5, 0));
    cut_to(&dir, 3);
    // The next writer continues after seq 3 (the chain must not break), past seq 5 even.
    let log = append_synced(&dir, 4, 0);
    assert_eq!(log.checkpoint().unwrap(), None, "takes no checkpoint");
    assert_eq!(read_checkpoint(&dir, &KEY).unwrap().unwrap().seq, 5);
    let why = reason(verify(&dir, &KEY));
    assert!(
        why.contains("record seq 5 is not the one the checkpoint vouches for"),
        "{why}"
    );
}

#[test]
fn a_replaced_or_rolled_back_trail_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    let old = d.path().join("old");
    drop(append_synced(&dir, 3, 0));
    fs::create_dir(&old).unwrap();
    fs::copy(dir.join(file_name(1)), old.join(file_name(1))).unwrap();
    fs::copy(dir.join(CHECKPOINT_FILE), old.join(CHECKPOINT_FILE)).unwrap();
    drop(append_synced(&dir, 3, 0));
    let later = read_checkpoint(&dir, &KEY).unwrap().unwrap();
    assert_eq!(later.seq, 6);
    // The older copy of the trail alone: its own checkpoint file is older still.
    fs::copy(old.join(file_name(1)), dir.join(file_name(1))).unwrap();
    let why = reason(verify(&dir, &KEY));
    assert!(why.contains("checkpoint says seq 6"), "{why}");
    // Trail and checkpoint file both rolled back: only the keystore's copy can tell.
    fs::copy(old.join(CHECKPOINT_FILE), dir.join(CHECKPOINT_FILE)).unwrap();
    assert!(verify(&dir, &KEY).is_ok(), "consistent on its own");
    let why = reason(verify_with_keystore(&dir, &KEY, Some(&later)));
    assert!(
        why.contains(
            "trail truncated: the keystore's checkpoint says seq 6, the trail ends at seq 3"
        ),
        "{why}"
    );
}

#[test]
fn the_keystore_checkpoint_requires_the_directory_and_its_checkpoint_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    drop(append_synced(&dir, 2, 0));
    let cp = read_checkpoint(&dir, &KEY).unwrap().unwrap();
    let r = verify_with_keystore(&dir, &KEY, Some(&cp)).unwrap();
    assert_eq!(r.keystore_checkpoint_seq, Some(2));

    fs::remove_file(dir.join(CHECKPOINT_FILE)).unwrap();
    let why = reason(verify_with_keystore(&dir, &KEY, Some(&cp)));
    assert!(why.contains("audit-checkpoint.json: missing"), "{why}");
    assert!(
        verify(&dir, &KEY).is_ok(),
        "without the keystore, nothing says it existed"
    );

    fs::remove_dir_all(&dir).unwrap();
    let why = reason(verify_with_keystore(&dir, &KEY, Some(&cp)));
    assert!(
        why.contains("the audit directory is missing, but the keystore says the trail existed"),
        "{why}"
    );
    // Even a keystore checkpoint taken before the first record.
    let empty = Checkpoint {
        file: 1,
        seq: 0,
        hash: "0".repeat(64),
    };
    assert!(verify_with_keystore(&dir, &KEY, Some(&empty)).is_err());
}

#[test]
fn a_forged_checkpoint_fails() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    drop(append_synced(&dir, 4, 0));
    let path = dir.join(CHECKPOINT_FILE);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("\"seq\":4", "\"seq\":2")).unwrap();
    let why = reason(verify(&dir, &KEY));
    assert!(why.contains("MAC does not verify"), "{why}");
    // A writer does not replace it (that would hide the forgery).
    let log = AuditLog::open(&dir, KEY, 0).unwrap();
    assert_eq!(log.checkpoint().unwrap(), None);
}

#[test]
fn holds_finds_the_head_across_rotated_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    let log = append_synced(&dir, 2, 600);
    let first = log.checkpoint().unwrap().unwrap();
    for _ in 0..8 {
        log.append(ev()).unwrap();
    }
    let later = log.checkpoint().unwrap().unwrap();
    assert!(later.file > first.file, "rotated: {first:?} {later:?}");
    assert!(holds(&dir, &first).unwrap() && holds(&dir, &later).unwrap());
    let forged = Checkpoint {
        hash: "ab".repeat(32),
        ..first.clone()
    };
    assert!(!holds(&dir, &forged).unwrap());
    let beyond = Checkpoint {
        seq: later.seq + 1,
        ..later.clone()
    };
    assert!(!holds(&dir, &beyond).unwrap());
    let r = verify_with_keystore(&dir, &KEY, Some(&first)).unwrap();
    assert_eq!(r.keystore_checkpoint_seq, Some(first.seq));
}
