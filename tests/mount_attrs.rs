//! Mount tests of attributes: mode, owner and umask, times set one at a time, extended
//! attributes (stored encrypted, or refused with `--no-xattr`), and refused ACLs and SELinux
//! labels.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::sys::{NOW, OMIT, errno, get_xattr, list_xattr, remove_xattr, set_xattr, ts, utimens};
use common::{Mounted, check, sh, tool};

#[test]
fn chmod_and_chown() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("f");
    fs::write(&p, b"mode test").unwrap();
    for mode in [0o640, 0o600, 0o755, 0o444, 0o1777] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().mode() & 0o7777,
            mode,
            "mode through the mount"
        );
        assert_eq!(
            fs::metadata(m.backing_path("f")).unwrap().mode() & 0o7777,
            mode,
            "mode in the backing store"
        );
    }
    fs::write(m.path("suid"), b"x").unwrap();
    fs::set_permissions(m.path("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        fs::metadata(m.path("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    fs::create_dir(m.path("d")).unwrap();
    fs::set_permissions(m.path("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().mode() & 0o7777, 0o700);

    std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    let bmd = fs::metadata(m.backing_path("f")).unwrap();
    assert_eq!((bmd.uid(), bmd.gid()), (1000, 1000));
    std::os::unix::fs::chown(&p, None, Some(0)).unwrap();
    assert_eq!(
        (
            fs::metadata(&p).unwrap().uid(),
            fs::metadata(&p).unwrap().gid()
        ),
        (1000, 0)
    );
    std::os::unix::fs::lchown(m.path("d"), Some(1000), None).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().uid(), 1000);
    // A file created by root belongs to root.
    fs::write(m.path("mine"), b"").unwrap();
    assert_eq!(fs::metadata(m.path("mine")).unwrap().uid(), 0);
    // The creator's umask applies (the kernel applies it; the daemon must not add its own).
    sh(
        "umask 077 && touch u1 && mkdir u2 && umask 002 && touch u3 && mkdir -m 1777 u4",
        m.mnt(),
    );
    for (n, mode) in [("u1", 0o600), ("u2", 0o700), ("u3", 0o664), ("u4", 0o1777)] {
        assert_eq!(
            fs::metadata(m.path(n)).unwrap().mode() & 0o7777,
            mode,
            "{n}"
        );
    }

    m.remount();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 0, 0o1777));
    assert_eq!(fs::read(&p).unwrap(), b"mode test");
}

/// utimensat with one time omitted must leave the other alone (GNU tar sets them separately).
#[test]
fn utimensat_one_time_at_a_time() {
    let Some(m) = Mounted::new() else { return };
    let p = m.path("t");
    fs::write(&p, b"times").unwrap();
    let times = |p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
    };
    utimens(
        &p,
        ts(1_000_000_000, 500_000_000),
        ts(1_100_000_000, 250_000_000),
    )
    .unwrap();
    assert_eq!(
        times(&p),
        ((1_000_000_000, 500_000_000), (1_100_000_000, 250_000_000))
    );

    utimens(&p, OMIT, ts(1_200_000_000, 7)).unwrap();
    assert_eq!(
        times(&p),
        ((1_000_000_000, 500_000_000), (1_200_000_000, 7)),
        "mtime only: atime must stay"
    );
    assert_eq!(times(&m.backing_path("t")), times(&p), "backing times");

    utimens(&p, ts(1_300_000_000, 9), OMIT).unwrap();
    assert_eq!(
        times(&p),
        ((1_300_000_000, 9), (1_200_000_000, 7)),
        "atime only: mtime must stay"
    );

    utimens(&p, OMIT, NOW).unwrap();
    let ((a, an), (mt, _)) = times(&p);
    assert_eq!((a, an), (1_300_000_000, 9), "mtime=now: atime must stay");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((mt - now).abs() < 60, "mtime=now gave {mt}, now is {now}");

    // Writing (through write and through truncate) moves mtime to now.
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "write updates mtime");
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(2)
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "ftruncate updates mtime");
    utimens(&p, OMIT, ts(1_000_000_000, 0)).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert!((times(&p).1.0 - now).abs() < 60, "O_TRUNC updates mtime");
    fs::write(&p, b"times").unwrap();
    let mt = times(&p).1.0;

    // Pre-epoch times and a symlink's own times (lutimes).
    utimens(&p, ts(-86_400, 0), OMIT).unwrap();
    assert_eq!(times(&p).0, (-86_400, 0));
    std::os::unix::fs::symlink("t", m.path("l")).unwrap();
    utimens(&m.path("l"), ts(1_000_000_001, 0), ts(1_000_000_002, 0)).unwrap();
    assert_eq!(
        times(&m.path("l")),
        ((1_000_000_001, 0), (1_000_000_002, 0))
    );
    assert_eq!(times(&p).1.0, mt, "the link target is untouched");
}

/// `--no-xattr`: every xattr call fails with EOPNOTSUPP (and the kernel stops asking), files
/// work as usual, and attributes stored before are still there when mounted normally again.
#[test]
fn no_xattr_mount_refuses_xattrs_and_keeps_stored_ones() {
    let Some(mut m) = Mounted::new() else { return };
    fs::write(m.path("f"), b"contents").unwrap();
    set_xattr(&m.path("f"), "user.k", b"v", 0).unwrap();
    m.unmount();
    m.options_mut().xattrs = false;
    m.mount();
    for _ in 0..2 {
        for e in [
            get_xattr(&m.path("f"), "user.k").unwrap_err(),
            set_xattr(&m.path("f"), "user.new", b"x", 0).unwrap_err(),
            remove_xattr(&m.path("f"), "user.k").unwrap_err(),
        ] {
            assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        }
    }
    assert_eq!(fs::read(m.path("f")).unwrap(), b"contents");
    fs::write(m.path("g"), b"new file").unwrap();
    let listing = check(tool("ls").arg("-l").arg(m.mnt()));
    assert!(
        listing.contains(" f\n") && listing.contains(" g\n"),
        "{listing}"
    );
    m.unmount();
    m.options_mut().xattrs = true;
    m.mount();
    assert_eq!(get_xattr(&m.path("f"), "user.k").unwrap(), b"v");
    assert_eq!(fs::read(m.path("g")).unwrap(), b"new file");
}

#[test]
fn xattrs_round_trip_encrypted() {
    let Some(mut m) = Mounted::new() else { return };
    let p = m.path("f");
    fs::write(&p, b"has xattrs").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let plain = b"xattr-plaintext-value-Zq8WmT3vR1".to_vec();
    // (ext4 keeps all of an inode's xattrs in one 4 KiB block: stay well below that.)
    let binary: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    // The daemon remembers that an inode has no xattrs at all; the first set must end that.
    assert_eq!(
        errno(&get_xattr(&p, "user.test").unwrap_err()),
        libc::ENODATA
    );
    assert_eq!(list_xattr(&p).unwrap(), Vec::<String>::new());
    let bf = m.backing_path("f");
    // The backing name of a user.* attribute: the one a set through the mount adds (the name
    // itself on a volume with plaintext names; encrypted otherwise).
    let stored_name = |name: &str, value: &[u8]| {
        let before = list_xattr(&bf).unwrap();
        set_xattr(&p, name, value, 0).unwrap();
        let added: Vec<String> = list_xattr(&bf)
            .unwrap()
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        assert_eq!(added.len(), 1, "{name}: {added:?}");
        assert_eq!(
            added[0] == name,
            m.plaintext_names(),
            "{name} stored as {}",
            added[0]
        );
        added[0].clone()
    };
    let stored_test = stored_name("user.test", &plain);
    set_xattr(&p, "user.binary", &binary, 0).unwrap();
    set_xattr(&p, "user.empty", b"", 0).unwrap();
    set_xattr(&m.path("d"), "user.ondir", b"dir value", 0).unwrap();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), plain);
    assert_eq!(get_xattr(&p, "user.binary").unwrap(), binary);
    assert_eq!(get_xattr(&p, "user.empty").unwrap(), b"");
    assert_eq!(get_xattr(&m.path("d"), "user.ondir").unwrap(), b"dir value");
    let mut names = list_xattr(&p).unwrap();
    names.retain(|n| n.starts_with("user."));
    names.sort();
    assert_eq!(names, ["user.binary", "user.empty", "user.test"]);

    // The backing value is ciphertext: different, without the plaintext, 28 bytes longer.
    let raw = get_xattr(&bf, &stored_test).unwrap();
    assert_ne!(raw, plain);
    assert!(
        !common::contains(&raw, &plain[..16]),
        "the raw xattr holds the plaintext"
    );
    assert_eq!(raw.len(), plain.len() + 28);

    // Flags, replace, remove.
    assert_eq!(
        errno(&set_xattr(&p, "user.test", b"x", libc::XATTR_CREATE).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno(&set_xattr(&p, "user.nope", b"x", libc::XATTR_REPLACE).unwrap_err()),
        libc::ENODATA
    );
    set_xattr(&p, "user.test", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), b"replaced");
    remove_xattr(&p, "user.empty").unwrap();
    assert_eq!(
        errno(&get_xattr(&p, "user.empty").unwrap_err()),
        libc::ENODATA
    );
    assert_eq!(
        errno(&remove_xattr(&p, "user.empty").unwrap_err()),
        libc::ENODATA
    );

    // A value moved to another name, or flipped, fails authentication: EIO.
    let raw_bin = get_xattr(&bf, &stored_test).unwrap();
    let stored_moved = stored_name("user.moved", b"x");
    set_xattr(&bf, &stored_moved, &raw_bin, 0).unwrap();
    assert_eq!(errno(&get_xattr(&p, "user.moved").unwrap_err()), libc::EIO);
    let mut flipped = raw_bin.clone();
    flipped[20] ^= 1;
    let stored_flipped = stored_name("user.flipped", b"x");
    set_xattr(&bf, &stored_flipped, &flipped, 0).unwrap();
    assert_eq!(
        errno(&get_xattr(&p, "user.flipped").unwrap_err()),
        libc::EIO
    );

    m.remount();
    assert_eq!(get_xattr(&p, "user.test").unwrap(), b"replaced");
    assert_eq!(get_xattr(&p, "user.binary").unwrap(), binary);
    assert_eq!(get_xattr(&m.path("d"), "user.ondir").unwrap(), b"dir value");
    assert_eq!(fs::read(&p).unwrap(), b"has xattrs");
}

/// A POSIX ACL as the kernel's `system.posix_acl_*` xattr value: version 2, then per entry
/// tag (u16), permissions (u16) and id (u32), little-endian.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// POSIX ACLs and SELinux labels fail with EOPNOTSUPP instead of being stored unenforced.
/// Passed through, `setfacl -m u:nobody:r` on a 0600 file turned its group bits into the
/// mask (0640): the file's group could read it and nobody still could not.
#[test]
fn acls_and_selinux_labels_are_refused() {
    let Some(mut m) = Mounted::new() else { return };
    let f = m.path("f");
    fs::write(&f, b"secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    const UNDEFINED: u32 = u32::MAX;
    let acl = acl_value(&[
        (0x01, 6, UNDEFINED), // user::rw-
        (0x02, 4, 65534),     // user:nobody:r--
        (0x04, 0, UNDEFINED), // group::---
        (0x10, 4, UNDEFINED), // mask::r--
        (0x20, 0, UNDEFINED), // other::---
    ]);
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        let target = if name.ends_with("default") {
            m.mnt().to_path_buf()
        } else {
            f.clone()
        };
        let e = set_xattr(&target, name, &acl, 0).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "set {name}: {e}");
        let e = get_xattr(&target, name).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "get {name}: {e}");
    }
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o600,
        "a refused ACL must not change the mode"
    );
    assert_eq!(
        fs::metadata(m.backing_path("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for e in [
        set_xattr(
            &f,
            "security.selinux",
            b"system_u:object_r:user_home_t:s0\0",
            0,
        )
        .unwrap_err(),
        get_xattr(&f, "security.selinux").unwrap_err(),
        remove_xattr(&f, "security.selinux").unwrap_err(),
        remove_xattr(&f, "system.posix_acl_access").unwrap_err(),
    ] {
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
    }
    // Other namespaces still work.
    set_xattr(&f, "user.k", b"v", 0).unwrap();
    assert_eq!(get_xattr(&f, "user.k").unwrap(), b"v");
    // A backing file that holds an ACL from before (set on the backing directly, where the
    // backing filesystem supports ACLs) does not show it through the mount.
    fs::write(m.path("g"), b"g").unwrap();
    set_xattr(&m.path("g"), "user.keep", b"1", 0).unwrap();
    match set_xattr(&m.backing_path("g"), "system.posix_acl_access", &acl, 0) {
        Ok(()) => {
            m.remount();
            assert_eq!(
                list_xattr(&m.path("g")).unwrap(),
                vec!["user.keep".to_string()]
            );
            let e = get_xattr(&m.path("g"), "system.posix_acl_access").unwrap_err();
            assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        }
        Err(e) => eprintln!("backing filesystem has no ACLs ({e}); stale-ACL part skipped"),
    }
    let listing = check(tool("ls").arg("-l").arg(m.mnt()));
    assert!(
        listing.contains(" f\n") && listing.contains(" g\n"),
        "{listing}"
    );
    assert_eq!(fs::read(&f).unwrap(), b"secret");
}
