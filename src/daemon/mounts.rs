//! The mount table, /proc/self/mountinfo: whether a directory is mounted on, and where a
//! volume is mounted (a daemon's fsname is BACKING's canonical path,
//! [`DaemonSettings::mount_options`](super::DaemonSettings::mount_options)).
//!
//! A line is `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`;
//! space, tab, line feed and backslash in a field are written as octal escapes (`\040`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount: where, what type, from what.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mountpoint: PathBuf,
    fstype: String,
    source: PathBuf,
}

/// The mounts a mountinfo text lists; malformed lines are skipped.
fn parse(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            Some(Mount {
                mountpoint: unescape(left.split(' ').nth(4)?),
                fstype: fstype.to_owned(),
                source: unescape(source),
            })
        })
        .collect()
}

/// This process's mounts; none if /proc cannot be read.
fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse(&info))
        .unwrap_or_default()
}

/// True when something is mounted on `mountpoint`.
pub(crate) fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(want) = std::fs::canonicalize(mountpoint) else {
        return false;
    };
    mounts().iter().any(|m| m.mountpoint == want)
}

/// Where the volume `backing` is mounted: a FUSE mount whose source is BACKING's canonical
/// path.
pub(crate) fn mount_of(backing: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(backing).ok()?;
    mounts()
        .into_iter()
        .find(|m| (m.fstype == "fuse" || m.fstype.starts_with("fuse.")) && m.source == want)
        .map(|m| m.mountpoint)
}

/// The volume mounted at `mountpoint`: the source of an envelopefs-like FUSE mount there, when
/// it is a directory holding an `envelopefs.json` (a daemon's fsname is BACKING's canonical
/// path).
pub(crate) fn volume_at(mountpoint: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    mounts()
        .into_iter()
        .filter(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        .filter(|m| m.mountpoint == want)
        .map(|m| m.source)
        .next_back()
        .filter(|b| b.join(crate::store::volume::CONFIG_NAME).is_file())
}

/// Undoes mountinfo's octal escapes (`\040` for a space); any bytes, UTF-8 or not.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
97 22 0:50 / /home/a/my\\040vault rw,nosuid,nodev,relatime shared:60 - fuse.envelopefs /home/a/vault\\040enc rw,user_id=0
98 22 0:51 / /mnt/x rw - fuse /srv/b\\134c rw
broken line
";

    #[test]
    fn lines_parse_with_escapes() {
        let m = parse(INFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mountpoint, Path::new("/home/a/my vault"));
        assert_eq!(m[1].fstype, "fuse.envelopefs");
        assert_eq!(m[1].source, Path::new("/home/a/vault enc"));
        assert_eq!(m[2].source, Path::new("/srv/b\\c"));
        assert_eq!(
            unescape("a\\377b"),
            PathBuf::from(OsString::from_vec(b"a\xffb".to_vec()))
        );
        // Not an escape: kept as is.
        assert_eq!(unescape("a\\9xy\\"), Path::new("a\\9xy\\"));
    }

    #[test]
    fn the_root_is_mounted_and_a_fresh_directory_is_not() {
        assert!(is_mounted(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mounted(d.path()));
        assert!(!is_mounted(&d.path().join("missing")));
        assert_eq!(mount_of(d.path()), None);
    }
}
