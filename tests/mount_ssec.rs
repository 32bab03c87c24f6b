//! Mount tests of customer-provided keys (SSE-C, `envelopefs ssec`): two users on one shared
//! mount, each with their own key given over the control socket.
//!
//! Users are uids 4001 (alice) and 4002 (bob), taken with `setpriv`; the mount is made by
//! root with `--allow-other`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{BIN, Mounted, contains, hex, random_bytes, tool};

const ALICE: u32 = 4001;
const BOB: u32 = 4002;

fn as_user(uid: u32, dir: &Path, script: &str) -> Output {
    common::output(
        tool("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ])
            .args(["sh", "-c", script])
            .env("E", BIN)
            .current_dir(dir),
    )
}

fn ok(uid: u32, dir: &Path, script: &str) -> String {
    let out = as_user(uid, dir, script);
    assert!(
        out.status.success(),
        "as uid {uid}: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn denied(uid: u32, dir: &Path, script: &str) {
    let out = as_user(uid, dir, script);
    assert!(!out.status.success(), "as uid {uid}: {script} should fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "as uid {uid}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 32-byte key file owned by `uid`, mode 0600.
fn key_for(m: &Mounted, name: &str, uid: u32) -> (PathBuf, Vec<u8>) {
    let k = random_bytes(32);
    let p = m.scratch().join(name);
    fs::write(&p, &k).unwrap();
    std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    (p, k)
}

fn setup() -> Option<Mounted> {
    let m = Mounted::for_other_users(common::Options::default())?;
    fs::set_permissions(m.scratch(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    Some(m)
}

/// Every byte under `dir` (file contents, names, link targets).
fn all_bytes(dir: &Path, out: &mut Vec<u8>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.extend_from_slice(e.file_name().as_encoded_bytes());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            all_bytes(&e.path(), out);
        } else if ft.is_symlink() {
            out.extend_from_slice(
                fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if ft.is_file() {
            out.extend(fs::read(e.path()).unwrap());
        }
    }
}

/// The test: alice's SSE-C file is hers alone (bob, root and bob-with-his-own-key get
/// EACCES); `forget` cuts her off at once; a wrong key is refused and audited; after a
/// remount the file needs `ssec add` again; her key's bytes are nowhere in BACKING, the
/// daemon's log or the audit trail.
#[test]
fn alice_alone_reads_her_sse_c_files() {
    let Some(mut m) = setup() else { return };
    let mnt = m.mnt().to_owned();
    let (akey, abytes) = key_for(&m, "alice.key", ALICE);
    let (bkey, _) = key_for(&m, "bob.key", BOB);
    let (wrong, _) = key_for(&m, "alice-wrong.key", ALICE);
    let add = |key: &Path, extra: &str| {
        format!(
            "\"$E\" ssec add {} --keyfile {} {extra}",
            mnt.display(),
            key.display()
        )
    };
    let out = ok(
        ALICE,
        &mnt,
        &format!(
            "{} && echo alice-secret > shared/a && cat shared/a",
            add(&akey, "--default")
        ),
    );
    assert!(out.contains("alice-secret"), "{out}");
    let cfg = fs::read_to_string(m.backing().join("envelopefs.json")).unwrap();
    assert!(cfg.contains("\"sse-c\""), "the feature is recorded: {cfg}");

    denied(BOB, &mnt, "cat shared/a");
    assert_eq!(
        common::read_errno(&m.path("shared/a")),
        Err(libc::EACCES),
        "root without the key"
    );
    ok(BOB, &mnt, &add(&bkey, ""));
    denied(BOB, &mnt, "cat shared/a");

    // forget cuts her off at once, an open descriptor included (after the cache drop).
    let script = format!(
        "exec 3< shared/a && head -c 5 <&3 && \"$E\" ssec forget {} >/dev/null && sleep 1.5 && cat <&3",
        mnt.display()
    );
    let out = as_user(ALICE, &mnt, &script);
    assert!(!out.status.success(), "read after forget must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    denied(ALICE, &mnt, "cat shared/a");

    // A wrong key: refused and audited.
    ok(ALICE, &mnt, &add(&wrong, ""));
    denied(ALICE, &mnt, "cat shared/a");
    ok(
        ALICE,
        &mnt,
        &format!("\"$E\" ssec forget {}", mnt.display()),
    );

    // After a remount the key must be given again.
    m.remount();
    denied(ALICE, &mnt, "cat shared/a");
    let out = ok(ALICE, &mnt, &format!("{} && cat shared/a", add(&akey, "")));
    assert!(out.contains("alice-secret"), "{out}");
    let st = ok(
        ALICE,
        &mnt,
        &format!("\"$E\" ssec status {} --json", mnt.display()),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&st).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    m.unmount();

    let audit = fs::read_dir(m.backing().join("keystore.json.audit"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    let wrong_key_refusal = audit.lines().any(|l| {
        l.contains("\"SseCDecrypt\"")
            && l.contains(&format!("\"uid\":{ALICE}"))
            && l.contains("AccessDenied")
    });
    assert!(wrong_key_refusal, "the wrong key's refusal is audited");
    assert!(audit.contains("SseCGenerateDataKey") && audit.contains("customerKeyId"));

    let mut hay = Vec::new();
    all_bytes(m.backing(), &mut hay);
    hay.extend(m.log_text().into_bytes());
    for (what, needle) in [
        ("key bytes", abytes.clone()),
        ("key hex", hex(&abytes).into_bytes()),
        ("plaintext", b"alice-secret".to_vec()),
    ] {
        assert!(
            !contains(&hay, &needle),
            "{what} found in BACKING or the log"
        );
    }
}

/// `ssec rotate` moves alice's files to a new key: the old key no longer opens them, the new
/// one does; bob's files are untouched.
#[test]
fn rotate_moves_files_to_the_new_key() {
    let Some(m) = setup() else { return };
    let mnt = m.mnt().to_owned();
    let (k0, _) = key_for(&m, "k0", ALICE);
    let (k1, _) = key_for(&m, "k1", ALICE);
    let (k2, _) = key_for(&m, "k2", ALICE);
    let (bk, _) = key_for(&m, "bk", BOB);
    let e = |args: &str| format!("\"$E\" ssec {args}");
    // A file under another key of hers, k0, which the rotation of k1 must leave alone.
    ok(
        ALICE,
        &mnt,
        &format!(
            "{} && echo under-k0 > shared/z0",
            e(&format!(
                "add {} --keyfile {} --default",
                mnt.display(),
                k0.display()
            ))
        ),
    );
    ok(
        ALICE,
        &mnt,
        &format!(
            "{} && for i in 1 2 3; do echo file-$i > shared/a$i; done && mkdir shared/d && echo deep > shared/d/x",
            e(&format!(
                "add {} --keyfile {} --default",
                mnt.display(),
                k1.display()
            ))
        ),
    );
    ok(
        BOB,
        &mnt,
        &format!(
            "{} && echo bobs > shared/b",
            e(&format!(
                "add {} --keyfile {} --default",
                mnt.display(),
                bk.display()
            ))
        ),
    );
    let out = ok(
        ALICE,
        &mnt,
        &e(&format!(
            "rotate {} --old {} --new {}",
            mnt.display(),
            k1.display(),
            k2.display()
        )),
    );
    assert!(out.contains("Re-wrapped 4 file(s)"), "{out}");
    ok(ALICE, &mnt, &e(&format!("forget {}", mnt.display())));
    ok(
        ALICE,
        &mnt,
        &e(&format!("add {} --keyfile {}", mnt.display(), k1.display())),
    );
    denied(ALICE, &mnt, "cat shared/a1");
    ok(ALICE, &mnt, &e(&format!("forget {}", mnt.display())));
    ok(
        ALICE,
        &mnt,
        &e(&format!("add {} --keyfile {}", mnt.display(), k2.display())),
    );
    assert_eq!(
        ok(ALICE, &mnt, "cat shared/a1 shared/a2 shared/a3 shared/d/x"),
        "file-1\nfile-2\nfile-3\ndeep\n"
    );
    assert_eq!(ok(BOB, &mnt, "cat shared/b"), "bobs\n");
    denied(ALICE, &mnt, "cat shared/z0");
    ok(
        ALICE,
        &mnt,
        &e(&format!("add {} --keyfile {}", mnt.display(), k0.display())),
    );
    assert_eq!(
        ok(ALICE, &mnt, "cat shared/z0"),
        "under-k0\n",
        "not moved by the rotation of k1"
    );
}
