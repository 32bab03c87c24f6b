//! Mount tests of other users: with `--allow-other` another user (uid 1000) owns what it
//! creates and meets the kernel's permission checks, and its writes clear set-user-id and
//! set-group-id bits.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::Mounted;

/// A write, truncate or O_TRUNC open by a process without CAP_FSETID clears set-user-id, and
/// set-group-id on a group-executable file, as the kernel does on a local filesystem (the
/// mount asks the kernel to leave this to it: FUSE_HANDLE_KILLPRIV_V2); root keeps them.
/// Checked with and without the writeback cache.
#[test]
fn unprivileged_write_and_truncate_clear_setid_bits() {
    for writeback in [true, false] {
        let Some(m) = Mounted::for_other_users(common::Options {
            writeback,
            ..Default::default()
        }) else {
            return;
        };
        let files = [
            ("write", 0o6777, "printf x >> write", 0o777),
            ("truncate", 0o6777, "truncate -s 1 truncate", 0o777),
            ("otrunc", 0o6777, ": > otrunc", 0o777),
            ("sgid_no_gx", 0o2767, "printf x >> sgid_no_gx", 0o2767),
            ("untouched", 0o6777, "cat untouched > /dev/null", 0o6777),
            ("by_root", 0o6777, "", 0o6777),
        ];
        for (name, mode, _, _) in &files {
            fs::write(m.path(name), b"0123456789").unwrap();
            fs::set_permissions(m.path(name), fs::Permissions::from_mode(*mode)).unwrap();
        }
        for (_, _, script, _) in files.iter().filter(|f| !f.2.is_empty()) {
            let out = common::as_user_1000(m.mnt(), script);
            assert!(
                out.status.success(),
                "as uid 1000: {script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        OpenOptions::new()
            .append(true)
            .open(m.path("by_root"))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        for (name, _, script, want) in &files {
            for md in [
                fs::metadata(m.path(name)).unwrap(),
                fs::metadata(m.backing_path(name)).unwrap(),
            ] {
                assert_eq!(
                    md.mode() & 0o7777,
                    *want,
                    "{name} after `{script}` (writeback cache {writeback})"
                );
            }
        }
    }
}

/// With --allow-other, another user (uid 1000) gets files it owns (in the backing store too)
/// and the kernel's permission checks (default_permissions) apply to it.
#[test]
fn other_user_with_allow_other() {
    let Some(m) = Mounted::for_other_users(common::Options::default()) else {
        return;
    };
    fs::create_dir(m.path("home")).unwrap();
    std::os::unix::fs::chown(m.path("home"), Some(1000), Some(1000)).unwrap();
    fs::write(m.path("rootonly"), b"root secret").unwrap();
    fs::set_permissions(m.path("rootonly"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.path("readonly"), b"shared").unwrap();
    fs::set_permissions(m.path("readonly"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |script: &str| common::as_user_1000(m.mnt(), script);
    let ok = |script: &str| {
        let out = as_user(script);
        assert!(
            out.status.success(),
            "as uid 1000: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok("umask 022 && echo mine > home/f && mkdir home/d && ln -s f home/l && echo more >> home/f");
    assert_eq!(ok("cat home/f readonly"), "mine\nmore\nshared");
    for (rel, mode) in [("home/f", 0o644), ("home/d", 0o755)] {
        for md in [
            fs::symlink_metadata(m.path(rel)).unwrap(),
            fs::symlink_metadata(m.backing_path(rel)).unwrap(),
        ] {
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777),
                (1000, 1000, mode),
                "{rel}"
            );
        }
    }
    assert_eq!(
        fs::symlink_metadata(m.backing_path("home/l"))
            .unwrap()
            .uid(),
        1000,
        "symlink owner"
    );
    assert!(
        !as_user("cat rootonly").status.success(),
        "a 0600 root file is not readable by uid 1000"
    );
    assert!(
        !as_user("echo x >> readonly").status.success(),
        "a 0644 root file is not writable by uid 1000"
    );
    assert!(
        !as_user("touch newfile").status.success(),
        "the root-owned 0755 mountpoint is not writable by uid 1000"
    );
    assert!(
        !as_user("chown 0 home/f").status.success(),
        "uid 1000 cannot give files away"
    );
    ok("chmod 600 home/f");
    assert_eq!(
        fs::metadata(m.path("home/f")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::read(m.path("readonly")).unwrap(), b"shared");
    assert_eq!(fs::read(m.path("rootonly")).unwrap(), b"root secret");
}
