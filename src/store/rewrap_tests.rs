//! Unit tests of `rewrap.rs` (a file of their own, the project's convention for large modules).
use super::*;
use crate::format::header::{FileHeader, HEADER_COPY_LEN};
use crate::keys::local::LocalKms;
use crate::store::file_header::Unlocked;
use std::os::unix::fs::FileExt;

/// A backing `data` dir (re-wrap keeps its lock file beside it) holding one wrapped file
/// `f`, and the key service that wrapped it.
struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    kms: LocalKms,
    file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let kms = LocalKms::in_memory_for_tests();
        let file = make_file(&data, "f", &kms);
        Fixture {
            _tmp: tmp,
            data,
            kms,
            file,
        }
    }

    fn rewrap(&self, opts: &RewrapOptions) -> RewrapSummary {
        rewrap_tree(
            &self.data,
            &self.kms,
            "vol",
            4096,
            opts,
            &Caller::current(),
            |_, _| {},
        )
        .unwrap()
    }

    /// The file's header, unlocked.
    fn unlock(&self) -> Unlocked {
        let f = File::open(&self.file).unwrap();
        let region = file_header::read_region(&f).unwrap();
        file_header::unlock(
            &self.kms,
            &file_header::NoCustomerKeys,
            "vol",
            4096,
            &region,
            &Caller::current(),
        )
        .unwrap()
    }

    /// The key-material version of the file's slot, and the header's sequence number.
    fn slot_version(&self) -> (u32, u64) {
        let u = self.unlock();
        (
            file_header::wrapped_slots(&u.header)
                .next()
                .unwrap()
                .1
                .version,
            u.header.seq,
        )
    }
}

fn make_file(dir: &Path, name: &str, kms: &LocalKms) -> PathBuf {
    let file_id = [7u8; 16];
    let ctx = EncryptionContext::for_file("vol", &file_id);
    let (dek, w) = kms
        .generate_data_key("alias/default", &ctx, &Caller::current())
        .unwrap();
    let h = FileHeader {
        sealed_holes: false,
        block_size: 4096,
        file_id,
        seq: 1,
        slots: vec![file_header::cmk_slot(w)],
    };
    let p = dir.join(name);
    let f = File::create_new(&p).unwrap();
    file_header::write_new(&f, &h, &dek, &[]).unwrap();
    p
}

#[test]
fn rewrap_moves_to_newest_version_once_and_keeps_the_key() {
    let fx = Fixture::new();
    let before = fx.unlock().dek.expose_secret().to_vec();
    fx.kms.rotate("alias/default", &Caller::current()).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&fx.file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let opts = RewrapOptions::default();
    let s = fx.rewrap(&opts);
    assert_eq!((s.files, s.rewrapped, s.current), (1, 1, 0));
    assert_eq!(fx.slot_version(), (2, 2));
    assert_eq!(
        std::fs::metadata(&fx.file).unwrap().modified().unwrap(),
        old,
        "mtime kept"
    );
    let after = fx.unlock().dek.expose_secret().to_vec();
    assert_eq!(before, after, "the data key must not change");
    let again = fx.rewrap(&opts);
    assert_eq!((again.rewrapped, again.current), (0, 1), "idempotent");
}

/// Both header copies, decoded (structurally; no MAC check).
fn copies(path: &Path) -> Vec<FileHeader> {
    let f = File::open(path).unwrap();
    let region = file_header::read_region(&f).unwrap();
    (0..2)
        .map(|c| {
            FileHeader::decode(&region[c * HEADER_COPY_LEN..(c + 1) * HEADER_COPY_LEN]).unwrap()
        })
        .collect()
}

/// The first half of a re-wrap of `fx.file` alone, as a run interrupted between its
/// passes leaves it.
fn first_half(fx: &Fixture, opts: &RewrapOptions) {
    let (outcome, conv) = rewrap_file(
        &fx.file,
        &fx.kms,
        "vol",
        4096,
        opts,
        &mut HashMap::new(),
        &Caller::current(),
    )
    .unwrap();
    assert_eq!(outcome, FileOutcome::Rewrapped);
    assert!(conv.is_some());
}

#[test]
fn torn_new_copy_leaves_the_old_header_usable() {
    let fx = Fixture::new();
    fx.kms.rotate("alias/default", &Caller::current()).unwrap();
    first_half(&fx, &RewrapOptions::default());
    // The rewrite went to copy B (tie → B). Tear it as a crash mid-write would.
    let f = OpenOptions::new().write(true).open(&fx.file).unwrap();
    f.write_all_at(&[0xAA; 100], (HEADER_COPY_LEN + 50) as u64)
        .unwrap();
    assert_eq!(
        fx.slot_version(),
        (1, 1),
        "falls back to the intact old copy"
    );
}

#[test]
fn a_finished_rewrap_leaves_no_slot_of_the_old_key_in_either_copy() {
    let fx = Fixture::new();
    let old = fx.unlock();
    let old_key = file_header::wrapped_slots(&old.header)
        .next()
        .unwrap()
        .1
        .key_id;
    let other = fx.kms.create_key("other", &Caller::current()).unwrap();
    fx.rewrap(&RewrapOptions {
        to_key: Some(other.key_id.clone()),
        ..Default::default()
    });
    let copies = copies(&fx.file);
    assert_eq!(copies[0], copies[1], "both copies carry the new header");
    for h in &copies {
        for (_, w) in file_header::wrapped_slots(h) {
            assert_ne!(w.key_id, old_key, "a slot of the old key survived");
            assert_eq!(w.key_id.to_string(), other.key_id);
        }
    }
    // And so disabling the new key cuts access: nothing falls back to the old key.
    fx.kms
        .disable_key(&other.key_id, &Caller::current())
        .unwrap();
    let f = File::open(&fx.file).unwrap();
    let region = file_header::read_region(&f).unwrap();
    assert!(matches!(
        file_header::unlock(
            &fx.kms,
            &file_header::NoCustomerKeys,
            "vol",
            4096,
            &region,
            &Caller::current()
        ),
        Err(HeaderError::Key(crate::keys::KeyError::Disabled { .. }))
    ));
}

#[test]
fn a_refusal_on_the_newest_copy_is_final_even_while_a_stale_copy_remains() {
    let fx = Fixture::new();
    let other = fx.kms.create_key("other", &Caller::current()).unwrap();
    first_half(
        &fx,
        &RewrapOptions {
            to_key: Some(other.key_id.clone()),
            ..Default::default()
        },
    );
    let copies = copies(&fx.file);
    assert_ne!(copies[0], copies[1], "interrupted between the passes");
    fx.kms
        .disable_key(&other.key_id, &Caller::current())
        .unwrap();
    let f = File::open(&fx.file).unwrap();
    let region = file_header::read_region(&f).unwrap();
    assert!(
        matches!(
            file_header::unlock(
                &fx.kms,
                &file_header::NoCustomerKeys,
                "vol",
                4096,
                &region,
                &Caller::current()
            ),
            Err(HeaderError::Key(crate::keys::KeyError::Disabled { .. }))
        ),
        "the stale copy under alias/default must not be used"
    );
}

#[test]
fn an_interrupted_run_is_converged_by_the_next_one() {
    let fx = Fixture::new();
    fx.kms.rotate("alias/default", &Caller::current()).unwrap();
    first_half(&fx, &RewrapOptions::default());
    assert_ne!(copies(&fx.file)[0], copies(&fx.file)[1]);
    let s = fx.rewrap(&RewrapOptions::default());
    assert_eq!((s.rewrapped, s.current, s.converged), (0, 1, 1));
    let c = copies(&fx.file);
    assert_eq!(c[0], c[1]);
    assert_eq!(c[0].seq, 2);
    let again = fx.rewrap(&RewrapOptions::default());
    assert_eq!((again.current, again.converged), (1, 0), "idempotent");
}

#[test]
fn dry_run_writes_nothing_and_empty_files_are_skipped() {
    let fx = Fixture::new();
    File::create_new(fx.data.join("empty")).unwrap();
    fx.kms.rotate("alias/default", &Caller::current()).unwrap();
    let before = std::fs::read(&fx.file).unwrap();
    let s = fx.rewrap(&RewrapOptions {
        dry_run: true,
        ..Default::default()
    });
    assert_eq!((s.rewrapped, s.empty), (1, 1));
    assert_eq!(std::fs::read(&fx.file).unwrap(), before);
}

#[test]
fn to_key_moves_files_to_another_cmk() {
    let fx = Fixture::new();
    let other = fx.kms.create_key("other", &Caller::current()).unwrap();
    let s = fx.rewrap(&RewrapOptions {
        to_key: Some(other.key_id.clone()),
        ..Default::default()
    });
    assert_eq!(s.rewrapped, 1);
    let u = fx.unlock();
    assert_eq!(
        file_header::wrapped_slots(&u.header)
            .next()
            .unwrap()
            .1
            .key_id
            .to_string(),
        other.key_id
    );
}

#[test]
fn the_volume_key_follows_the_same_rule_and_the_config_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("v");
    let kms = LocalKms::in_memory_for_tests();
    let caller = Caller::current();
    volume::prepare(&root).unwrap();
    let cfg = volume::create(&root, &kms, "alias/default", 4096, "k.json".into(), 0, true).unwrap();
    let opts = RewrapOptions::default();
    let run = |opts: &RewrapOptions| {
        let cfg = volume::read_config(&root).unwrap();
        rewrap_volume_key(&root, &cfg, &kms, opts, &caller).unwrap()
    };
    assert_eq!(run(&opts), None, "already current");
    kms.rotate("alias/default", &caller).unwrap();
    let dry = RewrapOptions {
        dry_run: true,
        ..Default::default()
    };
    let id = cfg.volume_key.key_id.clone();
    assert_eq!(run(&dry), Some((id.clone(), 2)));
    assert_eq!(
        volume::read_config(&root).unwrap(),
        cfg,
        "dry run writes nothing"
    );
    assert_eq!(run(&opts), Some((id.clone(), 2)));
    let after = volume::read_config(&root).unwrap();
    assert_eq!(after.volume_key.version, 2);
    assert_eq!(run(&opts), None, "idempotent");
    // The new record unwraps to the same volume key.
    let ctx = EncryptionContext::for_volume_key(&cfg.volume_id);
    let old = kms
        .decrypt(&volume::wrapped_volume_key(&cfg).unwrap(), &ctx, &caller)
        .unwrap();
    let new = kms
        .decrypt(&volume::wrapped_volume_key(&after).unwrap(), &ctx, &caller)
        .unwrap();
    assert_eq!(old.expose_secret(), new.expose_secret());
    // --to-key moves it; a malformed record is a volume error, not a key error.
    let other = kms.create_key("other", &caller).unwrap();
    let to = RewrapOptions {
        to_key: Some(other.key_id.clone()),
        ..Default::default()
    };
    assert_eq!(run(&to), Some((other.key_id.clone(), 1)));
    kms.rotate(&other.key_id, &caller).unwrap();
    let mut bad = volume::read_config(&root).unwrap();
    bad.volume_key.blob = "xyz".into();
    assert!(matches!(
        rewrap_volume_key(&root, &bad, &kms, &opts, &caller),
        Err(VolumeKeyError::Volume(VolumeError::Config { .. }))
    ));
}
