//! Figures the shards keep for the admin side: plain cells on the shard's
//! own thread (no atomics, no locks on the message path), copied into
//! `Send` snapshots when the admin side asks, once per shard per request.

use std::cell::Cell;

use serde::Serialize;

/// Upper bounds of the receipt latency buckets, in microseconds (the last
/// bucket, past the final bound, is +Inf).
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A latency histogram owned by one shard thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [Cell<u64>; BUCKETS],
    sum_us: Cell<u64>,
}

impl LatencyHistogram {
    pub fn record_us(&self, us: u64) {
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS - 1);
        self.counts[i].set(self.counts[i].get() + 1);
        self.sum_us.set(self.sum_us.get() + us);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_us: self.sum_us.get(),
        }
    }
}

/// A histogram's figures at one moment (per bucket, not cumulative).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySnapshot {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl LatencySnapshot {
    pub fn merge(&mut self, other: &LatencySnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bound of the bucket holding quantile `q` (0..=1), in µs; None
    /// without samples, u64::MAX when it falls in the +Inf bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// One client connection, as the console lists it.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub peer: String,
    pub protocol: &'static str,
    pub since_ms: u64,
    pub messages_in: Cell<u64>,
    pub messages_out: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

impl ConnectionInfo {
    pub fn new(peer: String, protocol: &'static str, since_ms: u64) -> ConnectionInfo {
        ConnectionInfo {
            peer,
            protocol,
            since_ms,
            messages_in: Cell::new(0),
            messages_out: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }

    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }

    pub fn snapshot(&self, shard: usize, id: u64) -> ConnectionStats {
        ConnectionStats {
            id: format!("{shard}-{id}"),
            shard,
            peer: self.peer.clone(),
            protocol: self.protocol,
            since_ms: self.since_ms,
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStats {
    pub id: String,
    pub shard: usize,
    pub peer: String,
    pub protocol: &'static str,
    pub since_ms: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_bounds() {
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record_us(80);
        }
        for _ in 0..10 {
            h.record_us(7_000);
        }
        let mut s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile_us(0.5), Some(100));
        assert_eq!(s.quantile_us(0.95), Some(10_000));
        s.merge(&LatencySnapshot {
            counts: vec![0; BUCKETS - 1].into_iter().chain([5]).collect(),
            sum_us: 50_000_000,
        });
        assert_eq!(s.quantile_us(1.0), Some(u64::MAX));
        assert_eq!(LatencySnapshot::default().quantile_us(0.5), None);
    }
}
