//! Where messages live. The broker appends what must survive a restart
//! (persistent SENDs, their acknowledgements, redelivery counts, durable
//! subscriptions) and tells the store when a message is retired; the store
//! makes records durable in batches (group commit) and reads them back on
//! start. Nothing here knows the broker's types: records are plain data.
//!
//! Modes: `memory` keeps nothing; `file` is the per-shard journal; `mysql`
//! and `postgres` are ActiveMQ's JDBC tables ([`sql`]). The `zk` mode comes
//! behind the same traits.

mod anon;
pub mod journal;
pub mod memory;
pub mod meta;
pub mod origin;
pub mod read_ahead;
pub mod record;
pub mod replicated;
pub mod spool;
pub mod sql;

pub use record::{Record, RecordRef, StoredDestination, StoredSub};

/// Where a SEND record can be read back from the store itself (the file
/// journal): what a queue keeps for a message it paged out, instead of a
/// second copy (see `broker::paging`). Valid while the message is held:
/// a held message pins its segment, so the place is never written over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordAt {
    /// The journal's segment slot.
    pub segment: u32,
    /// Bytes of the record.
    pub len: u32,
    /// Offset in the segment's record stream (see `journal::read_back`).
    pub at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error("journal segment {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("record {at:?} is not in the journal any more")]
    Gone { at: RecordAt },
    #[error("record {at:?} does not read back: {reason}")]
    Damaged { at: RecordAt, reason: String },
}

/// A store whose records can be read back while it runs.
pub trait RecordSource {
    /// The records at `at`, each decoded (bodies are slices of the read
    /// buffers) or the reason it could not be.
    fn read_records(&self, at: &[RecordAt]) -> Vec<Result<Record, ReadBackError>>;

    /// Has the records at `at` read into memory in the background, so that reading them when they are wanted
    /// does not wait on the disk: those that fit in `max_bytes` of reads
    /// (gaps between nearby records included), earliest first.
    fn advise_read_ahead(&self, _at: &[RecordAt], _max_bytes: u64) {}

    /// The record at `at` is being read ahead: a read of it now would
    /// wait for the disk. The store wakes its shard when the read is done
    /// (see `Journal::wake_on_read_ahead`); only then does this say so.
    fn reading(&self, _at: &RecordAt) -> bool {
        false
    }
}

impl std::fmt::Debug for dyn RecordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordSource")
    }
}

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
    /// Where the last SEND (or prepared SEND) appended can be read back
    /// from, for a store that can (see [`RecordSource`]).
    fn last_send_at(&self) -> Option<RecordAt> {
        None
    }
    /// A consumer on connection `owner` (a number the caller gives each
    /// connection) acknowledged stored queue message `id`, its last
    /// holder, and no receipt waits for that yet. A store may then retire
    /// it without a sequence number, so that later receipts do not wait
    /// for the retirement (see [`Durable::promote_unreceipted`]); true if
    /// it did. False: the caller appends the Ack and releases, as for any
    /// retirement.
    fn unreceipted_ack(&mut self, _id: u64, _owner: u64) -> bool {
        false
    }
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
    /// A receipt is asked for by connection `owner`, whose
    /// acknowledgements went through [`Store::unreceipted_ack`] (None:
    /// every connection): each such retirement of its not yet durable gets
    /// a sequence number now (one, appended), so that the receipt waits
    /// for it. Other connections' retirements keep waiting without one.
    fn promote_unreceipted(&mut self, _owner: Option<u64>) {}
    /// Retirements wait without a sequence number (see
    /// [`Store::unreceipted_ack`]).
    fn has_unreceipted(&self) -> bool {
        false
    }
}
