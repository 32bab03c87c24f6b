//! Courtesy: the io_uring ring threads run as SCHED_IDLE while their CPU has nothing else to
//! do, so a caller woken by a reply stays on its CPU; a monitor thread puts a ring thread back
//! in SCHED_OTHER as soon as it waits for a CPU that other work keeps busy.
//!
//! Why. A reply is committed from the ring thread, which runs on the caller's CPU; the
//! scheduler then wakes the caller on whichever CPU is idle, which is the other one, and
//! waking an idle (halted) vCPU is the single most expensive step of a request on this kind
//! of VM; the caller's next request then goes to that CPU's queue and the same happens again,
//! every request (measured: 117k migrations in 6 s of 4 KiB random reads, 23k IOPS). A CPU
//! whose only runnable task is SCHED_IDLE counts as idle to that choice: the caller stays,
//! preempts the ring thread, and the CPUs stop bouncing.
//!
//! The first version switched class twice per request (SCHED_IDLE just for the submit of the
//! commits): two system calls per request, 10 % of the daemon's CPU during an untar. This one
//! switches only when the situation changes. A SCHED_IDLE thread on a CPU that another task
//! keeps busy gets almost no CPU time (two CPU hogs made 4 KiB random reads fall to 1.85k
//! IOPS and an untar not finish in 120 s), so the monitor reads each ring thread's
//! `/proc/self/task/TID/schedstat` every [`TICK`]: a SCHED_IDLE thread that spent a fifth of
//! the tick waiting for a CPU, and four times longer waiting than running, is moved to
//! SCHED_OTHER, and stays there until [`HOLD`] has passed without it waiting for a CPU
//! a tenth of a tick. Streaming reads ([`super::uring`]'s bulk READs) also hold a thread in
//! SCHED_OTHER: their callers gain more from the other CPU working in parallel. When no ring
//! thread has run for [`PARK_AFTER`] ticks the monitor puts them all in SCHED_OTHER and
//! sleeps until a ring thread has work again (an idle mount costs no wake-ups).
//!
//! Needs the right to leave SCHED_IDLE (root has it; the io_uring transport is root-only) and
//! schedstat (CONFIG_SCHED_INFO); without either the ring threads simply stay in SCHED_OTHER.
//! `ENVELOPEFS_URING_NO_COURTESY=1` turns it off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use envelopefs_sys::fuse_ring;

/// How often the monitor looks at the ring threads.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// How long a thread stays in SCHED_OTHER after it last waited for a CPU or served a bulk READ.
pub(crate) const HOLD: Duration = Duration::from_millis(250);
/// Quiet ticks after which the monitor sleeps until there is work again.
pub(crate) const PARK_AFTER: u32 = 100;

/// What a ring thread shares with the monitor.
pub(crate) struct RingSched {
    tid: i32,
    bulk: AtomicBool,
}

/// The monitor's handle, shared by the ring threads.
pub(crate) struct Courtesy {
    threads: Mutex<Vec<Arc<RingSched>>>,
    monitor: OnceLock<std::thread::Thread>,
    parked: AtomicBool,
    stop: AtomicBool,
}

/// A thread's `/proc/self/task/TID/schedstat`, kept open: each [`SchedStat::read`] is one
/// `pread` (the kernel regenerates the text when it is read from offset 0).
pub(crate) struct SchedStat(std::fs::File);

impl SchedStat {
    pub(crate) fn open(tid: i32) -> std::io::Result<SchedStat> {
        std::fs::File::open(format!("/proc/self/task/{tid}/schedstat")).map(SchedStat)
    }

    /// Nanoseconds run and nanoseconds spent runnable, waiting for a CPU.
    pub(crate) fn read(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0)?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(parse_schedstat)
            .ok_or_else(|| std::io::Error::other("unexpected schedstat format"))
    }
}

fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Whether a thread is to be held in SCHED_OTHER: it waited for a CPU that other work keeps
/// busy, or served a bulk READ. `ran` and `waited` are its run time and CPU-wait time during
/// the last tick, `idle` whether it was SCHED_IDLE then.
pub(crate) fn hold_normal(idle: bool, ran: Duration, waited: Duration, bulk: bool) -> bool {
    let starved = if idle {
        // A caller it woke may preempt it for a while (that is the point); starving is
        // waiting much more than running.
        waited > TICK / 5 && waited > ran * 4
    } else {
        waited > TICK / 10
    };
    bulk || starved
}

/// The monitor's view of one thread.
struct Watch {
    ring: Arc<RingSched>,
    stat: Option<SchedStat>,
    ran: u64,
    waited: u64,
    idle: bool,
    normal_until: Instant,
}

impl Courtesy {
    /// Starts the monitor, unless turned off or impossible here (then `None`: ring threads
    /// stay in SCHED_OTHER).
    pub(crate) fn start() -> Option<(Arc<Courtesy>, std::thread::JoinHandle<()>)> {
        if std::env::var_os("ENVELOPEFS_URING_NO_COURTESY").is_some() {
            log::info!("io_uring courtesy turned off (ENVELOPEFS_URING_NO_COURTESY)");
            return None;
        }
        if let Err(e) = SchedStat::open(fuse_ring::gettid()).and_then(|s| s.read()) {
            log::info!("io_uring courtesy off: cannot read this thread's schedstat: {e}");
            return None;
        }
        // Only where a thread can come back from SCHED_IDLE (root can; others need
        // RLIMIT_NICE): tried once on this thread, never left there.
        if let Err(e) =
            fuse_ring::set_sched_idle(0, true).and_then(|()| fuse_ring::set_sched_idle(0, false))
        {
            let _ = fuse_ring::set_sched_idle(0, false);
            log::info!("io_uring courtesy off: cannot switch scheduling class: {e}");
            return None;
        }
        let c = Arc::new(Courtesy {
            threads: Mutex::new(Vec::new()),
            monitor: OnceLock::new(),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let m = c.clone();
        let t = std::thread::Builder::new()
            .name("fuse-courtesy".into())
            .spawn(move || m.monitor())
            .ok()?;
        let _ = c.monitor.set(t.thread().clone());
        Some((c, t))
    }

    /// Called by a ring thread once, from itself.
    pub(crate) fn join(&self) -> Arc<RingSched> {
        let r = Arc::new(RingSched {
            tid: fuse_ring::gettid(),
            bulk: AtomicBool::new(false),
        });
        self.threads
            .lock()
            .expect("courtesy poisoned")
            .push(r.clone());
        self.wake();
        r
    }

    /// Called by a ring thread after each batch of requests.
    #[inline]
    pub(crate) fn note(&self, ring: &RingSched, bulk: bool) {
        if bulk && !ring.bulk.load(Ordering::Relaxed) {
            ring.bulk.store(true, Ordering::Relaxed);
        }
        if self.parked.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    fn wake(&self) {
        if self.parked.swap(false, Ordering::AcqRel)
            && let Some(t) = self.monitor.get()
        {
            t.unpark();
        }
    }

    /// Ends the monitor (the session is over).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.monitor.get() {
            t.unpark();
        }
    }

    fn monitor(&self) {
        let mut watched: Vec<Watch> = Vec::new();
        let mut quiet = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(TICK);
            {
                let threads = self.threads.lock().expect("courtesy poisoned");
                for r in threads.iter().skip(watched.len()) {
                    let stat = SchedStat::open(r.tid).ok();
                    let (ran, waited) = stat
                        .as_ref()
                        .and_then(|s| s.read().ok())
                        .unwrap_or_default();
                    watched.push(Watch {
                        ring: r.clone(),
                        stat,
                        ran,
                        waited,
                        idle: false,
                        normal_until: Instant::now(),
                    });
                }
            }
            let now = Instant::now();
            let mut active = false;
            for w in &mut watched {
                let Some(Ok((ran, waited))) = w.stat.as_ref().map(SchedStat::read) else {
                    continue; // the thread has ended (or its counters cannot be read)
                };
                let (dr, dw) = (ran.saturating_sub(w.ran), waited.saturating_sub(w.waited));
                (w.ran, w.waited) = (ran, waited);
                active |= dr > 0 || dw > 0;
                let bulk = w.ring.bulk.swap(false, Ordering::Relaxed);
                let hold = hold_normal(
                    w.idle,
                    Duration::from_nanos(dr),
                    Duration::from_nanos(dw),
                    bulk,
                );
                if hold {
                    w.normal_until = now + HOLD;
                }
                let idle = now >= w.normal_until;
                if idle != w.idle {
                    self.set(w, idle);
                }
            }
            quiet = if active { 0 } else { quiet + 1 };
            if quiet >= PARK_AFTER {
                // Nothing to watch: every thread back to SCHED_OTHER (the first request after
                // a quiet spell is served as the classic transport would), then sleep until a
                // ring thread has work.
                for w in &mut watched {
                    if w.idle {
                        self.set(w, false);
                    }
                    w.normal_until = Instant::now();
                }
                self.parked.store(true, Ordering::Release);
                while self.parked.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
                    std::thread::park();
                }
                quiet = 0;
            }
        }
    }

    fn set(&self, w: &mut Watch, idle: bool) {
        match fuse_ring::set_sched_idle(w.ring.tid, idle) {
            Ok(()) => w.idle = idle,
            Err(e) => {
                // Never leave a thread in SCHED_IDLE that cannot come back: stop trying.
                log::debug!(
                    "ring thread {}: cannot change scheduling class: {e}",
                    w.ring.tid
                );
                w.normal_until = Instant::now() + Duration::from_secs(3600 * 24 * 365);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_parses_the_first_two_fields() {
        assert_eq!(
            parse_schedstat("79383165 11428748 360\n"),
            Some((79383165, 11428748))
        );
        assert_eq!(parse_schedstat("1 x 3"), None);
        assert_eq!(parse_schedstat(""), None);
        let tid = fuse_ring::gettid();
        let stat = SchedStat::open(tid).expect("schedstat of this thread");
        let (before, _) = stat.read().expect("read");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::thread::yield_now();
        let (after, _) = stat.read().expect("read again");
        assert!(after > before, "run time did not grow: {before} -> {after}");
    }

    #[test]
    fn idle_thread_is_moved_only_when_it_starves() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // Quiet CPU: hardly any waiting.
        assert!(!hold_normal(true, ms(3), us(50), false));
        // Ping-pong with a caller that preempts it: waits about as long as it runs.
        assert!(!hold_normal(true, ms(4), ms(4), false));
        // A CPU hog: waits the whole tick, runs almost nothing.
        assert!(hold_normal(true, us(30), ms(9), false));
        // Bulk I/O always holds SCHED_OTHER.
        assert!(hold_normal(true, ms(1), Duration::ZERO, true));
        // In SCHED_OTHER, any real waiting for a CPU keeps it there.
        assert!(hold_normal(false, ms(5), ms(2), false));
        assert!(!hold_normal(false, ms(5), us(100), false));
    }

    #[test]
    fn a_thread_can_leave_sched_idle_when_root() {
        // Only meaningful where this process may return to SCHED_OTHER.
        if is_root() {
            fuse_ring::set_sched_idle(0, true).expect("to SCHED_IDLE");
            fuse_ring::set_sched_idle(0, false).expect("back to SCHED_OTHER");
        }
    }

    /// A thread's scheduling policy (`/proc/self/task/TID/stat` field 41): 0 SCHED_OTHER,
    /// 5 SCHED_IDLE.
    fn policy(tid: i32) -> u32 {
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
        let after = &s[s.rfind(')').expect("comm") + 1..];
        after
            .split_whitespace()
            .nth(38)
            .expect("field 41")
            .parse()
            .expect("policy")
    }

    fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The monitor for real: a working ring thread goes to SCHED_IDLE; a CPU hog on its CPU
    /// sends it back to SCHED_OTHER, where it makes progress; once the monitor has parked, the
    /// thread is in SCHED_OTHER.
    #[test]
    fn the_monitor_idles_a_working_thread_and_rescues_a_starved_one() {
        if !is_root() {
            eprintln!("skipped: only root may leave SCHED_IDLE");
            return;
        }
        use std::sync::atomic::{AtomicI32, AtomicU64};
        let (c, monitor) = Courtesy::start().expect("courtesy starts");
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let progress = Arc::new(AtomicU64::new(0));
        let ring = {
            let (c, stop, tid, progress) = (c.clone(), stop.clone(), tid.clone(), progress.clone());
            std::thread::spawn(move || {
                let _ = fuse_ring::pin_to_cpu(0);
                let me = c.join();
                tid.store(fuse_ring::gettid(), Ordering::SeqCst);
                while !stop.load(Ordering::Relaxed) {
                    // A request's worth of work, then a short wait for the next.
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(100) {
                        std::hint::spin_loop();
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                    c.note(&me, false);
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        wait_for("ring thread started", Duration::from_secs(5), || {
            tid.load(Ordering::SeqCst) != 0
        });
        let tid = tid.load(Ordering::SeqCst);
        wait_for(
            "working thread in SCHED_IDLE",
            Duration::from_secs(5),
            || policy(tid) == 5,
        );
        let hog_stop = Arc::new(AtomicBool::new(false));
        let hog = {
            let hog_stop = hog_stop.clone();
            std::thread::spawn(move || {
                let _ = fuse_ring::pin_to_cpu(0);
                while !hog_stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        wait_for(
            "starved thread back in SCHED_OTHER",
            Duration::from_secs(5),
            || policy(tid) == 0,
        );
        let before = progress.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        let done = progress.load(Ordering::Relaxed) - before;
        hog_stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        // In SCHED_OTHER it shares the CPU with the hog: far more than the few rounds a
        // SCHED_IDLE thread gets (its weight is 3 against the hog's 1024).
        assert!(done >= 20, "only {done} rounds in 300 ms beside the hog");
        stop.store(true, Ordering::Relaxed);
        ring.join().unwrap();
        c.stop();
        monitor.join().unwrap();
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
    }
}
