//! Reading the audit trail back: every record in order (`audit show`), and checking the hash
//! chain, sequence numbers and anchor (`audit verify`).

use super::*;

/// Calls `f` with every record of the trail in `dir`, oldest first, until it returns false.
/// Needs no key and checks nothing (use [`verify`]); an incomplete last line of the newest
/// file (a write in progress) is skipped. A line that is not a record is an `InvalidData`
/// error naming the file and line.
pub fn for_each_record(dir: &Path, mut f: impl FnMut(AuditRecord) -> bool) -> io::Result<()> {
    for (_, path) in list_files(dir)? {
        let mut go_on = true;
        for_each_line(&path, |n, line| {
            let rec = parse_record(line).map_err(|e| {
                invalid_data(format!(
                    "{}:{n}: {e}; run `envelopefs audit verify`",
                    path.display()
                ))
            })?;
            go_on = f(rec);
            Ok(go_on)
        })?;
        if !go_on {
            break;
        }
    }
    Ok(())
}

/// Every record of the trail in `dir`, oldest first (for `envelopefs audit show`).
pub fn read_all(dir: &Path) -> io::Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    for_each_record(dir, |r| {
        out.push(r);
        true
    })?;
    Ok(out)
}

/// What [`verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// seq of the first and last record (0 when there are none).
    pub first_seq: u64,
    /// seq of the last record.
    pub last_seq: u64,
    /// Hex hash of the last record (the head of the chain; empty when there are none).
    pub last_hash: String,
    /// When older files were deleted: the file whose start the anchor vouched for.
    pub anchored_at_file: Option<u32>,
    /// The newest file ends in an incomplete line (a write in progress, or a crash the
    /// writer has not repaired yet); it was not checked.
    pub incomplete_tail: bool,
    /// seq of the checkpoint file's head, which the trail was found to hold (`None`: no
    /// checkpoint file, so a cut tail could not be detected).
    pub checkpoint_seq: Option<u64>,
    /// seq of the keystore's checkpoint, which the trail was found to hold (`None`: not
    /// checked, or the keystore records none).
    pub keystore_checkpoint_seq: Option<u64>,
}

/// The first bad record (or file) [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line in it (0 when the problem is the file itself).
    pub line: u64,
    /// The record's seq, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (record seq {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for VerifyError {}

/// Checks the whole trail in `dir` under `audit_key` and its checkpoint file, as
/// [`verify_with_keystore`] without the keystore's checkpoint.
pub fn verify(dir: &Path, audit_key: &[u8; 32]) -> Result<VerifyReport, VerifyError> {
    verify_with_keystore(dir, audit_key, None)
}

/// Checks the whole trail in `dir` under `audit_key` (see the module docs for what is and is
/// not detected), and that it holds the head recorded in its checkpoint file and in
/// `keystore_checkpoint` (the keystore body's `audit_checkpoint`): a trail that ends before
/// either, or holds another record at that seq, was cut or replaced. When the keystore
/// records a checkpoint, the directory and its checkpoint file must exist. `Ok` tells how
/// much was checked; `Err` names the first problem.
pub fn verify_with_keystore(
    dir: &Path,
    audit_key: &[u8; 32],
    keystore_checkpoint: Option<&Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let dir_err = |reason: String| VerifyError {
        file: dir.to_owned(),
        line: 0,
        seq: None,
        reason,
    };
    if let Some(k) = keystore_checkpoint
        && dir.symlink_metadata().is_err()
    {
        return Err(dir_err(format!(
            "the audit directory is missing, but the keystore says the trail existed \
             (checkpoint at seq {}): it was deleted",
            k.seq
        )));
    }
    let cp_path = dir.join(CHECKPOINT_FILE);
    let file_cp = read_checkpoint(dir, audit_key).map_err(|e| VerifyError {
        file: cp_path.clone(),
        line: 0,
        seq: None,
        reason: e.to_string(),
    })?;
    if let (Some(k), None) = (keystore_checkpoint, &file_cp) {
        return Err(VerifyError {
            file: cp_path,
            line: 0,
            seq: None,
            reason: format!(
                "missing, but the keystore says the trail reached seq {} with a checkpoint: \
                 it was deleted (and the trail may have been cut)",
                k.seq
            ),
        });
    }
    let watch: Vec<u64> = file_cp
        .iter()
        .chain(keystore_checkpoint)
        .map(|c| c.seq)
        .collect();
    let (mut report, found) = verify_chain(dir, audit_key, &watch)?;
    let newest = list_files(dir)
        .ok()
        .and_then(|f| f.last().map(|(_, p)| p.clone()))
        .unwrap_or_else(|| dir.to_owned());
    let check = |cp: &Checkpoint, whose: &str| -> Result<(), VerifyError> {
        if cp.seq == 0 {
            return Ok(());
        }
        if report.records == 0 || report.last_seq < cp.seq {
            let ends = match report.records {
                0 => "the trail has no records".to_owned(),
                _ => format!("the trail ends at seq {}", report.last_seq),
            };
            return Err(VerifyError {
                file: newest.clone(),
                line: 0,
                seq: (report.records > 0).then_some(report.last_seq),
                reason: format!(
                    "trail truncated: {whose} says seq {}, {ends}: the newest records were \
                     deleted, or the trail was replaced by an older copy",
                    cp.seq
                ),
            });
        }
        match found.iter().find(|(s, _)| *s == cp.seq) {
            Some((_, h)) if hex(h) == cp.hash => Ok(()),
            Some(_) => Err(VerifyError {
                file: newest.clone(),
                line: 0,
                seq: Some(cp.seq),
                reason: format!(
                    "record seq {} is not the one {whose} vouches for: the trail was replaced \
                     from there on",
                    cp.seq
                ),
            }),
            // Older than every record kept (older files deleted under the anchor).
            None => Ok(()),
        }
    };
    if let Some(cp) = &file_cp {
        check(cp, "the checkpoint")?;
        report.checkpoint_seq = Some(cp.seq);
    }
    if let Some(cp) = keystore_checkpoint {
        check(cp, "the keystore's checkpoint")?;
        report.keystore_checkpoint_seq = Some(cp.seq);
    }
    Ok(report)
}

/// (seq, hash) of the watched records [`verify_chain`] met.
type Watched = Vec<(u64, [u8; 32])>;

/// The chain check of [`verify`]; also returns the hash of each record whose seq is in
/// `watch`.
fn verify_chain(
    dir: &Path,
    audit_key: &[u8; 32],
    watch: &[u64],
) -> Result<(VerifyReport, Watched), VerifyError> {
    let mut found = Vec::new();
    let dir_err = |reason: String| VerifyError {
        file: dir.to_owned(),
        line: 0,
        seq: None,
        reason,
    };
    let files =
        list_files(dir).map_err(|e| dir_err(format!("cannot list the audit directory: {e}")))?;
    let anchor_path = dir.join(ANCHOR_FILE);
    let anchor = Anchor::read(dir).map_err(|e| VerifyError {
        file: anchor_path.clone(),
        line: 0,
        seq: None,
        reason: e.to_string(),
    })?;
    if let Some(a) = &anchor
        && (!a.mac_ok(audit_key) || unhex32(&a.prev).is_none())
    {
        return Err(VerifyError {
            file: anchor_path,
            line: 0,
            seq: Some(a.seq),
            reason: "the anchor's MAC does not verify: it was edited or forged, or the audit \
                     key is wrong"
                .into(),
        });
    }
    let mut report = VerifyReport {
        records: 0,
        files: files.len(),
        first_seq: 0,
        last_seq: 0,
        last_hash: String::new(),
        anchored_at_file: None,
        incomplete_tail: false,
        checkpoint_seq: None,
        keystore_checkpoint_seq: None,
    };
    let Some(&(oldest, _)) = files.first() else {
        return match anchor {
            Some(a) => Err(dir_err(format!(
                "no audit files, but the anchor expects {}: the trail was deleted",
                file_name(a.file)
            ))),
            None => Ok((report, found)),
        };
    };
    for pair in files.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(VerifyError {
                file: dir.join(file_name(pair[0].0 + 1)),
                line: 0,
                seq: None,
                reason: format!(
                    "missing: the files between {} and {} were deleted",
                    file_name(pair[0].0),
                    file_name(pair[1].0)
                ),
            });
        }
    }
    // Where the chain starts: seq 1 after 32 zero bytes, or (older files deleted) wherever the
    // oldest remaining file starts, pinned by the anchor.
    let mut expect: Option<(u64, [u8; 32])> = if oldest == 1 {
        Some((1, [0; 32]))
    } else {
        None
    };
    if oldest > 1 {
        match &anchor {
            Some(a) if a.file >= oldest => report.anchored_at_file = Some(a.file),
            Some(a) => {
                return Err(dir_err(format!(
                    "{} is missing: the anchor says the trail starts there, but the oldest \
                     file is {}",
                    file_name(a.file),
                    file_name(oldest)
                )));
            }
            None => {
                return Err(dir_err(format!(
                    "{} to {} are missing and no anchor vouches for the start of {}: old audit \
                     files were deleted by hand",
                    file_name(1),
                    file_name(oldest - 1),
                    file_name(oldest)
                )));
            }
        }
    }
    let mut anchor_pending = anchor.as_ref().filter(|a| a.file >= oldest);
    let last_index = files.len() - 1;
    for (i, (file_no, path)) in files.iter().enumerate() {
        let mut failure: Option<VerifyError> = None;
        let torn = for_each_line(path, |n, line| {
            let fail = |seq: Option<u64>, reason: String| VerifyError {
                file: path.clone(),
                line: n,
                seq,
                reason,
            };
            let rec = match parse_record(line) {
                Ok(r) => r,
                Err(e) => {
                    let seq = serde_json::from_slice::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()));
                    failure = Some(fail(seq, e));
                    return Ok(false);
                }
            };
            let seq = Some(rec.seq);
            let Some((body, hash)) = split_line(line) else {
                failure = Some(fail(
                    seq,
                    "the line does not end with its hash member".into(),
                ));
                return Ok(false);
            };
            let Some(prev) = unhex32(&rec.prev) else {
                failure = Some(fail(seq, "prev is not 64 lowercase hex digits".into()));
                return Ok(false);
            };
            if chain_hash(audit_key, &prev, &body) != hash {
                let hint = if report.records == 0 {
                    " (or the audit key is wrong: is this the right keystore and passphrase?)"
                } else {
                    ""
                };
                failure = Some(fail(
                    seq,
                    format!("hash mismatch: the record was edited{hint}"),
                ));
                return Ok(false);
            }
            if let Some(a) = anchor_pending
                && *file_no >= a.file
            {
                if rec.seq != a.seq || rec.prev != a.prev {
                    failure = Some(fail(
                        seq,
                        format!(
                            "the first record from {} on should be seq {} (per the anchor): \
                             records before it were deleted or replaced",
                            file_name(a.file),
                            a.seq
                        ),
                    ));
                    return Ok(false);
                }
                anchor_pending = None;
            }
            match expect {
                None => {} // unanchored start of files older than the anchor
                Some((want_seq, want_prev)) => {
                    if prev != want_prev {
                        let what = if rec.seq > want_seq {
                            format!(
                                "{} record(s) before it are missing (expected seq {want_seq})",
                                rec.seq - want_seq
                            )
                        } else if rec.seq < want_seq {
                            format!("it is out of order (expected seq {want_seq})")
                        } else {
                            "a record before it was deleted, inserted or replaced".to_owned()
                        };
                        failure = Some(fail(
                            seq,
                            format!("prev does not match the hash of the record before: {what}"),
                        ));
                        return Ok(false);
                    }
                    if rec.seq != want_seq {
                        failure = Some(fail(
                            seq,
                            format!("seq {} where {want_seq} was expected", rec.seq),
                        ));
                        return Ok(false);
                    }
                }
            }
            if report.records == 0 {
                report.first_seq = rec.seq;
            }
            if watch.contains(&rec.seq) {
                found.push((rec.seq, hash));
            }
            report.records += 1;
            report.last_seq = rec.seq;
            expect = Some((rec.seq + 1, hash));
            Ok(true)
        })
        .map_err(|e| VerifyError {
            file: path.clone(),
            line: 0,
            seq: None,
            reason: format!("cannot read: {e}"),
        })?;
        if let Some(f) = failure {
            return Err(f);
        }
        if torn {
            if i != last_index {
                return Err(VerifyError {
                    file: path.clone(),
                    line: 0,
                    seq: None,
                    reason: "ends in an incomplete line, but it is not the newest file".into(),
                });
            }
            report.incomplete_tail = true;
        }
    }
    if let Some((_, h)) = expect
        && report.records > 0
    {
        report.last_hash = hex(&h);
    }
    Ok((report, found))
}
