//! Message ids: the issuing shard in the top byte, a per-shard counter below.
//!
//! Ids must never repeat for the life of a data directory, across restarts
//! and failovers, whatever the clocks of the brokers sharing it say: the
//! journal retires a message by its id, so a re-issued id would let an old
//! acknowledgement retire a new message at the next recovery. The counter
//! therefore starts above every id the recovered store holds (any shard's),
//! and above the clock (so a broker with an empty store, or a memory-mode
//! one, still starts above what it issued before its last restart).

use std::cell::Cell;

use super::message::MessageId;

/// Bits below the shard byte.
const COUNTER_BITS: u32 = 56;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// The counter part of an id (without the issuing shard).
pub fn counter(id: MessageId) -> u64 {
    id & COUNTER_MASK
}

/// Issues ids on one shard.
#[derive(Debug)]
pub struct MessageIds {
    next: Cell<u64>,
}

impl MessageIds {
    /// `recovered_max`: the highest id the store held when this broker took
    /// over (0 if none), whatever shard issued it.
    pub fn new(shard: usize, recovered_max: MessageId) -> MessageIds {
        let clock = clock_micros() & COUNTER_MASK;
        // Never past the counter's bits: an id must not spill into the
        // shard byte (two shards would issue the same ids).
        let after_store = (counter(recovered_max) + 1).min(COUNTER_MASK);
        MessageIds {
            next: Cell::new(((shard as u64) << COUNTER_BITS) | clock.max(after_store)),
        }
    }

    pub fn next(&self) -> MessageId {
        let id = self.next.get();
        self.next.set(id + 1);
        id
    }
}

/// Microseconds since the epoch. `BROKK_FAULT_ID_CLOCK_US` replaces the
/// clock for tests that need a broker whose clock is behind the ids in its
/// store (a standby with a slow clock); nothing else reads it.
fn clock_micros() -> u64 {
    if let Some(v) = std::env::var("BROKK_FAULT_ID_CLOCK_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_above_the_recovered_store_even_when_the_clock_is_behind() {
        let ahead = (3u64 << COUNTER_BITS) | (clock_micros() + 3_600_000_000);
        let ids = MessageIds::new(1, ahead);
        let first = ids.next();
        assert_eq!(first >> COUNTER_BITS, 1, "shard byte");
        assert!(first & COUNTER_MASK > ahead & COUNTER_MASK);
        assert!(ids.next() > first);
    }

    #[test]
    fn an_empty_store_starts_at_the_clock() {
        let before = clock_micros();
        let id = MessageIds::new(2, 0).next();
        assert!(id & COUNTER_MASK >= before);
        assert_eq!(id >> COUNTER_BITS, 2);
    }
}
