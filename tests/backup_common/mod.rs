//! Shared by the backup tests: a tree with every kind of entry, and a snapshot of everything
//! a backup must keep, to compare a mounted view with an export or a restored copy.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::sys::{get_xattr, list_xattr, mkfifo, set_xattr, ts, utimens};
use crate::common::{BLOCK, Mounted, Rng, hex};

/// Everything a backup must keep, one line per path (relative to `root`): type, mode, owner,
/// mtime, size, a hash of the contents or the link target, the xattrs, and which paths share
/// an inode.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let t = m.file_type();
            let what = if t.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else if t.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if t.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                let h = blake3::hash(&fs::read(&p).unwrap());
                format!("file {} first-name {first}", hex(&h.as_bytes()[..8]))
            } else {
                "special".to_owned()
            };
            let mut xattrs: Vec<String> = if t.is_symlink() {
                vec![]
            } else {
                list_xattr(&p)
                    .unwrap()
                    .into_iter()
                    .filter(|n| n.starts_with("user."))
                    .map(|n| format!("{n}={}", hex(&get_xattr(&p, &n).unwrap())))
                    .collect()
            };
            xattrs.sort();
            let mtime = if t.is_dir() { 0 } else { m.mtime() }; // a dir's mtime moves as it fills
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} mtime {mtime} size {} xattrs [{}]",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if t.is_dir() { 0 } else { m.size() },
                    xattrs.join(",")
                ),
            );
        }
    }
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Builds a tree with every kind of entry through the mount.
pub fn populate(m: &Mounted) {
    let mut rng = Rng::new(17);
    fs::create_dir_all(m.path("docs/deep/er")).unwrap();
    for (name, size) in [
        ("a", 0usize),
        ("b", 1),
        ("docs/c", BLOCK as usize),
        ("docs/deep/d", 3 * BLOCK as usize + 17),
        ("docs/deep/er/big", 700_000),
    ] {
        fs::write(m.path(name), rng.bytes(size)).unwrap();
    }
    fs::write(m.path(&"é".repeat(80)), b"long unicode name").unwrap();
    fs::hard_link(m.path("b"), m.path("docs/b-again")).unwrap();
    std::os::unix::fs::symlink("../b", m.path("docs/to-b")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", m.path("dangling")).unwrap();
    mkfifo(&m.path("docs/fifo"), 0o640).unwrap();
    set_xattr(&m.path("docs/c"), "user.mime", b"text/plain", 0).unwrap();
    set_xattr(&m.path("docs"), "user.tag", b"\x00binary\xff", 0).unwrap();
    fs::set_permissions(
        m.path("docs/c"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    fs::set_permissions(
        m.path("docs/deep"),
        std::os::unix::fs::PermissionsExt::from_mode(0o2751),
    )
    .unwrap();
    if is_root() {
        std::os::unix::fs::lchown(m.path("docs/deep/d"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(m.path("docs/to-b"), Some(1002), Some(1002)).unwrap();
    }
    utimens(
        &m.path("docs/deep/d"),
        ts(1_000_000_000, 5),
        ts(1_200_000_000, 7),
    )
    .unwrap();
}

/// Remounts `m`, so that everything the kernel buffered has reached BACKING: with the
/// writeback cache the mount's view of a file's mtime can run ahead of BACKING's (the flush
/// writes later) until then, and tools that read BACKING see BACKING's.
pub fn settle(m: &mut Mounted) {
    assert!(m.unmount().is_some_and(|s| s.success()));
    m.mount();
}
