//! Fencing in shared-file mode: a master writes to the journal and sends
//! RECEIPTs only while its last good mastership check is younger than the
//! fencing interval (`ha.lock_keepalive_ms`).
//!
//! The argument, with V the interval and W the successor's takeover wait
//! (W > V): a check that starts at t0 and finds our epoch means the
//! successor's raise had not landed at t0, so it lands at T_E > t0. We
//! start no journal write and release no receipt after t0 + V < T_E + V;
//! the successor reads the journal only at T_E + W. So everything we
//! receipted was durable before it looked, and every write we started had
//! W - V to land before it looked (the margin for I/O in flight).
//!
//! The gate is process-wide on purpose: fencing is a property of the
//! process (it exits when fenced), and every journal write must pass it,
//! whichever task issues it. Checking it costs one atomic load and one
//! vDSO clock read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use tracing::{info, warn};

use super::epoch::{self, EpochRecord};
use super::FileLock;

/// Nanoseconds of CLOCK_BOOTTIME. Like CLOCK_MONOTONIC (std's `Instant`)
/// it never goes back and keeps running while the process is stopped
/// (SIGSTOP); unlike it, it also keeps running while the host is suspended,
/// so a master resumed after a suspend sees its last check as old as it is.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid timespec to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(r, 0, "CLOCK_BOOTTIME is available since Linux 2.6.39");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Journal writes and receipts are allowed while `now_ns()` is below this.
/// `u64::MAX` = not fencing (memory mode: nothing is shared); 0 = armed and
/// not (or no longer) verified.
static FRESH_UNTIL_NS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Someone is holding: for one warning per episode, not one per task.
static HOLDING: AtomicBool = AtomicBool::new(false);
/// The epoch this process raised (0: none, as in memory mode).
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The epoch this process is master under (0: none). The journal writes it
/// into every round, so that what a master wrote can be told apart from
/// what a fenced predecessor wrote.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// Records the epoch just raised (before any journal is opened).
pub fn set_epoch(epoch: u64) {
    EPOCH.store(epoch, Ordering::Release);
}

/// True while this process may write to the journal and send receipts.
pub fn fresh() -> bool {
    let until = FRESH_UNTIL_NS.load(Ordering::Acquire);
    until == u64::MAX || now_ns() < until
}

/// From now on, only a good check opens the gate (file mode, before the
/// epoch is raised).
pub fn arm() {
    FRESH_UNTIL_NS.store(0, Ordering::Release);
}

/// A check that started at `checked_at_ns` found us master: the gate is
/// open until `validity` after its start (not its end: a check that was
/// paused half-way proves nothing about the pause).
pub fn renew(checked_at_ns: u64, validity: Duration) {
    let until = checked_at_ns.saturating_add(validity.as_nanos() as u64);
    FRESH_UNTIL_NS.fetch_max(until, Ordering::AcqRel);
}

/// Closes the gate for good (fenced: the process is about to exit).
pub fn revoke() {
    FRESH_UNTIL_NS.store(0, Ordering::Release);
}

/// Waits until the gate is open. Returns at once (no yield) when it is;
/// otherwise polls every millisecond until the keep-alive thread renews it
/// or ends the process.
pub async fn hold() {
    if fresh() {
        return;
    }
    let started = now_ns();
    if !HOLDING.swap(true, Ordering::AcqRel) {
        warn!(
            "no good mastership check in time (ha.lock_keepalive_ms in file mode, the lease in the database modes: paused, or the store is slow); holding store writes and answers"
        );
    }
    while !fresh() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if HOLDING.swap(false, Ordering::AcqRel) {
        info!(
            held_ms = (now_ns() - started) / 1_000_000,
            "mastership check renewed; journal writes and receipts resume"
        );
    }
}

/// [`hold`] for synchronous code (recovery's threads, before any shard
/// serves): a recovery that was paused must not cut or erase journal data
/// that a successor may use by now.
pub fn hold_blocking() {
    while !fresh() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What one mastership check found.
pub enum Verdict {
    /// The lock file is the one we locked and the epoch is ours.
    Master,
    /// Another broker is (or may be) master: stop at once.
    Lost(String),
    /// The check could not be completed (I/O error, unreadable file):
    /// no verdict; the gate stays as it is and closes by itself.
    Unknown(anyhow::Error),
}

/// A master's view of what makes it master: its lock and its epoch.
pub struct Monitor {
    lock: FileLock,
    dir: PathBuf,
    ours: EpochRecord,
}

impl Monitor {
    pub fn new(lock: FileLock, dir: PathBuf, ours: EpochRecord) -> Monitor {
        Monitor { lock, dir, ours }
    }

    pub fn epoch(&self) -> u64 {
        self.ours.epoch
    }

    /// Re-reads the lock file's identity and the epoch file. Start the
    /// clock (for [`renew`]) before calling.
    pub fn check(&self) -> Verdict {
        match self.lock.check() {
            Ok(true) => {}
            Ok(false) => {
                return Verdict::Lost(format!(
                    "the lock file {} was removed or replaced",
                    self.lock.path().display()
                ))
            }
            Err(e) => {
                return Verdict::Unknown(anyhow!(e).context(format!(
                    "cannot stat the lock file {}",
                    self.lock.path().display()
                )))
            }
        }
        match epoch::read(&self.dir) {
            Ok(Some(r)) if r.epoch == self.ours.epoch && r.owner == self.ours.owner => {
                Verdict::Master
            }
            Ok(Some(r)) => Verdict::Lost(format!(
                "epoch {} (ours) was replaced by epoch {} of {}",
                self.ours.epoch, r.epoch, r.owner
            )),
            Ok(None) => Verdict::Lost(format!(
                "the epoch file in {} was removed",
                self.dir.display()
            )),
            Err(e) => Verdict::Unknown(e),
        }
    }
}
