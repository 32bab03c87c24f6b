//! The writer thread of the audit trail
//! ([`AuditLog::write_in_background`](super::AuditLog::write_in_background)); the mounted daemon
//! uses it.
//!
//! Written by the calling thread, a record costs its caller a flock, two `stat`s, a `write(2)`
//! and an unlock on top of building the JSON line and its hash: about 14 µs of the 31 µs a
//! file open takes in the filesystem core (`cargo bench --bench opens`). With the writer
//! thread the caller builds the record (time, caller, key, context, outcome) and queues it;
//! the thread takes everything queued, numbers and chains it in queue order, and writes the
//! batch under one lock with one `write(2)` (two around a file rotation).
//!
//! What changes for the trail:
//! - A record is written shortly after the call returns instead of before. A crash of the
//!   daemon process (kill -9, abort) loses the records still queued: at most [`QUEUE_LEN`],
//!   in practice those of the last milliseconds. A crash of the machine could already lose
//!   the last minute (records are fsynced every minute and at unmount), and in either case
//!   what is on disk is a valid chain.
//! - The queue is bounded: when it is full, callers wait for the writer (memory stays
//!   bounded, and no record is dropped).
//! - `seq` follows queue order; `eventTime` is taken at the call, so records of calls made
//!   on two threads within the same few microseconds may carry times out of order.
//! - A failed write is logged by the thread (a failed append never failed the key-service
//!   call: see `LocalKms::record`). If the thread is gone, callers write for themselves.
//! - [`AuditLog::flush`](super::AuditLog::flush), [`AuditLog::sync`](super::AuditLog::sync) and
//!   dropping the log write out everything queued first.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SendError, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use super::{AuditRecord, Trail};

/// Records that may wait in the queue (about 0.5 KiB each).
pub(crate) const QUEUE_LEN: usize = 1024;
/// Most records written with one `write(2)`.
const BATCH_MAX: usize = 256;
/// How long the thread waits after the first record of a burst before writing. Every batch
/// costs a wake-up of this thread and of its timer, a flock, two `stat`s and a `write(2)`: with
/// 0.5 ms an untar (one record per created file, a file every 0.2-0.4 ms) wrote about one
/// record per batch; with 5 ms an untar of /usr/include took 2.02 s instead of 2.18 s (medians
/// of 5 interleaved rounds, `scripts/bench/ab.sh`, io_uring transport, fresh ext4).
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

pub(super) enum Msg {
    Record(Box<AuditRecord>),
    /// Answered once every record queued before it is written.
    Flush(Sender<()>),
}

/// The running writer thread; dropping it writes out the queue and joins the thread.
pub(super) struct Writer {
    queue: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(trail: Arc<Trail>) -> io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE_LEN);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&trail, &rx))?;
        Ok(Writer {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// A sender for the queue.
    pub(super) fn queue(&self) -> SyncSender<Msg> {
        self.queue.clone().expect("BUG: queue taken before drop")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the audit writer thread panicked; queued records may be lost");
        }
    }
}

/// Queues `rec`; gives it back when the writer thread is gone.
pub(super) fn send(queue: &SyncSender<Msg>, rec: Box<AuditRecord>) -> Result<(), Box<AuditRecord>> {
    match queue.send(Msg::Record(rec)) {
        Ok(()) => Ok(()),
        Err(SendError(Msg::Record(rec))) => Err(rec),
        Err(SendError(Msg::Flush(_))) => unreachable!("sent a record"),
    }
}

/// Waits until every record queued before this call is written.
pub(super) fn flush(queue: &SyncSender<Msg>) {
    let (tx, rx) = channel();
    if queue.send(Msg::Flush(tx)).is_ok() {
        let _ = rx.recv();
    }
}

fn run(trail: &Trail, rx: &Receiver<Msg>) {
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH_MAX);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        // Let a burst gather: one wake-up and one write per batch instead of per record (a
        // sender wakes the thread only when it is parked in `recv`).
        if matches!(first, Msg::Record(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < BATCH_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            if let Err(e) = trail.write(&mut batch) {
                log::error!(
                    "cannot append {} records to the audit log {}: {e}",
                    batch.len(),
                    trail.dir.display()
                );
            }
            batch.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}
