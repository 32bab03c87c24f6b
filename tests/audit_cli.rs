//! The audit commands through the binary, without a mount: printing into a closed pipe,
//! tail truncation, deletion and rollback of the trail, failed unlocks.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, output, tool};

/// A fresh volume (key file unlock) in a temp dir.
struct Vol {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    keyfile: PathBuf,
}

impl Vol {
    fn new() -> Vol {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let keyfile = dir.path().join("key");
        fs::write(&keyfile, common::random_bytes(32)).unwrap();
        let v = Vol {
            _dir: dir,
            backing,
            keyfile,
        };
        let out = v.run(&["init"], &[]);
        assert!(out.status.success(), "init: {}", text(&out));
        v
    }

    /// `envelopefs ARGS BACKING REST --keyfile KF`.
    fn run(&self, args: &[&str], rest: &[&str]) -> Output {
        self.run_with_key(args, rest, &self.keyfile)
    }

    fn run_with_key(&self, args: &[&str], rest: &[&str], key: &Path) -> Output {
        output(
            tool(BIN)
                .args(args)
                .arg(&self.backing)
                .args(rest)
                .arg("--keyfile")
                .arg(key)
                .env_remove("RUST_LOG"),
        )
    }

    fn ok(&self, args: &[&str], rest: &[&str]) -> String {
        let out = self.run(args, rest);
        assert!(out.status.success(), "{args:?} failed: {}", text(&out));
        text(&out)
    }

    fn verify(&self) -> (bool, String) {
        let out = self.run(&["audit", "verify"], &[]);
        (out.status.success(), text(&out))
    }

    fn audit_dir(&self) -> PathBuf {
        self.backing.join("keystore.json.audit")
    }

    fn trail(&self) -> PathBuf {
        self.audit_dir().join("audit-000001.jsonl")
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with its stdout a pipe whose reading end is closed before the command writes.
fn run_into_closed_pipe(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly_by_sigpipe() {
    let v = Vol::new();
    for _ in 0..3 {
        v.ok(&["key", "list"], &[]);
    }
    let commands: [&[&str]; 4] = [
        &["audit", "show"],
        &["audit", "show", "--json"],
        &["info"],
        &["scan"],
    ];
    for args in commands {
        let out = run_into_closed_pipe(Command::new(BIN).args(args).arg(&v.backing));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        // Killed by SIGPIPE, as `cat` is when its reader goes away. (Success is possible too:
        // a child another test thread forks at that moment may hold the reading end briefly.)
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            "{args:?}: {} {err}",
            out.status
        );
    }
    // The same through a shell pipeline, as a user would type it.
    let script = format!(
        "{BIN} audit show {} | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
        v.backing.display()
    );
    let out = output(tool("bash").arg("-c").arg(&script));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(status.trim(), "0" | "141"),
        "exit status {status}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Keeps the first `n` lines of `path`.
fn keep_lines(path: &Path, n: usize) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.lines().count() > n, "fewer than {n} lines in {text}");
    let kept: String = text.split_inclusive('\n').take(n).collect();
    fs::write(path, kept).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Issue 11 item 5: a clean trail verifies; a cut tail, a deleted directory and a trail
/// rolled back to an older copy do not.
#[test]
fn verify_detects_a_cut_tail_a_deleted_trail_and_a_rollback() {
    let v = Vol::new();
    v.ok(&["key", "rotate"], &["alias/default"]);
    for _ in 0..3 {
        v.ok(&["key", "list"], &[]);
    }
    let (ok, out) = v.verify();
    assert!(ok, "a clean trail verifies: {out}");
    assert!(out.contains("checkpoints: the trail holds"), "{out}");

    // Cut the last two records.
    let backup = v.backing.parent().unwrap().join("audit-backup");
    copy_dir(&v.audit_dir(), &backup);
    let n = fs::read_to_string(v.trail()).unwrap().lines().count();
    keep_lines(&v.trail(), n - 2);
    let (ok, out) = v.verify();
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "trail truncated: the checkpoint says seq {n}, the trail ends at seq {}",
            n - 2
        )),
        "{out}"
    );

    // The whole directory.
    fs::remove_dir_all(v.audit_dir()).unwrap();
    let (ok, out) = v.verify();
    assert!(!ok, "{out}");
    assert!(
        out.contains("the audit directory is missing, but the keystore says the trail existed"),
        "{out}"
    );

    // Back as it was: verifies again.
    copy_dir(&backup, &v.audit_dir());
    let (ok, out) = v.verify();
    assert!(ok, "{out}");

    // Rolled back to that copy after a key change recorded a later head in the keystore.
    v.ok(&["key", "list"], &[]);
    v.ok(&["key", "rotate"], &["alias/default"]);
    fs::remove_dir_all(v.audit_dir()).unwrap();
    copy_dir(&backup, &v.audit_dir());
    let (ok, out) = v.verify();
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "trail truncated: the keystore's checkpoint says seq {}, the trail ends at seq {n}",
            n + 1
        )),
        "{out}"
    );
}

/// Issue 11 item 5: wrong key files (any command, `audit verify` too) end up in the trail,
/// moved there by the next command that unlocks the keystore.
#[test]
fn failed_unlocks_reach_the_trail_at_the_next_unlock() {
    let v = Vol::new();
    let wrong = v.backing.parent().unwrap().join("wrong-key");
    fs::write(&wrong, common::random_bytes(32)).unwrap();
    for args in [&["key", "list"][..], &["audit", "verify"][..]] {
        let out = v.run_with_key(args, &[], &wrong);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
    }
    let notes = v.audit_dir().join("failed-unlocks.jsonl");
    assert_eq!(fs::read_to_string(&notes).unwrap().lines().count(), 2);
    let (ok, out) = v.verify();
    assert!(
        ok && out.contains("note: 2 failed unlock(s) noted"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(&notes).unwrap().lines().count(),
        2,
        "verify only reads"
    );
    v.ok(&["key", "list"], &[]);
    assert_eq!(
        fs::metadata(&notes).unwrap().len(),
        0,
        "moved into the trail"
    );
    let shown = String::from_utf8_lossy(
        &output(
            Command::new(BIN)
                .args(["audit", "show", "--json"])
                .arg(&v.backing),
        )
        .stdout,
    )
    .into_owned();
    let failed: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("\"eventName\":\"UnlockKeystore\""))
        .collect();
    assert_eq!(failed.len(), 2, "{shown}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("\"errorCode\":\"AccessDeniedException\"")
                && l.contains("wrong passphrase or key file")),
        "{shown}"
    );
    let (ok, out) = v.verify();
    assert!(ok, "{out}");
}
