//! One producer's loop, whatever the protocol: keep up to `--window`
//! messages unanswered (closed loop) or send on a schedule (`--rate`), take
//! every answer buffered after the first, and on a broken connection go to
//! the next broker and resend from the first unanswered message.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::accounting::Receipts;
use crate::{is_timeout, Reconnect, Schedule, Shared};

/// A message sent and not yet answered.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub seq: u64,
    /// Send time, ns since the run's start.
    pub ts: u64,
    /// What the protocol answers it by (OpenWire: its command id).
    pub tag: i32,
}

/// Why no answer came.
pub enum Failure {
    /// The connection broke (or, waiting with a timeout, nothing came):
    /// go to the next broker.
    Broken(anyhow::Error),
    /// The broker refused: the run fails.
    Fatal(anyhow::Error),
}

/// A producer connection of one protocol.
pub trait Link: Sized {
    /// Opens a producer on the first broker from `start` on that accepts.
    fn open(s: &Shared, start: usize) -> Result<(Self, usize)>;
    /// Buffers message `seq` of producer `p`, sent at `ts`; returns its tag.
    fn push(&mut self, s: &Shared, p: usize, seq: u64, ts: u64) -> Result<i32>;
    fn flush(&mut self) -> Result<()>;
    fn set_read_timeout(&self, t: Option<Duration>) -> Result<()>;
    /// The next answer (blocking for it, or only if already buffered): how
    /// many of the oldest in-flight messages it answers; `Ok(None)`:
    /// nothing buffered.
    fn answer(&mut self, in_flight: &VecDeque<Sent>, block: bool)
        -> Result<Option<usize>, Failure>;
}

pub fn run<L: Link>(p: usize, n: u64, s: Arc<Shared>) -> Result<()> {
    let a = &s.args;
    let mut receipts = Receipts::new();
    let mut broker = 0;
    let mut next = 0u64; // first sequence not yet answered (resend point after failover)
    let schedule = a
        .rate
        .map(|r| Schedule::new(r, a.producers, p, s.start.elapsed().as_nanos() as u64));
    let mut receipted_upto = 0u64;
    let mut n = n;
    let deadline = a
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut pace = Reconnect::new(a.reconnect_backoff);
    'reconnect: while receipted_upto < n {
        let (mut conn, idx) = match L::open(&s, broker) {
            Ok(c) => c,
            Err(e) => {
                if s.start.elapsed() > Duration::from_secs(3600) {
                    return Err(e);
                }
                pace.pause();
                s.reconnects.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        pace.connected();
        broker = idx;
        next = next.min(receipted_upto);
        let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(a.window);
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d)
                && n == u64::MAX
                && !s.kills_pending.load(Ordering::SeqCst)
            {
                // --duration is over: send nothing new, collect the answers.
                n = next;
            }
            let now = s.start.elapsed().as_nanos() as u64;
            while in_flight.len() < a.window
                && next < n
                && schedule.as_ref().is_none_or(|sc| sc.due(next) <= now)
            {
                let ts = match &schedule {
                    Some(sc) => sc.due(next),
                    None => s.start.elapsed().as_nanos() as u64,
                };
                let tag = conn.push(&s, p, next, ts)?;
                in_flight.push_back(Sent { seq: next, ts, tag });
                next += 1;
            }
            if conn.flush().is_err() {
                s.reconnects.fetch_add(1, Ordering::Relaxed);
                broker += 1;
                continue 'reconnect;
            }
            if in_flight.is_empty() && next >= n {
                break 'reconnect;
            }
            // Open loop: wait for answers only until the next send is due.
            let wait = match &schedule {
                Some(sc) if next < n && in_flight.len() < a.window => {
                    let now = s.start.elapsed().as_nanos() as u64;
                    Some(Duration::from_nanos(
                        sc.due(next).saturating_sub(now).max(50_000),
                    ))
                }
                _ => None,
            };
            if in_flight.is_empty() {
                std::thread::sleep(wait.unwrap_or_default());
                continue;
            }
            let _ = conn.set_read_timeout(wait);
            // Wait for at least one answer, then take every one buffered.
            let mut block = true;
            loop {
                let answered = match conn.answer(&in_flight, block) {
                    Ok(Some(k)) => k,
                    Ok(None) => break,
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Broken(e)) => {
                        if block && wait.is_some() && is_timeout(&e) {
                            break;
                        }
                        s.reconnects.fetch_add(1, Ordering::Relaxed);
                        broker += 1;
                        continue 'reconnect;
                    }
                };
                block = false;
                if answered > 0 {
                    let now = s.start.elapsed().as_nanos() as u64;
                    for sent in in_flight.drain(..answered) {
                        receipts.record(now, sent.ts);
                        receipted_upto = sent.seq + 1;
                    }
                    receipts.received(&s, broker, answered as u64, now);
                }
            }
        }
    }
    s.sent[p].store(n, Ordering::SeqCst);
    s.receipted_upto[p].store(receipted_upto, Ordering::SeqCst);
    receipts.finish(&s)
}
