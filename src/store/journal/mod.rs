//! The `file` store: one append-only journal per shard, in fixed-size
//! segments that are preallocated (zero-filled, so fdatasync does not pay for
//! block allocation) and reused once everything in them is acknowledged.
//!
//! Writes are O_DIRECT, 4 KiB-aligned, through glommio's `DmaFile`. Group
//! commit: [`Journal::append`] only encodes into memory; the flusher task
//! writes everything appended since the last flush as one *round* per
//! segment (see [`round`]) and fdatasyncs, then advances
//! [`Journal::durable`]. Callers wait for the sequence number their append
//! returned.
//!
//! Segment file: a 4 KiB header block (magic, generation, salt, CRC) then
//! rounds of records (see [`record`]), each round starting on a block
//! boundary. The generation orders segments; rounds and records carry its
//! low bits so the stale content of a reused segment reads as foreign.

#[cfg(test)]
mod crash_cases;
#[cfg(test)]
mod disk_full_cases;
pub use super::read_ahead::Notify;
mod read_back;
#[cfg(test)]
mod read_back_cases;
pub mod recovery;
pub mod round;
mod segment_read;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::DmaFile;
use thiserror::Error;
use tracing::{debug, info, warn};

use super::record::{self, DurableSubs, RecordRef};
use crate::idmap::IdMap;
use round::{next_block, Position, RoundHeader, RoundKind, ROUND_HEADER_BYTES};

pub const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"BRKJNL02";
/// The first format (records without rounds), for a clear refusal.
const MAGIC_V1: &[u8; 8] = b"BRKJNL01";

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt in {path} at offset {offset}: {reason} (set store.skip_corrupt = true to skip damaged records)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("{path} was written by an older Brokk (journal format 1); drain it with that version, or move the data directory away")]
    OldFormat { path: PathBuf },
}

impl JournalError {
    /// The file system (or the user's quota) has no room: the broker waits
    /// for space instead of stopping (see [`Journal::disk_full`]).
    pub fn is_no_space(&self) -> bool {
        match self {
            JournalError::Io { source, .. } => is_no_space_kind(source.kind()),
            JournalError::Corrupt { .. } | JournalError::OldFormat { .. } => false,
        }
    }
}

/// A full file system or an exhausted quota: space may come back, so the
/// broker waits for it instead of stopping.
pub fn is_no_space_kind(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn glommio_err(path: &Path, e: glommio::GlommioError<()>) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        // Keeps the error's kind: ENOSPC must stay recognisable.
        source: std::io::Error::from(e),
    }
}

/// A lack of space found without an I/O error (a short write, `statvfs`).
fn no_space(path: &Path, why: String) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::StorageFull, why),
    }
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// This shard's journal directory.
    pub dir: PathBuf,
    pub segment_size_bytes: u64,
}

/// Journal space across all shards, for store flow control: persistent
/// producers wait while [`StoreUsage::full`] holds.
#[derive(Debug)]
pub struct StoreUsage {
    /// Bytes of segments holding data (spares not counted).
    pub used_bytes: AtomicU64,
    /// `store.limit_bytes`, capped at start to what the file system can
    /// hold (see [`room_on_disk`]).
    pub limit_bytes: AtomicU64,
    /// Shards that cannot take another segment: the file system is full
    /// and none of their segments is free (see [`Journal::disk_full`]).
    pub disk_full_shards: AtomicUsize,
    /// Writer lanes (database modes) that cannot write: their batches are
    /// retried, and producers wait rather than pile up unreceipted work.
    pub unavailable: AtomicUsize,
    /// Database modes: what the writer lanes did, for `/metrics`.
    pub db: DbWriteStats,
    /// Bytes of the shards' spools, on disk or waiting to be written (see
    /// `store::spool`): held to `limit_bytes` too, so that a spool that
    /// cannot shrink (a few live records pin each file) pauses persistent
    /// producers instead of filling the disk.
    pub spool_bytes: AtomicU64,
}

/// The database writer's counters (database modes), written once per
/// transaction on the side runtime, read by the admin side.
#[derive(Debug, Default)]
pub struct DbWriteStats {
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Rows (inserts, deletes, updates) in them.
    pub rows: AtomicU64,
    /// Time spent writing and committing them, microseconds.
    pub commit_us: AtomicU64,
    /// Transactions the database aborted as deadlock or serialization
    /// victims, and that went again at once.
    pub conflicts: AtomicU64,
    /// Transactions that began while the one before them was still
    /// committing (see `store::sql::writer`).
    pub overlapped: AtomicU64,
    /// Writes that failed (database unreachable, an error), then retried.
    pub failures: AtomicU64,
}

impl Default for StoreUsage {
    fn default() -> Self {
        StoreUsage {
            used_bytes: AtomicU64::new(0),
            limit_bytes: AtomicU64::new(u64::MAX),
            disk_full_shards: AtomicUsize::new(0),
            unavailable: AtomicUsize::new(0),
            db: DbWriteStats::default(),
            spool_bytes: AtomicU64::new(0),
        }
    }
}

impl StoreUsage {
    /// Persistent producers must wait: the journal is at its limit or its
    /// file system is full. Three relaxed loads, no lock.
    pub fn full(&self) -> bool {
        self.at_limit() || self.disk_full() || self.unavailable.load(Ordering::Relaxed) > 0
    }

    pub fn at_limit(&self) -> bool {
        self.used_bytes.load(Ordering::Relaxed) >= self.limit_bytes.load(Ordering::Relaxed)
    }

    pub fn disk_full(&self) -> bool {
        self.disk_full_shards.load(Ordering::Relaxed) > 0
    }

    /// The spools reached the store's limit: persistent producers wait.
    pub fn spool_full(&self) -> bool {
        self.spool_bytes.load(Ordering::Relaxed) >= self.limit_bytes.load(Ordering::Relaxed)
    }

    /// For log lines when one cause of a pause ends: whether persistent
    /// producers really go again, or another cause still holds them.
    fn producers(&self) -> &'static str {
        if self.full() {
            "still paused"
        } else {
            "resumed"
        }
    }

    /// A segment started holding data. Logs the crossing of the limit once,
    /// not per paused producer.
    fn add_segment(&self, bytes: u64, dir: &Path) {
        let before = self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        let limit = self.limit_bytes.load(Ordering::Relaxed);
        if before < limit && before + bytes >= limit {
            warn!(dir = %dir.display(), used_bytes = before + bytes, limit_bytes = limit,
                "journal reached store.limit_bytes; persistent producers paused until consumers acknowledge enough to free a segment");
        }
    }

    fn remove_segment(&self, bytes: u64, dir: &Path) {
        let before = self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let limit = self.limit_bytes.load(Ordering::Relaxed);
        if before >= limit && before - bytes < limit {
            info!(dir = %dir.display(), used_bytes = before - bytes, limit_bytes = limit,
                producers = self.producers(), "journal below store.limit_bytes again");
        }
    }
}

/// After the file system was found full, how long before a new segment
/// file is tried again (and only once `statvfs` shows room for one).
const NO_SPACE_RETRY: Duration = Duration::from_secs(1);

/// Free segment files a shard keeps beyond the one its next roll takes,
/// for the records consumers cause at a full file system. Without it, an
/// acknowledgement that fills the active segment when no file can be made
/// would start a segment with no file; records behind it are never
/// written, so the segments they free are never declared free and could
/// never give it one: the shard would wait until space is freed outside
/// the broker. Producers pause while only the reserve is left (see
/// [`Journal::disk_full`]), so the reserve is taken by acknowledgements
/// (and what producers had in flight), whose records then free segments.
pub const RESERVE_SEGMENTS: usize = 1;

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// 0 = no valid header (fresh or never used).
    generation: u64,
    /// Random per use of the segment, mixed into its round headers' CRC:
    /// a message body that imitates a round header cannot pass for one.
    salt: u64,
    /// Sends in this segment not yet acknowledged by every holder.
    live: usize,
    /// Where the next round goes (a block boundary).
    write_at: u64,
    file: Option<Rc<DmaFile>>,
    /// Started without a file (a new slot, see `Journal::roll`): the
    /// append sequence number before its first record, until it is given
    /// a file (made, or a free segment's, see [`segment_file`]).
    unplaced: Option<u64>,
    /// Where its records can be read back (see [`read_back`]).
    stream: read_back::Stream,
}

/// Appended bytes waiting for the flusher, for one segment.
#[derive(Debug)]
struct Chunk {
    segment: usize,
    /// Write the header block first (segment just started).
    fresh: bool,
    bytes: Vec<u8>,
    /// Close the segment with an End round after these records.
    ends_segment: bool,
    /// For a fresh segment: the segment it follows (closed with an End
    /// round in this write or before), named in its header.
    follows: Option<usize>,
    /// Sequence number of the last record in `bytes` (or before them, if
    /// none): durable once the chunk is written and synced. A flush may
    /// write only the first chunks (no space for the rest).
    upto: u64,
    /// Where `bytes` start in the segment's record stream.
    logical: u64,
}

pub struct Journal {
    cfg: JournalConfig,
    usage: Arc<StoreUsage>,
    segments: Vec<Segment>,
    /// Segments holding data, oldest generation first; the last is active.
    in_use: VecDeque<usize>,
    /// Reusable segments, oldest generation first (reuse order matters: see
    /// `release_dead_segments`), each with the append sequence number that
    /// freed it (None: it holds nothing recovery could replay). A segment is
    /// overwritten only once a synced round has said it is free (see
    /// `claimed`), so recovery never mistakes its old content for live data.
    free: VecDeque<(usize, Option<u64>)>,
    /// Segments freed up to this append sequence number are declared free
    /// by a round that is durable: every round says which segments are
    /// free (`first_gen`) counting only those whose freeing acknowledgement
    /// was already durable when it was laid out. None until the first.
    claimed: Option<u64>,
    next_generation: u64,
    /// Record bytes appended to the active segment and not yet written.
    pending_len: u64,
    pending: Vec<Chunk>,
    appended: u64,
    durable: u64,
    /// The journal position after the last round known durable.
    durable_pos: Position,
    /// The watermark of the last seal written (no need to write it twice).
    sealed: Position,
    /// Message id -> (segment, holders left).
    holders: IdMap<(usize, u32)>,
    next_file_number: u64,
    /// Durable subscriptions per topic: written again at the head of every
    /// new segment, so that no older segment is needed to know them.
    durables: DurableSubs,
    /// A spare segment is being made in the background.
    making_spare: bool,
    /// The active segment was started by this process (at open): a start
    /// needs no other fresh segment.
    started_fresh: bool,
    /// The master's epoch, written into every round (0: none).
    epoch: u64,
    /// Why the last attempt to make a segment file failed for lack of
    /// space; cleared when one is made. While set and no free segment is
    /// reusable for the next roll, the shard counts as disk-full.
    no_room: Option<String>,
    /// No new segment file is tried before this.
    file_retry_at: Option<Instant>,
    /// This shard is counted in [`StoreUsage::disk_full_shards`].
    counted_full: bool,
    /// Why a write into a segment failed for lack of space (file systems
    /// that allocate on overwrite); its records stay pending until a retry
    /// succeeds. The shard counts as disk-full meanwhile.
    write_blocked: Option<String>,
    /// The failed write is not retried before this.
    write_retry_at: Option<Instant>,
    /// Segments in use that have no file yet (see `Segment::unplaced`).
    unplaced: usize,
    /// Where the last SEND appended can be read back.
    last_send_at: Option<crate::store::RecordAt>,
    /// Chunks being written: readable from memory until they are on disk.
    in_flight: Vec<read_back::InFlight>,
    /// Reads paged messages' records ahead (started on first use).
    read_ahead: super::read_ahead::Readers,
}

impl Journal {
    pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
        dir.join(format!("seg-{number:06}.log"))
    }

    /// Sequence number of the last append; durable once `durable() >= it`.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Encodes a record for the next flush. `holders`: for a SEND (tagged
    /// or not), how many acknowledgements retire it (1 for a queue, the
    /// durable subscriber count for a topic); for a TxCommit, how many
    /// participants must still apply the transaction; 0 for other records.
    pub fn append(&mut self, rec: &RecordRef<'_>, holders: u32) -> u64 {
        let mut size = self.encode_pending(rec);
        let alone = self.segments[self.active()].write_at == BLOCK && self.pending_len == size;
        if !self.fits() && !alone {
            // Does not fit: take it back out and start the next segment.
            if let Some(c) = self.pending.last_mut() {
                c.bytes.truncate(c.bytes.len() - size as usize);
                self.segments[c.segment].stream.unappend(size);
            }
            self.pending_len -= size;
            self.roll(true);
            size = self.encode_pending(rec);
        }
        let active = self.active();
        if matches!(rec, RecordRef::Send { .. } | RecordRef::TxSend { .. }) {
            let end = self.segments[active].stream.appended();
            self.last_send_at = Some(crate::store::RecordAt {
                segment: active as u32,
                len: size as u32,
                at: end - size,
            });
        }
        match rec {
            // A prepared SEND holds its segment like a SEND; a transaction's
            // decision is held (under the transaction id, which never equals
            // a message id) until every participant has applied its part.
            RecordRef::Send { id, .. }
            | RecordRef::TxSend { id, .. }
            | RecordRef::TxCommit { tx: id }
                if holders > 0 =>
            {
                self.holders.insert(*id, (active, holders));
                self.segments[active].live += 1;
            }
            RecordRef::DurableAdd {
                topic,
                sub,
                selector,
            } => {
                self.durables
                    .entry(Arc::from(*topic))
                    .or_default()
                    .insert((*sub).clone(), selector.map(Arc::from));
            }
            RecordRef::DurableRemove { topic, sub } => {
                if let Some(s) = self.durables.get_mut(*topic) {
                    s.remove(*sub);
                    if s.is_empty() {
                        self.durables.remove(*topic);
                    }
                }
            }
            _ => {}
        }
        self.appended += 1;
        if let Some(c) = self.pending.last_mut() {
            c.upto = self.appended;
        }
        self.appended
    }

    /// Whether the active segment holds its pending records in one round
    /// and still has a block for its End round.
    fn fits(&self) -> bool {
        let s = &self.segments[self.active()];
        next_block(s.write_at + ROUND_HEADER_BYTES + self.pending_len) + BLOCK
            <= self.cfg.segment_size_bytes
    }

    /// Encodes straight into the active segment's pending chunk (no
    /// per-record buffer); returns the encoded size.
    fn encode_pending(&mut self, rec: &RecordRef<'_>) -> u64 {
        let active = self.active();
        let gen = self.segments[active].generation;
        if !matches!(self.pending.last(), Some(c) if c.segment == active) {
            self.pending.push(Chunk {
                segment: active,
                fresh: false,
                bytes: Vec::with_capacity(64 * 1024),
                ends_segment: false,
                follows: None,
                upto: self.appended,
                logical: self.segments[active].stream.appended(),
            });
        }
        let chunk = self.pending.last_mut().expect("pushed above");
        let before = chunk.bytes.len();
        record::encode(rec, gen, &mut chunk.bytes);
        let size = (chunk.bytes.len() - before) as u64;
        self.pending_len += size;
        self.segments[active].stream.append(size);
        size
    }

    fn active(&self) -> usize {
        *self
            .in_use
            .back()
            .expect("a journal always has an active segment")
    }

    /// Closes the active segment (an End round, unless `close` is false:
    /// it has one already) and starts the next one: the oldest free segment
    /// if a durable round already says it is free, else a new file.
    fn roll(&mut self, close: bool) {
        let prev = self.in_use.back().copied();
        if let Some(&old) = self.in_use.back().filter(|_| close) {
            match self.pending.last_mut() {
                Some(c) if c.segment == old => c.ends_segment = true,
                _ => self.pending.push(Chunk {
                    segment: old,
                    fresh: false,
                    bytes: Vec::new(),
                    ends_segment: true,
                    follows: None,
                    upto: self.appended,
                    logical: self.segments[old].stream.appended(),
                }),
            }
            // The closed segment may hold nothing live any more
            // (acknowledged while it was active): free it now, not at the
            // next release. The record being appended goes into a round
            // laid out after this; once a round laid out after it is
            // durable, the segment is reusable (see `is_reusable`).
            self.free_dead(0, self.appended + 1);
        }
        // Segments freed later are never reusable before one freed earlier
        // (claims only grow), so this takes the oldest reusable one. While
        // an earlier segment waits for a file, the next reusable one is
        // its, not this one's: files are given in journal order.
        let reusable = if self.unplaced == 0 {
            self.free.iter().position(|&(_, f)| self.is_reusable(f))
        } else {
            None
        };
        let next = match reusable.and_then(|k| self.free.remove(k)) {
            Some((i, _)) => i,
            None => {
                let index = self.segments.len();
                let number = self.next_file_number;
                self.next_file_number += 1;
                self.segments.push(Segment {
                    path: Journal::segment_path(&self.cfg.dir, number),
                    generation: 0,
                    salt: 0,
                    live: 0,
                    write_at: BLOCK,
                    file: None,
                    unplaced: Some(self.appended),
                    stream: read_back::Stream::new(BLOCK),
                });
                self.unplaced += 1;
                index
            }
        };
        // Counted while it holds data; spares are not counted.
        self.usage
            .add_segment(self.cfg.segment_size_bytes, &self.cfg.dir);
        let s = &mut self.segments[next];
        s.generation = self.next_generation;
        s.salt = random_u64();
        s.write_at = BLOCK;
        // Nothing of its last use is held (it was free): a new stream.
        s.stream = read_back::Stream::new(BLOCK);
        self.next_generation += 1;
        self.in_use.push_back(next);
        let mut chunk = Chunk {
            segment: next,
            fresh: true,
            bytes: Vec::new(),
            ends_segment: false,
            follows: prev,
            upto: self.appended,
            logical: BLOCK,
        };
        // The snapshot goes first: every later record in this segment (a
        // topic SEND in particular) is read back knowing its subscribers.
        let gen = self.segments[next].generation;
        for (topic, subs) in &self.durables {
            for (sub, selector) in subs {
                let add = RecordRef::DurableAdd {
                    topic,
                    sub,
                    selector: selector.as_deref(),
                };
                record::encode(&add, gen, &mut chunk.bytes);
            }
        }
        self.pending_len = chunk.bytes.len() as u64;
        self.segments[next].stream.append(self.pending_len);
        self.pending.push(chunk);
        // Down to the reserve: if the file system has no room for another
        // spare, producers must pause now, while this segment still has
        // room, not once the flusher's spare attempt finds none (that runs
        // only between bursts of writes: under load the reserve, and the
        // roll after it, would be taken first). One `statvfs` per segment,
        // never per record.
        // A spare being made (paced, not yet counted) needs its own room:
        // then room for two is asked, so a burst cannot take the reserve
        // on the strength of a spare that may still fail.
        if self.reusable_count() <= RESERVE_SEGMENTS {
            let wanted = if self.making_spare { 2 } else { 1 };
            self.may_make_files(wanted);
        }
        self.note_space();
    }

    /// One holder of message `id` let go of it (ack, dead-letter, expiry).
    pub fn release(&mut self, id: u64) {
        let Some((seg, left)) = self.holders.get_mut(&id) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            let seg = *seg;
            self.holders.remove(&id);
            self.segments[seg].live -= 1;
            self.release_dead_segments();
            if self.holders.is_empty() {
                // No reserve is needed any more (see `reserve`).
                self.note_space();
            }
        }
    }

    /// Every holder of `id` let go at once: a prepared SEND whose
    /// transaction recovery dropped.
    pub fn forget(&mut self, id: u64) {
        if let Some((seg, _)) = self.holders.remove(&id) {
            self.segments[seg].live -= 1;
            self.release_dead_segments();
            if self.holders.is_empty() {
                self.note_space();
            }
        }
    }

    /// Frees segments from the oldest while they hold nothing live. Oldest
    /// first, and reused oldest first, so a record that retires an older one
    /// (an ACK) is never gone while the record it retires is still readable.
    fn release_dead_segments(&mut self) {
        self.free_dead(1, self.appended);
    }

    /// Frees dead segments from the oldest, keeping the newest `keep`,
    /// each freed at `freed_at` (see `is_reusable`). Records of a freed
    /// segment that wait to be written (no space yet) were appended before
    /// `freed_at`, so they are written before it is reused.
    fn free_dead(&mut self, keep: usize, freed_at: u64) {
        let mut freed = false;
        while self.in_use.len() > keep {
            let oldest = self.in_use[0];
            if self.segments[oldest].live > 0 {
                break;
            }
            self.in_use.pop_front();
            self.free.push_back((oldest, Some(freed_at)));
            self.usage
                .remove_segment(self.cfg.segment_size_bytes, &self.cfg.dir);
            freed = true;
        }
        if freed {
            self.note_space();
        }
    }

    /// A free segment may be overwritten now (the next roll takes it).
    fn has_reusable(&self) -> bool {
        self.free.iter().any(|&(_, f)| self.is_reusable(f))
    }

    /// Free segments that may be overwritten now.
    fn reusable_count(&self) -> usize {
        self.free
            .iter()
            .filter(|&&(_, f)| self.is_reusable(f))
            .count()
    }

    /// This shard cannot take more data for now: a segment file could not
    /// be made and the free segments left (reusable, or soon: see `homes`)
    /// are only the reserve (`RESERVE_SEGMENTS`). The active segment and
    /// the reserve are kept for what consumers cause (acknowledgements,
    /// dead-letter copies), which is how segments come back: their records
    /// always have a segment with a file to go to, so they are written and
    /// free what they retire. Producers resume once a freed segment has
    /// refilled the reserve and one more is free.
    pub fn disk_full(&self) -> bool {
        self.write_blocked.is_some()
            || (self.no_room.is_some() && self.homes() <= self.unplaced + self.reserve())
    }

    /// Free segments producers leave alone: the reserve, while this shard
    /// holds anything a consumer could acknowledge. With nothing live no
    /// acknowledgement can come, and holding the reserve back would pause
    /// producers (broker-wide) with nothing left to free.
    fn reserve(&self) -> usize {
        if self.holders.is_empty() {
            0
        } else {
            RESERVE_SEGMENTS
        }
    }

    /// Free segments that segments waiting for a file (and the next roll)
    /// can have: reusable ones, and those that become reusable once the
    /// records that freed them are durable and a durable round says so;
    /// records behind a segment with no file are not written, so only
    /// segments freed before the first of them count. Only while the file
    /// system is full: a walk of the free list, on events that change it,
    /// never per record.
    fn homes(&self) -> usize {
        let reach = self
            .in_use
            .iter()
            .filter_map(|&i| self.segments[i].unplaced)
            .min()
            .unwrap_or(u64::MAX);
        self.free
            .iter()
            .filter(|&&(_, f)| self.is_reusable(f) || f.is_some_and(|f| f <= reach))
            .count()
    }

    /// Where a seal goes: the active segment while nothing is pending; or
    /// a segment whose End round waits until the next segment has a file
    /// (see `write_pending`): it is still the last segment on disk.
    fn seal_target(&self) -> Option<usize> {
        match self.pending.first() {
            None => Some(self.active()),
            Some(c) if c.bytes.is_empty() && c.ends_segment && !c.fresh => Some(c.segment),
            Some(_) => None,
        }
    }

    /// A durable seal would give producers room: the shard is disk-full
    /// and a segment was freed by records that are durable, but no durable
    /// round laid out since says so (reuse waits for one, see `claimed`).
    /// With producers paused no data round may come to say it.
    pub fn wants_durable_seal(&self) -> bool {
        self.no_room.is_some()
            && self
                .free
                .iter()
                .any(|&(_, f)| f.is_some_and(|f| f <= self.durable) && !self.is_reusable(f))
    }

    /// The flusher should come back on its own (not only when records are
    /// appended): space may be freed outside the broker, and a sync may
    /// make a freed segment reusable.
    pub fn waiting_for_space(&self) -> bool {
        self.write_blocked.is_some()
            || (self.no_room.is_some()
                && (self.unplaced > 0 || self.disk_full() || !self.has_reusable()))
    }

    /// Publishes [`Journal::disk_full`] to the producers' flow control;
    /// logs when the broker as a whole pauses or resumes for it. Cheap
    /// unless the file system was found full.
    fn note_space(&mut self) {
        if self.no_room.is_none() && self.write_blocked.is_none() && !self.counted_full {
            return;
        }
        let full = self.disk_full();
        if full == self.counted_full {
            return;
        }
        self.counted_full = full;
        let shards = &self.usage.disk_full_shards;
        if full {
            if shards.fetch_add(1, Ordering::Relaxed) == 0 {
                let cause = self.write_blocked.as_deref().or(self.no_room.as_deref());
                warn!(dir = %self.cfg.dir.display(), cause = cause.unwrap_or_default(),
                    "journal file system full; persistent producers paused until consumers acknowledge enough to free a segment, or space is freed");
            }
        } else if shards.fetch_sub(1, Ordering::Relaxed) == 1 {
            info!(dir = %self.cfg.dir.display(), producers = self.usage.producers(), "journal has room again");
        }
    }

    /// Making a segment file failed (or would fail) for lack of space.
    fn note_no_room(&mut self, why: String) {
        if self.no_room.is_none() {
            debug!(cause = %why, "no space for a new journal segment");
        }
        self.no_room = Some(why);
        self.file_retry_at = Some(Instant::now() + NO_SPACE_RETRY);
        self.note_space();
    }

    /// A write into a segment failed for lack of space.
    fn note_write_blocked(&mut self, e: &JournalError) {
        if self.write_blocked.is_none() {
            debug!(error = %e, "journal write found no space");
        }
        self.write_blocked = Some(e.to_string());
        self.write_retry_at = Some(Instant::now() + NO_SPACE_RETRY);
        self.note_space();
    }

    /// Gives `slot` (a segment waiting for a file) the file of the oldest
    /// free segment that may be overwritten now (`is_reusable`). The free
    /// one is dropped from use and keeps the never-made name: indices are
    /// what holders and chunks refer to, so `slot` stays where it is.
    fn take_free_file(&mut self, slot: usize) -> bool {
        // Only the first segment waiting for a file: files go in journal
        // order.
        let first = self
            .in_use
            .iter()
            .copied()
            .find(|&i| self.segments[i].unplaced.is_some());
        if first != Some(slot) {
            return false;
        }
        let Some(k) = self.free.iter().position(|&(_, f)| self.is_reusable(f)) else {
            return false;
        };
        let (k, _) = self.free.remove(k).expect("found above");
        let path = std::mem::take(&mut self.segments[k].path);
        let file = self.segments[k].file.take();
        let s = &mut self.segments[slot];
        let never_made = std::mem::replace(&mut s.path, path);
        s.file = file;
        s.unplaced = None;
        debug!(path = %self.segments[slot].path.display(), "a segment waiting for a file takes a freed segment's");
        self.segments[slot].stream.forget_file();
        self.forget_read_ahead(slot);
        let f = &mut self.segments[k];
        f.path = never_made;
        f.generation = 0;
        f.stream.forget_file();
        self.forget_read_ahead(k);
        self.unplaced -= 1;
        self.note_space();
        true
    }

    /// A segment file was made: the file system has room again.
    fn note_made(&mut self) {
        if self.no_room.take().is_some() {
            info!(dir = %self.cfg.dir.display(), "journal segments can be made again");
        }
        self.file_retry_at = None;
        self.note_space();
    }

    /// Whether to try making a segment file now: not within a second of
    /// finding the file system full, and only if `statvfs` shows room for
    /// one (making one just to fail and remove it again would be wasted
    /// I/O). One `statvfs` per segment file, never per record.
    fn may_make_file(&mut self) -> bool {
        self.may_make_files(1)
    }

    /// [`Journal::may_make_file`] for `n` files at once.
    fn may_make_files(&mut self, n: u64) -> bool {
        if self.file_retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let size = self.cfg.segment_size_bytes;
        match available_bytes(&self.cfg.dir) {
            Ok(free) if free < n * size => {
                self.note_no_room(format!(
                    "{free} bytes free on the journal's file system, less than {n} segment(s) of {size} bytes"
                ));
                false
            }
            _ => true,
        }
    }

    /// Whether a free segment freed at `freed_at` may be overwritten.
    fn is_reusable(&self, freed_at: Option<u64>) -> bool {
        freed_at.is_none_or(|f| self.claimed.is_some_and(|c| f <= c))
    }

    /// The oldest generation a round laid out now may call live: segments
    /// older than it are free for good. Conservative: a segment freed by an
    /// acknowledgement that is not durable yet still counts as live, since
    /// this round may survive a crash that the acknowledgement does not.
    fn first_gen(&self) -> u64 {
        let front = self
            .in_use
            .front()
            .map_or(u64::MAX, |&i| self.segments[i].generation);
        self.free
            .iter()
            .filter(|(_, f)| f.is_some_and(|f| f > self.durable))
            .map(|&(i, _)| self.segments[i].generation)
            .fold(front, u64::min)
    }

    fn round_header(&self, kind: RoundKind, len: u64) -> RoundHeader {
        RoundHeader {
            kind,
            len,
            durable: self.durable_pos,
            first_gen: self.first_gen(),
            epoch: self.epoch,
        }
    }
}

/// A random value for segment salts (not for secrets: it only has to be
/// unknown to whoever writes message bodies).
fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), 0) };
    if n != 8 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        return h.finish();
    }
    u64::from_le_bytes(v)
}

/// Writes a segment header block into `block` (BLOCK bytes). `prev_end`:
/// where the segment before it (by generation) was closed, its End round
/// (0, 0 for the first): recovery reads that segment no further, so rounds
/// a fenced master wrote there after its successor closed it never count.
fn put_header(block: &mut [u8], generation: u64, salt: u64, prev_end: Position) {
    block[..BLOCK as usize].fill(0);
    block[..8].copy_from_slice(MAGIC);
    block[8..16].copy_from_slice(&generation.to_le_bytes());
    block[16..24].copy_from_slice(&salt.to_le_bytes());
    block[24..32].copy_from_slice(&prev_end.0.to_le_bytes());
    block[32..40].copy_from_slice(&prev_end.1.to_le_bytes());
    let crc = crc32c::crc32c(&block[..40]);
    block[40..44].copy_from_slice(&crc.to_le_bytes());
}

/// A segment's header block (BLOCK bytes), as the writer makes it: for
/// tools and the recovery fuzz target, which build segments by hand.
pub fn header_block(generation: u64, salt: u64) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    put_header(&mut block, generation, salt, (0, 0));
    block
}

/// What a segment's header block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeader {
    /// (generation, salt)
    Current(u64, u64),
    /// Written by the first journal format.
    OldFormat,
}

/// The header in a header block, if it is one.
pub fn read_header(block: &[u8]) -> Option<SegmentHeader> {
    if block.len() >= 8 && &block[..8] == MAGIC_V1 {
        return Some(SegmentHeader::OldFormat);
    }
    checked_header(block)?;
    Some(SegmentHeader::Current(
        u64::from_le_bytes(block[8..16].try_into().ok()?),
        u64::from_le_bytes(block[16..24].try_into().ok()?),
    ))
}

/// Where the segment before this one was closed (see [`put_header`]).
pub fn read_prev_end(block: &[u8]) -> Option<Position> {
    checked_header(block)?;
    Some((
        u64::from_le_bytes(block[24..32].try_into().ok()?),
        u64::from_le_bytes(block[32..40].try_into().ok()?),
    ))
}

fn checked_header(block: &[u8]) -> Option<()> {
    if block.len() < 44 || &block[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(block[40..44].try_into().ok()?);
    (crc32c::crc32c(&block[..40]) == crc).then_some(())
}

/// Creates a zero-filled segment file of `size` bytes: every block written
/// once, so later writes and fdatasyncs do not allocate.
async fn create_segment(path: &Path, size: u64, pace: Pace) -> Result<Rc<DmaFile>, JournalError> {
    // A fenced master must not write a block of a file that a new master
    // may already use (see `ha::fence`); and creating never truncates
    // (O_EXCL): a stale master that passed the gate before a pause must
    // not empty a segment its successor made under the same name since.
    crate::ha::fence::hold().await;
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .dma_open(path)
        .await
        .map_err(|e| glommio_err(path, e))?;
    match fill_segment(&file, path, size, pace).await {
        Ok(()) => Ok(Rc::new(file)),
        Err(e) => {
            // The half-made file would hold space the journal cannot use.
            // It is ours (O_EXCL), but a successor may have found it since:
            // a fenced master removes nothing (the gate, see `ha::fence`).
            let _ = file.close().await;
            crate::ha::fence::hold().await;
            if let Err(rm) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %rm, "cannot remove a segment file that could not be made");
            }
            Err(e)
        }
    }
}

/// Zero-fills a new segment file and makes it and its name durable.
async fn fill_segment(
    file: &DmaFile,
    path: &Path,
    size: u64,
    pace: Pace,
) -> Result<(), JournalError> {
    let chunk: u64 = match pace {
        Pace::Now => 1 << 20,
        Pace::Background => 256 << 10,
    };
    let mut pos = 0;
    while pos < size {
        let n = chunk.min(size - pos);
        let mut buf = file.alloc_dma_buffer(n as usize);
        buf.as_bytes_mut().fill(0);
        crate::ha::fence::hold().await;
        let written = file
            .write_at(buf, pos)
            .await
            .map_err(|e| glommio_err(path, e))?;
        if (written as u64) < n {
            // write(2) fills what it can and reports the rest short when
            // the file system runs out: count it as the ENOSPC it is.
            return Err(no_space(
                path,
                format!("short write ({written} of {n} bytes) while zero-filling"),
            ));
        }
        pos += n;
        if pace == Pace::Background {
            // Leave the disk to the journal's own writes and fdatasyncs:
            // a spare made at full speed stalls receipts for tens of ms.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    file.fdatasync().await.map_err(|e| glommio_err(path, e))?;
    // The file's name must be durable too, or a crash could leave records
    // acknowledged in a segment the directory does not list.
    if let Some(dir) = path.parent() {
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(|e| glommio_err(dir, e))?;
        d.sync().await.map_err(|e| glommio_err(dir, e))?;
        let _ = d.close().await;
    }
    Ok(())
}

/// Bytes free for unprivileged writers on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> Result<u64, JournalError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| JournalError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other("path contains a NUL byte"),
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid C string; `st` is writable memory of the right
    // type, initialised by statvfs when it returns 0.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io_err(dir)(std::io::Error::last_os_error()));
        }
        st.assume_init()
    };
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// What the file system under the store directory `dir` can hold for the
/// journal: its free space plus the segment files already there (they are
/// reused, never grown; a file made with a larger segment size holds only
/// `segment_size` of journal). Returns (room, journal bytes on disk).
pub fn room_on_disk(dir: &Path, segment_size: u64) -> Result<(u64, u64), JournalError> {
    let mut journal = 0;
    for shard in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let shard = shard.map_err(io_err(dir))?.path();
        let is_shard_dir = shard
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("shard-"));
        if !is_shard_dir || !shard.is_dir() {
            continue;
        }
        for seg in std::fs::read_dir(&shard).map_err(io_err(&shard))? {
            let seg = seg.map_err(io_err(&shard))?;
            let name = seg.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("seg-") && name.ends_with(".log") {
                journal += seg
                    .metadata()
                    .map_err(io_err(&seg.path()))?
                    .len()
                    .min(segment_size);
            }
        }
    }
    Ok((available_bytes(dir)? + journal, journal))
}

/// Makes the entries of directory `dir` durable (files created or removed
/// in it), for the synchronous start-up paths.
pub fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How hard to push the disk when zero-filling a new segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// A write is waiting for this segment.
    Now,
    /// A spare made ahead of need, beside live traffic.
    Background,
}

async fn open_segment(path: &Path) -> Result<Rc<DmaFile>, JournalError> {
    glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map(Rc::new)
        .map_err(|e| glommio_err(path, e))
}

/// Writes everything pending, fdatasyncs, and advances `durable`: one group
/// commit, start to end. Records that have no space to go to are an error
/// here (this is for start-up, which cannot wait for consumers).
pub async fn flush(journal: &std::cell::RefCell<Journal>) -> Result<(), JournalError> {
    let written = write_pending(journal).await?;
    let blocked = written.blocked;
    if !written.is_empty() {
        sync(journal, written).await?;
    }
    if blocked {
        let j = journal.borrow();
        let why = j.write_blocked.as_ref().or(j.no_room.as_ref());
        return Err(no_space(
            &j.cfg.dir,
            why.cloned()
                .unwrap_or_else(|| "no space for the journal".into()),
        ));
    }
    Ok(())
}

/// What one round of [`write_pending`] wrote: durable once [`sync`]ed.
#[must_use = "written records are durable only after sync"]
pub struct Written {
    files: Vec<(PathBuf, Rc<DmaFile>)>,
    /// The last record written: every record up to it is written.
    upto: u64,
    /// The journal position after the last round written.
    end: Option<Position>,
    /// `durable` when the rounds were laid out: once they are durable,
    /// segments freed up to it are declared free on disk.
    claim_basis: u64,
    /// Some records could not be written for lack of space; they are
    /// pending again (in order) for a later round.
    pub blocked: bool,
}

impl Written {
    /// Nothing was written: no sync needed (and nothing to claim).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Makes a written round durable (fdatasync of every file it touched) and
/// advances [`Journal::durable`] to cover it. The flusher may run this
/// while it writes the next round: that round's bytes are on disk only
/// after their own sync, but they need not wait for this one to start.
pub async fn sync(
    journal: &std::cell::RefCell<Journal>,
    written: Written,
) -> Result<(), JournalError> {
    let wrote = !written.files.is_empty();
    for (path, f) in written.files {
        f.fdatasync().await.map_err(|e| glommio_err(&path, e))?;
    }
    let mut j = journal.borrow_mut();
    j.durable = j.durable.max(written.upto);
    if let Some(end) = written.end {
        j.durable_pos = j.durable_pos.max(end);
    }
    if wrote {
        j.claimed = j.claimed.max(Some(written.claim_basis));
    }
    // A freed segment may have become reusable: producers paused for a
    // full disk may go again.
    j.note_space();
    Ok(())
}

/// Where one chunk's rounds go, decided before anything is awaited.
struct Planned {
    chunk: Chunk,
    /// Where the segment this one follows was closed (fresh chunks).
    prev_end: Position,
    gen: u64,
    salt: u64,
    /// The segment's `write_at` before this chunk claimed its place.
    claimed_from: u64,
    start: u64,
    end: u64,
    data: Option<(u64, RoundHeader)>,
    end_round: Option<(u64, RoundHeader)>,
    /// The chunk's records (taken out of `chunk.bytes`), also readable
    /// from `Journal::in_flight` until written.
    bytes: Bytes,
}

/// The open file of segment `index`: opened now if needed; for a segment
/// that started without a file (see `Segment::unplaced`), the file of a
/// free segment that may be overwritten now (`is_reusable`) or a new one,
/// space permitting. `None` if it has none and none can be had for now.
async fn segment_file(
    journal: &std::cell::RefCell<Journal>,
    index: usize,
) -> Result<Option<Rc<DmaFile>>, JournalError> {
    loop {
        let (path, size, file, unplaced) = {
            let j = journal.borrow();
            let s = &j.segments[index];
            (
                s.path.clone(),
                j.cfg.segment_size_bytes,
                s.file.clone(),
                s.unplaced.is_some(),
            )
        };
        if let Some(f) = file {
            return Ok(Some(f));
        }
        if !unplaced {
            let f = open_segment(&path).await?;
            journal.borrow_mut().segments[index].file = Some(f.clone());
            return Ok(Some(f));
        }
        // A free segment is the cheapest home (then look again: it may
        // not be open yet); else a new file, unless the file system was
        // just found full.
        if journal.borrow_mut().take_free_file(index) {
            continue;
        }
        if !journal.borrow_mut().may_make_file() {
            return Ok(None);
        }
        return match create_segment(&path, size, Pace::Now).await {
            Ok(f) => {
                let mut j = journal.borrow_mut();
                let s = &mut j.segments[index];
                s.file = Some(f.clone());
                s.unplaced = None;
                j.unplaced -= 1;
                j.note_made();
                Ok(Some(f))
            }
            Err(e) if e.is_no_space() => {
                journal.borrow_mut().note_no_room(e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        };
    }
}

/// Takes everything pending and lays each chunk's rounds out, claiming
/// their places (each segment's `write_at`): all before the first await.
fn lay_out(j: &mut Journal) -> Vec<Planned> {
    j.pending_len = 0;
    let chunks = std::mem::take(&mut j.pending);
    let mut plans = Vec::with_capacity(chunks.len());
    for mut chunk in chunks {
        let bytes = Bytes::from(std::mem::take(&mut chunk.bytes));
        if !bytes.is_empty() {
            j.in_flight.push(read_back::InFlight {
                segment: chunk.segment,
                logical: chunk.logical,
                bytes: bytes.clone(),
            });
        }
        let data_header = j.round_header(RoundKind::Data, bytes.len() as u64);
        let end_header = j.round_header(RoundKind::End, 0);
        // The End round of the segment this one follows: the last block
        // that segment's rounds claimed (laid out before this chunk).
        let prev_end = chunk.follows.map_or((0, 0), |f| {
            let p = &j.segments[f];
            (p.generation, p.write_at - BLOCK)
        });
        let s = &mut j.segments[chunk.segment];
        let claimed_from = s.write_at;
        let start = if chunk.fresh { 0 } else { s.write_at };
        let mut at = if chunk.fresh { BLOCK } else { start };
        let data = (!bytes.is_empty()).then_some((at, data_header));
        if data.is_some() {
            at = data_header.next(at);
        }
        let end_round = chunk.ends_segment.then_some((at, end_header));
        if end_round.is_some() {
            at += BLOCK;
        }
        s.write_at = at;
        plans.push(Planned {
            prev_end,
            gen: s.generation,
            salt: s.salt,
            claimed_from,
            start,
            end: at,
            data,
            end_round,
            chunk,
            bytes,
        });
    }
    plans
}

/// Writes everything appended since the last round, without waiting for
/// durability: the first half of a group commit. Each segment touched gets
/// one round (plus its header block if it is new, and an End round if the
/// journal rolled past it) in one write. Every chunk's place is claimed
/// before the first await, so appends meanwhile see where the next round
/// of each segment goes.
///
/// At a full file system it writes what it can, in order, and stops at the
/// first chunk that has no file to go to or whose write fails for lack of
/// space: that chunk and every later one are pending again
/// ([`Written::blocked`]), the places claimed for them are given back, and
/// `durable` will cover only what was written. Nothing is dropped, and
/// receipts wait for the records they cover.
pub async fn write_pending(journal: &std::cell::RefCell<Journal>) -> Result<Written, JournalError> {
    let (plans, claim_basis) = {
        let mut j = journal.borrow_mut();
        if j.write_blocked.is_some() && j.write_retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(Written {
                files: Vec::new(),
                upto: 0,
                end: None,
                claim_basis: 0,
                blocked: j.has_pending(),
            });
        }
        (lay_out(&mut j), j.durable)
    };
    let mut written = Written {
        files: Vec::new(),
        upto: 0,
        end: None,
        claim_basis,
        blocked: false,
    };
    let mut plans = plans.into_iter();
    while let Some(mut plan) = plans.next() {
        let Some(file) = segment_file(journal, plan.chunk.segment).await? else {
            written.blocked = true;
            put_back(journal, plan, plans);
            return Ok(written);
        };
        // A segment's End round is written only once the next segment has
        // a file: until then the segment stays open on disk, the last one,
        // so that a durable seal can still go there (it declares freed
        // segments free, which lets the next one take a freed segment's
        // file, see `wants_durable_seal`).
        let mut held_end = None;
        if let (Some((at, _)), Some(next)) = (plan.end_round, plans.as_slice().first()) {
            if segment_file(journal, next.chunk.segment).await?.is_none() {
                plan.end_round = None;
                plan.end = at;
                held_end = Some(Planned {
                    chunk: Chunk {
                        segment: plan.chunk.segment,
                        fresh: false,
                        bytes: Vec::new(),
                        ends_segment: true,
                        follows: None,
                        upto: plan.chunk.upto,
                        logical: plan.chunk.logical + plan.bytes.len() as u64,
                    },
                    prev_end: (0, 0),
                    gen: plan.gen,
                    salt: plan.salt,
                    claimed_from: at,
                    start: at,
                    end: at + BLOCK,
                    data: None,
                    end_round: None,
                    bytes: Bytes::new(),
                });
                plan.chunk.ends_segment = false;
            }
        }
        if plan.end == plan.start {
            // Only an End round, held back: nothing to write.
            written.blocked = true;
            put_back(journal, held_end.expect("held above"), plans);
            return Ok(written);
        }
        // Read after `segment_file`: a segment that had no file may have
        // taken a free segment's (and its name).
        let path = journal.borrow().segments[plan.chunk.segment].path.clone();
        let mut buf = file.alloc_dma_buffer((plan.end - plan.start) as usize);
        let bytes = buf.as_bytes_mut();
        bytes.fill(0);
        if plan.chunk.fresh {
            put_header(bytes, plan.gen, plan.salt, plan.prev_end);
        }
        if let Some((at, h)) = plan.data {
            let h_at = (at - plan.start) as usize;
            h.put(plan.gen, plan.salt, &mut bytes[h_at..]);
            let r = h_at + ROUND_HEADER_BYTES as usize;
            bytes[r..r + plan.bytes.len()].copy_from_slice(&plan.bytes);
        }
        if let Some((at, h)) = plan.end_round {
            h.put(
                plan.gen,
                plan.salt,
                &mut bytes[(at - plan.start) as usize..],
            );
        }
        let want = buf.len();
        // Last thing before the write is submitted: a master whose last
        // good mastership check is too old writes nothing (see `ha::fence`).
        crate::ha::fence::hold().await;
        let failed = match file.write_at(buf, plan.start).await {
            Ok(n) if n >= want => None,
            // A short write: the file system ran out part-way.
            Ok(n) => Some(no_space(&path, format!("short write: {n} of {want} bytes"))),
            Err(e) => Some(glommio_err(&path, e)),
        };
        if let Some(e) = failed {
            if !e.is_no_space() {
                return Err(e);
            }
            // A file system that allocates on overwrite (copy-on-write,
            // thin volumes): keep the records for a retry. What the write
            // may have put on disk was never synced and is written over.
            journal.borrow_mut().note_write_blocked(&e);
            written.blocked = true;
            // The End round held back above goes back with its segment's
            // data: lost, the segment would be closed where its next
            // segment's header says (at the data's start), and recovery
            // would cut the rewritten round off.
            put_back(journal, plan, held_end.into_iter().chain(plans));
            return Ok(written);
        }
        {
            let mut j = journal.borrow_mut();
            if j.write_blocked.take().is_some() {
                j.write_retry_at = None;
                j.note_space();
            }
            if let Some((at, _)) = plan.data {
                // On disk now: read from there (see `read_back`).
                let seg = plan.chunk.segment;
                j.in_flight
                    .retain(|f| !(f.segment == seg && f.logical == plan.chunk.logical));
                j.segments[seg].stream.wrote(
                    plan.chunk.logical,
                    at + ROUND_HEADER_BYTES,
                    plan.bytes.len() as u64,
                );
            }
        }
        written.upto = written.upto.max(plan.chunk.upto);
        written.end = written.end.max(Some((plan.gen, plan.end)));
        if !written.files.iter().any(|(_, f)| Rc::ptr_eq(f, &file)) {
            written.files.push((path, file));
        }
        if let Some(end) = held_end {
            written.blocked = true;
            put_back(journal, end, plans);
            return Ok(written);
        }
    }
    Ok(written)
}

/// Returns chunks that could not be written to the front of the pending
/// list, before anything appended meanwhile, so the journal order holds,
/// and gives back the places claimed for them: each segment's next round
/// goes where the first of them would have gone. Consecutive chunks of one
/// segment (the one that failed and what was appended to it meanwhile)
/// become one, written as one round there; it takes no more room than the
/// rounds that appends meanwhile planned for.
fn put_back(
    journal: &std::cell::RefCell<Journal>,
    plan: Planned,
    rest: impl Iterator<Item = Planned>,
) {
    let mut j = journal.borrow_mut();
    let mut chunks = Vec::new();
    for mut p in std::iter::once(plan).chain(rest) {
        let s = &mut j.segments[p.chunk.segment];
        // Claims of one segment are in order: the first given back is the
        // lowest.
        s.write_at = s.write_at.min(p.claimed_from);
        let (seg, logical) = (p.chunk.segment, p.chunk.logical);
        j.in_flight
            .retain(|f| !(f.segment == seg && f.logical == logical));
        // Rare (a full disk): a copy if a read still shares the bytes.
        p.chunk.bytes = Vec::from(p.bytes);
        chunks.push(p.chunk);
    }
    let later = std::mem::take(&mut j.pending);
    let mut pending: Vec<Chunk> = Vec::with_capacity(chunks.len() + later.len());
    for c in chunks.into_iter().chain(later) {
        match pending.last_mut() {
            Some(last) if last.segment == c.segment && !c.fresh => {
                last.bytes.extend_from_slice(&c.bytes);
                last.upto = last.upto.max(c.upto);
                last.ends_segment |= c.ends_segment;
            }
            _ => pending.push(c),
        }
    }
    // What the active segment has pending, for `fits`.
    let active = j.active();
    j.pending_len = match pending.last() {
        Some(c) if c.segment == active => c.bytes.len() as u64,
        _ => 0,
    };
    j.pending = pending;
}

/// Writes a seal: an empty round at the active segment's next round
/// position carrying the current durable watermark, so that recovery can
/// tell damage in the journal's last rounds from a torn write. The next
/// data round is written over it. Only while nothing is pending (the
/// flusher calls it when it goes idle); `fsync` when it must be durable
/// itself (at start, recording which segments recovery freed).
///
/// A seal that finds no space (copy-on-write file systems) is skipped.
pub async fn write_seal(
    journal: &std::cell::RefCell<Journal>,
    fsync: bool,
) -> Result<(), JournalError> {
    let (active, path, opened) = {
        let j = journal.borrow();
        let Some(active) = j.seal_target() else {
            return Ok(());
        };
        if j.sealed == j.durable_pos && !fsync {
            return Ok(());
        }
        let s = &j.segments[active];
        // No file yet (a full disk): nothing to seal.
        if s.write_at + BLOCK > j.cfg.segment_size_bytes || s.unplaced.is_some() {
            return Ok(());
        }
        (active, s.path.clone(), s.file.clone())
    };
    let file = match opened {
        Some(f) => f,
        None => {
            let f = open_segment(&path).await?;
            journal.borrow_mut().segments[active].file = Some(f.clone());
            f
        }
    };
    // The fencing gate (see `ha::fence`), before the position is read: a
    // hold is an await, and the flusher may write a round there meanwhile.
    crate::ha::fence::hold().await;
    let (at, buf) = {
        let j = journal.borrow();
        if j.seal_target() != Some(active) {
            return Ok(());
        }
        let s = &j.segments[active];
        let mut buf = file.alloc_dma_buffer(BLOCK as usize);
        let bytes = buf.as_bytes_mut();
        bytes.fill(0);
        j.round_header(RoundKind::Seal, 0)
            .put(s.generation, s.salt, bytes);
        (s.write_at, buf)
    };
    let (sealed, basis) = {
        let j = journal.borrow();
        (j.durable_pos, j.durable)
    };
    let failed = match file.write_at(buf, at).await {
        Ok(n) if n as u64 >= BLOCK => None,
        Ok(n) => Some(no_space(
            &path,
            format!("short write: {n} of {BLOCK} bytes"),
        )),
        Err(e) => Some(glommio_err(&path, e)),
    };
    if let Some(e) = failed {
        if !e.is_no_space() {
            return Err(e);
        }
        // No receipt depends on a seal. A start seal's other job (saying
        // which segments recovery freed) is left to the next durable
        // round: those segments wait for a claim (see `is_reusable`).
        debug!(error = %e, "no space for a journal seal; skipped");
        return Ok(());
    }
    let mut j = journal.borrow_mut();
    if fsync {
        drop(j);
        file.fdatasync().await.map_err(|e| glommio_err(&path, e))?;
        j = journal.borrow_mut();
        // A durable seal declares what it names free, like any round.
        j.claimed = j.claimed.max(Some(basis));
        j.note_space();
    }
    j.sealed = sealed;
    Ok(())
}

impl super::Durable for Journal {
    fn appended(&self) -> u64 {
        Journal::appended(self)
    }
    fn durable(&self) -> u64 {
        Journal::durable(self)
    }
    fn has_pending(&self) -> bool {
        Journal::has_pending(self)
    }
}

impl super::Store for Journal {
    fn append(&mut self, rec: &RecordRef<'_>, holders: u32) {
        Journal::append(self, rec, holders);
    }
    fn release(&mut self, id: u64) {
        Journal::release(self, id);
    }
    fn last_send_at(&self) -> Option<crate::store::RecordAt> {
        self.last_send_at
    }
}

impl Journal {
    pub(crate) fn from_recovery(
        cfg: JournalConfig,
        usage: Arc<StoreUsage>,
        state: recovery::Layout,
    ) -> Journal {
        usage.add_segment(state.in_use.len() as u64 * cfg.segment_size_bytes, &cfg.dir);
        let active_gen = state
            .in_use
            .back()
            .map_or(0, |&i| state.segments[i].generation);
        let mut j = Journal {
            segments: state
                .segments
                .into_iter()
                .map(|s| Segment {
                    path: s.path,
                    generation: s.generation,
                    salt: s.salt,
                    live: s.live,
                    write_at: s.write_at,
                    file: None,
                    unplaced: None,
                    // What recovery read lies before `write_at`: its
                    // records are found where recovery found them.
                    stream: read_back::Stream::new(s.write_at),
                })
                .collect(),
            in_use: state.in_use,
            // Segments recovery freed by its own count (nothing live) are
            // overwritten only after the start seal (fsynced) says so.
            free: state
                .free
                .into_iter()
                .map(|(i, declared)| (i, (!declared).then_some(0)))
                .collect(),
            claimed: None,
            next_generation: state.next_generation,
            pending_len: 0,
            pending: Vec::new(),
            appended: 0,
            durable: 0,
            durable_pos: (active_gen, state.active_write_at),
            sealed: (0, 0),
            holders: state.holders,
            next_file_number: state.next_file_number,
            durables: state.durables,
            making_spare: false,
            started_fresh: false,
            // Raised before the journal was opened (0 without fencing).
            epoch: crate::ha::fence::epoch(),
            no_room: None,
            file_retry_at: None,
            counted_full: false,
            write_blocked: None,
            write_retry_at: None,
            unplaced: 0,
            last_send_at: None,
            in_flight: Vec::new(),
            read_ahead: super::read_ahead::Readers::new(
                "paged messages are read through the page cache",
            ),
            usage,
            cfg,
        };
        if j.in_use.is_empty() || state.ended {
            j.roll(false);
            j.started_fresh = true;
        }
        j
    }

    /// After a start (once the start seal is durable): continue in a fresh
    /// segment, with a new generation and salt, closing the recovered
    /// active one where recovery cut it. A round a fenced predecessor still
    /// had in flight there can then never pass for ours: the new segment's
    /// header says where its predecessor ended. A segment that was just
    /// started holds nothing yet and is kept.
    ///
    /// At a full file system (no reusable segment and no room for a new
    /// file) it continues in the recovered segment instead, with a warning:
    /// a start must not fail for want of a segment it only takes as a
    /// precaution.
    pub fn start_fresh_segment(&mut self) {
        if std::mem::replace(&mut self.started_fresh, true) {
            return;
        }
        // Only into a segment that has a file (see `start_fresh`): a
        // new file made by the roll could fail for lack of space (another
        // shard may take the room `statvfs` showed), and a start would
        // then wait for space with nothing able to free any.
        if self.has_reusable() {
            self.roll(true);
        } else {
            tracing::warn!(
                dir = %self.cfg.dir.display(),
                "no room for a fresh journal segment at start; continuing in the recovered one"
            );
        }
    }
}

/// [`Journal::start_fresh_segment`], after making one spare if no free
/// segment is reusable (room permitting; a full file system is not an
/// error, the start then continues in the recovered segment). Full speed:
/// it is on the failover path either way.
pub async fn start_fresh(journal: &std::cell::RefCell<Journal>) -> Result<(), JournalError> {
    if !journal.borrow().has_reusable() {
        make_one_spare(journal, Pace::Now).await?;
    }
    journal.borrow_mut().start_fresh_segment();
    Ok(())
}

/// Keeps zero-filled segments ready: one so that rolling to a new segment
/// never waits for a file to be made, and the reserve
/// ([`RESERVE_SEGMENTS`]). Runs beside the flusher. A full file system is
/// not an error: the shard records it (producers wait while only the
/// reserve is left, see [`Journal::disk_full`]) and a later call tries
/// again.
pub async fn ensure_spare(
    journal: &std::cell::RefCell<Journal>,
    pace: Pace,
) -> Result<(), JournalError> {
    while make_one_spare(journal, pace).await? {}
    Ok(())
}

/// One spare segment if fewer than the next roll's plus the reserve are
/// reusable and the file system has room; whether one was made.
async fn make_one_spare(
    journal: &std::cell::RefCell<Journal>,
    pace: Pace,
) -> Result<bool, JournalError> {
    let (path, size) = {
        let mut j = journal.borrow_mut();
        if j.making_spare || j.reusable_count() > RESERVE_SEGMENTS || !j.may_make_file() {
            return Ok(false);
        }
        j.making_spare = true;
        let number = j.next_file_number;
        j.next_file_number += 1;
        (
            Journal::segment_path(&j.cfg.dir, number),
            j.cfg.segment_size_bytes,
        )
    };
    let made = create_segment(&path, size, pace).await;
    let mut j = journal.borrow_mut();
    j.making_spare = false;
    let file = match made {
        Ok(f) => f,
        Err(e) if e.is_no_space() => {
            j.note_no_room(e.to_string());
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let index = j.segments.len();
    j.segments.push(Segment {
        path,
        generation: 0,
        salt: 0,
        live: 0,
        write_at: BLOCK,
        file: Some(file),
        unplaced: None,
        stream: read_back::Stream::new(BLOCK),
    });
    // A fresh segment holds nothing: reuse it before any older one.
    j.free.push_front((index, None));
    j.note_made();
    Ok(true)
}
