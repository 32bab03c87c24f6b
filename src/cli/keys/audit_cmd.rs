//! `envelopefs audit show|verify`: read and check the key service's audit trail
//! (`<keystore>.audit/`, see [`crate::keys::audit`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{AuditArgs, AuditCommand};
use crate::cli::{CliError, ExitCode, fail, read_unlock};
use crate::keys::audit::{self, AuditRecord};
use crate::keys::keystore::Keystore;
use crate::keys::local::audit_dir;
use crate::store::volume as vol;

fn paths(backing: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let cfg = vol::read_config(backing)?;
    let ks = vol::keystore_path(backing, &cfg);
    let dir = audit_dir(&ks);
    Ok((ks, dir))
}

fn line(r: &AuditRecord) -> String {
    let who = &r.user_identity;
    let mut s = format!(
        "{:>6}  {}  {:<26}  uid {}",
        r.seq, r.event_time, r.event_name, who.uid
    );
    if let Some(n) = &who.user_name {
        s.push_str(&format!(" ({n})"));
    }
    if who.pid != 0 {
        s.push_str(&format!(" pid {}", who.pid));
        if let Some(p) = &who.process_name {
            s.push_str(&format!(" ({p})"));
        }
    }
    let q = &r.request_parameters;
    if let Some(k) = &q.key_id {
        s.push_str(&format!("  key {k}"));
        if let Some(v) = q.key_version {
            s.push_str(&format!(" v{v}"));
        }
    }
    if let Some(k) = &q.destination_key_id {
        s.push_str(&format!(" → {k}"));
        if let Some(v) = q.destination_key_version {
            s.push_str(&format!(" v{v}"));
        }
    }
    if let Some(p) = &q.path {
        s.push_str(&format!("  {p}"));
    }
    for (k, v) in &q.other {
        s.push_str(&format!("  {k}={v}"));
    }
    match (&r.error_code, &r.error_message) {
        (Some(c), Some(m)) => s.push_str(&format!("  {c}: {m}")),
        (Some(c), None) => s.push_str(&format!("  {c}")),
        _ => s.push_str("  OK"),
    }
    s
}

/// Runs `envelopefs audit …`.
pub(super) fn run(args: AuditArgs) -> Result<(), CliError> {
    match args.command {
        AuditCommand::Show {
            backing,
            since,
            key,
            json,
        } => {
            let (_, dir) = paths(&backing)?;
            let since = since
                .map(|t| crate::keys::import::parse_time(&t))
                .transpose()?
                .map(|t| UNIX_EPOCH + Duration::from_secs(t));
            // An alias filter is resolved through the keystore's (unauthenticated) alias table.
            let key = key.map(|k| match k.starts_with("alias/") {
                true => alias_target(&backing, &k).unwrap_or(k),
                false => k,
            });
            let io = |e: std::io::Error| {
                fail(
                    ExitCode::Failure,
                    format!("cannot read the audit log {}: {e}", dir.display()),
                )
            };
            let mut shown = 0u64;
            audit::for_each_record(&dir, |r| {
                let after = since
                    .is_none_or(|s| audit::parse_event_time(&r.event_time).is_some_and(|t| t >= s));
                let about = key.as_ref().is_none_or(|k| {
                    let q = &r.request_parameters;
                    q.key_id.as_ref() == Some(k) || q.destination_key_id.as_ref() == Some(k)
                });
                if after && about {
                    shown += 1;
                    match json {
                        true => println!("{}", serde_json::to_string(&r).expect("serializable")),
                        false => println!("{}", line(&r)),
                    }
                }
                true
            })
            .map_err(io)?;
            if !json && shown == 0 {
                eprintln!("no audit records match (log: {})", dir.display());
            }
            Ok(())
        }
        AuditCommand::Verify {
            backing,
            secret,
            json,
        } => {
            let (ks_path, dir) = paths(&backing)?;
            let unlock = read_unlock(&secret, false)?;
            let ks = Keystore::open(&ks_path, &unlock)
                .inspect_err(|e| crate::keys::events::note_failed_unlock(&ks_path, e))?;
            let key = zeroize::Zeroizing::new(ks.audit_key());
            let recorded = ks.audit_checkpoint();
            drop(ks);
            // Notes of failed unlocks that no unlock has moved into the chain yet.
            let pending = std::fs::read(dir.join(audit::FAILED_UNLOCKS_FILE))
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
            match audit::verify_with_keystore(&dir, &key, recorded.as_ref()) {
                Ok(r) => {
                    if json {
                        let v = serde_json::json!({"ok": true, "records": r.records, "files": r.files,
                            "first_seq": r.first_seq, "last_seq": r.last_seq, "last_hash": r.last_hash,
                            "incomplete_tail": r.incomplete_tail, "checkpoint_seq": r.checkpoint_seq,
                            "keystore_checkpoint_seq": r.keystore_checkpoint_seq,
                            "pending_failed_unlocks": pending});
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&v).expect("serializable")
                        );
                    } else {
                        println!(
                            "OK: {} records in {} files (seq {}..{}) verify",
                            r.records, r.files, r.first_seq, r.last_seq
                        );
                        match (r.checkpoint_seq, r.keystore_checkpoint_seq) {
                            (Some(c), Some(k)) => println!(
                                "checkpoints: the trail holds the sealed head at seq {c} and the \
                                 keystore's at seq {k}"
                            ),
                            (Some(c), None) => println!(
                                "checkpoints: the trail holds the sealed head at seq {c}; the \
                                 keystore records none yet (it will at its next change)"
                            ),
                            _ => println!(
                                "warning: no checkpoint: records cut off the end of the trail \
                                 would go unnoticed"
                            ),
                        }
                        if pending > 0 {
                            println!(
                                "note: {pending} failed unlock(s) noted in {}, not yet in the \
                                 trail (the next key command or mount records them)",
                                audit::FAILED_UNLOCKS_FILE
                            );
                        }
                        if r.incomplete_tail {
                            println!(
                                "note: the newest file ends in an incomplete record (a write in progress?)"
                            );
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    if json {
                        let v = serde_json::json!({"ok": false, "file": e.file, "line": e.line, "seq": e.seq, "reason": e.reason});
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&v).expect("serializable")
                        );
                    }
                    Err(fail(
                        ExitCode::Failure,
                        format!("audit log does not verify: {e}"),
                    ))
                }
            }
        }
    }
}

/// The key id an alias points at, from the keystore file (read without the passphrase).
fn alias_target(backing: &Path, alias: &str) -> Option<String> {
    let (ks, _) = paths(backing).ok()?;
    let top: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ks).ok()?).ok()?;
    let body: serde_json::Value = serde_json::from_str(top.get("body")?.as_str()?).ok()?;
    Some(body.get("aliases")?.get(alias)?.as_str()?.to_owned())
}
