//! `envelopefs export`: the exported tree equals the mounted view (names, contents, modes,
//! owners, times, hard links, symlinks, FIFOs, xattrs); a damaged file is reported and left
//! out, never written in part; `--path` exports a subtree.

mod backup_common;
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use backup_common::{populate, settle, snapshot};
use common::sys::flip_byte;
use common::{BIN, BLOCK, Mounted, Rng, block_offset, output};

fn export(m: &Mounted, dest: &Path, extra: &[&str]) -> (i32, String) {
    let out = output(
        Command::new(BIN)
            .arg("export")
            .arg(m.backing())
            .arg(dest)
            .args(extra)
            .arg("--keyfile")
            .arg(m.keyfile()),
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_export_equals_the_mounted_view() {
    let Some(mut m) = Mounted::new() else { return };
    populate(&m);
    settle(&mut m);
    let mounted = snapshot(m.mnt());
    assert!(m.unmount().is_some_and(|s| s.success()));
    let dest = m.scratch().join("out");
    let (code, text) = export(&m, &dest, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(snapshot(&dest), mounted, "{text}");
    // A subtree.
    let sub = m.scratch().join("sub");
    let (code, text) = export(&m, &sub, &["--path", "docs/deep"]);
    assert_eq!(code, 0, "{text}");
    let want: BTreeMap<String, String> = mounted
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("docs/deep/").map(|r| {
                (
                    r.to_owned(),
                    v.replace("first-name docs/deep/", "first-name "),
                )
            })
        })
        .collect();
    assert_eq!(snapshot(&sub), want);
    // A non-empty destination is refused.
    let (code, _) = export(&m, &dest, &[]);
    assert_eq!(code, 2, "DEST must be new or empty");
}

#[test]
fn a_damaged_file_is_reported_and_left_out_never_written_in_part() {
    let Some(mut m) = Mounted::new() else { return };
    let mut rng = Rng::new(18);
    fs::write(m.path("good"), rng.bytes(10_000)).unwrap();
    fs::write(m.path("bad"), rng.bytes(3 * BLOCK as usize)).unwrap();
    assert!(m.unmount().is_some_and(|s| s.success()));
    flip_byte(&m.backing_path("bad"), block_offset(2) + 30);
    let dest = m.scratch().join("out");
    let (code, text) = export(&m, &dest, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("failed: bad"), "{text}");
    let names: Vec<String> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["good".to_owned()], "no half file, no temp file");
    assert_eq!(fs::read(dest.join("good")).unwrap().len(), 10_000);
}
