//! Queues larger than memory. Each queue (and durable subscription) keeps
//! a window of its waiting stored messages in memory and, past it, only a
//! reference ([`PagedEntry`]: id, priority, expiry, where its bytes are)
//! until the window has room again. Where the bytes are ([`PageRef`]): in
//! the file mode, the message's own record in the journal, read back from
//! there (nothing is written to page a message out: the journal is already
//! its home, see `store::journal::read_back`); in the other modes, whose
//! records cannot be read back cheaply, a second copy in the shard's spool
//! (`store::spool`).
//!
//! When: a stored message arriving at a queue is paged out if that queue
//! already has paged messages of its priority (order within a priority is
//! arrival order: paged ones are always behind those in memory), or if the
//! broker's held bytes reached `page_at_bytes` and the queue already holds
//! its minimum window. A queue pages back in before it dispatches, up to
//! its consumers' free prefetch plus a look-ahead (just the minimum window
//! under memory pressure), highest priority first; it never delivers a
//! lower priority while a higher one waits paged (see `MessageQueue::pop`).
//!
//! Only stored messages (persistent, with a durable store) are paged: the
//! store is their real home and a crash never needs the spool. Non-
//! persistent messages stay in memory and producers of them are paused at
//! `limits.memory_limit_bytes`, as before.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};

use super::destination::Destination;
use super::message::{MemoryUsage, Message, MessageId, Property};
use crate::store::spool::{Spool, SpoolError, SpoolRef};
use crate::store::{Record, RecordAt, RecordSource};

/// Why a paged message could not be read back (it stays in the store,
/// and the next start reads it from there).
#[derive(Debug, thiserror::Error)]
pub enum PageInError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("message {id} of {dest} cannot be read back from the journal: {why}")]
    Journal {
        id: MessageId,
        dest: Destination,
        why: String,
    },
}

/// Where a paged message's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRef {
    /// Its SEND record in the store (file mode).
    Store(RecordAt),
    /// A copy in the shard's spool.
    Spool(SpoolRef),
}

impl PageRef {
    /// Bytes a read of it costs.
    pub fn bytes(&self) -> u32 {
        match self {
            PageRef::Store(r) => r.len,
            PageRef::Spool(r) => r.bytes(),
        }
    }
}

/// A waiting message whose bytes are not in memory.
#[derive(Debug, Clone)]
pub struct PagedEntry {
    pub id: MessageId,
    pub expires_ms: u64,
    pub at: PageRef,
    pub redeliveries: u32,
    pub priority: u8,
}

impl PagedEntry {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }
}

/// Messages every queue may keep in memory whatever the pressure, so that
/// a busy queue never waits on a read for each message.
pub const MIN_WINDOW: usize = 64;

/// Beyond its consumers' free prefetch, how many messages a queue reads
/// ahead while memory is not under pressure.
pub const LOOKAHEAD: usize = 256;

/// Most messages paged in by one read (one or a few `pread`s)...
pub const PAGE_IN_BATCH: usize = 512;

/// ...and about this many bytes of them: a read buffer lives as long as
/// any message sliced from it.
pub const PAGE_IN_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How far ahead of its need a queue has the store read its records (see
/// [`Pager::read_ahead`]): the batch it pages in next and two more.
pub const READ_AHEAD_BYTES: usize = 12 * 1024 * 1024;

#[derive(Debug)]
pub struct Pager {
    spool: Spool,
    /// The store's records, where it can read them back (file mode).
    records: Option<Rc<dyn RecordSource>>,
    usage: Arc<MemoryUsage>,
    page_at_bytes: usize,
    pub paged_out: u64,
    /// Records that could not be read back (their messages wait in the
    /// store for the next start).
    pub unreadable: u64,
    pub paged_in: u64,
    /// Destinations that stopped paging in until a read ahead is done
    /// (see [`Pager::reading`]).
    waiting: Vec<Destination>,
}

impl Pager {
    pub fn new(spool: Spool, usage: Arc<MemoryUsage>, page_at_bytes: usize) -> Pager {
        Pager {
            spool,
            records: None,
            usage,
            page_at_bytes,
            paged_out: 0,
            unreadable: 0,
            paged_in: 0,
            waiting: Vec::new(),
        }
    }

    /// Messages are read back from `records` when paged out with a
    /// [`RecordAt`] (see [`Pager::page_out`]).
    pub fn read_store(&mut self, records: Rc<dyn RecordSource>) {
        self.records = Some(records);
    }

    /// Has the store (or the spool) read what a queue will page in next
    /// (`next`, in the order it pages in) into memory in the background,
    /// up to [`READ_AHEAD_BYTES`], so that reading it then does not wait
    /// on the disk in the middle of dispatching.
    pub fn read_ahead<'a>(&self, next: impl Iterator<Item = &'a PagedEntry>) {
        let mut budget = READ_AHEAD_BYTES;
        let (mut stored, mut spooled) = (Vec::new(), Vec::new());
        // At most a batch's worth of entries: this runs once per page-in.
        for e in next.take(PAGE_IN_BATCH) {
            let Some(left) = budget.checked_sub(e.at.bytes() as usize) else {
                break;
            };
            budget = left;
            match e.at {
                PageRef::Store(r) => stored.push(r),
                PageRef::Spool(r) => spooled.push(r),
            }
        }
        if let (Some(src), false) = (&self.records, stored.is_empty()) {
            src.advise_read_ahead(&stored, READ_AHEAD_BYTES as u64);
        }
        if !spooled.is_empty() {
            self.spool
                .advise_read_ahead(&spooled, READ_AHEAD_BYTES as u64);
        }
    }

    /// `e`'s bytes are being read ahead: paging it in now would wait for
    /// the disk in the middle of dispatching. The store (or the spool)
    /// wakes the shard when the read is done (see [`Pager::wait_for_read`]).
    pub fn reading(&self, e: &PagedEntry) -> bool {
        match (&self.records, e.at) {
            (Some(src), PageRef::Store(r)) => src.reading(&r),
            (_, PageRef::Spool(r)) => self.spool.reading(&r),
            (None, PageRef::Store(_)) => false,
        }
    }

    /// `dest` pages in again once a read ahead is done.
    pub fn wait_for_read(&mut self, dest: &Destination) {
        if !self.waiting.contains(dest) {
            self.waiting.push(dest.clone());
        }
    }

    /// The destinations waiting for reads ahead (a read is done: each
    /// looks again).
    pub fn take_waiting(&mut self) -> Vec<Destination> {
        std::mem::take(&mut self.waiting)
    }

    /// Held bytes reached the paging point: queues keep only their
    /// minimum window.
    pub fn pressure(&self) -> bool {
        self.usage.used() >= self.page_at_bytes
    }

    /// Pages `msg` out: to its record in the store if the store can read
    /// it back (`stored`: the store said where), else to the spool (held
    /// once).
    pub fn page_out(&mut self, msg: &Message, stored: Option<RecordAt>) -> PageRef {
        self.paged_out += 1;
        match stored {
            Some(at) => PageRef::Store(at),
            None => PageRef::Spool(self.spool.append(1, |b| encode(msg, b))),
        }
    }

    /// The same paged message paged out for one more queue (a topic's
    /// subscriptions): a spool record is held once more; a store record
    /// is held by the store's own count of the message's holders.
    pub fn hold(&mut self, r: PageRef) {
        self.paged_out += 1;
        if let PageRef::Spool(r) = r {
            self.spool.hold(r);
        }
    }

    /// A paged entry left its queue without being read (purge, delete).
    pub fn drop_entry(&mut self, e: &PagedEntry) {
        if let PageRef::Spool(r) = e.at {
            self.spool.release(r);
        }
    }

    /// Reads `entries` back as messages of `dest`, charged to memory, and
    /// lets go of their spool records. Each comes back as a message, or as
    /// an error if its record could not be read or is damaged: the store
    /// still holds that message, and the next start reads it from there.
    pub fn page_in(
        &mut self,
        dest: &Destination,
        entries: &[PagedEntry],
    ) -> Vec<Result<Message, PageInError>> {
        let out = self.read(dest, entries);
        for e in entries {
            self.drop_entry(e);
        }
        let read = out.iter().filter(|m| m.is_ok()).count();
        self.paged_in += read as u64;
        if read < out.len() {
            self.unreadable += (out.len() - read) as u64;
        }
        out
    }

    /// Reads `entries` without taking them (browsing, and [`Pager::page_in`]).
    pub fn read(
        &self,
        dest: &Destination,
        entries: &[PagedEntry],
    ) -> Vec<Result<Message, PageInError>> {
        let mut out: Vec<Option<Result<Message, PageInError>>> =
            entries.iter().map(|_| None).collect();
        let (mut spooled, mut stored) = (Vec::new(), Vec::new());
        for (k, e) in entries.iter().enumerate() {
            match e.at {
                PageRef::Spool(r) => spooled.push((k, r)),
                PageRef::Store(r) => stored.push((k, r)),
            }
        }
        if !spooled.is_empty() {
            let refs: Vec<SpoolRef> = spooled.iter().map(|(_, r)| *r).collect();
            for ((k, _), b) in spooled.iter().zip(self.spool.read(&refs)) {
                out[*k] = Some(
                    b.and_then(|b| decode(b, &entries[*k], dest, &self.usage))
                        .map_err(PageInError::from),
                );
            }
        }
        if !stored.is_empty() {
            let refs: Vec<RecordAt> = stored.iter().map(|(_, r)| *r).collect();
            let read = match &self.records {
                Some(src) => src.read_records(&refs),
                None => Vec::new(),
            };
            let mut read = read.into_iter();
            for (k, _) in &stored {
                let e = &entries[*k];
                let failed = |why: String| PageInError::Journal {
                    id: e.id,
                    dest: dest.clone(),
                    why,
                };
                out[*k] = Some(match read.next() {
                    Some(Ok(r)) => from_record(r, e, dest, &self.usage).map_err(failed),
                    Some(Err(err)) => Err(failed(err.to_string())),
                    None => Err(failed("no store to read it from".into())),
                });
            }
        }
        out.into_iter()
            .zip(entries)
            .map(|(m, e)| {
                m.unwrap_or_else(|| {
                    Err(PageInError::Journal {
                        id: e.id,
                        dest: dest.clone(),
                        why: "not read".into(),
                    })
                })
            })
            .collect()
    }

    /// Writes what the spool buffered (a sweep, so a quiet shard's tail
    /// does not stay in memory).
    pub fn flush(&mut self) {
        self.spool.flush();
    }

    pub fn spooled_bytes(&self) -> u64 {
        self.spool.bytes_live()
    }
}

/// The spool's record of a message: timestamp, properties, body, and a
/// CRC32C of them last (a damaged record must not become a message: its
/// consumer's ACK would retire the real one in the store). What a queue
/// needs without reading it (id, priority, expiry) stays in the
/// [`PagedEntry`].
fn encode(m: &Message, b: &mut Vec<u8>) {
    let start = b.len();
    b.put_u64_le(m.timestamp_ms);
    b.put_u32_le(m.properties.len() as u32);
    for (k, v) in &m.properties {
        b.put_u32_le(k.len() as u32);
        b.put_slice(k);
        b.put_u32_le(v.len() as u32);
        b.put_slice(v);
    }
    b.put_slice(&m.body);
    let crc = crc32c::crc32c(&b[start..]);
    b.put_u32_le(crc);
}

/// The inverse of [`encode`], slicing (not copying) the read buffer.
fn decode(
    mut b: Bytes,
    e: &PagedEntry,
    dest: &Destination,
    usage: &Arc<MemoryUsage>,
) -> Result<Message, SpoolError> {
    let damaged = |what: &str| SpoolError::Damaged {
        what: format!("message {} of {dest}: {what}", e.id),
    };
    if b.len() < 16 {
        return Err(damaged("record too short"));
    }
    let crc = (&b[b.len() - 4..]).get_u32_le();
    b.truncate(b.len() - 4);
    if crc32c::crc32c(&b) != crc {
        return Err(damaged("CRC mismatch"));
    }
    let timestamp_ms = b.get_u64_le();
    let n = b.get_u32_le() as usize;
    let mut properties: Vec<Property> = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let (Some(k), Some(v)) = (take(&mut b), take(&mut b)) else {
            return Err(damaged("properties cut short"));
        };
        properties.push((k, v));
    }
    Ok(paged_message(e, dest, usage, timestamp_ms, properties, b))
}

/// The message a paged entry names, from the bytes read back for it.
fn paged_message(
    e: &PagedEntry,
    dest: &Destination,
    usage: &Arc<MemoryUsage>,
    timestamp_ms: u64,
    properties: Vec<Property>,
    body: Bytes,
) -> Message {
    let footprint = Message::footprint(&properties, &body);
    Message {
        id: e.id,
        destination: dest.clone(),
        properties,
        body,
        priority: e.priority,
        expires_ms: e.expires_ms,
        persistent: true,
        timestamp_ms,
        charge: usage.charge(footprint),
    }
}

/// A message from its SEND record read back from the store: it must be
/// the message the entry names (a stale place reads as another record);
/// the error says what the record holds instead.
fn from_record(
    r: Record,
    e: &PagedEntry,
    dest: &Destination,
    usage: &Arc<MemoryUsage>,
) -> Result<Message, String> {
    let (id, timestamp_ms, properties, body) = match r {
        Record::Send {
            id,
            timestamp_ms,
            properties,
            body,
            ..
        }
        | Record::TxSend {
            id,
            timestamp_ms,
            properties,
            body,
            ..
        } => (id, timestamp_ms, properties, body),
        _ => (0, 0, Vec::new(), Bytes::new()),
    };
    if id != e.id {
        return Err(format!("its record holds message {id}"));
    }
    Ok(paged_message(
        e,
        dest,
        usage,
        timestamp_ms,
        properties,
        body,
    ))
}

fn take(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32_le() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::queue::{ConsumerKey, Dispatched, Entry, MessageQueue};

    fn pager() -> (tempfile::TempDir, Arc<MemoryUsage>, Pager) {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(MemoryUsage::default());
        let spool = Spool::open(dir.path(), usage.clone(), Arc::default()).unwrap();
        let p = Pager::new(spool, usage.clone(), 1 << 20);
        (dir, usage, p)
    }

    fn message(usage: &Arc<MemoryUsage>, id: u64, priority: u8) -> Message {
        let body = Bytes::from(format!("m{id}"));
        Message {
            id,
            destination: Destination::queue("q"),
            properties: Vec::new(),
            body: body.clone(),
            priority,
            expires_ms: 0,
            persistent: true,
            timestamp_ms: 0,
            charge: usage.charge(Message::footprint(&[], &body)),
        }
    }

    #[test]
    fn a_window_full_of_lower_priorities_still_reads_a_paged_higher_one() {
        let (_dir, usage, mut p) = pager();
        let mut q = MessageQueue::default();
        for id in 0..300 {
            q.enqueue(Entry {
                msg: Arc::new(message(&usage, id, 4)),
                redeliveries: 0,
                stored: true,
            });
        }
        let m = message(&usage, 1000, 9);
        let at = p.page_out(&m, None);
        q.enqueue_paged(PagedEntry {
            id: 1000,
            expires_ms: 0,
            at,
            redeliveries: 0,
            priority: 9,
        });
        q.add_consumer(
            ConsumerKey {
                shard: 0,
                conn: 1,
                sub: 1,
            },
            10,
        );
        // Under pressure or not, the paged 9 is wanted: 300 messages of
        // priority 4 in memory wait behind it.
        assert_eq!(q.page_in_wanted(true, 64, 256), 1);
        assert_eq!(q.page_in_wanted(false, 64, 256), 1);
    }

    #[test]
    fn a_lower_priority_in_memory_never_overtakes_a_paged_higher_one() {
        let (_dir, usage, mut p) = pager();
        let dest = Destination::queue("q");
        let mut q = MessageQueue::default();
        q.enqueue(Entry {
            msg: Arc::new(message(&usage, 1, 4)),
            redeliveries: 0,
            stored: true,
        });
        // Under pressure with a window of 1: the next one is paged.
        assert!(q.should_page_out(9, true, 1));
        let m = message(&usage, 2, 9);
        let at = p.page_out(&m, None);
        q.enqueue_paged(PagedEntry {
            id: 2,
            expires_ms: 0,
            at,
            redeliveries: 0,
            priority: 9,
        });
        // Behind a paged message of its priority, a new one is paged too,
        // pressure or not.
        assert!(q.should_page_out(9, false, 100));
        assert!(!q.should_page_out(4, false, 100));
        let key = ConsumerKey {
            shard: 0,
            conn: 1,
            sub: 1,
        };
        q.add_consumer(key, 10);
        let mut d = Dispatched::default();
        q.dispatch(0, &mut d);
        assert!(d.deliveries.is_empty(), "priority 4 waits for the paged 9");
        assert_eq!(q.page_in_wanted(false, 64, 0), 1);
        let batch = q.take_paged(1, usize::MAX);
        let back = p.page_in(&dest, &batch);
        q.paged_in(
            back.into_iter()
                .map(|m| Entry {
                    msg: Arc::new(m.unwrap()),
                    redeliveries: 0,
                    stored: true,
                })
                .collect(),
        );
        q.dispatch(0, &mut d);
        let ids: Vec<u64> = d.deliveries.iter().map(|(_, d)| d.msg.id).collect();
        assert_eq!(ids, vec![2, 1]);
        assert_eq!(q.paged(), 0);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_message() {
        let (dir, usage, mut p) = pager();
        let dest = Destination::queue("q");
        let at = p.page_out(&message(&usage, 7, 4), None);
        p.flush();
        // Flip a byte of the record on disk.
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[9] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let e = PagedEntry {
            id: 7,
            expires_ms: 0,
            at,
            redeliveries: 0,
            priority: 4,
        };
        let got = p.page_in(&dest, &[e]);
        assert!(
            matches!(got[0], Err(PageInError::Spool(SpoolError::Damaged { .. }))),
            "{got:?}"
        );
        assert_eq!(p.unreadable, 1);
    }

    #[test]
    fn a_message_comes_back_as_it_went_out() {
        let (_dir, usage, mut p) = pager();
        let dest = Destination::queue("q");
        let props = vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))];
        let body = Bytes::from_static(b"hello");
        let m = Message {
            id: 42,
            destination: dest.clone(),
            properties: props.clone(),
            body: body.clone(),
            priority: 7,
            expires_ms: 99,
            persistent: true,
            timestamp_ms: 1234,
            charge: usage.charge(Message::footprint(&props, &body)),
        };
        let at = p.page_out(&m, None);
        let e = PagedEntry {
            id: 42,
            expires_ms: 99,
            at,
            redeliveries: 0,
            priority: 7,
        };
        let back = p.page_in(&dest, &[e]).remove(0).unwrap();
        assert_eq!(back.id, 42);
        assert_eq!(back.priority, 7);
        assert_eq!(back.expires_ms, 99);
        assert_eq!(back.timestamp_ms, 1234);
        assert_eq!(back.properties, props);
        assert_eq!(back.body, body);
        assert_eq!(p.spooled_bytes(), 0);
    }
}
