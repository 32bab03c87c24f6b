//! FUSE over io_uring (kernel 6.14+, protocol 7.42): one queue's ring and the buffers of its
//! entries, plus the mount(2) and CPU pinning the transport needs. This module holds all the
//! unsafe code of the io_uring transport; what it hands out is safe to use.
//!
//! The protocol (linux/fuse.h, fs/fuse/dev_uring.c): each entry has a 288-byte header buffer
//! (`fuse_uring_req_header`) and a payload buffer. `REGISTER` gives both to the kernel (an
//! `iovec[2]` at `sqe->addr`, `sqe->len` = 2); the kernel completes the command when a request
//! has been copied in. The daemon answers in the same buffers and sends `COMMIT_AND_FETCH`
//! (commit id from the header), which hands the buffers back for the next request. Both
//! commands are `IORING_OP_URING_CMD` on the /dev/fuse descriptor with a
//! `fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 pad[6] }` in the 128-byte SQE's
//! command area.
//!
//! The invariant that makes this sound: while an entry is with the kernel (from the submission
//! of its command until its completion) nothing here reads or writes its buffers, and the
//! buffers are heap allocations that never move or shrink; a queue dropped with entries still
//! in the kernel leaks their buffers rather than free memory the kernel may still write.

use std::io;
#[cfg(test)]
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::{check, cname};

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Size of `struct fuse_uring_req_header`.
pub const HEADER_LEN: usize = 288;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Never given to the kernel, or given back by a completion: ours to touch.
    User,
    /// Submitted: the kernel may write the buffers at any moment.
    Kernel,
}

struct Slot {
    header: Box<[u8]>,
    payload: Box<[u8]>,
    /// The `iovec[2]` REGISTER points at; read by the kernel during submission only.
    iov: Box<[libc::iovec; 2]>,
    state: State,
    /// The last command sent, and its commit id, to send again on EAGAIN/EINTR.
    last: (u32, u64),
}

/// What a wait brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Entries holding a request, to answer with [`FuseQueue::commit`].
    Requests,
    /// The connection is gone (unmounted or aborted): every entry has come back.
    Ended,
}

/// One FUSE queue: an io_uring with `depth` entries registered on the /dev/fuse descriptor.
pub struct FuseQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Slot>,
    fd: RawFd,
    qid: u16,
    ended: usize,
}

// SAFETY: the raw pointers inside `iovec`s point into the queue's own heap buffers; the queue is
// used by one thread at a time (`&mut self` for everything that touches the ring or buffers).
unsafe impl Send for FuseQueue {}

impl FuseQueue {
    /// A ring for queue `qid` (the CPU it serves) with `depth` entries whose payload buffers
    /// hold `payload_len` bytes. `dev` must stay open for the life of the queue.
    pub fn new(
        dev: BorrowedFd<'_>,
        qid: u16,
        depth: usize,
        payload_len: usize,
    ) -> io::Result<Self> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(2 * depth as u32)
            .build(depth as u32)?;
        let mut slots = Vec::with_capacity(depth);
        for _ in 0..depth {
            let mut header = vec![0u8; HEADER_LEN].into_boxed_slice();
            let mut payload = vec![0u8; payload_len].into_boxed_slice();
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: header.len(),
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: payload.len(),
                },
            ]);
            slots.push(Slot {
                header,
                payload,
                iov,
                state: State::User,
                last: (CMD_REGISTER, 0),
            });
        }
        Ok(FuseQueue {
            ring,
            slots,
            fd: dev.as_raw_fd(),
            qid,
            ended: 0,
        })
    }

    /// Number of entries.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Gives every entry to the kernel (REGISTER) and submits.
    pub fn register_all(&mut self) -> io::Result<()> {
        for i in 0..self.slots.len() {
            self.push(i, CMD_REGISTER, 0)?;
        }
        self.ring.submit()?;
        Ok(())
    }

    fn push(&mut self, i: usize, cmd_op: u32, commit_id: u64) -> io::Result<()> {
        let slot = &mut self.slots[i];
        if slot.state != State::User {
            return Err(io::Error::other(format!(
                "ring entry {i} is not ours to submit"
            )));
        }
        let mut cmd = [0u8; 80];
        // struct fuse_uring_cmd_req: flags (0), commit_id, qid.
        cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_le_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(self.fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            op = op.addr(Some(slot.iov.as_ptr() as u64));
        }
        let entry =
            with_len(op.build(), if cmd_op == CMD_REGISTER { 2 } else { 0 }).user_data(i as u64);
        slot.last = (cmd_op, commit_id);
        // SAFETY: the SQE refers to this slot's iovec array and (through it) its header and
        // payload buffers, all heap allocations owned by `self` that never move; the slot is
        // marked as the kernel's below, so nothing here touches them until its completion, and
        // `Drop` leaks them if the queue goes away first.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The submission queue has `depth` places and each entry has at most one command
            // in flight, so it cannot be full; flush and try once more anyway.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        slot.state = State::Kernel;
        Ok(())
    }

    /// Answers the request in entry `i` (its reply already written into its buffers) and asks
    /// for the next one. Submitted at the next [`FuseQueue::wait`].
    pub fn commit(&mut self, i: usize, commit_id: u64) -> io::Result<()> {
        self.push(i, CMD_COMMIT_AND_FETCH, commit_id)
    }

    /// Submits what is queued and waits for at least one completion; `ready` gets the entries
    /// now holding a request.
    pub fn wait(&mut self, ready: &mut Vec<usize>) -> io::Result<Event> {
        ready.clear();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                Err(e) => return Err(e),
            }
        }
        let mut again = Vec::new();
        let mut failure = None;
        for cqe in self.ring.completion() {
            let i = cqe.user_data() as usize;
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            slot.state = State::User;
            match cqe.result() {
                r if r >= 0 => ready.push(i),
                r if r == -libc::EAGAIN || r == -libc::EINTR => again.push(i),
                r if r == -libc::ENOTCONN || r == -libc::ENODEV || r == -libc::ECANCELED => {
                    self.ended += 1;
                }
                r => failure = Some(io::Error::from_raw_os_error(-r)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !again.is_empty() {
            // REGISTER before the INIT reply is processed, or an interrupted command: the
            // kernel asks for the same command again; give it a moment.
            std::thread::sleep(std::time::Duration::from_millis(1));
            for i in again {
                let (cmd, id) = self.slots[i].last;
                self.push(i, cmd, id)?;
            }
        }
        if ready.is_empty() && self.ended == self.slots.len() {
            return Ok(Event::Ended);
        }
        Ok(Event::Requests)
    }

    /// The header and payload of entry `i` while it holds a request (it is ours until
    /// [`FuseQueue::commit`]); `None` while it is with the kernel.
    pub fn buffers(&mut self, i: usize) -> Option<(&mut [u8], &mut [u8])> {
        let slot = self.slots.get_mut(i)?;
        (slot.state == State::User).then(|| (&mut slot.header[..], &mut slot.payload[..]))
    }
}

impl Drop for FuseQueue {
    fn drop(&mut self) {
        if self.slots.iter().any(|s| s.state == State::Kernel) {
            // The kernel may still write into these buffers until the ring's teardown has
            // cancelled the commands: never free them.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

/// Sets `sqe->len` of a built 128-byte SQE (the io-uring crate's `UringCmd80` leaves it 0;
/// FUSE's REGISTER wants the iovec count there).
fn with_len(e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` over `io_uring_sqe` (64 bytes) and 64 more bytes, so it
    // is exactly 128 plain bytes with no padding or invalid bit patterns; `len` is the u32 at
    // byte offset 24 of `struct io_uring_sqe` (opcode, flags, ioprio, fd, off, addr, len).
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above, any 128 bytes are a valid `Entry128`.
    unsafe { std::mem::transmute(raw) }
}

/// Pins the calling thread to `cpu` (requests of a CPU's queue are served by its own thread).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: `set` is a plain bitmask struct, zeroed is its empty value; CPU_SET writes inside
    // it (cpu is checked against its size) and sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))
        .map(drop)
    }
}

/// Puts thread `tid` of this process (0: the calling thread) in the SCHED_IDLE class (`idle`)
/// or back in SCHED_OTHER.
pub fn set_sched_idle(tid: i32, idle: bool) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: sched_setscheduler on a thread id (the kernel checks it) reads `param` only.
    check(unsafe { libc::sched_setscheduler(tid, policy, &param) }).map(drop)
}

/// The calling thread's id (for [`set_sched_idle`] and /proc/self/task/TID).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// mount(2) of a FUSE filesystem served on the open /dev/fuse descriptor named in `data`
/// (`fd=N,rootmode=40000,user_id=…,group_id=…,…`). Root only.
pub fn mount_fuse(
    source: &str,
    mountpoint: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let src = cname(source.as_ref())?;
    let target = cname(mountpoint.as_os_str())?;
    let ty = cname(fstype.as_ref())?;
    let data = cname(data.as_ref())?;
    // SAFETY: four valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: squeue::Entry128) -> [u8; 128] {
        // SAFETY: as in `with_len`: 128 plain bytes.
        unsafe { std::mem::transmute(e) }
    }

    /// The REGISTER command as the kernel reads it (struct io_uring_sqe, 128-byte form): the
    /// opcode, the /dev/fuse fd, cmd_op, the iovec address and count, the user data, and
    /// fuse_uring_cmd_req (commit id, qid) at the start of the command area (byte 48).
    #[test]
    fn a_register_sqe_has_every_field_where_the_kernel_reads_it() {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        cmd[16..18].copy_from_slice(&3u16.to_le_bytes());
        cmd[79] = 0xAA;
        let e = opcode::UringCmd80::new(types::Fd(7), CMD_REGISTER)
            .cmd(cmd)
            .addr(Some(0x1122_3344_5566_7788))
            .build()
            .user_data(5);
        let b = bytes(with_len(e, 2));
        assert_eq!(b[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(i32::from_ne_bytes(b[4..8].try_into().unwrap()), 7, "fd");
        assert_eq!(
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            CMD_REGISTER
        );
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            0x1122_3344_5566_7788,
            "addr"
        );
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 2, "len");
        assert_eq!(
            u64::from_ne_bytes(b[32..40].try_into().unwrap()),
            5,
            "user_data"
        );
        assert_eq!(&b[48..128], &cmd[..], "command area");
    }

    #[test]
    fn a_queue_hands_out_buffers_only_while_they_are_ours() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let Ok(mut q) = FuseQueue::new(f.as_fd(), 0, 2, 4096) else {
            eprintln!("skipping: io_uring is not available here");
            return;
        };
        assert_eq!(q.depth(), 2);
        let (h, p) = q.buffers(1).expect("never submitted: ours");
        assert_eq!((h.len(), p.len()), (HEADER_LEN, 4096));
        assert!(q.buffers(2).is_none());
        // /dev/null completes every uring_cmd at once with 0 (drivers/char/mem.c), which the
        // queue takes for a request having arrived: the entry is the kernel's from submission
        // until that completion is reaped, then ours again.
        q.push(0, CMD_REGISTER, 0).unwrap();
        assert!(q.buffers(0).is_none());
        assert!(
            q.commit(0, 1).is_err(),
            "an entry cannot be submitted twice"
        );
        let mut ready = Vec::new();
        assert_eq!(q.wait(&mut ready).unwrap(), Event::Requests);
        assert_eq!(ready, [0]);
        assert!(q.buffers(0).is_some(), "completed: ours again");
        q.commit(0, 9).unwrap();
        assert!(q.buffers(0).is_none());
        assert_eq!(q.wait(&mut ready).unwrap(), Event::Requests);
        assert_eq!(ready, [0]);
        assert!(q.buffers(0).is_some(), "completed: ours again");
    }
}
