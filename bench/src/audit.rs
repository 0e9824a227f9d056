//! Loss and duplicate accounting: which (producer, sequence) pairs were
//! receipted by the broker and which reached a consumer, and how often.

use std::sync::Mutex;

/// Per producer, how many times each sequence number was consumed.
pub struct Audit {
    seen: Vec<Mutex<Vec<u16>>>,
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
    pub fn new(per_producer: &[u64]) -> Audit {
        Audit {
            seen: per_producer
                .iter()
                .map(|&n| Mutex::new(vec![0; n as usize]))
                .collect(),
        }
    }

    /// Records one consumed message; returns false for an id out of range
    /// (not from this run).
    pub fn record(&self, producer: usize, seq: u64) -> bool {
        let Some(slot) = self.seen.get(producer) else {
            return false;
        };
        let mut v = slot.lock().unwrap_or_else(|e| e.into_inner());
        match v.get_mut(seq as usize) {
            Some(c) => {
                *c = c.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// `receipted[p][s]` says whether the broker receipted that message.
    pub fn tally(&self, receipted: &[Vec<bool>]) -> Tally {
        let mut t = Tally::default();
        for (p, slot) in self.seen.iter().enumerate() {
            let v = slot.lock().unwrap_or_else(|e| e.into_inner());
            for (s, &c) in v.iter().enumerate() {
                t.expected += 1;
                if c > 0 {
                    t.unique += 1;
                    t.duplicates += u64::from(c - 1);
                } else if receipted
                    .get(p)
                    .and_then(|r| r.get(s))
                    .copied()
                    .unwrap_or(false)
                {
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
        let receipted = vec![vec![true, true, true], vec![false, true]];
        let t = a.tally(&receipted);
        assert_eq!(t.expected, 5);
        assert_eq!(t.unique, 3);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.lost_receipted, 1);
        assert_eq!(t.lost_ids, vec!["0:1"]);
        assert_eq!(t.unconfirmed_missing, 1);
        assert_eq!(a.unique_so_far(), 3);
    }
}
