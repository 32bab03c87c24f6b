//! Customer-provided keys through the core: who can open what, forget cuts open handles,
//! recovery slots, and the slot layout of new files.

use std::ffi::OsStr;

use crate::format::header::KeySlot;
use crate::fs::inode::ROOT_INO;
use crate::fs::testing;
use crate::keys::Caller;

fn user(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        pid: std::process::id(),
    }
}

fn errno<T: std::fmt::Debug>(r: crate::fs::FsResult<T>) -> i32 {
    r.unwrap_err().errno()
}

fn slots(tmp: &tempfile::TempDir, fs: &crate::fs::EncFs, name: &str) -> Vec<KeySlot> {
    let bytes = std::fs::read(testing::backing_path(fs, tmp, name)).unwrap();
    crate::format::header::FileHeader::decode(&bytes[..512])
        .unwrap()
        .slots
}

#[test]
fn only_the_owner_with_the_right_key_opens_an_sse_c_file() {
    let (fs, tmp, me) = testing::fresh();
    let (alice, bob) = (user(4001), user(4002));
    let t = fs.customer_keys().clone();
    let id = t.add(&alice, &[7; 32], true, false, None);
    assert_eq!(id.len(), 16);
    // Made as root in a directory alice can write: the file is alice's because she creates it.
    let (a, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o666, libc::O_RDWR, &alice)
        .unwrap();
    fs.write(fh, 0, b"alice's secret", &alice).unwrap();
    fs.release(fh).unwrap();
    let s = slots(&tmp, &fs, "f");
    assert!(
        matches!(s.as_slice(), [KeySlot::Customer(c)] if c.uid == 4001),
        "one customer slot, no CMK slot: {s:?}"
    );
    let fh = fs.open(a.ino, libc::O_RDONLY, &alice).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"alice's secret");
    // Bob and root have no way in.
    assert_eq!(errno(fs.open(a.ino, libc::O_RDONLY, &bob)), libc::EACCES);
    assert_eq!(errno(fs.open(a.ino, libc::O_RDONLY, &me)), libc::EACCES);
    t.add(&bob, &[7; 32], false, false, None);
    assert_eq!(
        errno(fs.open(a.ino, libc::O_RDONLY, &bob)),
        libc::EACCES,
        "the same key bytes in another user's hands: the slot is bound to alice's uid"
    );
    // forget cuts the open handle at its next read.
    assert_eq!(t.forget(&alice, None), 1);
    assert_eq!(errno(fs.read(fh, 0, 100)), libc::EACCES);
    assert_eq!(errno(fs.open(a.ino, libc::O_RDONLY, &alice)), libc::EACCES);
    // A wrong key is refused; the right one opens again (and the handle reads again).
    t.add(&alice, &[8; 32], false, false, None);
    assert_eq!(errno(fs.open(a.ino, libc::O_RDONLY, &alice)), libc::EACCES);
    t.add(&alice, &[7; 32], false, false, None);
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"alice's secret");
    fs.release(fh).unwrap();
    // Still --default with no key loaded: new files are refused, not made without her key.
    t.forget(&alice, None);
    assert_eq!(
        errno(fs.create(ROOT_INO, OsStr::new("g"), 0o666, libc::O_RDWR, &alice)),
        libc::EACCES
    );
    assert!(fs.lookup(ROOT_INO, OsStr::new("g")).is_err());
    // Other users' files are untouched by all this.
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("h"), 0o644, libc::O_RDWR, &me)
        .unwrap();
    fs.release(fh).unwrap();
}

#[test]
fn a_recovery_slot_lets_the_key_service_open_it_too() {
    let (fs, tmp, me) = testing::fresh();
    let t = fs.customer_keys().clone();
    t.add(&me, &[5; 32], true, true, None);
    let (a, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o600, libc::O_RDWR, &me)
        .unwrap();
    fs.write(fh, 0, b"recoverable", &me).unwrap();
    fs.release(fh).unwrap();
    let s = slots(&tmp, &fs, "f");
    assert!(
        matches!(s.as_slice(), [KeySlot::Customer(_), KeySlot::Cmk { .. }]),
        "{s:?}"
    );
    t.forget(&me, None);
    let fh = fs.open(a.ino, libc::O_RDONLY, &me).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"recoverable");
    fs.release(fh).unwrap();
}

#[test]
fn idle_keys_expire() {
    let (fs, _tmp, me) = testing::fresh();
    let t = fs.customer_keys().clone();
    t.add(
        &me,
        &[5; 32],
        false,
        false,
        Some(std::time::Duration::from_millis(50)),
    );
    assert_eq!(t.status(&me).keys.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(80));
    assert_eq!(t.expire(), 1);
    assert!(t.status(&me).keys.is_empty());
}

#[test]
fn reencrypting_an_sse_c_file_keeps_it_under_the_customer_key() {
    let (fs, tmp, me) = testing::fresh();
    let t = fs.customer_keys().clone();
    t.add(&me, &[6; 32], true, false, None);
    let (a, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o600, libc::O_RDWR, &me)
        .unwrap();
    fs.write(fh, 0, b"stays mine", &me).unwrap();
    fs.release(fh).unwrap();
    let before = slots(&tmp, &fs, "f");
    assert!(fs.reencrypt(a.ino, None, &me).unwrap());
    let after = slots(&tmp, &fs, "f");
    assert!(
        matches!(after.as_slice(), [KeySlot::Customer(_)]),
        "{after:?}"
    );
    assert_ne!(before, after, "a fresh data key, a fresh slot");
    let fh = fs.open(a.ino, libc::O_RDONLY, &me).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"stays mine");
    fs.release(fh).unwrap();
    t.forget(&me, None);
    assert_eq!(errno(fs.open(a.ino, libc::O_RDONLY, &me)), libc::EACCES);
}
