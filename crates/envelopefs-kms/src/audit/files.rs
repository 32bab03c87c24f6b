//! The files of a trail and the lines in them: file names and listing, reading lines
//! forwards and backwards, splitting a line from its hash, the chain hash, and the anchor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{ANCHOR_FILE, ANCHOR_KEY_CONTEXT, AuditRecord, HASH_PREFIX, HASH_SUFFIX_LEN};
use envelopefs_format::context::hex;

/// `audit-000042.jsonl`.
pub(crate) fn file_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

fn parse_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|&n| n >= 1)
}

/// The audit files in `dir`, oldest first.
pub(super) fn list_files(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_file_name) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

pub(super) fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Decodes the 64 hex digits of a chain hash (the workspace's one hex decoder).
pub(super) fn unhex32(s: &str) -> Option<[u8; 32]> {
    envelopefs_format::context::unhex_array(s)
}

/// Splits a line (without its `\n`) into the hashed text B and the hash it claims.
pub(super) fn split_line(line: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    if &line[cut..cut + HASH_PREFIX.len()] != HASH_PREFIX {
        return None;
    }
    let hash = unhex32(std::str::from_utf8(&line[cut + HASH_PREFIX.len()..line.len() - 2]).ok()?)?;
    let mut body = Vec::with_capacity(cut + 1);
    body.extend_from_slice(&line[..cut]);
    body.push(b'}');
    Some((body, hash))
}

pub(super) fn chain_hash(key: &[u8; 32], prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(prev);
    h.update(body);
    *h.finalize().as_bytes()
}

/// The anchor file's contents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct Anchor {
    pub(super) file: u32,
    pub(super) seq: u64,
    pub(super) prev: String,
    mac: String,
}

impl Anchor {
    fn mac(key: &[u8; 32], file: u32, seq: u64, prev: &str) -> String {
        let k = Zeroizing::new(blake3::derive_key(ANCHOR_KEY_CONTEXT, key));
        let msg = format!("file={file};seq={seq};prev={prev}");
        hex(blake3::keyed_hash(&k, msg.as_bytes()).as_bytes())
    }

    pub(super) fn new(key: &[u8; 32], file: u32, seq: u64, prev: &[u8; 32]) -> Self {
        let prev = hex(prev);
        Anchor {
            file,
            seq,
            mac: Self::mac(key, file, seq, &prev),
            prev,
        }
    }

    pub(super) fn mac_ok(&self, key: &[u8; 32]) -> bool {
        let want = Self::mac(key, self.file, self.seq, &self.prev);
        // Not secret-dependent timing worth guarding: the MAC is stored in the clear beside it.
        want == self.mac
    }

    pub(super) fn read(dir: &Path) -> io::Result<Option<Anchor>> {
        let path = dir.join(ANCHOR_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                invalid_data(format!("{} is not an audit anchor: {e}", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads complete lines (without `\n`) of one file, with 1-based numbers. Returns whether the
/// file ended in an incomplete line (which is not passed to `f`).
pub(super) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    let mut r = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut buf = Vec::with_capacity(1024);
    let mut n = 0u64;
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Ok(false);
        }
        if buf.last() != Some(&b'\n') {
            return Ok(true);
        }
        n += 1;
        buf.pop();
        if !f(n, &buf)? {
            return Ok(false);
        }
    }
}

/// The last complete line of `file` and the length up to and including its `\n` (0 and
/// `None` when the file has no complete line). Reads backwards from the end in chunks.
pub(super) fn last_line(file: &mut File) -> io::Result<(Option<Vec<u8>>, u64)> {
    const CHUNK: u64 = 16 * 1024;
    let len = file.metadata()?.len();
    let mut tail: Vec<u8> = Vec::new(); // the file's bytes [pos, len)
    let mut pos = len;
    let mut end: Option<u64> = None; // file offset of the last '\n'
    loop {
        if end.is_none()
            && let Some(i) = tail.iter().rposition(|&b| b == b'\n')
        {
            end = Some(pos + i as u64);
        }
        match end {
            Some(e) => {
                let rel = (e - pos) as usize;
                if let Some(i) = tail[..rel].iter().rposition(|&b| b == b'\n') {
                    return Ok((Some(tail[i + 1..rel].to_vec()), e + 1));
                }
                if pos == 0 {
                    return Ok((Some(tail[..rel].to_vec()), e + 1));
                }
            }
            None if pos == 0 => return Ok((None, 0)),
            None => {}
        }
        let step = CHUNK.min(pos);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

/// The first complete line of `path`, if any.
pub(super) fn first_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut out = None;
    for_each_line(path, |_, line| {
        out = Some(line.to_vec());
        Ok(false)
    })?;
    Ok(out)
}

/// Parses a line into a record, or says why not.
pub(super) fn parse_record(line: &[u8]) -> Result<AuditRecord, String> {
    serde_json::from_slice(line).map_err(|e| format!("not an audit record: {e}"))
}

pub(super) fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}
