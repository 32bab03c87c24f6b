//! Mount tests with real tools: tar, cp -a and git on a copy of this crate's sources compared
//! against a plain reference tree, and fio's own verifier.
//!
//! Each test mounts its own volume (see `common::Mounted`), so tests run in parallel; a
//! watchdog kills a daemon that outlives its test so nothing can hang.

mod common;

use std::fs;
use std::path::Path;

use common::{Mounted, Rng, check, tool, tree_listing};

/// Copies this crate's src/ (once, so concurrent edits don't matter) plus one entry of every
/// kind to a plain directory and tars it; returns (archive, reference dir).
fn reference_tree(m: &Mounted) -> (std::path::PathBuf, std::path::PathBuf) {
    let tar = m.scratch().join("src.tar");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = m.scratch().join("ref");
    fs::create_dir(&reference).unwrap();
    // cp, not tar: tar fails when a file changes while it reads it (src/ may be edited).
    check(
        tool("cp")
            .arg("-r")
            .arg(crate_dir.join("src"))
            .arg(crate_dir.join("Cargo.toml"))
            .arg(&reference),
    );
    // Something of every kind tar and cp carry: a big file, a symlink, a hard link, an
    // empty file and an empty directory.
    fs::write(reference.join("big.bin"), Rng::new(11).bytes(300_000)).unwrap();
    std::os::unix::fs::symlink("src/lib.rs", reference.join("link")).unwrap();
    fs::hard_link(reference.join("Cargo.toml"), reference.join("Cargo.hard")).unwrap();
    fs::write(reference.join("empty"), b"").unwrap();
    fs::create_dir(reference.join("emptydir")).unwrap();
    // POSIX (pax) format keeps sub-second times.
    check(
        tool("tar")
            .arg("-c")
            .arg("--format=posix")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&reference)
            .arg("."),
    );
    (tar, reference)
}

#[test]
fn tar_extract_then_diff() {
    let Some(m) = Mounted::new() else { return };
    let (tar, reference) = reference_tree(&m);
    let dst = m.path("untar");
    fs::create_dir(&dst).unwrap();
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&dst),
    );
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    // tar -d compares contents, sizes, modes, mtimes, link targets.
    check(
        tool("tar")
            .arg("-d")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&dst),
    );
    assert_eq!(tree_listing(&dst), tree_listing(&reference));
    // And back out again.
    let back = m.scratch().join("back.tar");
    check(
        tool("tar")
            .arg("-c")
            .arg("--format=posix")
            .arg("-f")
            .arg(&back)
            .arg("-C")
            .arg(&dst)
            .arg("."),
    );
    let again = m.scratch().join("again");
    fs::create_dir(&again).unwrap();
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&back)
            .arg("-C")
            .arg(&again),
    );
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&again),
    );
}

#[test]
fn cp_a_then_diff() {
    let Some(mut m) = Mounted::new() else { return };
    let (_tar, reference) = reference_tree(&m);
    let dst = m.path("copy");
    check(tool("cp").arg("-a").arg(&reference).arg(&dst));
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    assert_eq!(
        tree_listing(&dst),
        tree_listing(&reference),
        "cp -a preserves modes, times, links"
    );
    m.remount();
    check(
        tool("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&reference)
            .arg(&dst),
    );
    assert_eq!(
        tree_listing(&dst),
        tree_listing(&reference),
        "after remount"
    );
}

#[test]
fn git_commit_and_fsck() {
    let Some(mut m) = Mounted::new() else { return };
    let (tar, _reference) = reference_tree(&m);
    let repo = m.path("repo");
    fs::create_dir(&repo).unwrap();
    let home = m.scratch().join("home");
    fs::create_dir(&home).unwrap();
    let git = |args: &[&str]| {
        check(
            tool("git")
                .args([
                    "-c",
                    "user.name=Test",
                    "-c",
                    "user.email=test@example.invalid",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(["-c", "init.defaultBranch=main", "-c", "core.fsync=all"])
                .args(args)
                .current_dir(&repo)
                .env("HOME", &home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null"),
        )
    };
    git(&["init", "-q"]);
    check(
        tool("tar")
            .arg("-x")
            .arg("-f")
            .arg(&tar)
            .arg("-C")
            .arg(&repo),
    );
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("src/lib.rs"), b"// changed\n").unwrap();
    fs::remove_file(repo.join("big.bin")).unwrap();
    git(&["commit", "-q", "-a", "-m", "second"]);
    git(&["repack", "-a", "-d", "-q"]);
    git(&["fsck", "--full", "--strict", "--no-progress"]);
    assert_eq!(git(&["status", "--porcelain"]), "");
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "2");
    let head = git(&["rev-parse", "HEAD"]);
    m.remount();
    git(&["fsck", "--full", "--strict", "--no-progress"]);
    assert_eq!(git(&["rev-parse", "HEAD"]), head);
    assert_eq!(git(&["status", "--porcelain"]), "");
    git(&["checkout", "-q", "HEAD~1", "--", "."]);
    assert_eq!(
        fs::read(repo.join("big.bin")).unwrap(),
        Rng::new(11).bytes(300_000)
    );
}

/// fio random writes of odd sizes with checksums, verified by fio; then O_DIRECT.
#[test]
fn fio_verify() {
    let Some(m) = Mounted::new() else { return };
    let run = |args: &[&str]| {
        check(
            tool("fio")
                .args(["--output-format=terse", "--ioengine=psync"])
                .args(args)
                .current_dir(m.mnt()),
        )
    };
    run(&[
        "--name=cached",
        "--filename=fio.cached",
        "--size=4m",
        "--rw=randwrite",
        "--bsrange=512-37k",
        "--verify=crc32c",
        "--do_verify=1",
    ]);
    run(&[
        "--name=direct",
        "--filename=fio.direct",
        "--size=2m",
        "--rw=randwrite",
        "--bs=4k",
        "--direct=1",
        "--verify=md5",
        "--do_verify=1",
    ]);
    assert_eq!(fs::metadata(m.path("fio.cached")).unwrap().len(), 4 << 20);
}
