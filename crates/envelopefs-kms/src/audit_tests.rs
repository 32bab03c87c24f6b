//! Tests of the audit trail: records, the hash chain, rotation, several writers, verify.

use super::*;
use crate::principal::Principal;
use crate::{Caller, KeyError};
use envelopefs_format::context::EncryptionContext;
use std::fs::File;
use std::time::UNIX_EPOCH;

const KEY: [u8; 32] = [7; 32];

fn caller() -> Caller {
    Caller {
        uid: 1000,
        gid: 1000,
        pid: 0,
    }
}

fn ev(i: u64) -> AuditEvent {
    let mut ctx = EncryptionContext::new();
    ctx.insert("envelopefs:file-id", &format!("{i:032x}"));
    ctx.insert("envelopefs:volume-id", "vol");
    AuditEvent::new("Decrypt", &caller())
        .key("1b4e28ba-2fa1-11d2-883f-0016d3cca427", Some(2))
        .context(&ctx)
        .path(format!("/dir/file{i}"))
        .authorized_by("key policy statement \"x\"")
}

fn write_n(dir: &Path, n: u64, max_bytes: u64) {
    let log = AuditLog::open(dir, KEY, max_bytes).unwrap();
    for i in 0..n {
        log.append(ev(i)).unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn put_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(path, s).unwrap();
}

fn only_file(dir: &Path) -> PathBuf {
    dir.join(file_name(1))
}

#[test]
fn append_then_verify() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("audit");
    write_n(&dir, 5, 0);
    let r = verify(&dir, &KEY).unwrap();
    assert_eq!((r.records, r.files, r.first_seq, r.last_seq), (5, 1, 1, 5));
    assert!(!r.incomplete_tail && r.anchored_at_file.is_none());
    let recs = read_all(&dir).unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[0].prev, "0".repeat(64));
    assert_eq!(recs[4].hash, r.last_hash);
    let r0 = &recs[0];
    assert_eq!(
        (r0.seq, r0.event_name.as_str(), r0.event_source.as_str()),
        (1, "Decrypt", EVENT_SOURCE)
    );
    assert_eq!(r0.user_identity.uid, 1000);
    assert!(r0.read_only);
    assert_eq!(r0.request_parameters.key_version, Some(2));
    assert_eq!(r0.request_parameters.path.as_deref(), Some("/dir/file0"));
    assert_eq!(
        r0.request_parameters.encryption_context["envelopefs:volume-id"],
        "vol"
    );
    assert_eq!(r0.event_time.len(), "2026-11-23T10:00:00.123Z".len());
    // Permissions: the directory 0700, files 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(only_file(&dir)).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The line is exactly the record's JSON, with the hash last.
    let first = &lines(&only_file(&dir))[0];
    assert_eq!(*first, serde_json::to_string(r0).unwrap());
    assert!(first.starts_with("{\"seq\":1,\"eventTime\":\""), "{first}");
    assert!(
        first.contains(",\"readOnly\":true,\"prev\":\"000"),
        "{first}"
    );
}

#[test]
fn hash_layout_matches_the_documentation() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 2, 0);
    let ls = lines(&only_file(d.path()));
    let mut prev = [0u8; 32];
    for l in &ls {
        let cut = l.len() - 75;
        assert!(l[cut..].starts_with(",\"hash\":\""));
        let body = format!("{}}}", &l[..cut]);
        let mut input = prev.to_vec();
        input.extend_from_slice(body.as_bytes());
        let h = blake3::keyed_hash(&KEY, &input);
        assert_eq!(&l[cut + 9..l.len() - 2], h.to_hex().as_str());
        prev = *h.as_bytes();
    }
}

#[test]
fn editing_any_field_of_a_middle_record_is_named() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 5, 0);
    let path = only_file(d.path());
    let orig = lines(&path);
    let edits: &[(&str, &str)] = &[
        ("\"seq\":3", "\"seq\":4"),
        ("\"eventName\":\"Decrypt\"", "\"eventName\":\"Encrypt\""),
        ("\"uid\":1000", "\"uid\":0"),
        ("\"keyVersion\":2", "\"keyVersion\":1"),
        ("/dir/file2", "/dir/fileX"),
        ("\"vol\"", "\"lov\""),
        ("\"readOnly\":true", "\"readOnly\":false"),
        ("2026", "2025"),
        (
            "\"eventSource\":\"envelopefs-kms\",",
            "\"eventSource\":\"envelopefs-kms\", ",
        ),
    ];
    for (from, to) in edits {
        let mut ls = orig.clone();
        if !ls[2].contains(from) {
            assert!(*from == "2026", "edit {from} does not apply");
            ls[2] = ls[2].replacen("\"eventTime\":\"2", "\"eventTime\":\"1", 1);
        } else {
            ls[2] = ls[2].replacen(from, to, 1);
        }
        put_lines(&path, &ls);
        let e = verify(d.path(), &KEY).unwrap_err();
        assert_eq!((e.line, e.file.clone()), (3, path.clone()), "{from}: {e}");
        assert!(e.reason.contains("edited"), "{from}: {e}");
        assert_eq!(e.seq, Some(if *from == "\"seq\":3" { 4 } else { 3 }), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
    }
    // Editing the hash itself.
    let mut ls = orig.clone();
    let n = ls[2].len();
    let flipped = if &ls[2][n - 3..n - 2] == "0" {
        "1"
    } else {
        "0"
    };
    ls[2].replace_range(n - 3..n - 2, flipped);
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (3, Some(3)), "{e}");
    put_lines(&path, &orig);
    verify(d.path(), &KEY).unwrap();
}

#[test]
fn deleted_duplicated_or_reordered_records_are_named() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 6, 0);
    let path = only_file(d.path());
    let orig = lines(&path);

    let mut ls = orig.clone();
    ls.remove(2); // seq 3
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (3, Some(4)), "{e}");
    assert!(
        e.reason.contains("1 record(s) before it are missing"),
        "{e}"
    );

    let mut ls = orig.clone();
    ls.swap(2, 3);
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (3, Some(4)), "{e}");

    let mut ls = orig.clone();
    ls.insert(3, orig[2].clone());
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (4, Some(3)), "{e}");
    assert!(e.reason.contains("out of order"), "{e}");

    let mut ls = orig.clone();
    ls.remove(0);
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (1, Some(2)), "{e}");

    let mut ls = orig.clone();
    ls[1] = "garbage".into();
    put_lines(&path, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!((e.line, e.seq), (2, None), "{e}");
    assert!(e.reason.contains("not an audit record"), "{e}");
}

#[test]
fn wrong_key_fails_at_the_first_record() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 3, 0);
    let e = verify(d.path(), &[8; 32]).unwrap_err();
    assert_eq!((e.line, e.seq), (1, Some(1)));
    assert!(e.reason.contains("audit key is wrong"), "{e}");
}

#[test]
fn reopening_continues_the_chain() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 3, 0);
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    assert_eq!(log.next_seq(), 4);
    log.append(ev(9)).unwrap();
    log.sync().unwrap();
    drop(log);
    write_n(d.path(), 2, 0);
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!((r.records, r.last_seq, r.files), (6, 6, 1));
}

#[test]
fn rotation_by_size_continues_the_chain_across_files() {
    let d = tempfile::tempdir().unwrap();
    let one = {
        let t = tempfile::tempdir().unwrap();
        write_n(t.path(), 1, 0);
        fs::metadata(only_file(t.path())).unwrap().len()
    };
    // About three records per file.
    write_n(d.path(), 10, one * 3 + one / 2);
    write_n(d.path(), 4, one * 3 + one / 2);
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!(r.records, 14);
    assert_eq!(r.files, 5);
    for (_, p) in list_files(d.path()).unwrap() {
        assert!(
            fs::metadata(&p).unwrap().len() <= one * 3 + one / 2 + 8,
            "{p:?}"
        );
    }
    // Deleting a middle file is named.
    fs::remove_file(d.path().join(file_name(3))).unwrap();
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!(e.file, d.path().join(file_name(3)), "{e}");
    // Deleting the first file without an anchor is named too.
    let d2 = tempfile::tempdir().unwrap();
    write_n(d2.path(), 10, one * 3 + one / 2);
    fs::remove_file(d2.path().join(file_name(1))).unwrap();
    let e = verify(d2.path(), &KEY).unwrap_err();
    assert!(e.reason.contains("no anchor"), "{e}");
}

#[test]
fn keeping_n_files_anchors_the_oldest() {
    let d = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        max_bytes: 1500,
        max_files: Some(3),
    };
    let log = AuditLog::open_with(d.path(), KEY, opts).unwrap();
    for i in 0..40 {
        log.append(ev(i)).unwrap();
    }
    drop(log);
    let files = list_files(d.path()).unwrap();
    assert_eq!(files.len(), 3);
    assert!(files[0].0 > 1);
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!(r.anchored_at_file, Some(files[0].0));
    assert_eq!(r.last_seq, 40);
    assert!(r.first_seq > 1);
    assert_eq!(r.records, 40 - r.first_seq + 1);

    // Deleting the oldest kept file, or forging the anchor, is detected.
    let saved = fs::read(&files[0].1).unwrap();
    fs::remove_file(&files[0].1).unwrap();
    let e = verify(d.path(), &KEY).unwrap_err();
    assert!(e.reason.contains("anchor"), "{e}");
    fs::write(&files[0].1, &saved).unwrap();
    let a = fs::read_to_string(d.path().join(ANCHOR_FILE)).unwrap();
    let forged = a.replacen(
        &format!("\"file\":{}", files[0].0),
        &format!("\"file\":{}", files[1].0),
        1,
    );
    fs::write(d.path().join(ANCHOR_FILE), forged).unwrap();
    let e = verify(d.path(), &KEY).unwrap_err();
    assert!(e.reason.contains("MAC"), "{e}");
    fs::write(d.path().join(ANCHOR_FILE), a).unwrap();
    // Emptying the oldest file's first records is detected through the anchor.
    let mut ls = lines(&files[0].1);
    ls.remove(0);
    put_lines(&files[0].1, &ls);
    let e = verify(d.path(), &KEY).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    assert!(e.reason.contains("per the anchor"), "{e}");
}

#[test]
fn torn_last_line_is_cut_off_on_open() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 3, 0);
    let path = only_file(d.path());
    let good = fs::read(&path).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"seq\":4,\"eventTi");
    fs::write(&path, &torn).unwrap();
    // Readers skip it; verify reports it.
    assert_eq!(read_all(d.path()).unwrap().len(), 3);
    assert!(verify(d.path(), &KEY).unwrap().incomplete_tail);
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        good,
        "cut back to the last complete line"
    );
    assert_eq!(log.next_seq(), 4);
    log.append(ev(4)).unwrap();
    drop(log);
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!((r.records, r.incomplete_tail), (4, false));

    // A file holding only a torn line.
    let d2 = tempfile::tempdir().unwrap();
    fs::write(only_file(d2.path()), b"{\"seq\":1,\"ev").unwrap();
    let log = AuditLog::open(d2.path(), KEY, 0).unwrap();
    assert_eq!(fs::metadata(only_file(d2.path())).unwrap().len(), 0);
    log.append(ev(0)).unwrap();
    assert_eq!(verify(d2.path(), &KEY).unwrap().records, 1);
}

#[test]
fn a_damaged_last_record_refuses_to_open() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 2, 0);
    let path = only_file(d.path());
    let mut ls = lines(&path);
    ls[1] = "not json".into();
    put_lines(&path, &ls);
    let e = AuditLog::open(d.path(), KEY, 0).err().unwrap();
    assert!(e.to_string().contains("damaged"), "{e}");
}

#[test]
fn last_line_reads_backwards_across_chunks() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    let long = "x".repeat(40_000);
    fs::write(&p, format!("a\n{long}\ntorn")).unwrap();
    let mut f = File::open(&p).unwrap();
    let (line, len) = last_line(&mut f).unwrap();
    assert_eq!(line.unwrap(), long.as_bytes());
    assert_eq!(len, 2 + 40_001);
    fs::write(&p, format!("{long}\n")).unwrap();
    let (line, _) = last_line(&mut File::open(&p).unwrap()).unwrap();
    assert_eq!(line.unwrap(), long.as_bytes());
    fs::write(&p, "no newline").unwrap();
    assert_eq!(last_line(&mut File::open(&p).unwrap()).unwrap(), (None, 0));
    fs::write(&p, "").unwrap();
    assert_eq!(last_line(&mut File::open(&p).unwrap()).unwrap(), (None, 0));
}

#[test]
fn records_hold_no_secrets_unless_given_as_context() {
    let d = tempfile::tempdir().unwrap();
    let secret = hex(&[0x5a; 32]);
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    let me = Caller::current();
    let denied = KeyError::AccessDenied {
        key_id: "k".into(),
        reason: "no statement".into(),
    };
    log.append(
        AuditEvent::new("kms:GenerateDataKey", &me)
            .key("k", Some(1))
            .error(&denied),
    )
    .unwrap();
    log.append(
        AuditEvent::new("DisableKey", &me)
            .key("k", None)
            .param("reason", "test"),
    )
    .unwrap();
    let all = fs::read_to_string(only_file(d.path())).unwrap();
    assert!(!all.contains(&secret) && !all.contains(&hex(&KEY)), "{all}");
    let mut ctx = EncryptionContext::new();
    ctx.insert("note", &secret);
    log.append(AuditEvent::new("Decrypt", &me).context(&ctx))
        .unwrap();
    assert!(
        fs::read_to_string(only_file(d.path()))
            .unwrap()
            .contains(&secret)
    );

    let recs = read_all(d.path()).unwrap();
    assert_eq!(recs[0].event_name, "GenerateDataKey");
    assert_eq!(recs[0].error_code.as_deref(), Some("AccessDeniedException"));
    assert!(recs[0].read_only && !recs[1].read_only);
    assert_eq!(recs[1].request_parameters.other["reason"], "test");
    // The process name and user name were filled in.
    assert_eq!(recs[0].user_identity.pid, me.pid);
    let comm = fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        recs[0].user_identity.process_name.as_deref(),
        Some(comm.trim_end())
    );
    assert_eq!(
        recs[0].user_identity.user_name,
        principal::user_name(me.uid)
    );
    // Reserved parameter names are refused.
    let bad = AuditEvent::new("Decrypt", &me).param("keyId", "x");
    assert_eq!(
        log.append(bad).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    verify(d.path(), &KEY).unwrap();
}

#[test]
fn empty_or_missing_directory() {
    let d = tempfile::tempdir().unwrap();
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!((r.records, r.files), (0, 0));
    assert!(read_all(&d.path().join("nope")).is_err());
    let log = AuditLog::open(&d.path().join("new/deeper"), KEY, 0).unwrap();
    assert_eq!(log.next_seq(), 1);
    assert_eq!(verify(log.dir(), &KEY).unwrap().records, 0);
}

#[test]
fn concurrent_appends_stay_in_chain_order() {
    let d = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(AuditLog::open(d.path(), KEY, 4096).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.append(ev(t * 1000 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!(r.records, 200);
    assert!(r.files > 1);
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AuditLog>();
}

/// The writer thread: records from several threads, more than the queue holds, in files
/// small enough that batches are split around rotations, with a second (synchronous) writer
/// on the same trail, as a CLI command next to the daemon: one valid chain, every record
/// once, each thread's records in its own order.
#[test]
fn background_writer_keeps_one_chain_across_rotations_and_other_writers() {
    let d = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(AuditLog::open(d.path(), KEY, 8192).unwrap());
    log.write_in_background().unwrap();
    let per_thread = background::QUEUE_LEN as u64;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    log.append(ev(t * 100_000 + i)).unwrap();
                }
            })
        })
        .collect();
    let cli = AuditLog::open(d.path(), KEY, 8192).unwrap();
    for i in 0..20 {
        cli.append(ev(900_000 + i)).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    log.flush();
    let total = 3 * per_thread + 20;
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!((r.records, r.first_seq, r.last_seq), (total, 1, total));
    assert!(r.files > 10, "{} files", r.files);
    assert_eq!(log.next_seq(), total + 1);
    let recs = read_all(d.path()).unwrap();
    let file_ids = |t: u64| -> Vec<u64> {
        recs.iter()
            .map(|r| {
                let id = &r.request_parameters.encryption_context["envelopefs:file-id"];
                u64::from_str_radix(id, 16).unwrap()
            })
            .filter(|id| id / 100_000 == t)
            .collect()
    };
    for t in 0..3 {
        let want: Vec<u64> = (0..per_thread).map(|i| t * 100_000 + i).collect();
        assert_eq!(file_ids(t), want, "thread {t}");
    }
    assert_eq!(file_ids(9), (900_000..900_020).collect::<Vec<_>>());
}

/// Dropping the log (as at unmount) writes out what is still queued.
#[test]
fn background_writer_drains_its_queue_on_drop() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    log.write_in_background().unwrap();
    log.write_in_background().unwrap(); // a second call changes nothing
    let n = 2 * background::QUEUE_LEN as u64;
    for i in 0..n {
        log.append(ev(i)).unwrap();
    }
    drop(log);
    // Everything is on disk when drop returns, not a moment later.
    let size = || fs::metadata(only_file(d.path())).unwrap().len();
    let at_drop = size();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        size(),
        at_drop,
        "records were still being written after drop"
    );
    let r = verify(d.path(), &KEY).unwrap();
    assert_eq!((r.records, r.last_seq), (n, n));
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    assert_eq!(log.next_seq(), n + 1);
}

#[test]
fn event_times() {
    let t = UNIX_EPOCH + Duration::from_millis(1_795_428_000_123);
    assert_eq!(format_event_time(t), "2026-11-23T10:00:00.123Z");
    assert_eq!(format_event_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    let leap = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
    assert_eq!(format_event_time(leap), "2024-02-29T23:59:59.000Z");
    assert_eq!(parse_event_time("2026-11-23T10:00:00.123Z"), Some(t));
    assert_eq!(parse_event_time("2024-02-29T23:59:59"), Some(leap));
    assert_eq!(
        parse_event_time("2026-11-23"),
        Some(UNIX_EPOCH + Duration::from_secs(1_795_428_000 - 10 * 3600))
    );
    assert_eq!(
        parse_event_time("2026-11-23T10:00Z"),
        Some(UNIX_EPOCH + Duration::from_secs(1_795_428_000))
    );
    assert_eq!(
        parse_event_time("2026-11-23T10:00:00.1Z"),
        Some(UNIX_EPOCH + Duration::from_millis(1_795_428_000_100))
    );
    for bad in [
        "2023-02-29",
        "2026-13-01",
        "2026-11-23T24:00",
        "x",
        "2026-11",
        "2026-11-23T10:00:00.1234",
    ] {
        assert_eq!(parse_event_time(bad), None, "{bad}");
    }
}

/// Throughput of appends (not a pass/fail test):
/// `cargo test --release --lib keys::audit::tests::append_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn append_throughput() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(d.path(), KEY, 0).unwrap();
    // As the key service calls it: a resolved principal (user name known), the caller's
    // pid (process name from the cache).
    let me = Caller::current();
    let who = Principal::from_caller(&me, &[0]);
    let n = 100_000u64;
    let start = Instant::now();
    for i in 0..n {
        let mut e = ev(i).principal(&who);
        e.pid = me.pid;
        log.append(e).unwrap();
    }
    log.sync().unwrap();
    let el = start.elapsed();
    let t = Instant::now();
    let r = verify(d.path(), &KEY).unwrap();
    let vel = t.elapsed();
    let bytes: u64 = list_files(d.path())
        .unwrap()
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "{n} appends in {el:?}: {:.0} appends/s, {:.2} µs each, {} bytes/record, {} files; verify {:?} ({:.0} records/s)",
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64,
        bytes / n,
        r.files,
        vel,
        n as f64 / vel.as_secs_f64()
    );
}
