//! What producers and consumers record, whatever protocol they speak:
//! receipts (latency, the failover clocks) and deliveries (the audit,
//! end-to-end latency), and when consumers may stop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

use crate::{histogram, Shared};

/// One producer's receipt latencies, merged into the run's totals at the end
/// (and a coarse copy now and then for the progress line).
pub struct Receipts {
    hist: Histogram<u64>,
    live: Histogram<u64>,
    last_merge: Instant,
}

impl Receipts {
    pub fn new() -> Receipts {
        Receipts {
            hist: histogram(),
            live: histogram(),
            last_merge: Instant::now(),
        }
    }

    /// One message sent at `ts` was receipted at `now` (ns since start).
    pub fn record(&mut self, now: u64, ts: u64) {
        let us = (now.saturating_sub(ts) / 1000).max(1);
        let _ = self.hist.record(us);
        let _ = self.live.record(us);
    }

    /// `n` receipts came from `broker` at `now`: the totals and the
    /// failover clocks (last receipt per broker, first since a kill).
    pub fn received(&mut self, s: &Shared, broker: usize, n: u64, now: u64) {
        s.receipted_total.fetch_add(n, Ordering::Relaxed);
        if self.last_merge.elapsed() > Duration::from_millis(500) {
            if let Ok(mut h) = s.send_receipt_live.lock() {
                let _ = h.add(&self.live);
            }
            self.live.reset();
            self.last_merge = Instant::now();
        }
        s.last_receipt_ns[broker].fetch_max(now, Ordering::Relaxed);
        let _ = s.first_since_kill[broker].compare_exchange(
            0,
            now,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }

    pub fn finish(self, s: &Shared) -> Result<()> {
        s.send_receipt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&self.hist)?;
        Ok(())
    }
}

/// A consumer got message `seq` of producer `p`, sent at `ts`; false when it
/// is not from this run.
pub fn delivered(s: &Shared, hist: &mut Histogram<u64>, p: u64, seq: u64, ts: u64) -> bool {
    let now = s.start.elapsed().as_nanos() as u64;
    if !s.audit.record(p as usize, seq) {
        return false;
    }
    let _ = hist.record((now.saturating_sub(ts) / 1000).max(1));
    s.consumed.fetch_add(1, Ordering::Relaxed);
    s.last_consumed_ns.store(now, Ordering::Relaxed);
    true
}

/// Consumers stop once every message was seen (all of `--messages`, or all
/// the producers sent in a `--duration` run), or once producers are done and
/// nothing came for `--idle-timeout`.
pub fn consumers_may_stop(s: &Shared, last_progress: Instant) -> bool {
    let done = match s.args.duration {
        None => s.audit.unique_so_far() >= s.args.messages,
        Some(_) => {
            s.producers_done.load(Ordering::SeqCst)
                && s.audit.unique_so_far()
                    >= s.sent.iter().map(|x| x.load(Ordering::SeqCst)).sum::<u64>()
        }
    };
    done || (s.producers_done.load(Ordering::SeqCst)
        && last_progress.elapsed() > Duration::from_secs(s.args.idle_timeout))
}

/// The consumer's end-to-end latencies into the run's totals.
pub fn finish_consumer(s: &Shared, hist: &Histogram<u64>) -> Result<()> {
    s.end_to_end
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(hist)?;
    Ok(())
}
