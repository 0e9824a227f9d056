//! Loss and duplicate accounting: which (producer, sequence) pairs were
//! receipted by the broker and which reached a consumer, and how often.

use std::sync::Mutex;

/// Sequence numbers above this are not from this run.
const MAX_SEQ: u64 = 1 << 32;

/// Per producer, how many times each sequence number was consumed.
pub struct Audit {
    seen: Vec<Mutex<Vec<u16>>>,
    /// Per producer, sequences at or above this are not from this run.
    limit: Vec<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub expected: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Receipted by the broker but never consumed.
    pub lost_receipted: u64,
    /// Sent but neither receipted nor consumed (in flight at a failure).
    pub unconfirmed_missing: u64,
    /// Up to 20 lost ids, `producer:seq`.
    pub lost_ids: Vec<String>,
}

impl Audit {
    /// `limits`: per producer, how many messages it may send (u64::MAX:
    /// unknown, as with --duration).
    pub fn new(limits: &[u64]) -> Audit {
        Audit {
            seen: limits
                .iter()
                .map(|&n| Mutex::new(vec![0; n.min(1 << 24) as usize]))
                .collect(),
            limit: limits.iter().map(|&n| n.min(MAX_SEQ)).collect(),
        }
    }

    /// Records one consumed message; returns false for an id out of range
    /// (not from this run).
    pub fn record(&self, producer: usize, seq: u64) -> bool {
        let (Some(slot), Some(&limit)) = (self.seen.get(producer), self.limit.get(producer)) else {
            return false;
        };
        if seq >= limit {
            return false;
        }
        let mut v = slot.lock().unwrap_or_else(|e| e.into_inner());
        if seq as usize >= v.len() {
            let grown = (seq as usize + 1).max(v.len() * 2);
            v.resize(grown, 0);
        }
        let c = &mut v[seq as usize];
        *c = c.saturating_add(1);
        true
    }

    /// `sent[p]`: how many messages producer p sent; the first
    /// `receipted[p]` of them were receipted by the broker.
    pub fn tally(&self, sent: &[u64], receipted: &[u64]) -> Tally {
        let mut t = Tally::default();
        for (p, slot) in self.seen.iter().enumerate() {
            let v = slot.lock().unwrap_or_else(|e| e.into_inner());
            let n = sent.get(p).copied().unwrap_or(0);
            let r = receipted.get(p).copied().unwrap_or(0);
            for s in 0..n {
                let c = v.get(s as usize).copied().unwrap_or(0);
                t.expected += 1;
                if c > 0 {
                    t.unique += 1;
                    t.duplicates += u64::from(c - 1);
                } else if s < r {
                    t.lost_receipted += 1;
                    if t.lost_ids.len() < 20 {
                        t.lost_ids.push(format!("{p}:{s}"));
                    }
                } else {
                    t.unconfirmed_missing += 1;
                }
            }
        }
        t
    }

    pub fn unique_so_far(&self) -> u64 {
        self.seen
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|&&c| c > 0)
                    .count() as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_separates_receipted_losses() {
        let a = Audit::new(&[3, 2]);
        assert!(a.record(0, 0));
        assert!(a.record(0, 0));
        assert!(a.record(0, 2));
        assert!(a.record(1, 1));
        assert!(!a.record(1, 5));
        assert!(!a.record(7, 0));
        let t = a.tally(&[3, 2], &[3, 0]);
        assert_eq!(t.expected, 5);
        assert_eq!(t.unique, 3);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.lost_receipted, 1);
        assert_eq!(t.lost_ids, vec!["0:1"]);
        assert_eq!(t.unconfirmed_missing, 1);
        assert_eq!(a.unique_so_far(), 3);
    }

    #[test]
    fn unknown_counts_grow_as_messages_arrive() {
        let a = Audit::new(&[u64::MAX]);
        assert!(a.record(0, 100_000));
        let t = a.tally(&[100_001], &[100_001]);
        assert_eq!(t.unique, 1);
        assert_eq!(t.lost_receipted, 100_000);
    }
}
