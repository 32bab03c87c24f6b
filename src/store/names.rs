//! Paths between the plaintext view and the backing tree without a mount, for the tools
//! (`envelopefs path`, the tests, backup tooling): each directory's id is read from its
//! `.dirid` symlink and each component encrypted or decrypted (docs/FORMAT.md §10). On a
//! volume without `encrypted-names` both directions are the identity.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use crate::format::FormatError;
use crate::format::names::{DIRID_NAME, DirId, NameCipher, parse_dirid};
use crate::format::volume::VolumeConfig;
use crate::keys::{Caller, KeyError, KeyService};

/// Why a path could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The volume key did not unwrap.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A name or directory id failed to verify, or a component is not a valid name.
    #[error("{path}: {source}")]
    Format {
        /// The backing path concerned.
        path: PathBuf,
        /// What failed.
        source: FormatError,
    },
    /// A directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The backing path concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The path is not relative and free of `..`.
    #[error("{0}: give a path inside the volume, relative to its root, without `..`")]
    NotRelative(PathBuf),
}

/// The name cipher of a volume (None: names are not encrypted), from its volume key.
pub fn cipher_of(
    cfg: &VolumeConfig,
    keys: &dyn KeyService,
    caller: &Caller,
) -> Result<Option<NameCipher>, NamesError> {
    if !cfg.encrypted_names() {
        return Ok(None);
    }
    let wrapped = super::volume::wrapped_volume_key(cfg).map_err(|source| NamesError::Format {
        path: PathBuf::from(super::volume::CONFIG_NAME),
        source,
    })?;
    let ctx = crate::format::context::EncryptionContext::for_volume_key(&cfg.volume_id);
    let vk = keys.decrypt(&wrapped, &ctx, caller)?;
    Ok(Some(NameCipher::from_volume_key(vk.expose_secret())))
}

/// The id of the backing directory `dir`.
pub fn read_dirid(dir: &Path) -> Result<DirId, NamesError> {
    let p = dir.join(DIRID_NAME);
    let t = std::fs::read_link(&p).map_err(|source| NamesError::Io {
        path: p.clone(),
        source,
    })?;
    parse_dirid(t.as_os_str().as_bytes()).map_err(|source| NamesError::Format { path: p, source })
}

fn normal_components(rel: &Path) -> Result<Vec<&OsStr>, NamesError> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(NamesError::NotRelative(rel.to_owned())),
        }
    }
    Ok(out)
}

/// The backing path (relative to `data`) of the plaintext path `rel`. Every component but the
/// last must be an existing directory; the last need not exist.
pub fn encrypt_path(
    data: &Path,
    cipher: Option<&NameCipher>,
    rel: &Path,
) -> Result<PathBuf, NamesError> {
    let comps = normal_components(rel)?;
    let Some(cipher) = cipher else {
        return Ok(comps.iter().collect());
    };
    let mut out = PathBuf::new();
    for c in comps {
        let dir = data.join(&out);
        let id = read_dirid(&dir)?;
        let b = cipher
            .backing_name(&id, c.as_bytes())
            .map_err(|source| NamesError::Format {
                path: dir.join(c),
                source,
            })?;
        out.push(b.entry());
    }
    Ok(out)
}

/// The plaintext name of the backing entry `entry` of the backing directory `dir` (whose id
/// is `id`); None for envelopefs's own metadata.
pub fn decrypt_entry(
    cipher: &NameCipher,
    dir: &Path,
    id: &DirId,
    entry: &OsStr,
) -> Result<Option<OsString>, NamesError> {
    cipher
        .decode_entry(id, entry.as_bytes(), |sidecar| {
            std::fs::read_link(dir.join(sidecar))
                .ok()
                .map(|t| t.into_os_string().into_vec())
        })
        .map(|p| p.map(OsString::from_vec))
        .map_err(|source| NamesError::Format {
            path: dir.join(entry),
            source,
        })
}

/// The plaintext path of the backing path `rel` (relative to `data`).
pub fn decrypt_path(
    data: &Path,
    cipher: Option<&NameCipher>,
    rel: &Path,
) -> Result<PathBuf, NamesError> {
    let comps = normal_components(rel)?;
    let Some(cipher) = cipher else {
        return Ok(comps.iter().collect());
    };
    let (mut backing, mut out) = (PathBuf::new(), PathBuf::new());
    for c in comps {
        let dir = data.join(&backing);
        let id = read_dirid(&dir)?;
        match decrypt_entry(cipher, &dir, &id, c)? {
            Some(p) => out.push(p),
            None => {
                return Err(NamesError::Format {
                    path: dir.join(c),
                    source: FormatError::BadName,
                });
            }
        }
        backing.push(c);
    }
    Ok(out)
}
