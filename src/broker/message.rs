//! A message as the broker keeps it: routing fields parsed once, opaque
//! properties and body as shared `Bytes`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::destination::Destination;

/// Unique within a broker run: the producing shard in the top byte and a
/// per-shard counter (seeded from the clock) below.
pub type MessageId = u64;

/// A message id as clients see it (STOMP's `message-id`, a selector's
/// `JMSMessageID`): this prefix and the number.
pub const MESSAGE_ID_PREFIX: &str = "ID:brokk-";

pub type Property = (Bytes, Bytes);

#[derive(Debug)]
pub struct Message {
    pub id: MessageId,
    pub destination: Destination,
    /// Application headers in arrival order (routing headers removed).
    pub properties: Vec<Property>,
    pub body: Bytes,
    /// 0..=9, higher is delivered first.
    pub priority: u8,
    /// Absolute expiry in ms since the epoch; 0 = never.
    pub expires_ms: u64,
    pub persistent: bool,
    pub timestamp_ms: u64,
    /// Holds this message's bytes against the broker's memory limit until
    /// the last reference (queue entry, in-flight delivery) is gone.
    pub charge: MemoryCharge,
}

impl Message {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }

    /// Bytes counted against the memory limit.
    pub fn footprint(properties: &[Property], body: &Bytes) -> usize {
        const OVERHEAD: usize = 192;
        OVERHEAD
            + body.len()
            + properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 32)
                .sum::<usize>()
    }

    /// A small message for unit tests (body `x`, priority 4, no
    /// properties, charged one byte to `usage`); tests set the rest with
    /// `..Message::for_tests(..)`.
    #[cfg(test)]
    pub(crate) fn for_tests(
        id: MessageId,
        destination: Destination,
        usage: &Arc<MemoryUsage>,
    ) -> Message {
        Message {
            id,
            destination,
            properties: Vec::new(),
            body: Bytes::from_static(b"x"),
            priority: 4,
            expires_ms: 0,
            persistent: false,
            timestamp_ms: 0,
            charge: usage.charge(1),
        }
    }
}

pub type SharedMessage = Arc<Message>;

/// Broker-wide memory use of held messages, shared by every shard.
/// Producer flow control reads it; only message creation and drop write it.
#[derive(Debug, Default)]
pub struct MemoryUsage {
    used: AtomicUsize,
}

impl MemoryUsage {
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn charge(self: &Arc<Self>, bytes: usize) -> MemoryCharge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        MemoryCharge {
            usage: Arc::clone(self),
            bytes,
        }
    }
}

#[derive(Debug)]
pub struct MemoryCharge {
    usage: Arc<MemoryUsage>,
    bytes: usize,
}

impl MemoryCharge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.usage.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
