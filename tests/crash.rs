//! Crash test: writers keep rewriting a few files through the mount while the daemon is
//! killed with SIGKILL (by pid); the dead mount is detached, the volume mounted again, and:
//!
//! - every file nobody was writing is byte-identical to before;
//! - a file rewritten with temp + rename reads as exactly its old or its new version;
//! - a file overwritten in place (same length, no truncate) reads as its old or new version or
//!   a block-wise mix of the two (each 4 KiB block authentic), or fails with EIO;
//! - a file rewritten with O_TRUNC reads as its old version or a prefix of its new one, or
//!   fails with EIO.
//!
//! Never garbage and never another error. Outcome counts are printed. Bounded: a few rounds
//! of about a second each.

mod common;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BLOCK, Mounted, Rng};

const ROUNDS: usize = 10;
const TIME_BUDGET: Duration = Duration::from_secs(50);
/// In-place rewrites go in writes of this many bytes (not block-aligned on purpose: each
/// write is a read-modify-write of its first and last block).
const IN_PLACE_CHUNK: usize = 3 * BLOCK as usize - 700;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// pwrite of a same-length version over the whole file.
    InPlace,
    /// open(O_TRUNC) + write.
    Trunc,
    /// write a temp file, fsync, rename over.
    Atomic,
}

/// Length of version `v` of hot file `f`.
fn version_len(mode: Mode, f: usize, v: u64) -> usize {
    match mode {
        Mode::InPlace => 5 * BLOCK as usize + 300,
        _ => 1 + ((f as u64 * 7919 + v * 3779) % (12 * BLOCK)) as usize,
    }
}

/// Content of version `v` of hot file `f`.
fn version(mode: Mode, f: usize, v: u64) -> Vec<u8> {
    Rng::new(((f as u64) << 40) ^ v ^ 0xC0FFEE).bytes(version_len(mode, f, v))
}

/// What the writer of one file last finished and is doing now.
#[derive(Clone, Copy, Debug)]
struct Progress {
    done: u64,
    in_progress: u64,
}

struct Hot {
    name: String,
    mode: Mode,
    progress: Mutex<Progress>,
}

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Outcome {
    /// Not being written at the kill, and intact.
    Complete,
    Old,
    New,
    Mixed,
    Prefix,
    Eio,
}

fn write_version(m_path: &Path, h: &Hot, f: usize, v: u64) -> std::io::Result<()> {
    let data = version(h.mode, f, v);
    let p = m_path.join(&h.name);
    match h.mode {
        Mode::InPlace => {
            let file = OpenOptions::new().write(true).open(&p)?;
            // Several writes of odd sizes so a kill can land between them.
            let mut off = 0;
            for chunk in data.chunks(IN_PLACE_CHUNK) {
                file.write_all_at(chunk, off)?;
                off += chunk.len() as u64;
            }
            close(file)
        }
        Mode::Trunc => {
            let mut file = OpenOptions::new().write(true).truncate(true).open(&p)?;
            for chunk in data.chunks(5000) {
                file.write_all(chunk)?;
            }
            close(file)
        }
        Mode::Atomic => {
            let tmp = m_path.join(format!("{}.tmp", h.name));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &p)
        }
    }
}

/// Closes `file`, reporting the error `Drop` would swallow. With the kernel's writeback cache a
/// write is buffered by the kernel and reaches the daemon at close (or fsync) at the latest, so
/// a version counts as written only once close succeeded (as on NFS).
fn close(file: fs::File) -> std::io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by `file`, so it is open and closed exactly once here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Classifies what a hot file reads as after the crash, or panics if it is not allowed.
fn classify(m: &Mounted, h: &Hot, f: usize) -> Outcome {
    let p = m.path(&h.name);
    let Progress { done, in_progress } = *h.progress.lock().unwrap();
    let (old, new) = (version(h.mode, f, done), version(h.mode, f, in_progress));
    let got = match fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::EIO) && h.mode != Mode::Atomic => {
            return Outcome::Eio;
        }
        Err(e) => panic!(
            "{} ({:?}): reading after the crash failed with {e} (not EIO, or EIO where impossible)\n{}",
            h.name,
            h.mode,
            m.diagnostics()
        ),
    };
    if done == in_progress {
        assert!(
            got == old,
            "{} ({:?}): not being written at the kill, yet changed",
            h.name,
            h.mode
        );
        return Outcome::Complete;
    }
    if got == old {
        return Outcome::Old;
    }
    if got == new {
        return Outcome::New;
    }
    let describe = || {
        format!(
            "{} ({:?}): {} bytes read; old v{done} is {} bytes, new v{in_progress} is {} bytes",
            h.name,
            h.mode,
            got.len(),
            old.len(),
            new.len()
        )
    };
    match h.mode {
        Mode::Atomic => panic!(
            "{}: a renamed-over file must read as old or new",
            describe()
        ),
        Mode::InPlace => {
            assert_eq!(
                got.len(),
                old.len(),
                "{}: in-place overwrite changed the length",
                describe()
            );
            // Each write is applied whole or not at all per block, so every piece between
            // block and write boundaries is entirely old or entirely new.
            let mut cuts: Vec<usize> = (0..got.len())
                .step_by(BLOCK as usize)
                .chain((0..got.len()).step_by(IN_PLACE_CHUNK))
                .collect();
            cuts.push(got.len());
            cuts.sort_unstable();
            cuts.dedup();
            for w in cuts.windows(2) {
                let r = w[0]..w[1];
                assert!(
                    got[r.clone()] == old[r.clone()] || got[r.clone()] == new[r.clone()],
                    "{}: bytes {r:?} are neither old nor new (garbage)",
                    describe()
                );
            }
            Outcome::Mixed
        }
        Mode::Trunc => {
            assert!(
                got.len() < new.len() && got[..] == new[..got.len()],
                "{}: neither old nor a prefix of new (garbage)",
                describe()
            );
            Outcome::Prefix
        }
    }
}

#[test]
fn kill_9_mid_writes() {
    let Some(mut m) = Mounted::new() else { return };
    let start = Instant::now();
    let mut rng = Rng::new(common::seed("kill_9_mid_writes"));

    // Files nobody writes during the crash: sizes around block boundaries, some in subdirs.
    fs::create_dir(m.path("stable")).unwrap();
    let mut stable: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (i, size) in [0usize, 1, 4095, 4096, 4097, 10_000, 65_536, 200_000]
        .into_iter()
        .enumerate()
    {
        for dir in ["", "stable/"] {
            let rel = format!("{dir}s{i}");
            let data = rng.bytes(size);
            fs::write(m.path(&rel), &data).unwrap();
            stable.push((PathBuf::from(rel), data));
        }
    }

    let modes = [
        Mode::InPlace,
        Mode::InPlace,
        Mode::Trunc,
        Mode::Trunc,
        Mode::Atomic,
        Mode::Atomic,
    ];
    let hot: Arc<Vec<Hot>> = Arc::new(
        modes
            .iter()
            .enumerate()
            .map(|(f, &mode)| Hot {
                name: format!("hot{f}"),
                mode,
                progress: Mutex::new(Progress {
                    done: 0,
                    in_progress: 0,
                }),
            })
            .collect(),
    );
    let next_version = Arc::new(AtomicU64::new(1));
    let mut counts: HashMap<(Mode, Outcome), usize> = HashMap::new();
    let mut versions_written = 0u64;
    let mut rounds = 0;

    while rounds < ROUNDS && start.elapsed() < TIME_BUDGET {
        rounds += 1;
        // Reset every hot file to a known, completed version (remove first: a file whose
        // header was lost cannot be opened to be truncated).
        for (f, h) in hot.iter().enumerate() {
            let v = next_version.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(m.path(&format!("{}.tmp", h.name)));
            let _ = fs::remove_file(m.path(&h.name));
            fs::write(m.path(&h.name), version(h.mode, f, v)).unwrap();
            *h.progress.lock().unwrap() = Progress {
                done: v,
                in_progress: v,
            };
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Two writers over disjoint files, and a reader of the stable files.
        for w in 0..2usize {
            let (hot, next, stop, mnt) = (
                hot.clone(),
                next_version.clone(),
                stop.clone(),
                m.mnt().to_owned(),
            );
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                'outer: while !stop.load(Ordering::Relaxed) {
                    for (f, h) in hot.iter().enumerate().filter(|(f, _)| f % 2 == w) {
                        let v = next.fetch_add(1, Ordering::Relaxed);
                        h.progress.lock().unwrap().in_progress = v;
                        if write_version(&mnt, h, f, v).is_err() {
                            break 'outer; // the daemon is gone
                        }
                        *h.progress.lock().unwrap() = Progress {
                            done: v,
                            in_progress: v,
                        };
                        n += 1;
                    }
                }
                n
            }));
        }
        {
            let (stop, mnt) = (stop.clone(), m.mnt().to_owned());
            let names: Vec<PathBuf> = stable.iter().map(|(p, _)| p.clone()).collect();
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    for p in &names {
                        if fs::read(mnt.join(p)).is_err() {
                            return n;
                        }
                        n += 1;
                    }
                }
                n
            }));
        }

        std::thread::sleep(Duration::from_millis(150 + rng.below(500)));
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        // Join before detaching: until then every call on the dead mount fails with ENOTCONN
        // (after `umount -l` the paths would reach the empty directory underneath).
        for (i, t) in threads.into_iter().enumerate() {
            let n = t.join().expect("worker panicked");
            if i < 2 {
                versions_written += n;
            }
        }
        m.detach();
        assert_eq!(
            fs::read_dir(m.mnt()).unwrap().count(),
            0,
            "nothing leaked into the mountpoint directory"
        );

        m.mount();
        for (rel, data) in &stable {
            match fs::read(m.mnt().join(rel)) {
                Ok(d) => assert!(
                    d == *data,
                    "round {rounds}: stable file {} changed ({} bytes, was {})",
                    rel.display(),
                    d.len(),
                    data.len()
                ),
                Err(e) => panic!(
                    "round {rounds}: stable file {} unreadable: {e}\n{}",
                    rel.display(),
                    m.diagnostics()
                ),
            }
        }
        for (f, h) in hot.iter().enumerate() {
            *counts.entry((h.mode, classify(&m, h, f))).or_default() += 1;
            // A half-written temp file is not an error, but it must not read as garbage
            // either: it holds a prefix of some version or fails with EIO.
            let tmp = m.path(&format!("{}.tmp", h.name));
            if let Err(e) = fs::read(&tmp) {
                assert!(
                    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EIO)),
                    "{}: {e}",
                    tmp.display()
                );
            }
        }
    }

    // Clean unmount at the end must still work.
    assert!(
        m.unmount().is_some_and(|s| s.success()),
        "clean unmount after the crash rounds\n{}",
        m.diagnostics()
    );
    let mut summary: Vec<String> = counts
        .iter()
        .map(|((mode, o), n)| format!("{mode:?}/{o:?}: {n}"))
        .collect();
    summary.sort();
    eprintln!(
        "crash test: {rounds} rounds in {:.1?}, {versions_written} versions written; {} stable files identical; outcomes: {}",
        start.elapsed(),
        stable.len(),
        summary.join(", ")
    );
    assert!(rounds >= 2, "too few rounds ran");

    // The daemon writes its audit records on a writer thread; being killed mid-batch may lose
    // the last records but must leave a trail that still verifies (a torn line is cut off
    // when the next mount opens it).
    let (success, text) = m.cli(&["audit", "verify"], &[]);
    assert!(
        success && text.contains("OK"),
        "audit trail after {rounds} kills: {text}"
    );
}
