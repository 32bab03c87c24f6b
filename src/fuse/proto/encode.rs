//! The kernel-bound half of the FUSE codec: the INIT reply, replies ([`encode_reply`],
//! [`encode_body`], [`set_uring_reply`]) and notifications, written as the kernel's
//! `fuse_kernel.h` lays them out. Requests are decoded in the parent module.

use super::*;

/// What the INIT reply says (the rest of `fuse_init_out` is fixed: major 7, time_gran 1,
/// map_alignment 0, max_stack_depth 0, request_timeout 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct InitOut {
    /// The kernel's minor version; the reply carries min(this, 45).
    pub minor: u32,
    pub max_readahead: u32,
    /// All 64 flag bits; the high half goes in `flags2` (with INIT_EXT set in the low half).
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub max_pages: u16,
}

/// Size of `fuse_init_out`.
#[cfg(test)]
pub(crate) const INIT_OUT_LEN: usize = 64;

/// Appends little-endian fields.
struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Appends the INIT reply body (`fuse_init_out`, 64 bytes).
pub(crate) fn encode_init_out(o: &InitOut, out: &mut Vec<u8>) {
    let mut low = o.flags as u32;
    let high = (o.flags >> 32) as u32;
    if high != 0 {
        low |= INIT_EXT;
    }
    W(out)
        .u32(KERNEL_VERSION)
        .u32(o.minor.min(KERNEL_MINOR_VERSION))
        .u32(o.max_readahead)
        .u32(low)
        .u16(o.max_background)
        .u16(o.congestion_threshold)
        .u32(o.max_write)
        .u32(1) // time_gran: nanoseconds
        .u16(o.max_pages)
        .u16(0) // map_alignment
        .u32(high) // flags2
        .u32(0) // max_stack_depth
        .u16(0) // request_timeout
        .zeros(22); // unused[11]
}

/// Size of `fuse_attr`.
const ATTR_LEN: usize = 88;
/// Size of `fuse_entry_out`.
#[cfg(test)]
pub(crate) const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// Size of `fuse_attr_out`.
#[cfg(test)]
pub(crate) const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// Size of `fuse_open_out`.
#[cfg(test)]
pub(crate) const OPEN_OUT_LEN: usize = 16;
/// Size of `fuse_kstatfs`.
#[cfg(test)]
pub(crate) const STATFS_OUT_LEN: usize = 80;

/// `st_mode` file type bits of a kind.
pub(super) fn type_bits(k: Kind) -> u32 {
    match k {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
        Kind::CharDev => libc::S_IFCHR,
        Kind::BlockDev => libc::S_IFBLK,
    }
}

/// A time as the kernel's (seconds, nanoseconds): seconds as two's complement, rounded down
/// for times before the epoch, so nanoseconds are always in 0..1e9.
pub(super) fn wire_time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut sec = 0i64.saturating_sub_unsigned(d.as_secs());
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec = sec.saturating_sub(1);
                nsec = 1_000_000_000 - nsec;
            }
            (sec as u64, nsec)
        }
    }
}

/// `fuse_attr`.
fn put_attr(w: &mut W<'_>, a: &Attr) {
    let (asec, ansec) = wire_time(a.atime);
    let (msec, mnsec) = wire_time(a.mtime);
    let (csec, cnsec) = wire_time(a.ctime);
    w.u64(a.ino)
        .u64(a.size)
        .u64(a.blocks)
        .u64(asec)
        .u64(msec)
        .u64(csec)
        .u32(ansec)
        .u32(mnsec)
        .u32(cnsec)
        .u32(type_bits(a.kind) | u32::from(a.perm))
        .u32(a.nlink)
        .u32(a.uid)
        .u32(a.gid)
        .u32(a.rdev)
        .u32(a.blksize)
        .u32(0); // flags
}

/// `fuse_entry_out` for `nodeid` (0 and zeroed attributes: a negative entry).
fn put_entry(w: &mut W<'_>, nodeid: u64, attr: Option<&Attr>, ttl: Duration) {
    w.u64(nodeid)
        .u64(0) // generation
        .u64(ttl.as_secs()) // entry_valid
        .u64(ttl.as_secs()) // attr_valid
        .u32(ttl.subsec_nanos())
        .u32(ttl.subsec_nanos());
    match attr {
        Some(a) => put_attr(w, a),
        None => {
            w.zeros(ATTR_LEN);
        }
    }
}

/// `fuse_open_out`.
fn put_open(w: &mut W<'_>, fh: u64, keep_cache: bool) {
    w.u64(fh)
        .u32(if keep_cache { FOPEN_KEEP_CACHE } else { 0 })
        .i32(0); // backing_id
}

/// `fuse_dirent` with its padding.
fn put_dirent(w: &mut W<'_>, ino: u64, next: u64, kind: Kind, name: &OsStr) {
    let pad = dirent_size(name) - 24 - name.len();
    w.u64(ino)
        .u64(next)
        .u32(name.len() as u32)
        .u32(type_bits(kind) >> 12) // DT_* = S_IF* >> 12
        .bytes(name.as_bytes())
        .zeros(pad);
}

fn put_statfs(w: &mut W<'_>, s: &Statfs) {
    w.u64(s.blocks)
        .u64(s.bfree)
        .u64(s.bavail)
        .u64(s.files)
        .u64(s.ffree)
        .u32(s.bsize)
        .u32(s.namelen)
        .u32(s.frsize)
        .u32(0) // padding
        .zeros(24); // spare[6]
}

/// Appends the body of a reply (no out header) to `out` (which the caller clears first).
/// [`Reply::None`], [`Reply::Err`] and [`Reply::Empty`] append nothing.
pub(crate) fn encode_body(reply: &Reply, out: &mut Vec<u8>) {
    let w = &mut W(out);
    match reply {
        // Filled: the data is already in the transport's buffer, after no header.
        Reply::None | Reply::Empty | Reply::Err(_) | Reply::Filled(_) => {}
        Reply::Entry { attr, ttl } => put_entry(w, attr.map_or(0, |a| a.ino), attr.as_ref(), *ttl),
        Reply::Attr { attr, ttl } => {
            w.u64(ttl.as_secs()).u32(ttl.subsec_nanos()).u32(0);
            put_attr(w, attr);
        }
        Reply::Data(d) => {
            w.bytes(d);
        }
        Reply::Open { fh, keep_cache } => put_open(w, *fh, *keep_cache),
        Reply::Create {
            attr,
            ttl,
            fh,
            keep_cache,
        } => {
            put_entry(w, attr.ino, Some(attr), *ttl);
            put_open(w, *fh, *keep_cache);
        }
        Reply::Written(n) => {
            w.u32(*n).u32(0);
        }
        Reply::Statfs(s) => put_statfs(w, s),
        Reply::XattrSize(n) => {
            w.u32(*n).u32(0);
        }
        Reply::Dir(entries) => {
            for (next, e) in entries {
                put_dirent(w, e.ino, *next, e.kind, &e.name);
            }
        }
        Reply::DirPlus { entries, ttl } => {
            for (next, e, attr) in entries {
                put_entry(w, e.ino, Some(attr), *ttl);
                put_dirent(w, e.ino, *next, e.kind, &e.name);
            }
        }
    }
}

/// `fuse_out_header` bytes: `len` (the whole reply, header included), `error` (0 or a
/// negative errno; for a notification, its positive code), `unique`.
pub(crate) fn out_header(unique: u64, error: i32, len: u32) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// The `fuse_out_header.error` for a positive errno: `-errno`. The kernel rejects a reply
/// whose error is positive or not above -512 (the write fails with EINVAL and the request is
/// never answered), so an errno outside 1..=511 (a bug elsewhere) is sent as -EIO.
pub(crate) fn wire_error(errno: i32) -> i32 {
    if (1..512).contains(&errno) {
        -errno
    } else {
        -libc::EIO
    }
}

/// A whole classic reply, header and body, into `out` (cleared first). Returns false for
/// [`Reply::None`] (nothing to send; `out` is left empty). `Reply::Err(e)` is a bare header
/// with error [`wire_error`]`(e)`.
pub(crate) fn encode_reply(unique: u64, reply: &Reply, out: &mut Vec<u8>) -> bool {
    out.clear();
    let error = match reply {
        Reply::None => return false,
        Reply::Err(e) => wire_error(*e),
        _ => 0,
    };
    out.extend_from_slice(&[0u8; OUT_HEADER_LEN]);
    encode_body(reply, out);
    let h = out_header(unique, error, out.len() as u32);
    out[..OUT_HEADER_LEN].copy_from_slice(&h);
    true
}

/// For io_uring: writes the `fuse_out_header` (len = header + `payload_sz`, `error` as in
/// [`out_header`]) into `header[0..16]` and `payload_sz` into `ring_ent_in_out.payload_sz`
/// (`header[272..276]`) of a `fuse_uring_req_header` buffer. `commit_id` is left as the kernel
/// put it.
///
/// # Panics
///
/// If `header` is shorter than [`URING_HEADER_LEN`] (a bug in the transport, not something the
/// kernel can cause).
pub(crate) fn set_uring_reply(header: &mut [u8], unique: u64, error: i32, payload_sz: u32) {
    assert!(
        header.len() >= URING_HEADER_LEN,
        "fuse_uring_req_header too short"
    );
    let len = (OUT_HEADER_LEN as u32).saturating_add(payload_sz);
    header[..OUT_HEADER_LEN].copy_from_slice(&out_header(unique, error, len));
    header[URING_PAYLOAD_SZ..URING_PAYLOAD_SZ + 4].copy_from_slice(&payload_sz.to_le_bytes());
}

/// FUSE_NOTIFY_INVAL_INODE (`fuse_notify_inval_inode_out`: ino, off, len), header included,
/// into `out` (cleared first).
pub(crate) fn encode_notify_inval_inode(ino: u64, off: i64, len: i64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&out_header(
        0,
        notify::INVAL_INODE,
        (OUT_HEADER_LEN + 24) as u32,
    ));
    W(out).u64(ino).i64(off).i64(len);
}

/// FUSE_NOTIFY_STORE (`fuse_notify_store_out`: nodeid, offset, size, padding; then the data),
/// header included, into `out` (cleared first).
pub(crate) fn encode_notify_store(ino: u64, offset: u64, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let len = OUT_HEADER_LEN + 24 + data.len();
    out.extend_from_slice(&out_header(0, notify::STORE, len as u32));
    W(out)
        .u64(ino)
        .u64(offset)
        .u32(data.len() as u32)
        .u32(0)
        .bytes(data);
}
