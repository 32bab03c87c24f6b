//! The one walk of a backing tree: every regular file under a directory, for the tree-wide
//! commands (`scan`, `rewrap`, `reencrypt` and its recovery, the coming backup tools).
//!
//! Symbolic links are never followed (a link to a directory is not entered, a link to a file is
//! not listed); other non-regular files are skipped. A directory that cannot be read is
//! reported as an error item and the walk goes on with the rest of the tree; callers that must
//! see every file (a journal's target, a re-wrap) use [`regular_files`], which stops at the
//! first error.

use std::fs::{self, ReadDir};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A regular file the walk found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Its path (the walk's root joined with the names below it).
    pub(crate) path: PathBuf,
    /// Device and inode number, when the walk was asked for them ([`Walk::with_inodes`]);
    /// (0, 0) otherwise.
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// A directory (or an entry of it) the walk could not read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {error}", path.display())]
pub(crate) struct WalkError {
    /// The directory, or the entry whose type or inode could not be read.
    pub(crate) path: PathBuf,
    pub(crate) error: io::Error,
}

/// A depth-first walk yielding every regular file under a root, in directory order (see
/// [`regular_files`] for a sorted list).
#[derive(Debug)]
pub(crate) struct Walk {
    /// Directories still to read.
    pending: Vec<PathBuf>,
    /// The directory being read.
    current: Option<(PathBuf, ReadDir)>,
    inodes: bool,
    deadline: Option<Instant>,
    stopped: bool,
}

impl Walk {
    /// A walk of the tree under `root` (a root that cannot be read is the first error item).
    pub fn new(root: &Path) -> Walk {
        Walk {
            pending: vec![root.to_owned()],
            current: None,
            inodes: false,
            deadline: None,
            stopped: false,
        }
    }

    /// Also reads each file's device and inode number (one `lstat` per file). A file that
    /// disappears between the listing and the `lstat` is skipped.
    pub(crate) fn with_inodes(mut self) -> Walk {
        self.inodes = true;
        self
    }

    /// Stops the walk at the first directory entry met after `deadline` (then
    /// [`stopped`](Self::stopped) is true).
    pub(crate) fn until(mut self, deadline: Instant) -> Walk {
        self.deadline = Some(deadline);
        self
    }

    /// True when the walk ended at its deadline rather than at the end of the tree.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }
}

impl Iterator for Walk {
    type Item = Result<Entry, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.stopped {
                return None;
            }
            let Some((dir, entries)) = &mut self.current else {
                let dir = self.pending.pop()?;
                match fs::read_dir(&dir) {
                    Ok(entries) => self.current = Some((dir, entries)),
                    Err(error) => return Some(Err(WalkError { path: dir, error })),
                }
                continue;
            };
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            if self.deadline.is_some_and(|d| Instant::now() > d) {
                self.stopped = true;
                return None;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(error) => {
                    // Reading the directory failed part way: report it and leave the rest.
                    let path = dir.clone();
                    self.current = None;
                    return Some(Err(WalkError { path, error }));
                }
            };
            let path = entry.path();
            let kind = match entry.file_type() {
                Ok(t) => t,
                Err(error) => return Some(Err(WalkError { path, error })),
            };
            if kind.is_dir() {
                self.pending.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let (dev, ino) = if self.inodes {
                // DirEntry::metadata is an lstat: never follows a link.
                match entry.metadata() {
                    Ok(m) => (m.dev(), m.ino()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Some(Err(WalkError { path, error })),
                }
            } else {
                (0, 0)
            };
            return Some(Ok(Entry { path, dev, ino }));
        }
    }
}

/// Every regular file under `dir`, sorted by path; the first directory that cannot be read
/// ends the walk with its error (for callers that must not miss a file).
pub(crate) fn regular_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(collect(Walk::new(dir))?
        .into_iter()
        .map(|e| e.path)
        .collect())
}

/// [`regular_files`] with each file's device and inode number.
pub(crate) fn regular_files_with_inodes(dir: &Path) -> io::Result<Vec<Entry>> {
    collect(Walk::new(dir).with_inodes())
}

fn collect(walk: Walk) -> io::Result<Vec<Entry>> {
    let mut out = walk
        .map(|r| r.map_err(|e| e.error))
        .collect::<io::Result<Vec<Entry>>>()?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// root/{a, d/b, d/e/c, link-to-d -> d, link-to-a -> a, fifo}
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::write(r.join("a"), b"a").unwrap();
        fs::create_dir_all(r.join("d/e")).unwrap();
        fs::write(r.join("d/b"), b"b").unwrap();
        fs::write(r.join("d/e/c"), b"c").unwrap();
        std::os::unix::fs::symlink(r.join("d"), r.join("link-to-d")).unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("link-to-a")).unwrap();
        let fifo =
            std::ffi::CString::new(r.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        t
    }

    fn names(root: &Path, files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn lists_regular_files_sorted_without_following_links() {
        let t = tree();
        let files = regular_files(t.path()).unwrap();
        assert_eq!(names(t.path(), &files), ["a", "d/b", "d/e/c"]);
    }

    #[test]
    fn with_inodes_gives_each_file_its_own() {
        let t = tree();
        fs::hard_link(t.path().join("a"), t.path().join("d/a2")).unwrap();
        let files = regular_files_with_inodes(t.path()).unwrap();
        let ino = |n: &str| {
            let m = fs::metadata(t.path().join(n)).unwrap();
            (m.dev(), m.ino())
        };
        for f in &files {
            let rel = f.path.strip_prefix(t.path()).unwrap().to_str().unwrap();
            assert_eq!((f.dev, f.ino), ino(rel), "{rel}");
        }
        assert_eq!(
            names(
                t.path(),
                &files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
            ),
            ["a", "d/a2", "d/b", "d/e/c"]
        );
        assert_eq!((files[0].dev, files[0].ino), (files[1].dev, files[1].ino));
    }

    #[test]
    fn a_directory_that_cannot_be_read_is_reported_and_the_walk_goes_on() {
        let t = tree();
        // A directory that vanished after it was listed (works as root too).
        let gone = t.path().join("gone");
        let mut w = Walk::new(t.path());
        w.pending.insert(0, gone.clone());
        let items: Vec<_> = w.collect();
        let errs: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, gone);
        assert_eq!(errs[0].error.kind(), io::ErrorKind::NotFound);
        assert_eq!(items.iter().filter(|i| i.is_ok()).count(), 3);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            // Not readable (root would read it anyway).
            let d = t.path().join("d");
            fs::set_permissions(&d, fs::Permissions::from_mode(0o000)).unwrap();
            let items: Vec<_> = Walk::new(t.path()).collect();
            let strict = regular_files(t.path());
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
            let errs: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].path, d);
            assert_eq!(items.iter().filter(|i| i.is_ok()).count(), 1, "a is listed");
            assert!(strict.is_err(), "regular_files stops at the error");
        }
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(regular_files(&t.path().join("none")).is_err());
    }

    #[test]
    fn a_passed_deadline_stops_the_walk() {
        let t = tree();
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let mut w = Walk::new(t.path()).until(past);
        assert!(w.next().is_none());
        assert!(w.stopped());
        let mut w = Walk::new(t.path()).until(Instant::now() + Duration::from_secs(3600));
        assert_eq!(w.by_ref().count(), 3);
        assert!(!w.stopped());
    }
}
