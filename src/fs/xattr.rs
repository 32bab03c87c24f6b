//! Extended attributes. Values of `user.*` attributes are encrypted under a key derived from
//! the volume key (docs/FORMAT.md §Xattrs):
//!
//! ```text
//! stored value = nonce (12) ‖ AES-256-GCM-SIV ciphertext ‖ tag (16)
//! key          = blake3::derive_key("envelopefs xattr key v1", volume key)
//! AD           = "envelopefs xattr v1" ‖ attribute name bytes
//! ```
//! Names, and values in other namespaces (security.*, trusted.*, system.*), pass through,
//! except the names in [`REFUSED`], which fail with EOPNOTSUPP.
//!
//! Reading or writing a `user.*` value goes through the same key decision as the inode's
//! contents ([`EncFs::xattr_key_decision`]): for a regular file with a header, its data key
//! must unwrap for the caller (key state, key policy, grants; audited like an open); for a
//! directory or a header-less empty file, the volume key must. A disabled key or a denied user
//! gets EACCES, as for the file's data.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};
use envelopefs_format::Aes256GcmSiv;

use super::EncFs;
use super::error::{FsError, FsResult, errno};
use super::inode::ROOT_INO;
use crate::format::FormatError;
use crate::format::block::{BLOCK_OVERHEAD, NONCE_LEN, TAG_LEN};
use crate::format::volume::VolumeConfig;
use crate::keys::{Caller, KeyService, WrappedKey};
use crate::store::sys;

/// Key-derivation context of the xattr key.
pub(crate) const XATTR_KEY_CONTEXT: &str = "envelopefs xattr key v1";
const XATTR_AD_PREFIX: &[u8] = b"envelopefs xattr v1";

/// Encrypts and decrypts `user.*` xattr values.
pub struct XattrCipher {
    aead: Aes256GcmSiv,
    /// The wrapped volume key and its context, to ask the key service again for each caller
    /// ([`XattrCipher::authorize`]); None for a cipher made from a bare key (tests).
    volume_key: Option<(WrappedKey, crate::format::context::EncryptionContext)>,
}

fn ad(name: &OsStr) -> Vec<u8> {
    [XATTR_AD_PREFIX, name.as_bytes()].concat()
}

impl XattrCipher {
    /// Unwraps the volume key named in the config and derives the xattr key, and the name key
    /// when the volume encrypts names.
    pub(crate) fn unwrap(
        keys: &dyn KeyService,
        cfg: &VolumeConfig,
        caller: &Caller,
    ) -> FsResult<(Self, super::names::Names)> {
        let wrapped = crate::store::volume::wrapped_volume_key(cfg)?;
        let ctx = crate::format::context::EncryptionContext::for_volume_key(&cfg.volume_id);
        let vk = keys.decrypt(&wrapped, &ctx, caller)?;
        let mut c = Self::from_volume_key(vk.expose_secret());
        c.volume_key = Some((wrapped, ctx));
        let names = if cfg.encrypted_names() {
            super::names::Names::encrypted(crate::format::names::NameCipher::from_volume_key(
                vk.expose_secret(),
            ))
        } else {
            super::names::Names::plain()
        };
        Ok((c, names))
    }

    /// The key decision for `caller` on the volume key (state, policy, grants), as at mount:
    /// Ok when the key service would unwrap it for them now. The key is dropped at once.
    pub(crate) fn authorize(&self, keys: &dyn KeyService, caller: &Caller) -> FsResult<()> {
        if let Some((wrapped, ctx)) = &self.volume_key {
            keys.decrypt(wrapped, ctx, caller)?;
        }
        Ok(())
    }

    /// Derives the cipher from a volume key.
    pub fn from_volume_key(vk: &[u8; 32]) -> Self {
        let mut k = blake3::derive_key(XATTR_KEY_CONTEXT, vk);
        let aead = Aes256GcmSiv::new_from_slice(&k).expect("BUG: 32-byte key rejected");
        zeroize::Zeroize::zeroize(&mut k);
        XattrCipher {
            aead,
            volume_key: None,
        }
    }

    /// Encrypts one value under a fresh random nonce.
    pub(crate) fn seal(&self, name: &OsStr, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        self.seal_with_nonce(name, value, nonce)
    }

    /// Encrypts one value under `nonce`, which must be fresh and random (test vectors pass a
    /// fixed one).
    pub fn seal_with_nonce(&self, name: &OsStr, value: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + BLOCK_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .aead
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &ad(name),
                (&mut out[NONCE_LEN..]).into(),
            )
            .expect("BUG: xattr encryption failed");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts one value.
    pub fn open(&self, name: &OsStr, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
        if stored.len() < BLOCK_OVERHEAD {
            return Err(FormatError::BlockAuthFailed(0));
        }
        let nonce: [u8; NONCE_LEN] = stored[..NONCE_LEN].try_into().expect("nonce");
        let tag: [u8; TAG_LEN] = stored[stored.len() - TAG_LEN..].try_into().expect("tag");
        let mut out = stored[NONCE_LEN..stored.len() - TAG_LEN].to_vec();
        self.aead
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &ad(name),
                out.as_mut_slice().into(),
                &Tag::from(tag),
            )
            .map_err(|_| FormatError::BlockAuthFailed(0))?;
        Ok(out)
    }
}

fn is_user(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"user.")
}

/// Attribute names every operation refuses with EOPNOTSUPP, as a filesystem mounted without
/// ACL or label support does (docs/SEMANTICS.md §Extended attributes):
///
/// - POSIX ACLs. The kernel does not enforce ACLs on a FUSE mount whose daemon does not take
///   them over (`FUSE_POSIX_ACL`), and passed through to the backing file they changed its
///   group bits to the ACL mask: `setfacl -m u:alice:r` on a 0600 file let the file's *group*
///   read it and still refused alice. Refused, `setfacl` says "Operation not supported" and
///   `cp -a` reports an ACL it cannot keep instead of silently widening access.
/// - `security.selinux`. SELinux labels a FUSE mount by policy (genfscon or `context=`), never
///   from a stored attribute; with SELinux on, the kernel answers this name itself and the
///   request never arrives. Passed through, it would let a user put a label of their choice on
///   the backing file.
///
/// `ls -l`, `cp` and `tar` remember a filesystem that answers EOPNOTSUPP for these names and
/// stop asking, which halves the requests of `ls -l`.
pub(crate) const REFUSED: [&str; 3] = [
    "system.posix_acl_access",
    "system.posix_acl_default",
    "security.selinux",
];

fn refused(name: &OsStr) -> bool {
    REFUSED.iter().any(|r| r.as_bytes() == name.as_bytes())
}

fn refuse(name: &OsStr) -> FsResult<()> {
    if refused(name) {
        return Err(FsError::Unsupported("POSIX ACLs and SELinux labels"));
    }
    Ok(())
}

/// A NUL-separated name list without the [`REFUSED`] names (a backing file may hold some
/// from before they were refused).
fn without_refused(list: Vec<u8>) -> Vec<u8> {
    if !list
        .split(|&b| b == 0)
        .any(|n| refused(OsStr::from_bytes(n)))
    {
        return list;
    }
    let mut out = Vec::with_capacity(list.len());
    for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !refused(OsStr::from_bytes(n)) {
            out.extend_from_slice(n);
            out.push(0);
        }
    }
    out
}

impl EncFs {
    /// The key decision a `user.*` value read or write of `ino` needs (see the module docs):
    /// the file's header must unlock for `caller`, or, for a directory or an empty file
    /// without a header, the volume key must unwrap for them.
    fn xattr_key_decision(
        &self,
        ino: u64,
        fd: &std::os::fd::OwnedFd,
        caller: &Caller,
    ) -> FsResult<()> {
        let st = sys::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size > 0 {
            let file = self.open_backing(ino, libc::O_RDONLY | libc::O_NOATIME)?;
            self.unlock_header(&file, caller)?;
            return Ok(());
        }
        self.xattr.authorize(self.keys.as_ref(), caller)
    }

    /// setxattr. A `user.*` value is sealed after the inode's key decision for `caller`.
    pub(crate) fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: &Caller,
    ) -> FsResult<()> {
        if name.as_bytes() == super::reencrypt::REENCRYPT_XATTR.as_bytes() {
            // A request, not an attribute (`envelopefs reencrypt` on a mounted volume).
            let to_key = std::str::from_utf8(value)
                .map_err(|_| FsError::Invalid("the destination key must be UTF-8"))?;
            let to_key = (!to_key.is_empty()).then_some(to_key);
            self.reencrypt(ino, to_key, caller)?;
            return Ok(());
        }
        refuse(name)?;
        let fd = self.inodes.get(ino)?;
        let stored = self.stored_xattr_name(name)?;
        let r = if is_user(name) {
            self.xattr_key_decision(ino, &fd, caller)?;
            let sealed = self.xattr.seal(name, value);
            sys::setxattr(fd.as_raw_fd(), &stored, &sealed, flags)
        } else {
            sys::setxattr(fd.as_raw_fd(), &stored, value, flags)
        };
        self.inodes.xattrs_changed(ino);
        Ok(r?)
    }

    /// True when `ino` has no extended attributes at all: remembered per inode, so the
    /// getxattr(security.capability / security.selinux / system.posix_acl_access) that the
    /// kernel, `ls -l` and `cp` send for every file cost no system call after the first.
    /// Sound because every xattr change goes through the mount ([`EncFs::setxattr`],
    /// [`EncFs::removexattr`]); chown and writes can only remove attributes.
    fn xattr_free(&self, ino: u64, fd: &std::sync::Arc<std::os::fd::OwnedFd>) -> FsResult<bool> {
        let (known, generation) = self.inodes.xattr_state(ino);
        if known {
            return Ok(true);
        }
        if without_refused(sys::listxattr(fd.as_raw_fd())?).is_empty() {
            self.inodes.mark_xattr_free(ino, generation, fd);
            return Ok(true);
        }
        Ok(false)
    }

    /// Learns [`EncFs::xattr_free`] of a file just created through the mount from its open
    /// descriptor (one flistxattr, no /proc walk), so the getxattr(security.capability) the
    /// kernel sends before its first write and again at chown cost no system call. Best effort:
    /// on any error the first getxattr lists the attributes as usual.
    pub(super) fn learn_new_file_xattrs(&self, ino: u64, file: &std::fs::File) {
        let (_, generation) = self.inodes.xattr_state(ino);
        if let Ok(names) = sys::flistxattr(file)
            && without_refused(names).is_empty()
            && let Ok(fd) = self.inodes.get(ino)
        {
            self.inodes.mark_xattr_free(ino, generation, &fd);
        }
    }

    /// getxattr: the whole value (the adapter handles the size protocol). A `user.*` value is
    /// opened only after the inode's key decision for `caller`.
    pub(crate) fn getxattr(&self, ino: u64, name: &OsStr, caller: &Caller) -> FsResult<Vec<u8>> {
        refuse(name)?;
        let fd = self.inodes.get(ino)?;
        if ino != ROOT_INO && self.xattr_free(ino, &fd)? {
            return Err(errno(libc::ENODATA));
        }
        let raw = fd.as_raw_fd();
        let stored = self.stored_xattr_name(name)?;
        let value = loop {
            let size = sys::getxattr(raw, &stored, &mut [])?;
            let mut buf = vec![0u8; size];
            match sys::getxattr(raw, &stored, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break buf;
                }
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if is_user(name) {
            self.xattr_key_decision(ino, &fd, caller)?;
            Ok(self.xattr.open(name, &value).map_err(|_| {
                log::warn!("inode {ino}: xattr {name:?} failed authentication");
                FormatError::BlockAuthFailed(0)
            })?)
        } else {
            Ok(value)
        }
    }

    /// listxattr: NUL-separated names.
    pub(crate) fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let fd = self.inodes.get(ino)?;
        if ino != ROOT_INO && self.inodes.xattr_state(ino).0 {
            return Ok(Vec::new());
        }
        let names = without_refused(sys::listxattr(fd.as_raw_fd())?);
        Ok(self.listed_xattr_names(ino, names))
    }

    /// removexattr.
    pub(crate) fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        refuse(name)?;
        let fd = self.inodes.get(ino)?;
        let stored = self.stored_xattr_name(name)?;
        sys::removexattr(fd.as_raw_fd(), &stored).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENODATA) {
                errno(libc::ENODATA)
            } else {
                e.into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_is_bound_to_its_name() {
        let c = XattrCipher::from_volume_key(&[3; 32]);
        let s = c.seal(OsStr::new("user.a"), b"secret");
        assert_eq!(c.open(OsStr::new("user.a"), &s).unwrap(), b"secret");
        assert!(c.open(OsStr::new("user.b"), &s).is_err());
    }

    #[test]
    fn refused_names_are_dropped_from_lists() {
        let list = b"user.a\0system.posix_acl_access\0security.selinux\0trusted.b\0".to_vec();
        assert_eq!(without_refused(list), b"user.a\0trusted.b\0");
        let plain = b"user.a\0security.capability\0".to_vec();
        assert_eq!(without_refused(plain.clone()), plain);
        assert!(without_refused(b"system.posix_acl_default\0".to_vec()).is_empty());
        assert!(refused(OsStr::new("security.selinux")));
        assert!(!refused(OsStr::new("security.selinux2")));
        assert!(!refused(OsStr::new("security.capability")));
    }

    #[test]
    fn a_file_created_through_the_mount_is_known_to_have_no_xattrs() {
        let (fs, _tmp, caller, ino, _fh) = crate::fs::testing::with_file();
        assert!(
            fs.inodes.xattr_state(ino).0,
            "learned at create, without a listing"
        );
        assert!(matches!(
            fs.getxattr(ino, OsStr::new("security.capability"), &caller),
            Err(FsError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA)
        ));
        fs.setxattr(ino, OsStr::new("user.k"), b"v", 0, &caller)
            .unwrap();
        assert!(!fs.inodes.xattr_state(ino).0);
        assert_eq!(
            fs.getxattr(ino, OsStr::new("user.k"), &caller).unwrap(),
            b"v"
        );
    }

    /// Finding 2: `user.*` values of a file, of an empty header-less file and of a directory
    /// are neither read nor written while the key that guards them is disabled.
    #[test]
    fn user_values_follow_the_key_decision() {
        use crate::fs::inode::ROOT_INO;
        let (fs, _tmp, caller, kms) = crate::fs::testing::fresh_with_kms();
        let (f, fh) = fs
            .create(ROOT_INO, OsStr::new("f"), 0o600, libc::O_RDWR, &caller)
            .unwrap();
        fs.write(fh, 0, b"data", &caller).unwrap();
        fs.release(fh).unwrap();
        let d = fs.mkdir(ROOT_INO, OsStr::new("d"), 0o700, &caller).unwrap();
        let name = OsStr::new("user.k");
        for ino in [f.ino, d.ino] {
            fs.setxattr(ino, name, b"v", 0, &caller).unwrap();
        }
        kms.disable_key("alias/default", &Caller::current())
            .unwrap();
        for ino in [f.ino, d.ino] {
            assert_eq!(
                fs.getxattr(ino, name, &caller).map_err(|e| e.errno()),
                Err(libc::EACCES),
                "read of inode {ino}"
            );
            assert_eq!(
                fs.setxattr(ino, name, b"w", 0, &caller)
                    .map_err(|e| e.errno()),
                Err(libc::EACCES),
                "write of inode {ino}"
            );
            // Other namespaces are not encrypted and need no key.
            fs.setxattr(ino, OsStr::new("trusted.t"), b"x", 0, &caller)
                .unwrap();
        }
        kms.enable_key("alias/default", &Caller::current()).unwrap();
        for ino in [f.ino, d.ino] {
            assert_eq!(fs.getxattr(ino, name, &caller).unwrap(), b"v");
        }
    }
}
