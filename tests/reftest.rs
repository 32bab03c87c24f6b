//! Property test: the filesystem core (driven without FUSE) against a simple in-memory model.
//!
//! Random sequences of create, write, read, truncate, rename, link, unlink, mkdir and remount;
//! targets are chosen by index modulo the live entries, and the whole tree (names, kinds,
//! contents, link counts) is compared after every operation. Shrunk failures are pinned below
//! as `regression_*` tests.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use envelopefs::fs::{EncFs, Kind, SetAttr};
use envelopefs::keys::Caller;
use envelopefs::keys::local::LocalKms;
use envelopefs::store::volume;
use proptest::prelude::*;

const NAMES: &[&str] = &["a", "b", "c", "d", "e"];
/// Inode descriptors the core may cache: tiny, so trees outgrow it and eviction, reopening by
/// name, renames and pinning are exercised on every run.
const FD_CACHE: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: usize,
        name: usize,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Write {
        file: usize,
        offset: u32,
        len: u16,
        seed: u8,
    },
    Read {
        file: usize,
        offset: u32,
        len: u16,
    },
    Truncate {
        file: usize,
        size: u32,
    },
    Rename {
        entry: usize,
        dir: usize,
        name: usize,
    },
    Link {
        file: usize,
        dir: usize,
        name: usize,
    },
    Unlink {
        entry: usize,
    },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let off = prop_oneof![0u32..64, 4000u32..4200, 0u32..20_000];
    prop_oneof![
        (any::<usize>(), 0..NAMES.len()).prop_map(|(dir, name)| Op::Create { dir, name }),
        (any::<usize>(), 0..NAMES.len()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        (any::<usize>(), off.clone(), 0u16..9000, any::<u8>()).prop_map(
            |(file, offset, len, seed)| Op::Write {
                file,
                offset,
                len,
                seed
            }
        ),
        (any::<usize>(), off.clone(), 0u16..9000).prop_map(|(file, offset, len)| Op::Read {
            file,
            offset,
            len
        }),
        (any::<usize>(), off).prop_map(|(file, size)| Op::Truncate { file, size }),
        (any::<usize>(), any::<usize>(), 0..NAMES.len())
            .prop_map(|(entry, dir, name)| Op::Rename { entry, dir, name }),
        (any::<usize>(), any::<usize>(), 0..NAMES.len()).prop_map(|(file, dir, name)| Op::Link {
            file,
            dir,
            name
        }),
        any::<usize>().prop_map(|entry| Op::Unlink { entry }),
        Just(Op::Remount),
    ]
}

/// The model: paths → entries; files point at shared contents (hard links) by id.
#[derive(Default, Clone, Debug)]
struct Model {
    entries: BTreeMap<String, Entry>,
    contents: BTreeMap<usize, Vec<u8>>,
    next_id: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir,
    File(usize),
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(
            self.entries
                .iter()
                .filter(|(_, e)| **e == Entry::Dir)
                .map(|(p, _)| p.clone()),
        );
        d
    }
    fn files(&self) -> Vec<(String, usize)> {
        self.entries
            .iter()
            .filter_map(|(p, e)| {
                if let Entry::File(id) = e {
                    Some((p.clone(), *id))
                } else {
                    None
                }
            })
            .collect()
    }
    fn nlink(&self, id: usize) -> usize {
        self.entries
            .values()
            .filter(|e| **e == Entry::File(id))
            .count()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

struct Harness {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    kms: Arc<LocalKms>,
    fs: EncFs,
    caller: Caller,
}

impl Harness {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        volume::prepare(&root).unwrap();
        let kms = Arc::new(LocalKms::in_memory_for_tests());
        volume::create(
            &root,
            kms.as_ref(),
            "alias/default",
            4096,
            "keystore.json".into(),
            0,
            true,
        )
        .unwrap();
        let caller = Caller::current();
        let fs = EncFs::with_fd_cache(volume::open(&root).unwrap(), kms.clone(), &caller, FD_CACHE)
            .unwrap();
        Harness {
            _tmp: tmp,
            root,
            kms,
            fs,
            caller,
        }
    }

    fn remount(&mut self) {
        self.fs = EncFs::with_fd_cache(
            volume::open(&self.root).unwrap(),
            self.kms.clone(),
            &self.caller,
            FD_CACHE,
        )
        .unwrap();
    }

    /// Resolves a path to (parent ino, ino).
    fn resolve(&self, path: &str) -> u64 {
        let mut ino = 1;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs.lookup(ino, OsStr::new(part)).expect("lookup").ino;
        }
        ino
    }

    fn parent_and_name<'a>(&self, path: &'a str) -> (u64, &'a str) {
        match path.rsplit_once('/') {
            Some((d, n)) => (self.resolve(d), n),
            None => (1, path),
        }
    }

    fn read_all(&self, path: &str) -> Vec<u8> {
        let ino = self.resolve(path);
        let fh = self.fs.open(ino, libc::O_RDONLY, &self.caller).unwrap();
        let mut out = Vec::new();
        loop {
            let chunk = self.fs.read(fh, out.len() as u64, 65536).unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.fs.release(fh).unwrap();
        out
    }

    /// Compares the whole tree with the model.
    fn check(&self, m: &Model) {
        let mut seen = BTreeMap::new();
        self.walk(1, "", &mut seen);
        let want: BTreeMap<String, Entry> = m.entries.clone();
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "tree shape differs"
        );
        for (path, e) in &want {
            let (kind, nlink) = seen[path];
            match e {
                Entry::Dir => assert_eq!(kind, Kind::Dir, "{path} should be a directory"),
                Entry::File(id) => {
                    assert_eq!(kind, Kind::File, "{path} should be a file");
                    assert_eq!(nlink as usize, m.nlink(*id), "{path} link count");
                    let data = self.read_all(path);
                    assert_eq!(data.len(), m.contents[id].len(), "{path} size");
                    assert!(data == m.contents[id], "{path} contents differ");
                    let attr = self.fs.getattr(self.resolve(path)).unwrap();
                    assert_eq!(attr.size as usize, data.len(), "{path} getattr size");
                }
            }
        }
        assert_eq!(self.fs.open_handles(), 0, "handles leaked");
    }

    fn walk(&self, ino: u64, prefix: &str, out: &mut BTreeMap<String, (Kind, u32)>) {
        let fh = self.fs.opendir(ino).unwrap();
        let entries = self.fs.readdir(ino, fh, 0).unwrap();
        self.fs.releasedir(fh);
        for (_, e) in entries {
            let name = e.name.to_str().unwrap().to_owned();
            if name == "." || name == ".." {
                continue;
            }
            let path = join(prefix, &name);
            let attr = self.fs.lookup(ino, OsStr::new(&name)).unwrap();
            out.insert(path.clone(), (attr.kind, attr.nlink));
            if attr.kind == Kind::Dir {
                self.walk(attr.ino, &path, out);
            }
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i * 7 % 251) as u8))
        .collect()
}

fn apply(h: &mut Harness, m: &mut Model, op: &Op) {
    let c = h.caller;
    match *op {
        Op::Create { dir, name } => {
            let dirs = m.dirs();
            let d = &dirs[dir % dirs.len()];
            let path = join(d, NAMES[name]);
            if m.entries.contains_key(&path) {
                return;
            }
            let p = h.resolve(d);
            let (_, fh) =
                h.fs.create(p, OsStr::new(NAMES[name]), 0o644, libc::O_RDWR, &c)
                    .unwrap();
            h.fs.release(fh).unwrap();
            m.entries.insert(path, Entry::File(m.next_id));
            m.contents.insert(m.next_id, Vec::new());
            m.next_id += 1;
        }
        Op::Mkdir { dir, name } => {
            let dirs = m.dirs();
            let d = &dirs[dir % dirs.len()];
            let path = join(d, NAMES[name]);
            if m.entries.contains_key(&path) {
                return;
            }
            h.fs.mkdir(h.resolve(d), OsStr::new(NAMES[name]), 0o755, &c)
                .unwrap();
            m.entries.insert(path, Entry::Dir);
        }
        Op::Write {
            file,
            offset,
            len,
            seed,
        } => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let (path, id) = &files[file % files.len()];
            let data = pattern(seed, len as usize);
            let fh = h.fs.open(h.resolve(path), libc::O_WRONLY, &c).unwrap();
            assert_eq!(
                h.fs.write(fh, u64::from(offset), &data, &c).unwrap() as usize,
                data.len()
            );
            h.fs.release(fh).unwrap();
            if !data.is_empty() {
                let content = m.contents.get_mut(id).unwrap();
                let end = offset as usize + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset as usize..end].copy_from_slice(&data);
            }
        }
        Op::Read { file, offset, len } => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let (path, id) = &files[file % files.len()];
            let fh = h.fs.open(h.resolve(path), libc::O_RDONLY, &c).unwrap();
            let got = h.fs.read(fh, u64::from(offset), u32::from(len)).unwrap();
            h.fs.release(fh).unwrap();
            let content = &m.contents[id];
            let s = (offset as usize).min(content.len());
            let e = (offset as usize + len as usize).min(content.len());
            assert!(
                got == content[s..e],
                "read of {path} at {offset}+{len} differs"
            );
        }
        Op::Truncate { file, size } => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let (path, id) = &files[file % files.len()];
            let set = SetAttr {
                size: Some(u64::from(size)),
                ..SetAttr::default()
            };
            h.fs.setattr(h.resolve(path), &set, &c).unwrap();
            m.contents.get_mut(id).unwrap().resize(size as usize, 0);
        }
        Op::Rename { entry, dir, name } => {
            let all: Vec<String> = m.entries.keys().cloned().collect();
            if all.is_empty() {
                return;
            }
            let from = all[entry % all.len()].clone();
            let dirs = m.dirs();
            let d = dirs[dir % dirs.len()].clone();
            let to = join(&d, NAMES[name]);
            // Skip what POSIX forbids or what would need the model to know more.
            if to == from
                || to.starts_with(&format!("{from}/"))
                || d == from
                || m.entries.contains_key(&to)
            {
                return;
            }
            let (fp, fnm) = h.parent_and_name(&from);
            let (tp, tnm) = h.parent_and_name(&to);
            h.fs.rename(fp, OsStr::new(fnm), tp, OsStr::new(tnm), 0)
                .unwrap();
            let moved: Vec<(String, Entry)> = m
                .entries
                .iter()
                .filter(|(p, _)| **p == from || p.starts_with(&format!("{from}/")))
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect();
            for (p, e) in moved {
                m.entries.remove(&p);
                m.entries.insert(format!("{to}{}", &p[from.len()..]), e);
            }
        }
        Op::Link { file, dir, name } => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let (path, id) = files[file % files.len()].clone();
            let dirs = m.dirs();
            let d = &dirs[dir % dirs.len()];
            let to = join(d, NAMES[name]);
            if m.entries.contains_key(&to) {
                return;
            }
            h.fs.link(h.resolve(&path), h.resolve(d), OsStr::new(NAMES[name]))
                .unwrap();
            m.entries.insert(to, Entry::File(id));
        }
        Op::Unlink { entry } => {
            let all: Vec<String> = m.entries.keys().cloned().collect();
            if all.is_empty() {
                return;
            }
            let path = all[entry % all.len()].clone();
            let (p, n) = h.parent_and_name(&path);
            match m.entries[&path] {
                Entry::Dir => {
                    if m.entries.keys().any(|k| k.starts_with(&format!("{path}/"))) {
                        return;
                    }
                    h.fs.rmdir(p, OsStr::new(n)).unwrap();
                }
                Entry::File(_) => h.fs.unlink(p, OsStr::new(n)).unwrap(),
            }
            m.entries.remove(&path);
        }
        Op::Remount => h.remount(),
    }
}

fn run(ops: &[Op]) {
    let mut h = Harness::new();
    let mut m = Model::default();
    for op in ops {
        apply(&mut h, &mut m, op);
        h.check(&m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn core_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

#[test]
fn regression_grow_then_shrink_across_blocks() {
    run(&[
        Op::Create { dir: 0, name: 0 },
        Op::Write {
            file: 0,
            offset: 4000,
            len: 300,
            seed: 1,
        },
        Op::Truncate {
            file: 0,
            size: 4096,
        },
        Op::Write {
            file: 0,
            offset: 19000,
            len: 5,
            seed: 2,
        },
        Op::Truncate {
            file: 0,
            size: 4097,
        },
        Op::Remount,
        Op::Read {
            file: 0,
            offset: 0,
            len: 8000,
        },
    ]);
}
