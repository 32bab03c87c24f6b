//! Golden fixtures: volumes written by each format version (tests/golden/v1: version 1 as first
//! released, keystore version 1; tests/golden/sealed-holes: version 1 with the `sealed-holes`
//! feature, keystore version 2 (kdf under the MAC, administrators, audit checkpoint) and its
//! audit trail; tests/golden/encrypted-names: `sealed-holes` plus `encrypted-names`, with a
//! 200-byte name in `dir`; all unlock with the key file tests/golden/keyfile and hold the same
//! files; tests/golden/sse-c: a volume with `sse-c` and files under the customer key
//! tests/golden/customer-key, checked by its own test) must keep opening with every
//! later build and read back exactly the contents in tests/golden/manifest.sha256; tampered
//! copies must fail cleanly (EIO), never return other bytes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envelopefs::fs::EncFs;
use envelopefs::keys::Caller;
use envelopefs::keys::local::LocalKms;
use envelopefs::keys::secret::Unlock;
use envelopefs::store::volume;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The fixtures, one per format version.
const FIXTURES: [&str; 3] = ["v1", "sealed-holes", "encrypted-names"];

/// A private copy of the v1 fixture (opening a keystore may add its audit directory).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    fixture_named("v1")
}

/// A private copy of fixture `name`.
fn fixture_named(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(name);
    copy_tree(&Path::new(GOLDEN).join(name), &root);
    (tmp, root)
}

fn open(root: &Path) -> EncFs {
    let key: [u8; 32] = std::fs::read(Path::new(GOLDEN).join("keyfile"))
        .unwrap()
        .try_into()
        .unwrap();
    let vol = volume::open(root).expect("the v1 volume config still parses");
    let kms = LocalKms::open(
        &vol.keystore_path(),
        &Unlock::KeyFile(zeroize::Zeroizing::new(key)),
    )
    .expect("the v1 keystore still opens");
    EncFs::new(vol, Arc::new(kms), &Caller::current()).expect("the v1 volume key still unwraps")
}

fn read(fs: &EncFs, name: &str) -> Result<Vec<u8>, i32> {
    let c = Caller::current();
    let ino = fs.lookup(1, OsStr::new(name)).map_err(|e| e.errno())?.ino;
    let fh = fs.open(ino, libc::O_RDONLY, &c).map_err(|e| e.errno())?;
    let mut out = Vec::new();
    loop {
        match fs.read(fh, out.len() as u64, 1 << 16) {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => {
                fs.release(fh).unwrap();
                return Err(e.errno());
            }
        }
    }
    fs.release(fh).unwrap();
    Ok(out)
}

fn manifest() -> Vec<(String, String)> {
    std::fs::read_to_string(Path::new(GOLDEN).join("manifest.sha256"))
        .unwrap()
        .lines()
        .map(|l| {
            let (h, n) = l.split_once("  ").expect("sha256sum format");
            (n.to_owned(), h.to_owned())
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_fixture_reads_back_exactly() {
    for fixture in FIXTURES {
        let (_tmp, root) = fixture_named(fixture);
        let fs = open(&root);
        assert_eq!(fs.layout().sealed_holes(), fixture != "v1", "{fixture}");
        for (name, hash) in manifest() {
            let data = read(&fs, &name).unwrap_or_else(|e| panic!("{fixture}: {name}: errno {e}"));
            assert_eq!(sha256_hex(&data), hash, "{fixture}: {name}");
        }
        let dir = fs.lookup(1, OsStr::new("dir")).unwrap().ino;
        let link = fs.lookup(dir, OsStr::new("link")).unwrap().ino;
        assert_eq!(fs.readlink(link).unwrap(), b"../small.txt", "{fixture}");
    }
}

/// The `encrypted-names` fixture: no plaintext name in its backing tree, its long name reads
/// back; an entry moved to another directory is unreachable and unlisted, a damaged `.dirid`
/// makes the directory EIO, and a config that lost the feature is refused.
#[test]
fn the_encrypted_names_fixture_and_its_tampered_copies() {
    let long = "n".repeat(200);
    let (_tmp, root) = fixture_named("encrypted-names");
    let data = root.join("data");
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for (plain, _) in manifest() {
        assert!(!names.contains(&plain), "{plain} in the clear");
    }
    let fs = open(&root);
    let dir = fs.lookup(1, OsStr::new("dir")).unwrap().ino;
    let f = fs.lookup(dir, OsStr::new(&long)).unwrap().ino;
    let c = Caller::current();
    let fh = fs.open(f, libc::O_RDONLY, &c).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"a long name");
    fs.release(fh).unwrap();
    drop(fs);

    // Move small.txt's entry into dir: gone from both listings, unreachable.
    let (_tmp, root) = fixture_named("encrypted-names");
    let data = root.join("data");
    let small = envelopefs::store::names::encrypt_path(
        &data,
        cipher(&root).as_ref(),
        Path::new("small.txt"),
    )
    .unwrap();
    let dir_b =
        envelopefs::store::names::encrypt_path(&data, cipher(&root).as_ref(), Path::new("dir"))
            .unwrap();
    std::fs::rename(data.join(&small), data.join(&dir_b).join(&small)).unwrap();
    let fs = open(&root);
    assert_eq!(read(&fs, "small.txt"), Err(libc::ENOENT));
    let dir = fs.lookup(1, OsStr::new("dir")).unwrap().ino;
    let fh = fs.opendir(dir).unwrap();
    let mut listed: Vec<String> = fs
        .readdir(dir, fh, 0)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.name.into_string().unwrap())
        .collect();
    listed.sort();
    let mut want = vec![".".to_owned(), "..".into(), "link".into(), long.clone()];
    want.sort();
    assert_eq!(
        listed, want,
        "the moved entry is not listed in its new directory"
    );
    drop(fs);

    // A damaged directory id: the directory's names cannot be read.
    let (_tmp, root) = fixture_named("encrypted-names");
    let data = root.join("data");
    let dir_b =
        envelopefs::store::names::encrypt_path(&data, cipher(&root).as_ref(), Path::new("dir"))
            .unwrap();
    let id = data.join(&dir_b).join(".dirid");
    std::fs::remove_file(&id).unwrap();
    std::os::unix::fs::symlink("00112233445566778899aabbccddeeff", &id).unwrap();
    let fs = open(&root);
    let dir = fs.lookup(1, OsStr::new("dir")).unwrap().ino;
    assert_eq!(
        fs.lookup(dir, OsStr::new("link"))
            .map(|a| a.ino)
            .map_err(|e| e.errno()),
        Err(libc::ENOENT)
    );
    let fh = fs.opendir(dir).unwrap();
    assert_eq!(fs.readdir(dir, fh, 0).unwrap().len(), 2, "only . and ..");
    drop(fs);

    // The config lost the feature: refused, not shown as ciphertext names.
    let (_tmp, root) = fixture_named("encrypted-names");
    let cfg = root.join("envelopefs.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let edited = text.replace(",\n    \"encrypted-names\"", "");
    assert_ne!(text, edited, "the fixture lists encrypted-names");
    std::fs::write(&cfg, edited).unwrap();
    let err = volume::open(&root).unwrap_err().to_string();
    assert!(err.contains("encrypted-names"), "{err}");
}

/// The fixture's name cipher, from its keystore.
fn cipher(root: &Path) -> Option<envelopefs::format::names::NameCipher> {
    let key: [u8; 32] = std::fs::read(Path::new(GOLDEN).join("keyfile"))
        .unwrap()
        .try_into()
        .unwrap();
    let cfg = volume::open(root).unwrap().config;
    let kms = LocalKms::open(
        &root.join("keystore.json"),
        &Unlock::KeyFile(zeroize::Zeroizing::new(key)),
    )
    .unwrap();
    envelopefs::store::names::cipher_of(&cfg, &kms, &Caller::current()).unwrap()
}

/// Finding 4 of issue 11, on the fixture written with `sealed-holes`: a zeroed block (a forged
/// hole), a file cut down to its header, and a zeroed empty block are all EIO.
#[test]
fn tampered_sealed_holes_copies_fail_with_eio() {
    let cases: &[(&str, Tamper)] = &[
        (
            "multi.bin",
            ("zero a middle block", &|p| zero(p, 1024 + 4124, 4124)),
        ),
        (
            "sparse.bin",
            ("zero a block of the gap", &|p| zero(p, 1024, 4124)),
        ),
        ("small.txt", ("zero the last block", &|p| zero(p, 1024, 49))),
        ("multi.bin", ("cut to the header", &|p| set_len(p, 1024))),
        (
            "empty",
            ("cut an empty file to its header", &|p| set_len(p, 1024)),
        ),
        ("empty", ("zero the empty block", &|p| zero(p, 1024, 28))),
    ];
    for (file, (what, tamper)) in cases {
        let (_tmp, root) = fixture_named("sealed-holes");
        tamper(&root.join("data").join(file));
        let fs = open(&root);
        assert_eq!(read(&fs, file), Err(libc::EIO), "{what}");
        assert!(
            read(&fs, "block.bin").is_ok(),
            "{what}: other files unaffected"
        );
    }
}

/// The files of the `sealed-holes` fixture say so in their MAC'd headers: a copy whose config
/// lost the feature (so that zeroed blocks would read as holes) refuses them with EIO, zeroed or
/// not.
#[test]
fn removing_sealed_holes_from_the_fixture_config_is_eio() {
    let (_tmp, root) = fixture_named("sealed-holes");
    let cfg = root.join("envelopefs.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let edited = text.replace(",\n    \"sealed-holes\"", "");
    assert_ne!(text, edited, "the fixture lists sealed-holes");
    std::fs::write(&cfg, edited).unwrap();
    zero(&root.join("data/multi.bin"), 1024 + 4124, 4124);
    let fs = open(&root);
    assert!(!fs.layout().sealed_holes());
    for name in ["multi.bin", "small.txt", "sparse.bin"] {
        assert_eq!(read(&fs, name), Err(libc::EIO), "{name}");
    }
}

fn zero(p: &Path, at: usize, len: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at..at + len].fill(0);
    std::fs::write(p, b).unwrap();
}

/// A named way of damaging a backing file.
type Tamper<'a> = (&'a str, &'a dyn Fn(&Path));

#[test]
fn tampered_v1_copies_fail_with_eio() {
    let cases: &[Tamper] = &[
        ("flip a ciphertext byte", &|p| flip(p, 1024 + 100)),
        ("flip a tag byte", &|p| flip(p, 1024 + 4124 - 1)),
        ("truncate at a block boundary", &|p| set_len(p, 1024 + 4124)),
        ("cut inside a block", &|p| set_len(p, 1024 + 4124 + 10)),
        ("damage both header copies", &|p| {
            flip(p, 100);
            flip(p, 512 + 100)
        }),
    ];
    for (what, tamper) in cases {
        let (_tmp, root) = fixture();
        tamper(&root.join("data/multi.bin"));
        let fs = open(&root);
        assert_eq!(read(&fs, "multi.bin"), Err(libc::EIO), "{what}");
        assert!(
            read(&fs, "small.txt").is_ok(),
            "{what}: other files unaffected"
        );
    }
    // One damaged header copy is survivable: the other one is used.
    let (_tmp, root) = fixture();
    flip(&root.join("data/multi.bin"), 100);
    let fs = open(&root);
    let (_, hash) = manifest()
        .into_iter()
        .find(|(n, _)| n == "multi.bin")
        .unwrap();
    assert_eq!(sha256_hex(&read(&fs, "multi.bin").unwrap()), hash);
}

fn flip(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

fn set_len(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The audit trail kept with the `sealed-holes` fixture (keystore version 2, with its
/// checkpoint) still verifies with this build.
#[test]
fn the_fixture_audit_trail_verifies() {
    let (_tmp, root) = fixture_named("sealed-holes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_envelopefs"))
        .args(["audit", "verify"])
        .arg(&root)
        .arg("--keyfile")
        .arg(Path::new(GOLDEN).join("keyfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes and size changes on each fixture's format (v1 leaves holes in a gap, `sealed-holes`
/// seals zeros): every step reads back as a plain byte model says, and the backing file has
/// the length the format gives its size.
#[test]
fn every_fixture_takes_writes_and_truncates_as_the_model_says() {
    use envelopefs::fs::SetAttr;
    for fixture in FIXTURES {
        let (_tmp, root) = fixture_named(fixture);
        let fs = open(&root);
        let c = Caller::current();
        let bs = fs.layout().block_size();
        let mut model = read(&fs, "multi.bin").unwrap();
        let backing = root.join("data").join(
            envelopefs::store::names::encrypt_path(
                &root.join("data"),
                cipher(&root).as_ref(),
                Path::new("multi.bin"),
            )
            .unwrap(),
        );
        let ino = fs.lookup(1, OsStr::new("multi.bin")).unwrap().ino;
        let fh = fs.open(ino, libc::O_RDWR, &c).unwrap();
        let step = |model: &mut Vec<u8>, what: &str| {
            assert_eq!(read(&fs, "multi.bin").unwrap(), *model, "{fixture}: {what}");
            assert_eq!(
                std::fs::metadata(&backing).unwrap().len(),
                fs.layout().backing_size(model.len() as u64),
                "{fixture}: {what}: backing length"
            );
        };
        let write = |model: &mut Vec<u8>, at: u64, data: &[u8]| {
            fs.write(fh, at, data, &c).unwrap();
            let end = at as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[at as usize..end].copy_from_slice(data);
        };
        let truncate = |model: &mut Vec<u8>, size: u64| {
            let set = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            fs.setattr(ino, &set, &c).unwrap();
            model.resize(size as usize, 0);
        };
        let len = model.len() as u64;
        write(&mut model, bs / 2, &[1; 100]);
        step(&mut model, "inside one block");
        write(&mut model, bs - 10, &vec![2; bs as usize + 20]);
        step(&mut model, "across two block boundaries");
        write(&mut model, len + 3 * bs + 7, b"after a gap");
        step(&mut model, "past a gap");
        truncate(&mut model, len + bs / 3);
        step(&mut model, "shrunk to inside a block");
        truncate(&mut model, 2 * bs);
        step(&mut model, "shrunk to a block boundary");
        truncate(&mut model, 5 * bs + 1);
        step(&mut model, "grown past a gap");
        write(&mut model, 0, &vec![3; 5 * bs as usize + 1]);
        step(&mut model, "every block rewritten whole");
        truncate(&mut model, 0);
        step(&mut model, "emptied");
        write(&mut model, 3, b"again");
        step(&mut model, "written again");
        fs.release(fh).unwrap();
    }
}

/// The `sse-c` fixture (written by a mount as root): `cmk.txt` under the CMK, `mine.txt` under
/// the customer key tests/golden/customer-key only, `recoverable.txt` under both. Without the
/// customer key only the CMK-wrapped files open; with it all three read back; a wrong key opens
/// nothing more.
#[test]
fn the_sse_c_fixture_needs_its_customer_key() {
    let me = Caller::current();
    if me.uid != 0 {
        eprintln!("skipping: the fixture's customer-key slots belong to uid 0");
        return;
    }
    let (_tmp, root) = fixture_named("sse-c");
    let fs = open(&root);
    assert_eq!(read(&fs, "cmk.txt").unwrap(), b"under the CMK\n");
    assert_eq!(
        read(&fs, "recoverable.txt").unwrap(),
        b"customer key and recovery slot\n",
        "the recovery slot opens through the key service"
    );
    assert_eq!(
        read(&fs, "mine.txt"),
        Err(libc::EACCES),
        "no customer key loaded"
    );
    let keys = fs.customer_keys().clone();
    keys.add(&me, &[0x5d; 32], false, false, None);
    assert_eq!(read(&fs, "mine.txt"), Err(libc::EACCES), "a wrong key");
    let k: [u8; 32] = std::fs::read(Path::new(GOLDEN).join("customer-key"))
        .unwrap()
        .try_into()
        .unwrap();
    keys.add(&me, &k, false, false, None);
    assert_eq!(read(&fs, "mine.txt").unwrap(), b"under a customer key\n");
}
