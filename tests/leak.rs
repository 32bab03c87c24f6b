//! The grep test: a full session (mount with debug logging, write, read, rename, truncate,
//! xattrs, unmount) with a distinctive plaintext marker, then every byte under BACKING (file
//! contents and xattr values) and the daemon's log are searched for the marker and for the
//! key file (raw and hex). None may appear.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{BLOCK, Mounted, Options, Rng, backing_len, check, contains, hex, tool};

/// A long random-looking ASCII marker (never produced by chance).
fn marker() -> Vec<u8> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut m = b"EnvLeakMarker-".to_vec();
    m.extend(
        common::random_bytes(40)
            .iter()
            .map(|b| ALNUM[*b as usize % ALNUM.len()]),
    );
    m.push(b'|');
    m
}

/// `marker` repeated to exactly `len` bytes.
fn repeated(marker: &[u8], len: usize) -> Vec<u8> {
    marker.iter().copied().cycle().take(len).collect()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (c, n) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    // SAFETY: valid C strings; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Every xattr (name, value) of `p` (not following symlinks).
fn all_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `names` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: `buf` is writable for its length.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if len >= 0 {
            buf.truncate(len as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), buf));
        }
    }
    out
}

/// Every path under `dir` (files, dirs, links, fifos), `dir` included.
fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn no_plaintext_or_key_under_backing_or_in_log() {
    let Some(mut m) = Mounted::with_options(Options {
        verbose: 2,
        ..Options::default()
    }) else {
        return;
    };
    let mk = marker();
    let mut rng = Rng::new(21);
    let mut expect: Vec<(&str, Vec<u8>)> = Vec::new();

    // Sizes below one block, exactly one, several, large; written in different ways.
    let cases: [(&str, usize); 5] = [
        ("tiny", mk.len()),
        ("small", 1000),
        ("one_block", BLOCK as usize),
        ("multi", 5 * BLOCK as usize + 77),
        ("big", 300_000),
    ];
    for (name, len) in cases {
        let data = repeated(&mk, len);
        fs::write(m.path(name), &data).unwrap();
        expect.push((name, data));
    }
    // Appends, one marker at a time.
    let mut appended = Vec::new();
    for _ in 0..100 {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.path("appended"))
            .unwrap()
            .write_all(&mk)
            .unwrap();
        appended.extend_from_slice(&mk);
    }
    expect.push(("appended", appended));
    // A marker written into the middle of random data (read-modify-write of two blocks).
    let mut mixed = rng.bytes(3 * BLOCK as usize);
    fs::write(m.path("mixed"), &mixed).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("mixed"))
        .unwrap()
        .write_all_at(&mk, BLOCK - 10)
        .unwrap();
    mixed[BLOCK as usize - 10..BLOCK as usize - 10 + mk.len()].copy_from_slice(&mk);
    expect.push(("mixed", mixed));
    // Truncated down and up again, renamed, into a subdirectory.
    fs::create_dir(m.path("sub")).unwrap();
    let mut t = repeated(&mk, 4 * BLOCK as usize);
    fs::write(m.path("t"), &t).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("t"))
        .unwrap()
        .set_len(5000)
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.path("t"))
        .unwrap()
        .set_len(9000)
        .unwrap();
    t.truncate(5000);
    t.resize(9000, 0);
    fs::rename(m.path("t"), m.path("sub/renamed")).unwrap();
    expect.push(("sub/renamed", t));
    // Hole then data.
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.path("holey"))
        .unwrap();
    f.write_all_at(&mk, 3 * BLOCK + 5).unwrap();
    drop(f);
    let mut holey = vec![0u8; 3 * BLOCK as usize + 5];
    holey.extend_from_slice(&mk);
    expect.push(("holey", holey));
    // Xattr values on a file and a directory.
    set_xattr(&m.path("tiny"), "user.secret", &mk);
    set_xattr(&m.path("sub"), "user.secret", &repeated(&mk, 500));

    // Read everything back (the read path logs too), then unmount cleanly.
    for (name, data) in &expect {
        assert_eq!(&fs::read(m.path(name)).unwrap(), data, "{name}");
    }
    assert!(
        all_xattrs(&m.path("tiny"))
            .iter()
            .any(|(n, v)| n == "user.secret" && *v == mk)
    );
    let status = m.unmount();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean unmount: {status:?}\n{}",
        m.diagnostics()
    );

    // The data really is down there (so the search below is not vacuous).
    assert_eq!(
        fs::metadata(m.backing_path("multi")).unwrap().len(),
        backing_len(5 * BLOCK + 77)
    );
    assert!(!m.log_text().is_empty(), "the debug log was written");

    let key = m.key().to_vec();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("plaintext marker", mk.clone()),
        ("marker prefix", mk[..24].to_vec()),
        ("key file bytes", key.clone()),
        ("key file hex", hex(&key).into_bytes()),
        ("key file HEX", hex(&key).to_uppercase().into_bytes()),
        ("key file half (hex)", hex(&key[..16]).into_bytes()),
    ];

    // The scanner finds what it looks for.
    let control = m.scratch().join("control");
    fs::write(
        &control,
        [
            b"xx".as_slice(),
            &mk,
            &key,
            hex(&key).as_bytes(),
            hex(&key).to_uppercase().as_bytes(),
        ]
        .concat(),
    )
    .unwrap();
    let control_bytes = fs::read(&control).unwrap();
    for (what, n) in &needles {
        assert!(contains(&control_bytes, n), "scanner self-check: {what}");
    }

    let mut scanned = Vec::new();
    let mut leaks = Vec::new();
    let mut files = common::walk_files(m.backing());
    files.push(m.log().to_owned());
    files.push(m.stderr_path());
    for f in &files {
        let bytes = fs::read(f).unwrap_or_default();
        for (what, n) in &needles {
            if contains(&bytes, n) {
                leaks.push(format!("{what} in {}", f.display()));
            }
        }
        scanned.push(f.clone());
    }
    let mut xattr_values = 0;
    for p in walk_all(m.backing()) {
        for (name, value) in all_xattrs(&p) {
            xattr_values += 1;
            for (what, n) in &needles {
                if contains(&value, n) {
                    leaks.push(format!("{what} in xattr {name} of {}", p.display()));
                }
            }
        }
    }
    assert!(
        xattr_values >= 2,
        "the encrypted xattrs are stored in the backing tree"
    );
    assert!(leaks.is_empty(), "secrets found:\n{}", leaks.join("\n"));
    assert!(
        files.iter().any(|f| f.ends_with("keystore.json"))
            && files.iter().any(|f| f.ends_with("envelopefs.json"))
    );

    // The same with grep itself (binary files as text; exit 1 = no match).
    let mk_text = String::from_utf8(mk.clone()).unwrap();
    let out = common::output(
        tool("grep")
            .arg("-r")
            .arg("-a")
            .arg("-F")
            .arg("-l")
            .arg("-e")
            .arg(&mk_text)
            .arg("-e")
            .arg(hex(&key))
            .arg(m.backing())
            .arg(m.log()),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "grep found something:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    check(
        tool("grep")
            .arg("-q")
            .arg("-a")
            .arg("-F")
            .arg(&mk_text)
            .arg(&control),
    );

    // The keystore holds neither the key file nor its hex.
    let ks = fs::read(m.backing().join("keystore.json")).unwrap();
    assert!(
        !contains(&ks, hex(&key).as_bytes()) && !contains(&ks, &key),
        "keystore.json contains the key file"
    );
    eprintln!(
        "leak test: scanned {} files and {xattr_values} xattr values; no marker, no key",
        scanned.len()
    );
}
