//! What `envelopefs scan` reports: which CMK versions the files of a volume depend on, read from the file
//! headers alone (the key id and version of each key slot are in the clear), so no passphrase
//! is needed and no data is read: one 1 KiB read per file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::format::header::{HEADER_REGION, KeySlot, candidates};
use crate::keys::KeyId;
use crate::store::volume as vol;
use crate::store::walk::Walk;

/// Files per (key, version), and what could not be counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScanReport {
    /// Regular files examined.
    pub files: u64,
    /// key id → version → number of files with a slot under it.
    pub by_key: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Empty files (no header yet: they depend on no key).
    pub empty: u64,
    /// Files whose two header copies carry different slots (a re-wrap interrupted between its
    /// passes): their older copy still names keys the file may no longer depend on, and they
    /// are counted under both. `envelopefs rewrap` brings the copies together.
    pub stale_copies: u64,
    /// Files whose header could not be read or parsed (name them with `--json`).
    pub unreadable: Vec<PathBuf>,
    /// The volume key (it encrypts xattr values and must unwrap at mount): key id and version.
    pub volume_key: (String, u32),
    /// False when the scan stopped at its time budget.
    pub complete: bool,
}

impl ScanReport {
    /// Files with a slot under `key` (any version), and whether the volume key is under it.
    pub(crate) fn dependents(&self, key: &str) -> (u64, bool) {
        let files = self.by_key.get(key).map_or(0, |v| v.values().sum());
        (files, self.volume_key.0 == key)
    }
}

/// Scans BACKING/data, stopping after `budget` if given (then `complete` is false).
pub(crate) fn scan(
    backing: &Path,
    budget: Option<Duration>,
) -> Result<ScanReport, vol::VolumeError> {
    let cfg = vol::read_config(backing)?;
    let mut report = ScanReport {
        volume_key: (cfg.volume_key.key_id.clone(), cfg.volume_key.version),
        complete: true,
        ..ScanReport::default()
    };
    let mut walk = Walk::new(&backing.join(vol::DATA_DIR));
    if let Some(b) = budget {
        walk = walk.until(Instant::now() + b);
    }
    for found in walk.by_ref() {
        match found {
            Ok(file) => {
                report.files += 1;
                count_file(&file.path, &mut report);
            }
            Err(e) => report.unreadable.push(e.path),
        }
    }
    report.complete = !walk.stopped();
    Ok(report)
}

fn count_file(path: &Path, report: &mut ScanReport) {
    let mut buf = Vec::with_capacity(HEADER_REGION);
    let read =
        std::fs::File::open(path).and_then(|f| f.take(HEADER_REGION as u64).read_to_end(&mut buf));
    match read {
        Ok(0) => report.empty += 1,
        Ok(_) => match candidates(&buf) {
            Ok(c) => {
                // Every slot of both copies: a stale copy could still be used by an older
                // reader (or after damage to the newer one), so the file depends on its keys
                // until the copies agree. Without the data key the MACs cannot be checked,
                // which is fine for counting.
                let mut seen = Vec::new();
                for slot in c.iter().flat_map(|cand| &cand.header.slots) {
                    if let KeySlot::Cmk {
                        key_id, version, ..
                    } = slot
                        && !seen.contains(&(*key_id, *version))
                    {
                        seen.push((*key_id, *version));
                        let id = KeyId(*key_id).to_string();
                        *report
                            .by_key
                            .entry(id)
                            .or_default()
                            .entry(*version)
                            .or_default() += 1;
                    }
                }
                if c.len() == 2 && c[0].header.slots != c[1].header.slots {
                    report.stale_copies += 1;
                }
            }
            Err(_) => report.unreadable.push(path.to_owned()),
        },
        Err(_) => report.unreadable.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_headers_of_a_fresh_volume() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("v");
        let kms = crate::keys::local::LocalKms::in_memory_for_tests();
        vol::prepare(&root).unwrap();
        let cfg = vol::create(
            &root,
            &kms,
            "alias/default",
            4096,
            "keystore.json".into(),
            0,
            true,
        )
        .unwrap();
        std::fs::write(root.join("data/empty"), b"").unwrap();
        std::fs::write(root.join("data/junk"), b"not a header").unwrap();
        let r = scan(&root, None).unwrap();
        assert!(r.complete);
        assert_eq!((r.files, r.empty, r.unreadable.len()), (2, 1, 1));
        assert_eq!(r.dependents(&cfg.volume_key.key_id), (0, true));
    }

    #[test]
    fn counts_real_files_per_key_version() {
        let (fs, tmp, caller) = crate::fs::testing::fresh();
        let root = tmp.path().join("vol");
        for name in ["a", "b", "c"] {
            let (_, fh) = fs
                .create(1, std::ffi::OsStr::new(name), 0o600, libc::O_RDWR, &caller)
                .unwrap();
            if name != "c" {
                fs.write(fh, 0, b"hello", &caller).unwrap();
            }
            fs.release(fh).unwrap();
        }
        // Files get their header (and key) at create, so the never-written "c" counts too.
        let r = scan(&root, None).unwrap();
        assert_eq!((r.files, r.empty, r.unreadable.len()), (3, 0, 0), "{r:?}");
        let key = &r.volume_key.0;
        assert_eq!(r.by_key[key][&1], 3);
        assert_eq!(r.dependents(key), (3, true));
        assert_eq!(r.stale_copies, 0);
    }

    /// A header whose second copy still names another key (an interrupted re-wrap) counts
    /// under both keys.
    #[test]
    fn counts_the_slots_of_both_header_copies() {
        use crate::format::header::{FileHeader, HEADER_COPY_LEN};
        let (fs, tmp, caller) = crate::fs::testing::fresh();
        let root = tmp.path().join("vol");
        let (_, fh) = fs
            .create(1, std::ffi::OsStr::new("a"), 0o600, libc::O_RDWR, &caller)
            .unwrap();
        fs.write(fh, 0, b"hello", &caller).unwrap();
        fs.release(fh).unwrap();
        let path = crate::fs::testing::backing_path(&fs, &tmp, "a");
        let mut bytes = std::fs::read(&path).unwrap();
        let mut h = FileHeader::decode(&bytes[..HEADER_COPY_LEN]).unwrap();
        let other = [0x5a; 16];
        if let KeySlot::Cmk { key_id, .. } = &mut h.slots[0] {
            *key_id = other;
        }
        h.seq = 2;
        // Any key gives a structurally valid copy (scan does not check MACs).
        let copy = h.encode(&[9; 32]).unwrap();
        bytes[HEADER_COPY_LEN..2 * HEADER_COPY_LEN].copy_from_slice(&copy);
        std::fs::write(&path, &bytes).unwrap();
        let r = scan(&root, None).unwrap();
        assert_eq!(r.by_key[&r.volume_key.0][&1], 1, "the old copy's key");
        assert_eq!(
            r.by_key[&KeyId(other).to_string()][&1],
            1,
            "the new copy's key"
        );
        assert_eq!(r.stale_copies, 1);
    }
}
