//! The io_uring transport (FUSE over io_uring, kernel 6.14+): this daemon mounts on its own
//! /dev/fuse descriptor, answers INIT itself (asking for FUSE_OVER_IO_URING), then serves
//! requests from one ring per CPU, each with its thread pinned to that CPU: a request is
//! answered and the next one fetched with a single COMMIT_AND_FETCH, without the read()/
//! write() pair and the cross-CPU wake-up of the classic transport. A classic reader keeps
//! serving what the kernel still sends on /dev/fuse (FORGET, BATCH_FORGET, INTERRUPT, and
//! everything before the rings are ready), and notifications are written there.
//!
//! Every request, from either path, is decoded by [`super::proto`] and handled by the shared
//! [`Dispatcher`]; the unsafe ring plumbing lives in `envelopefs_sys::fuse_ring`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;

use envelopefs_sys::fuse_ring::{self, Event, FuseQueue};

use super::MountOptions;
use super::courtesy::Courtesy;
use super::dispatch::{Dispatcher, KernelNotify, Op, Reply, init};
use super::proto::{self, InHeader, opcode};
use crate::keys::Caller;

/// Entries of a queue's home thread and of each helper. The kernel hands a queue's next
/// request to the entry made available last: the home thread's (it registers last, and each
/// commit puts its entry back first), so requests stay on the caller's CPU. The home thread's
/// second entry takes a request that comes while it is busy with one (a RELEASE or a
/// writeback WRITE beside a caller's request) without waking another CPU; only a third
/// concurrent request reaches a helper, which is what streaming I/O (several readahead READs
/// of 1 MiB at once) needs. Measured (docs/PERFORMANCE.md): one entry at home sent untar's
/// background requests across CPUs (1.6× slower), eight kept readahead on one CPU (0.6× the
/// sequential read speed). Each entry holds a payload buffer of [`PAYLOAD_LEN`], touched
/// only as far as requests fill it.
const HOME_ENTRIES: usize = 2;
const HELPER_ENTRIES: usize = 1;
/// Payload buffer of a ring entry: the largest WRITE or READ (`max_write`, `max_pages`).
const PAYLOAD_LEN: usize = init::MAX_WRITE as usize;
/// Buffer of a classic reader: a whole request (header, op struct, names, a WRITE's data).
const CLASSIC_BUF: usize = PAYLOAD_LEN + 4096;
/// Pages per request (the kernel's `max_pages`), matching [`init::MAX_WRITE`].
const MAX_PAGES: u16 = (init::MAX_WRITE / 4096) as u16;
/// Newest protocol minor this implementation speaks (fuse_kernel.h 7.45).
const MINOR: u32 = 45;

/// Where FUSE over io_uring is switched on (root; the kernel offers it at INIT only when Y).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the running kernel offers FUSE over io_uring: `None` when it has no such switch.
pub fn kernel_uring_enabled() -> Option<bool> {
    std::fs::read_to_string(ENABLE_URING)
        .ok()
        .map(|s| s.trim() == "Y" || s.trim() == "1")
}

/// Notifications written on /dev/fuse (one write(2) per message).
struct DevNotifier(Arc<File>);

impl DevNotifier {
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let n = (&*self.0).write(msg)?;
        if n == msg.len() {
            Ok(())
        } else {
            Err(io::Error::other("short write of a notification"))
        }
    }
}

impl KernelNotify for DevNotifier {
    fn store(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(32 + data.len());
        proto::encode_notify_store(ino, offset, data, &mut msg);
        self.send(&msg)
    }
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        let mut msg = Vec::with_capacity(40);
        proto::encode_notify_inval_inode(ino, offset, len, &mut msg);
        self.send(&msg)
    }
}

/// Opens /dev/fuse and mounts it at `mountpoint` (root only: mount(2)).
pub(crate) fn mount(mountpoint: &Path, opts: &MountOptions) -> io::Result<File> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let (uid, gid, _) = envelopefs_sys::current_ids();
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = 0;
    if !opts.suid {
        flags |= libc::MS_NOSUID;
    }
    if !opts.dev {
        flags |= libc::MS_NODEV;
    }
    if opts.read_only {
        flags |= libc::MS_RDONLY;
    }
    fuse_ring::mount_fuse(&opts.fsname, mountpoint, "fuse.envelopefs", flags, &data)?;
    Ok(dev)
}

/// Reads from /dev/fuse, retrying what is not an answer: EINTR, EAGAIN, and ENOENT (the
/// request was interrupted before it was read). `Ok(None)` once the mount is gone.
fn read_request(dev: &File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match (&*dev).read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV) => return Ok(None),
                _ => return Err(e),
            },
        }
    }
}

fn caller(h: &InHeader) -> Caller {
    Caller {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    }
}

/// Writes a classic reply; a reply the kernel no longer wants (ENOENT: interrupted) is fine.
fn send_reply(dev: &File, msg: &[u8]) {
    if let Err(e) = (&*dev).write(msg)
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        log::warn!("cannot answer a FUSE request: {e}");
    }
}

/// A request for the dispatcher, or the reply it gets without one: DESTROY, a second INIT
/// (which cannot happen on a live connection), and what does not decode (logged).
fn decode<'a>(h: &InHeader, op: &'a [u8], rest: &'a [u8]) -> Result<Op<'a>, Reply> {
    match h.opcode {
        opcode::DESTROY => Err(Reply::Empty),
        opcode::INIT => Err(Reply::Err(libc::EPROTO)),
        _ => proto::decode(h, op, rest).map_err(|e| {
            log::warn!("malformed FUSE request: {e}");
            Reply::Err(e.errno())
        }),
    }
}

/// Handles one request as read from /dev/fuse; the reply (if any) goes to `out`.
fn classic_one(d: &Dispatcher, req: &[u8], out: &mut Vec<u8>) -> bool {
    let (h, op, rest) = match proto::split_classic(req) {
        Ok(parts) => parts,
        Err(e) => {
            log::warn!("malformed FUSE request: {e}");
            // Answer it if its header is readable, so the caller does not hang.
            return match proto::parse_in_header(req) {
                Ok(h) => proto::encode_reply(h.unique, &Reply::Err(e.errno()), out),
                Err(_) => false,
            };
        }
    };
    let reply = match decode(&h, op, rest) {
        Ok(op) => d.handle(&caller(&h), op),
        Err(r) => r,
    };
    proto::encode_reply(h.unique, &reply, out)
}

/// READs at least this large are streaming I/O (readahead): their callers gain from the other
/// CPU working in parallel more than from staying put, so they hold the thread in SCHED_OTHER
/// ([`Courtesy`]). Large WRITEs do not: writeback's caller waits for all of them at once, and
/// holding SCHED_OTHER for them made an untar of a tree with many large files slower (medians
/// of 7 rounds, 12.1 s against 10.0 s) without changing sequential writes.
const BULK: usize = 128 << 10;

/// Handles the request in a ring entry and writes the reply into the same buffers; returns
/// the commit id to answer with, and whether the request was a bulk READ ([`BULK`]).
fn uring_one(
    d: &Dispatcher,
    header: &mut [u8],
    payload: &mut [u8],
    body: &mut Vec<u8>,
) -> (u64, bool) {
    let mut bulk = false;
    /// A READ is answered in the payload buffer itself, once the request no longer borrows it.
    enum Next {
        Reply(Reply),
        Read {
            who: Caller,
            ino: u64,
            fh: u64,
            offset: u64,
            size: u32,
        },
    }
    let (unique, commit_id, next) = match proto::split_uring(header, payload) {
        Ok((h, op, rest, commit_id)) => {
            let next = match decode(&h, op, rest) {
                Ok(Op::Read {
                    ino,
                    fh,
                    offset,
                    size,
                }) => {
                    bulk = size as usize >= BULK;
                    Next::Read {
                        who: caller(&h),
                        ino,
                        fh,
                        offset,
                        size,
                    }
                }
                Ok(op) => Next::Reply(d.handle(&caller(&h), op)),
                Err(r) => Next::Reply(r),
            };
            (h.unique, commit_id, next)
        }
        Err(e) => {
            log::warn!("malformed FUSE request in a ring entry: {e}");
            let unique = proto::parse_in_header(header).map_or(0, |h| h.unique);
            (
                unique,
                commit_id_of(header),
                Next::Reply(Reply::Err(e.errno())),
            )
        }
    };
    let reply = match next {
        Next::Reply(r) => r,
        Next::Read {
            who,
            ino,
            fh,
            offset,
            size,
        } => d.read_into(&who, ino, fh, offset, size, payload),
    };
    body.clear();
    let error = match &reply {
        Reply::Err(e) => proto::wire_error(*e),
        // Already in the payload buffer.
        Reply::Filled(n) => {
            proto::set_uring_reply(header, unique, 0, *n as u32);
            return (commit_id, bulk);
        }
        // Contents of another kind (readlink, getxattr) straight into the buffer.
        Reply::Data(d) if d.len() <= payload.len() => {
            payload[..d.len()].copy_from_slice(d);
            proto::set_uring_reply(header, unique, 0, d.len() as u32);
            return (commit_id, bulk);
        }
        r => {
            proto::encode_body(r, body);
            0
        }
    };
    if error == 0 && body.len() > payload.len() {
        log::error!(
            "internal error: a {}-byte reply does not fit the {}-byte ring buffer",
            body.len(),
            payload.len()
        );
        proto::set_uring_reply(header, unique, -libc::EIO, 0);
    } else {
        payload[..body.len()].copy_from_slice(body);
        proto::set_uring_reply(header, unique, error, body.len() as u32);
    }
    (commit_id, bulk)
}

/// The commit id of a ring entry's header (`fuse_uring_ent_in_out.commit_id`, bytes 264..272),
/// read without trusting the rest of the header; 0 if it is too short.
fn commit_id_of(header: &[u8]) -> u64 {
    header
        .get(264..272)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// One ring thread of queue `qid`, pinned to `cpu`: registers its entries, reports that on
/// `registered`, then serves until the connection ends.
fn serve_queue(
    d: Arc<Dispatcher>,
    dev: Arc<File>,
    qid: u16,
    cpu: usize,
    depth: usize,
    courtesy: Option<Arc<Courtesy>>,
    registered: std::sync::mpsc::Sender<()>,
) -> io::Result<()> {
    if let Err(e) = fuse_ring::pin_to_cpu(cpu) {
        log::debug!("cannot pin a thread of queue {qid} to CPU {cpu}: {e}");
    }
    let me = courtesy.as_ref().map(|c| c.join());
    let mut q = FuseQueue::new(dev.as_fd(), qid, depth, PAYLOAD_LEN)?;
    q.register_all()?;
    let _ = registered.send(());
    drop(registered);
    let mut ready = Vec::with_capacity(q.depth());
    let mut body = Vec::with_capacity(PAYLOAD_LEN);
    loop {
        let mut streaming = false;
        if q.wait(&mut ready)? == Event::Ended {
            return Ok(());
        }
        for &i in &ready {
            let Some((header, payload)) = q.buffers(i) else {
                continue;
            };
            let (commit_id, bulk) = uring_one(&d, header, payload, &mut body);
            streaming |= bulk;
            q.commit(i, commit_id)?;
        }
        if let (Some(c), Some(me)) = (&courtesy, &me) {
            c.note(me, streaming);
        }
    }
}

/// The possible CPUs (the kernel makes one queue per possible CPU).
fn possible_cpus() -> usize {
    let parse = |s: &str| -> Option<usize> {
        let mut max = 0;
        for part in s.trim().split(',') {
            let last = part.rsplit('-').next()?;
            max = max.max(last.parse::<usize>().ok()?);
        }
        Some(max + 1)
    };
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse(&s))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Answers INIT; returns whether the kernel granted FUSE over io_uring.
fn handshake(d: &Dispatcher, dev: &File, want_uring: bool) -> io::Result<bool> {
    let mut buf = vec![0u8; CLASSIC_BUF];
    let n = read_request(dev, &mut buf)?
        .ok_or_else(|| io::Error::other("the mount went away before INIT"))?;
    let (h, op, _) = proto::split_classic(&buf[..n])
        .map_err(|e| io::Error::other(format!("malformed INIT: {e}")))?;
    if h.opcode != opcode::INIT {
        return Err(io::Error::other(format!(
            "expected INIT from the kernel, got opcode {}",
            h.opcode
        )));
    }
    let init_in =
        proto::decode_init(op).map_err(|e| io::Error::other(format!("malformed INIT: {e}")))?;
    if init_in.major != 7 {
        return Err(io::Error::other(format!(
            "the kernel speaks FUSE {}.{}; this build speaks 7.x",
            init_in.major, init_in.minor
        )));
    }
    let mut wanted = d.wanted_init_flags() | init::ASYNC_READ | init::BIG_WRITES | init::MAX_PAGES;
    if want_uring {
        wanted |= init::OVER_IO_URING;
    }
    let granted = wanted & init_in.flags;
    for (bit, name) in [
        (init::DO_READDIRPLUS, "READDIRPLUS"),
        (init::PARALLEL_DIROPS, "PARALLEL_DIROPS"),
        (init::HANDLE_KILLPRIV_V2, "HANDLE_KILLPRIV_V2"),
        (init::WRITEBACK_CACHE, "WRITEBACK_CACHE"),
    ] {
        if wanted & bit != 0 && granted & bit == 0 {
            log::info!("kernel lacks FUSE capability {name}; continuing without it");
        }
    }
    let out = proto::InitOut {
        minor: init_in.minor.min(MINOR),
        max_readahead: init_in.max_readahead.min(init::MAX_READAHEAD),
        flags: granted,
        max_background: 64,
        congestion_threshold: 48,
        max_write: init::MAX_WRITE,
        max_pages: MAX_PAGES,
    };
    let mut body = Vec::new();
    proto::encode_init_out(&out, &mut body);
    let mut msg =
        proto::out_header(h.unique, 0, (proto::OUT_HEADER_LEN + body.len()) as u32).to_vec();
    msg.extend_from_slice(&body);
    (&*dev).write_all(&msg)?;
    Ok(granted & init::OVER_IO_URING != 0)
}

/// Serves the mount on `dev` until it is unmounted: INIT (then `after_init`, which must not
/// touch the mount), then the rings (when `want_uring` and the kernel grants it; `threads`
/// per CPU queue) beside one classic reader, or `threads` classic readers.
pub(crate) fn serve(
    d: Arc<Dispatcher>,
    dev: File,
    want_uring: bool,
    threads: usize,
    after_init: impl FnOnce(),
) -> io::Result<()> {
    let dev = Arc::new(dev);
    let _ = d.notifier_slot().set(Box::new(DevNotifier(dev.clone())));
    let uring = handshake(&d, &dev, want_uring)?;
    after_init();
    let mut rings = Vec::new();
    // The courtesy monitor (io_uring only) and its thread.
    let mut courtesy = None;
    if uring {
        // Each CPU's queue gets `per_queue` threads: its home thread, pinned to that CPU (a
        // request is then served where its caller runs, without a cross-CPU wake-up), and
        // helpers pinned to the other CPUs, which take the queue's requests while the home
        // thread is busy (readahead and writeback send many at once). The kernel gives a
        // request to the entry made available last, so the home threads register last.
        let queues = possible_cpus();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_queue = threads.clamp(1, cpus.max(1));
        courtesy = Courtesy::start();
        log::info!("FUSE over io_uring: {queues} queues, {per_queue} threads each");
        for round in (0..per_queue).rev() {
            let (tx, rx) = std::sync::mpsc::channel();
            for qid in 0..queues {
                let (d, dev, tx) = (d.clone(), dev.clone(), tx.clone());
                let c = courtesy.as_ref().map(|(c, _)| c.clone());
                let cpu = (qid + round) % cpus;
                let depth = if round == 0 {
                    HOME_ENTRIES
                } else {
                    HELPER_ENTRIES
                };
                let t = std::thread::Builder::new()
                    .name(format!("fuse-ring-{qid}.{round}"))
                    .spawn(move || serve_queue(d, dev, qid as u16, cpu, depth, c, tx))?;
                rings.push((qid, t));
            }
            drop(tx);
            // Wait until this round's entries are registered (a thread that failed drops its
            // sender without a message; the others drop theirs once they have reported).
            for _ in 0..queues {
                if rx.recv().is_err() {
                    break;
                }
            }
        }
    } else if want_uring {
        log::warn!(
            "the kernel did not grant FUSE over io_uring; serving on the classic /dev/fuse \
             reader instead"
        );
    }
    let readers = if uring { 1 } else { threads.max(1) };
    let mut classic = Vec::new();
    for r in 1..readers {
        let (d, dev) = (d.clone(), dev.clone());
        classic.push(
            std::thread::Builder::new()
                .name(format!("fuse-reader-{r}"))
                .spawn(move || classic_loop(&d, &dev, false))?,
        );
    }
    let mut result = classic_loop(&d, &dev, uring);
    for t in classic {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a reader panicked")));
        result = result.and(r);
    }
    for (qid, t) in rings {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("ring {qid} ended with an error: {e}"),
            Err(_) => log::error!("ring {qid} panicked"),
        }
    }
    if let Some((c, t)) = courtesy {
        c.stop();
        let _ = t.join();
    }
    result
}

/// The classic reader: one request per read(2), one reply per write(2), until unmounted.
///
/// `beside_rings`: the rings serve every request that waits for an answer, so what comes here
/// is FORGET and INTERRUPT (which this filesystem does not act on); after a FORGET the reader
/// naps for [`FORGET_NAP`] so that the kernel's next ones arrive together in one BATCH_FORGET:
/// an `rm -rf` otherwise wakes this thread, and often an idle CPU, once per removed file.
fn classic_loop(d: &Dispatcher, dev: &File, beside_rings: bool) -> io::Result<()> {
    let mut buf = vec![0u8; CLASSIC_BUF];
    let mut out = Vec::new();
    while let Some(n) = read_request(dev, &mut buf)? {
        let forget = proto::parse_in_header(&buf[..n])
            .is_ok_and(|h| h.opcode == opcode::FORGET || h.opcode == opcode::BATCH_FORGET);
        if classic_one(d, &buf[..n], &mut out) {
            send_reply(dev, &out);
        }
        if beside_rings && forget {
            std::thread::sleep(FORGET_NAP);
        }
    }
    Ok(())
}

/// How long the classic reader beside the rings waits after a FORGET (see [`classic_loop`]).
const FORGET_NAP: std::time::Duration = std::time::Duration::from_millis(2);
