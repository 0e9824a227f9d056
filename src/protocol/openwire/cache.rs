//! The marshalling cache (WireFormatInfo's CacheEnabled/CacheSize): each
//! side numbers the ids and destinations it sends, and the second time sends
//! the number alone. The two directions are independent: our encoder's
//! numbering ([`MarshalCache`]) and the peer's ([`UnmarshalCache`]).
//!
//! The encoder follows ActiveMQ's `OpenWireFormat`: indexes are handed out
//! round-robin, and before each frame the oldest entries are evicted until
//! 100 slots are free, so one frame's new entries always fit and an index is
//! never reused while the peer may still resolve it to an older entry within
//! the same frame.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::commands::DataStructure;
use super::error::{CodecError, Result};
use super::primitives::Marshal;

/// ActiveMQ's default when the negotiated size is 0 (Short.MAX_VALUE / 2).
pub const DEFAULT_CACHE_SIZE: usize = 16383;
/// Slots the eviction sweep keeps free before each frame.
const FREE_SLOTS: usize = 100;

/// `None` stands for a null field: ActiveMQ caches nulls like any value.
pub type CacheKey = Option<DataStructure>;

/// A structure's fingerprint: found again from a borrowed structure
/// (every dispatch names its consumer, destination and producer) without
/// copying it into a key. A fingerprint names at most one slot; another
/// structure with the same fingerprint travels uncached.
fn fingerprint<T: Marshal + Hash>(v: Option<&T>) -> u64 {
    let mut h = Fx(0);
    match v {
        None => h.write_u8(0),
        Some(v) => {
            h.write_u8(v.type_code());
            v.hash(&mut h);
        }
    }
    h.finish()
}

/// The fingerprint of a stored key: the same as its structure's.
fn key_fingerprint(key: &CacheKey) -> u64 {
    use DataStructure as D;
    match key {
        None => fingerprint::<DataStructure>(None),
        Some(D::ConnectionId(v)) => fingerprint(Some(v)),
        Some(D::SessionId(v)) => fingerprint(Some(v)),
        Some(D::ProducerId(v)) => fingerprint(Some(v)),
        Some(D::ConsumerId(v)) => fingerprint(Some(v)),
        Some(D::MessageId(v)) => fingerprint(Some(v)),
        Some(D::BrokerId(v)) => fingerprint(Some(v)),
        Some(D::Destination(v)) => fingerprint(Some(v)),
        Some(D::LocalTransactionId(v)) => fingerprint(Some(v)),
        Some(D::XaTransactionId(v)) => fingerprint(Some(v)),
        Some(D::TransactionId(v)) => fingerprint(Some(v)),
        // Never cached in practice (ids and destinations are).
        Some(D::Command(c)) => {
            let mut h = Fx(0);
            h.write_u8(c.type_code());
            c.hash(&mut h);
            h.finish()
        }
    }
}

/// FxHash (rustc's): the keys are our own peer's ids, not an attacker's
/// choice, and SipHash showed in profiles.
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// For keys that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[derive(Debug)]
pub struct MarshalCache {
    slots: Vec<Option<CacheKey>>,
    /// Fingerprint -> slot (fingerprints are hashes already).
    index: HashMap<u64, i16, BuildHasherDefault<Identity>>,
    next: usize,
    next_eviction: usize,
}

impl MarshalCache {
    /// `size` as negotiated; 0 means ActiveMQ's default. Indexes are i16 on
    /// the wire, which bounds the size.
    pub fn new(size: usize) -> MarshalCache {
        MarshalCache {
            slots: vec![None; effective_size(size)],
            index: HashMap::default(),
            next: 0,
            next_eviction: 0,
        }
    }

    pub fn index_of(&self, key: &CacheKey) -> Option<i16> {
        let i = *self.index.get(&key_fingerprint(key))?;
        (self.slots[i as usize].as_ref() == Some(key)).then_some(i)
    }

    /// [`MarshalCache::index_of`] for a borrowed structure.
    pub fn index_of_ref<T: Marshal + Hash>(&self, v: &Option<T>) -> Option<i16> {
        let i = *self.index.get(&fingerprint(v.as_ref()))?;
        let same = match (&self.slots[i as usize], v) {
            (Some(None), None) => true,
            (Some(Some(d)), Some(v)) => v.same_as(d),
            _ => false,
        };
        same.then_some(i)
    }

    /// Numbers `key`; -1 when the cache is full, or another key has its
    /// fingerprint (then it travels uncached).
    pub fn add(&mut self, key: CacheKey) -> i16 {
        let fp = key_fingerprint(&key);
        if self.index.contains_key(&fp) {
            return -1;
        }
        let i = self.next;
        self.next = (self.next + 1) % self.slots.len();
        if self.index.len() >= self.slots.len() {
            return -1;
        }
        if let Some(old) = self.slots[i].take() {
            self.index.remove(&key_fingerprint(&old));
        }
        // Checked: every size is at most i16::MAX.
        let index = i as i16;
        self.slots[i] = Some(key);
        self.index.insert(fp, index);
        index
    }

    /// Run before each frame is marshalled.
    pub fn evict_for_next_frame(&mut self) {
        let keep = self.slots.len().saturating_sub(FREE_SLOTS);
        while self.index.len() > keep {
            if let Some(old) = self.slots[self.next_eviction].take() {
                self.index.remove(&key_fingerprint(&old));
            }
            self.next_eviction = (self.next_eviction + 1) % self.slots.len();
        }
    }
}

#[derive(Debug)]
pub struct UnmarshalCache {
    /// Grown on demand: a peer that uses ten ids costs ten slots, whatever
    /// cache size was negotiated.
    slots: Vec<CacheKey>,
    size: usize,
}

impl UnmarshalCache {
    pub fn new(size: usize) -> UnmarshalCache {
        UnmarshalCache {
            slots: Vec::new(),
            size: effective_size(size),
        }
    }

    pub fn set(&mut self, index: i16, value: CacheKey) -> Result<()> {
        // -1: the peer's cache was full and this value is not numbered.
        if index == -1 {
            return Ok(());
        }
        let i = self.slot(index)?;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = value;
        Ok(())
    }

    /// An index the peer never set reads as null, as in ActiveMQ.
    pub fn get(&self, index: i16) -> Result<CacheKey> {
        let i = self.slot(index)?;
        Ok(self.slots.get(i).cloned().flatten())
    }

    fn slot(&self, index: i16) -> Result<usize> {
        usize::try_from(index)
            .ok()
            .filter(|&i| i < self.size)
            .ok_or(CodecError::CacheIndex {
                index,
                size: self.size,
            })
    }
}

fn effective_size(size: usize) -> usize {
    match size {
        0 => DEFAULT_CACHE_SIZE,
        n => n.min(i16::MAX as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openwire::commands::ConnectionId;

    fn key(n: usize) -> CacheKey {
        Some(DataStructure::ConnectionId(ConnectionId {
            value: Some(format!("ID:{n}")),
        }))
    }

    #[test]
    fn indexes_are_assigned_round_robin_and_found_again() {
        let mut c = MarshalCache::new(200);
        assert_eq!(c.add(key(1)), 0);
        assert_eq!(c.add(None), 1);
        assert_eq!(c.index_of(&key(1)), Some(0));
        assert_eq!(c.index_of(&None), Some(1));
        assert_eq!(c.index_of(&key(2)), None);
    }

    #[test]
    fn eviction_keeps_room_for_a_frame() {
        let mut c = MarshalCache::new(150);
        for n in 0..150 {
            c.add(key(n));
        }
        c.evict_for_next_frame();
        assert_eq!(c.index.len(), 50);
        assert_eq!(c.index_of(&key(0)), None);
        assert_eq!(c.index_of(&key(149)), Some(149));
        // The freed slots are reused in order.
        assert_eq!(c.add(key(500)), 0);
    }

    #[test]
    fn small_caches_do_not_loop_forever() {
        let mut c = MarshalCache::new(10);
        c.add(key(1));
        c.evict_for_next_frame();
        assert_eq!(c.index.len(), 0);
    }

    #[test]
    fn unmarshal_cache_checks_indexes() {
        let mut c = UnmarshalCache::new(4);
        c.set(3, key(3)).unwrap();
        assert_eq!(c.get(3).unwrap(), key(3));
        assert_eq!(c.get(2).unwrap(), None);
        c.set(-1, key(9)).unwrap();
        assert!(c.set(4, key(4)).is_err());
        assert!(c.get(-2).is_err());
    }
}
