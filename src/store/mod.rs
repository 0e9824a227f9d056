//! Where messages live. The broker appends what must survive a restart
//! (persistent SENDs, their acknowledgements, redelivery counts, durable
//! subscriptions) and tells the store when a message is retired; the store
//! makes records durable in batches (group commit) and reads them back on
//! start. Nothing here knows the broker's types: records are plain data.
//!
//! Modes: `memory` keeps nothing; `file` is the per-shard journal; `mysql`
//! and `postgres` are ActiveMQ's JDBC tables ([`sql`]). The `zk` mode comes
//! behind the same traits.

pub mod journal;
pub mod memory;
pub mod meta;
pub mod record;
pub mod spool;
pub mod sql;

pub use record::{Record, RecordRef, StoredDestination, StoredSub};

/// What the broker asks of a store, synchronously: appends are buffered;
/// the store's own flusher makes them durable and says how far it got.
pub trait Store {
    /// Buffers a record. For a SEND (or a transaction's prepared SEND),
    /// `holders` is how many acknowledgements retire it (1 for a queue, the
    /// durable subscribers for a topic); for a TxCommit, how many
    /// participants have yet to apply the transaction.
    fn append(&mut self, rec: &RecordRef<'_>, holders: u32);
    /// One holder of message (or transaction decision) `id` let go of it.
    fn release(&mut self, id: u64);
}

/// A store that makes appends durable in the background (every mode but
/// `memory`): the shard answers a client only once `durable()` reached the
/// sequence number its records got.
pub trait Durable: Store {
    /// Sequence number of the last append.
    fn appended(&self) -> u64;
    /// Every append up to this is durable.
    fn durable(&self) -> u64;
    /// Appends wait for the flusher.
    fn has_pending(&self) -> bool;
}
