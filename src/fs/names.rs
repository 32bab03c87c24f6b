//! Names in the backing tree: where a plaintext name lives in its backing directory, and the
//! other way round for listings. On a volume with `encrypted-names` (docs/FORMAT.md §10) every
//! name is encrypted under the name key and its directory's id; on other volumes names pass
//! through unchanged and every function here is the identity.
//!
//! Crash safety without a journal: every piece of name metadata is a symlink, made and
//! removed by one atomic system call, and written before anything depends on it:
//! - a directory's id is its `.dirid` symlink, made right after the directory (`mkdir`). A
//!   crash in between leaves an empty directory without one; it gets a fresh id when first
//!   used (an id can be replaced only while no name depends on it);
//! - a long name's sidecar `.name.<hash>` is made before the `long.<hash>` entry (create,
//!   mkdir, link, rename) and removed after it. Its target is a function of the name, so an
//!   existing sidecar is already right, and a crash leaves at worst an orphan sidecar, which
//!   nothing lists and `rmdir` clears.
//!
//! The directory id of every directory inode the kernel knows is cached in the inode table,
//! so a lookup encrypts one name and never reads or decrypts the directory.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::EncFs;
use super::error::{FsResult, errno};
use crate::format::FormatError;
use crate::format::names::{
    BackingKind, BackingName, DIRID_NAME, DirId, NameCipher, classify, dirid_target, parse_dirid,
};
use crate::store::sys;

/// The naming scheme of a volume.
pub(crate) struct Names {
    cipher: Option<NameCipher>,
}

impl Names {
    /// Names as they are (volumes without `encrypted-names`).
    pub(crate) fn plain() -> Self {
        Names { cipher: None }
    }

    /// Encrypted names under `cipher`.
    pub(crate) fn encrypted(cipher: NameCipher) -> Self {
        Names {
            cipher: Some(cipher),
        }
    }

    /// Whether names are encrypted.
    pub(crate) fn encrypted_names(&self) -> bool {
        self.cipher.is_some()
    }
}

/// Where a plaintext name lives in its backing directory.
#[derive(Debug)]
pub(crate) struct Placed {
    /// The backing entry.
    pub(crate) entry: OsString,
    /// A long name's sidecar: its name and its target.
    sidecar: Option<(OsString, OsString)>,
}

/// One entry of a directory snapshot: its plaintext name and its backing name.
#[derive(Debug)]
pub(crate) struct Listed {
    /// Backing inode number.
    pub(crate) ino: u64,
    /// `d_type`.
    pub(crate) kind: u8,
    /// The name the kernel sees.
    pub(crate) name: OsString,
    /// The backing name, when it differs.
    backing: Option<OsString>,
}

impl Listed {
    /// The backing entry name.
    pub(crate) fn backing(&self) -> &OsStr {
        self.backing.as_deref().unwrap_or(&self.name)
    }
}

/// A fresh random directory id.
fn new_dirid() -> DirId {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the OS random number generator failed");
    id
}

/// Gives the (new, empty) directory `dir` the id `id`: its `.dirid` symlink.
pub(crate) fn write_dirid(dir: RawFd, id: &DirId) -> std::io::Result<()> {
    sys::symlinkat(OsStr::new(&dirid_target(id)), dir, OsStr::new(DIRID_NAME))
}

/// Whether a backing entry is one a user made (anything but envelopefs's own metadata), on a
/// volume with encrypted names.
fn is_user_entry(e: &sys::DirEntry) -> bool {
    classify(e.name.as_bytes()) != Some(BackingKind::Meta)
}

/// Whether a backing directory holds any entry a user made.
fn has_user_entries(dir: RawFd) -> FsResult<bool> {
    Ok(sys::list_dir(dir)?.iter().any(is_user_entry))
}

impl EncFs {
    /// Where `name` lives in the directory `parent`.
    pub(crate) fn place(&self, parent: u64, name: &OsStr) -> FsResult<Placed> {
        let Some(cipher) = &self.names.cipher else {
            return Ok(Placed {
                entry: name.to_owned(),
                sidecar: None,
            });
        };
        let dirid = self.dirid(parent)?;
        Ok(match cipher.backing_name(&dirid, name.as_bytes())? {
            BackingName::Short(s) => Placed {
                entry: s.into(),
                sidecar: None,
            },
            BackingName::Long {
                entry,
                sidecar,
                encoded,
            } => Placed {
                entry: entry.into(),
                sidecar: Some((sidecar.into(), encoded.into())),
            },
        })
    }

    /// The id of the directory `ino` (cached in the inode table).
    pub(crate) fn dirid(&self, ino: u64) -> FsResult<DirId> {
        if let Some(id) = self.inodes.dirid(ino) {
            return Ok(id);
        }
        let fd = self.inodes.get(ino)?;
        let id = self.read_dirid(ino, fd.as_raw_fd())?;
        self.inodes.set_dirid(ino, id);
        Ok(id)
    }

    /// Reads a directory's id; gives an empty directory without one a fresh id (the state a
    /// crash between mkdir and its `.dirid` leaves).
    fn read_dirid(&self, ino: u64, dir: RawFd) -> FsResult<DirId> {
        loop {
            match sys::readlinkat(dir, OsStr::new(DIRID_NAME)) {
                Ok(t) => {
                    return parse_dirid(&t).map_err(|e| {
                        log::error!("directory inode {ino}: its .dirid is malformed; its names cannot be read");
                        e.into()
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(errno(libc::ENOTDIR));
                }
                Err(e) => return Err(e.into()),
            }
            if has_user_entries(dir)? {
                log::error!(
                    "directory inode {ino}: it has entries but no .dirid (deleted or not restored \
                     from a backup?); its names cannot be read"
                );
                return Err(FormatError::BadDirId.into());
            }
            match write_dirid(dir, &new_dirid()) {
                Ok(()) => log::info!(
                    "directory inode {ino}: gave the empty directory a new id (it had none: a \
                     crash between mkdir and its id)"
                ),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Gives a directory just made through the mount its id (None: names are not encrypted).
    pub(crate) fn new_directory(&self, dir: RawFd) -> FsResult<Option<DirId>> {
        if self.names.cipher.is_none() {
            return Ok(None);
        }
        let id = new_dirid();
        write_dirid(dir, &id)?;
        Ok(Some(id))
    }

    /// Makes a long name's sidecar, before the entry that needs it.
    pub(crate) fn before_create(&self, pdir: RawFd, placed: &Placed) -> FsResult<()> {
        let Some((sidecar, target)) = &placed.sidecar else {
            return Ok(());
        };
        match sys::symlinkat(target, pdir, sidecar) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if sys::readlinkat(pdir, sidecar).ok().as_deref() == Some(target.as_bytes()) {
                    return Ok(());
                }
                log::warn!("replacing a damaged long-name sidecar {sidecar:?}");
                sys::unlinkat(pdir, sidecar, 0)?;
                Ok(sys::symlinkat(target, pdir, sidecar)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a long name's sidecar once its entry is gone (after unlink, rmdir, a rename
    /// away, or a create that failed). Best effort: an orphan sidecar is harmless.
    pub(crate) fn after_remove(&self, pdir: RawFd, placed: &Placed) {
        let Some((sidecar, _)) = &placed.sidecar else {
            return;
        };
        if matches!(sys::lstatat(pdir, &placed.entry), Err(e) if e.raw_os_error() == Some(libc::ENOENT))
            && let Err(e) = sys::unlinkat(pdir, sidecar, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            log::debug!("could not remove the sidecar {sidecar:?}: {e}");
        }
    }

    /// Empties the backing directory `placed` (in `pdir`) of envelopefs's metadata before it
    /// is removed: ENOTEMPTY if it holds anything a user made. Returns its id, to put back if
    /// the removal fails ([`EncFs::restore_dirid`]).
    pub(crate) fn prepare_rmdir(&self, pdir: RawFd, placed: &Placed) -> FsResult<Option<DirId>> {
        if self.names.cipher.is_none() {
            return Ok(None);
        }
        let dir = sys::openat(
            pdir,
            &placed.entry,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
        let entries = sys::list_dir(dir.as_raw_fd())?;
        if entries.iter().any(is_user_entry) {
            return Err(errno(libc::ENOTEMPTY));
        }
        let id = sys::readlinkat(dir.as_raw_fd(), OsStr::new(DIRID_NAME))
            .ok()
            .and_then(|t| parse_dirid(&t).ok());
        // rmdir needs write access to the parent only; an unprivileged daemon also needs it on
        // the directory itself to remove the metadata, which goes with the directory anyway.
        if sys::geteuid() != 0 {
            let st = sys::fstat(dir.as_raw_fd())?;
            if st.st_mode & 0o300 != 0o300 {
                sys::chmod_fd(dir.as_raw_fd(), (st.st_mode | 0o300) & 0o7777)?;
            }
        }
        // Orphans first, the id last: a crash in between leaves a directory with its id.
        let mut order: Vec<_> = entries.into_iter().map(|e| e.name).collect();
        order.sort_by_key(|n| n == DIRID_NAME);
        for name in order {
            if let Err(e) = sys::unlinkat(dir.as_raw_fd(), &name, 0)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                if let Some(id) = id {
                    self.restore_dirid(dir.as_raw_fd(), &id);
                }
                return Err(e.into());
            }
        }
        Ok(id)
    }

    /// Puts a directory's id back after a failed rmdir.
    pub(crate) fn restore_dirid(&self, dir: RawFd, id: &DirId) {
        if let Err(e) = write_dirid(dir, id)
            && e.raw_os_error() != Some(libc::EEXIST)
        {
            log::error!("could not put back a directory's .dirid after a failed rmdir: {e}");
        }
    }

    /// Lists the directory `ino` (O_PATH fd `dir`) with plaintext names. Entries whose name
    /// does not decrypt (tampered, or moved in from another directory) are left out, each
    /// with a log line; envelopefs's own metadata is never listed.
    pub(crate) fn list_named(&self, ino: u64, dir: RawFd) -> FsResult<Vec<Listed>> {
        let raw = sys::list_dir(dir)?;
        let Some(cipher) = &self.names.cipher else {
            return Ok(raw
                .into_iter()
                .map(|e| Listed {
                    ino: e.ino,
                    kind: e.kind,
                    name: e.name,
                    backing: None,
                })
                .collect());
        };
        let dirid = self.dirid(ino)?;
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            let plain = cipher.decode_entry(&dirid, e.name.as_bytes(), |sidecar| {
                sys::readlinkat(dir, OsStr::new(sidecar)).ok()
            });
            match plain {
                Ok(None) => {}
                Ok(Some(p)) => out.push(Listed {
                    ino: e.ino,
                    kind: e.kind,
                    name: OsString::from_vec(p),
                    backing: Some(e.name),
                }),
                Err(err) => log::warn!(
                    "directory inode {ino}: hiding backing entry {:?}: {err}",
                    e.name
                ),
            }
        }
        Ok(out)
    }

    /// The backing target of a new symlink.
    pub(crate) fn store_target(&self, target: &OsStr) -> FsResult<OsString> {
        let Some(cipher) = &self.names.cipher else {
            return Ok(target.to_owned());
        };
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        Ok(cipher.encode_target(target.as_bytes(), nonce)?.into())
    }

    /// The plaintext target of the symlink `ino`, from its backing target.
    pub(crate) fn load_target(&self, ino: u64, stored: Vec<u8>) -> FsResult<Vec<u8>> {
        let Some(cipher) = &self.names.cipher else {
            return Ok(stored);
        };
        cipher.decode_target(&stored).map_err(|e| {
            log::warn!("symlink inode {ino}: its target failed authentication");
            e.into()
        })
    }

    /// The stored name of an xattr name (`user.*` names are encrypted).
    pub(crate) fn stored_xattr_name<'a>(
        &self,
        name: &'a OsStr,
    ) -> FsResult<std::borrow::Cow<'a, OsStr>> {
        let Some(cipher) = &self.names.cipher else {
            return Ok(name.into());
        };
        match cipher.encode_xattr_name(name.as_bytes()) {
            Ok(Some(stored)) => Ok(OsString::from_vec(stored).into()),
            Ok(None) => Ok(name.into()),
            // The kernel's answer to an attribute name it cannot store.
            Err(FormatError::NameTooLong) => Err(errno(libc::ERANGE)),
            Err(e) => Err(e.into()),
        }
    }

    /// A stored NUL-separated xattr name list with `user.*` names decrypted; names that do not
    /// decrypt are left out with a log line.
    pub(crate) fn listed_xattr_names(&self, ino: u64, list: Vec<u8>) -> Vec<u8> {
        let Some(cipher) = &self.names.cipher else {
            return list;
        };
        let mut out = Vec::with_capacity(list.len());
        for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match cipher.decode_xattr_name(n) {
                Ok(Some(plain)) => out.extend_from_slice(&plain),
                Ok(None) => out.extend_from_slice(n),
                Err(e) => {
                    log::warn!("inode {ino}: hiding xattr {:?}: {e}", OsStr::from_bytes(n));
                    continue;
                }
            }
            out.push(0);
        }
        out
    }
}
