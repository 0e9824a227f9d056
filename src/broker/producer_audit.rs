//! Recognising a message its producer sent again. ActiveMQ's failover
//! transport resends every request that was unanswered when its
//! connection broke, to whichever broker it reaches next: a persistent
//! send the old master stored (and the new one recovered) but never
//! answered arrives a second time. The producer names each message by
//! (producer id, sequence) in its [`ORIGIN_PROPERTY`]; the destination's
//! owner shard remembers, per destination, the recent sequences of each
//! producer it saw, live and in what recovery read back, and drops a
//! repeat (its Response still goes out: the client wants to hear that it
//! is stored). Per destination, as ActiveMQ's audit: a client that claims
//! another's producer id can at worst suppress sends to a destination it
//! may write to itself.
//!
//! A destination sees only its share of a producer's sequences, so its
//! windows have gaps (the producer's other sends went elsewhere): a window
//! is a set of the last [`WINDOW`] sequences, not a high-water mark. A
//! sequence older than the window is let through, a possible duplicate
//! rather than a possible loss. What a takeover reads back is the highest
//! sequence a producer's sends to a destination reached (see
//! [`ProducerAudit::note`]): below it, within the window, everything counts
//! as seen.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::destination::Destination;
// The store reads origins too (its producer sequences), so they live there.
pub use crate::store::origin::{origin_of, parse_origin, ORIGIN_PROPERTY};

/// Sequences remembered per producer.
const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// (destination, producer) windows remembered per shard; the oldest is
/// forgotten past it (ActiveMQ's audit keeps 1 024 producers per
/// destination).
const MAX_PRODUCERS: usize = 8192;

#[derive(Debug, Default)]
pub struct ProducerAudit {
    windows: HashMap<Destination, HashMap<Bytes, Window>>,
    /// First-seen order, for forgetting the oldest.
    order: VecDeque<(Destination, Bytes)>,
}

#[derive(Debug)]
struct Window {
    /// The highest sequence seen.
    high: u64,
    /// Bit `s % WINDOW` is set when sequence `s` (high - WINDOW < s <=
    /// high) was seen.
    seen: [u64; WORDS],
}

impl Window {
    fn new(seq: u64) -> Window {
        let mut w = Window {
            high: seq,
            seen: [0; WORDS],
        };
        w.set(seq);
        w
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    /// Marks every sequence of the window up to `seq` seen.
    fn seen_through(&mut self, seq: u64) {
        if seq >= self.high {
            self.seen = [u64::MAX; WORDS];
            return;
        }
        let low = self.high.saturating_sub(WINDOW - 1);
        for s in low..=seq {
            self.set(s);
        }
    }

    /// Records `seq`; true if it was seen already.
    fn record(&mut self, seq: u64) -> bool {
        if seq > self.high {
            if seq - self.high >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in self.high + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.seen[w] &= !b;
                }
            }
            self.high = seq;
            self.set(seq);
            return false;
        }
        if self.high - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::bit(seq);
        let seen = self.seen[w] & b != 0;
        self.seen[w] |= b;
        seen
    }
}

impl ProducerAudit {
    /// Records the message named `origin` sent to `destination`; true if
    /// it was seen already (a resend). An origin that does not parse is
    /// never a repeat.
    pub fn repeat(&mut self, destination: &Destination, origin: &[u8]) -> bool {
        let Some((producer, seq)) = parse_origin(origin) else {
            return false;
        };
        self.record(destination, producer, seq)
    }

    /// Records that `producer` sent `seq` to `destination` and, within
    /// the window, every sequence below it (a store's record of its
    /// highest sequence there, read back at a takeover). Those below are
    /// not gaps: a producer's sends to one destination arrive in order on
    /// its one connection, and the destination's shard writes them in
    /// order, so one below the highest written was written too (or
    /// consumed before its batch left). Without them, a failover resend of
    /// messages consumed and acknowledged before the crash, which left no
    /// row, would be stored and delivered again.
    pub fn note(&mut self, destination: &Destination, producer: &[u8], seq: u64) {
        self.record(destination, producer, seq);
        if let Some(w) = self
            .windows
            .get_mut(destination)
            .and_then(|d| d.get_mut(producer))
        {
            w.seen_through(seq);
        }
    }

    fn record(&mut self, destination: &Destination, producer: &[u8], seq: u64) -> bool {
        if let Some(w) = self
            .windows
            .get_mut(destination)
            .and_then(|d| d.get_mut(producer))
        {
            return w.record(seq);
        }
        if self.order.len() >= MAX_PRODUCERS {
            if let Some((d, p)) = self.order.pop_front() {
                if let Some(ws) = self.windows.get_mut(&d) {
                    ws.remove(&p);
                    if ws.is_empty() {
                        self.windows.remove(&d);
                    }
                }
            }
        }
        // Copied: the origin is a slice of a read buffer it must not pin.
        let key = Bytes::copy_from_slice(producer);
        self.order.push_back((destination.clone(), key.clone()));
        self.windows
            .entry(destination.clone())
            .or_default()
            .insert(key, Window::new(seq));
        false
    }

    /// Takes in what another audit (recovery's) saw.
    pub fn absorb(&mut self, other: ProducerAudit) {
        if self.order.is_empty() {
            *self = other;
            return;
        }
        let mut other = other;
        for (d, key) in std::mem::take(&mut other.order) {
            let Some(w) = other.windows.get_mut(&d).and_then(|ws| ws.remove(&key)) else {
                continue;
            };
            let low = w.high.saturating_sub(WINDOW - 1);
            for s in low..=w.high {
                let (word, b) = Window::bit(s);
                if w.seen[word] & b != 0 {
                    self.record(&d, &key, s);
                }
            }
        }
    }

    pub fn producers(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Destination {
        Destination::queue("q")
    }

    fn origin(p: &str, s: u64) -> Vec<u8> {
        format!("ID:host-1-2-3:{p}:1:{s}").into_bytes()
    }

    #[test]
    fn a_resend_is_a_repeat_and_a_new_sequence_is_not() {
        let mut a = ProducerAudit::default();
        assert!(!a.repeat(&q(), &origin("1", 1)));
        assert!(!a.repeat(&q(), &origin("1", 2)));
        assert!(a.repeat(&q(), &origin("1", 2)));
        assert!(a.repeat(&q(), &origin("1", 1)));
        assert!(!a.repeat(&q(), &origin("2", 1)), "another producer");
        assert!(
            !a.repeat(&Destination::queue("other"), &origin("1", 2)),
            "another destination"
        );
        assert!(!a.repeat(&q(), &origin("1", 3)));
    }

    #[test]
    fn gaps_are_not_repeats() {
        // The producer's other sequences went to another shard.
        let mut a = ProducerAudit::default();
        for s in (1..100).step_by(2) {
            assert!(!a.repeat(&q(), &origin("1", s)));
        }
        for s in (2..100).step_by(2) {
            assert!(!a.repeat(&q(), &origin("1", s)), "{s} was never seen");
        }
        assert!(a.repeat(&q(), &origin("1", 51)));
    }

    #[test]
    fn a_jump_past_the_window_forgets_and_old_sequences_pass() {
        let mut a = ProducerAudit::default();
        assert!(!a.repeat(&q(), &origin("1", 5)));
        assert!(!a.repeat(&q(), &origin("1", 5 + WINDOW + 10)));
        // Too old to tell: let through, never dropped.
        assert!(!a.repeat(&q(), &origin("1", 5)));
        assert!(a.repeat(&q(), &origin("1", 5 + WINDOW + 10)));
        // A bit reused by the window is cleared as it moves.
        assert!(!a.repeat(&q(), &origin("1", 5 + 2 * WINDOW)));
    }

    #[test]
    fn origins_that_do_not_parse_are_never_repeats() {
        let mut a = ProducerAudit::default();
        for bad in [
            &b"no-colon"[..],
            b":5",
            b"p:",
            b"p:x",
            b"p:99999999999999999999999",
        ] {
            assert!(!a.repeat(&q(), bad));
            assert!(!a.repeat(&q(), bad));
        }
        assert_eq!(a.producers(), 0);
    }

    #[test]
    fn the_oldest_producer_is_forgotten_past_the_bound() {
        let mut a = ProducerAudit::default();
        for p in 0..MAX_PRODUCERS + 1 {
            a.repeat(&q(), &origin(&p.to_string(), 1));
        }
        assert_eq!(a.producers(), MAX_PRODUCERS);
        assert!(!a.repeat(&q(), &origin("0", 1)), "forgotten");
        assert!(a.repeat(&q(), &origin(&MAX_PRODUCERS.to_string(), 1)));
    }

    #[test]
    fn a_stored_highest_sequence_covers_those_below_it() {
        let mut a = ProducerAudit::default();
        let high = 5000;
        a.note(&q(), b"ID:host-1-2-3:1:1", high);
        for s in [high, high - 1, high - 60, high - WINDOW + 1] {
            assert!(a.repeat(&q(), &origin("1", s)), "{s} is a resend");
        }
        // Too old to tell: let through, never dropped.
        assert!(!a.repeat(&q(), &origin("1", high - WINDOW)));
        assert!(!a.repeat(&q(), &origin("1", high + 1)), "a new sequence");
        assert!(!a.repeat(&q(), &origin("2", 50)), "another producer");
        // A note below what was seen live marks only up to it.
        let mut b = ProducerAudit::default();
        assert!(!b.repeat(&q(), &origin("1", 200)));
        b.note(&q(), b"ID:host-1-2-3:1:1", 150);
        assert!(b.repeat(&q(), &origin("1", 140)));
        assert!(!b.repeat(&q(), &origin("1", 180)), "never seen");
    }

    #[test]
    fn what_recovery_saw_is_absorbed() {
        let mut recovered = ProducerAudit::default();
        recovered.repeat(&q(), &origin("1", 7));
        recovered.repeat(&q(), &origin("1", 9));
        let mut live = ProducerAudit::default();
        live.repeat(&q(), &origin("2", 1));
        live.absorb(recovered);
        assert!(live.repeat(&q(), &origin("2", 1)));
        assert!(live.repeat(&q(), &origin("1", 7)));
        assert!(live.repeat(&q(), &origin("1", 9)));
        assert!(!live.repeat(&q(), &origin("1", 8)));
        let mut empty = ProducerAudit::default();
        let mut again = ProducerAudit::default();
        again.repeat(&q(), &origin("1", 7));
        empty.absorb(again);
        assert!(empty.repeat(&q(), &origin("1", 7)));
    }
}
