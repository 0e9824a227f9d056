//! Hash maps keyed by message id. Ids are made by the broker (never by a
//! client), so the std SipHash's flood resistance buys nothing here, while
//! its cost is paid on every delivery, acknowledgement and journal append,
//! and a million times over when a journal is recovered.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Mixes one u64 into a well-spread hash (a multiply and two xor-shifts):
/// ids are a shard byte over a counter, so their low bits alone repeat
/// across shards and their high bits barely change.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let h = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are meant; anything else still hashes correctly.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_i64(&mut self, n: i64) {
        // The tables' BIGINT ids (store::replicated) are the same ids.
        self.write_u64(n as u64);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_different_shards_spread() {
        let mut buckets = [0u32; 64];
        for shard in 0..4u64 {
            for n in 0..4096u64 {
                let mut h = IdHasher::default();
                h.write_u64(shard << 56 | n);
                buckets[(h.finish() % 64) as usize] += 1;
            }
        }
        // 16 384 ids over 64 buckets: 256 each on average.
        assert!(
            buckets.iter().all(|&b| (128..=384).contains(&b)),
            "{buckets:?}"
        );
    }
}
