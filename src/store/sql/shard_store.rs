//! A shard's side of the database store: records become rows of the next
//! [`Batch`]; the shard's flusher hands the batch to the writer (on the side
//! runtime) and learns when it committed. Lives on its shard's thread.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{encoding, Batch, MsgRow, ProducerSeq, Redelivery, SubRow, TopicAck, TxAckRow};
use crate::idmap::{IdMap, IdSet};
use crate::store::origin::{origin_of, parse_origin};
use crate::store::{Durable, Record, RecordRef, Store, StoredDestination, StoredSub};

/// `queue://NAME` or `topic://NAME`, as ActiveMQ's JDBC store writes it.
pub fn container(d: &StoredDestination) -> String {
    let kind = if d.topic { "topic" } else { "queue" };
    format!("{kind}://{}", d.name)
}

/// The key of one consumer's redelivery count or prepared ack: empty for a
/// queue, `LEN:CLIENT_ID:NAME` for a durable subscription (LEN = the client
/// id's length in bytes: client ids such as ActiveMQ's `ID:host-1-2` hold
/// colons themselves). At most 3 + 1 + 250 + 1 + 250 = 505 bytes (both
/// names are limited to 250 at the protocol), under the columns' 512.
pub fn sub_key(sub: Option<&StoredSub>) -> String {
    match sub {
        None => String::new(),
        Some(s) => format!("{}:{}:{}", s.client_id.len(), s.client_id, s.name),
    }
}

/// The XID of a SEND prepared by transaction `tx`.
pub fn xid(tx: u64) -> String {
    format!("tx:{tx}")
}

/// Ids and transaction numbers are the broker's u64s; the tables' BIGINT
/// is signed. The broker's ids stay below 2^63 (shard in the top bits is
/// small), so this is a plain reinterpretation.
fn sql_id(id: u64) -> i64 {
    id as i64
}

#[derive(Debug, Default)]
pub struct DbShardStore {
    batch: Batch,
    /// Sequence number of the last append; durable once `durable >= it`.
    appended: u64,
    durable: u64,
    /// Message id -> holders left (acknowledgements that retire it).
    holders: IdMap<u32>,
    /// Inserts in `batch` by message id: a message retired before its batch
    /// left is never written (its insert and delete cancel out).
    unsent: IdMap<usize>,
    /// This shard's prepared part of each open transaction, until its
    /// TxDone: what applying it changes in the tables.
    parts: IdMap<TxPart>,
    /// Decisions this shard wrote (it coordinates them) -> participants
    /// that have not yet applied their part.
    decisions: IdMap<u32>,
    /// Held topic messages by topic: a durable subscription made later must
    /// not get them after a takeover (recovery gives a topic message to
    /// every subscription in the tables unless an ack row says otherwise),
    /// so its creation writes those rows (see `Batch::add_sub`).
    topic_msgs: HashMap<Arc<str>, IdSet>,
    /// The topic of each message in `topic_msgs`.
    topic_of: IdMap<Arc<str>>,
    /// Whether `batch` holds nothing but deletes of acknowledged queue
    /// messages (a consumer draining a backlog): only such a batch is
    /// split (see [`DbShardStore::take`]).
    only_acks: bool,
    /// The append sequence number of each entry of `batch.deletes`.
    delete_seqs: Vec<u64>,
    /// Messages a side row (topic ack, redelivery count, prepared ack) may
    /// name: written by this shard, or found at takeover, and every topic
    /// message retired. `take` deletes these from every table (and forgets
    /// them), any other message only from `ACTIVEMQ_MSGS`.
    side_rows: IdSet,
    /// Producers' highest sequences by container (see
    /// `Batch::producer_seqs`), and when each was last sent to: rows idle
    /// for [`PRODUCER_SEQ_KEEP`] are deleted.
    producers: HashMap<String, HashMap<String, Tracked>>,
    /// Rows in `producers` not written yet, by key: a batch visits only
    /// these (the full scan for pruning runs at most once a minute).
    dirty_producers: Vec<(String, String)>,
    /// Every key in `producers`, oldest first: past [`MAX_PRODUCER_ROWS`]
    /// the oldest go (a client opening a producer per send makes a row per
    /// send; the audit keeps no more either).
    producer_order: std::collections::VecDeque<(String, String)>,
    last_prune: Option<std::time::Instant>,
    /// Acknowledged queue messages whose row is to go without a sequence
    /// number (see `unreceipted_ack`): no receipt waits for them, so a
    /// burst of a consumer's acknowledgements does not hold back the
    /// receipts of the SENDs after it. Each batch carries at most
    /// [`DELETES_PER_TRANSACTION`] of them, in `msg_deletes`; their rows
    /// were committed before they are deleted (an insert still unsent is
    /// cancelled instead, and a batch's deletes run only once the batch
    /// before it committed, even when the lane begins it earlier: see
    /// `writer`). Each with the connection that acknowledged it (see
    /// `promote_unreceipted`).
    unreceipted: Vec<(i64, u64)>,
}

/// A producer's row as this shard last wrote (or is to write) it.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    seq: i64,
    /// Not written yet.
    dirty: bool,
    touched: std::time::Instant,
}

/// How long a producer's highest sequence is kept after its last send: a
/// failover resend comes within seconds of the crash.
pub const PRODUCER_SEQ_KEEP: std::time::Duration = std::time::Duration::from_secs(600);

/// Producer rows kept per shard, as many as the audit's windows (see
/// `broker::producer_audit`).
const MAX_PRODUCER_ROWS: usize = 8192;

/// Past this a producer id is not recorded (the column holds 300).
const MAX_PRODUCER_BYTES: usize = 300;

/// Most deletes one write transaction carries when a batch holds nothing
/// else. A transaction holds its share lock on the fence row until it
/// commits (once the lease row), and deleting large rows is slow: measured here on MariaDB,
/// 4864 rows of 32 KiB took 1.7 s, past the lease renewal's 1 s lock wait,
/// and the master lost its lease while a consumer drained a backlog; 1024
/// took 0.5-0.9 s; 256 stay well under it.
pub const DELETES_PER_TRANSACTION: usize = 256;

/// Most retirements waiting without a sequence number (see
/// `DbShardStore::unreceipted`): eight consumers' cumulative ACKs of 500
/// (bench's, JMS clients' prefetch/2) fit. A promotion puts them all in one
/// transaction beside whatever else is pending, which is no more than the
/// same acknowledgements made that transaction before.
const MAX_UNRECEIPTED: usize = 16 * DELETES_PER_TRANSACTION;

/// A transaction's prepared records on one shard.
#[derive(Debug, Default)]
pub struct TxPart {
    /// Prepared SENDs (rows with the transaction's XID).
    pub sends: Vec<u64>,
    /// Prepared acknowledgements: message id and the durable subscription
    /// (None for a queue).
    pub acks: Vec<(u64, Option<StoredSub>)>,
}

impl DbShardStore {
    pub fn new() -> DbShardStore {
        DbShardStore::default()
    }

    /// A producer's row found at takeover: kept (and pruned) like one this
    /// shard wrote.
    pub fn restore_producer(&mut self, container: &str, producer: &str, seq: i64) {
        self.producer_order
            .push_back((container.to_string(), producer.to_string()));
        self.producers
            .entry(container.to_string())
            .or_default()
            .insert(
                producer.to_string(),
                Tracked {
                    seq,
                    dirty: false,
                    touched: std::time::Instant::now(),
                },
            );
    }

    /// A plain SEND of producer `origin` (see `broker::producer_audit`):
    /// its sequence goes into the next batch, whatever becomes of the
    /// message's own row.
    fn note_origin(&mut self, destination: &StoredDestination, origin: &[u8]) {
        let Some((producer, seq)) = parse_origin(origin) else {
            return;
        };
        let (Ok(producer), Ok(seq)) = (std::str::from_utf8(producer), i64::try_from(seq)) else {
            return;
        };
        // A NUL (or any control character) is refused by PostgreSQL's
        // text columns: the batch would fail for good.
        if producer.len() > MAX_PRODUCER_BYTES || producer.bytes().any(|b| b < 0x20) {
            return;
        }
        let container = container(destination);
        let now = std::time::Instant::now();
        let rows = self.producers.entry(container.clone()).or_default();
        match rows.get_mut(producer) {
            Some(t) => {
                if seq > t.seq {
                    t.seq = seq;
                    if !t.dirty {
                        self.dirty_producers.push((container, producer.to_string()));
                    }
                    t.dirty = true;
                }
                t.touched = now;
            }
            None => {
                self.dirty_producers
                    .push((container.clone(), producer.to_string()));
                self.producer_order
                    .push_back((container, producer.to_string()));
                rows.insert(
                    producer.to_string(),
                    Tracked {
                        seq,
                        dirty: true,
                        touched: now,
                    },
                );
            }
        }
    }

    /// Moves the producers' changed rows into the batch, and (at most once
    /// a minute) deletes the rows idle past [`PRODUCER_SEQ_KEEP`].
    fn producer_rows(&mut self) {
        for (container, producer) in std::mem::take(&mut self.dirty_producers) {
            let Some(t) = self
                .producers
                .get_mut(&container)
                .and_then(|rows| rows.get_mut(&producer))
                .filter(|t| t.dirty)
            else {
                continue;
            };
            t.dirty = false;
            let seq = t.seq;
            self.batch.producer_seqs.push(ProducerSeq {
                container,
                producer,
                seq,
            });
        }
        // Past the bound, the oldest go now: a batch deletes about as
        // many rows as the batches since wrote.
        while self.producer_order.len() > MAX_PRODUCER_ROWS {
            let Some((container, producer)) = self.producer_order.pop_front() else {
                break;
            };
            let removed = self
                .producers
                .get_mut(&container)
                .and_then(|rows| rows.remove(&producer));
            if removed.is_some() {
                if self
                    .producers
                    .get(&container)
                    .is_some_and(HashMap::is_empty)
                {
                    self.producers.remove(&container);
                }
                self.batch
                    .producer_seqs
                    .retain(|p| p.container != container || p.producer != producer);
                self.batch.producer_seqs_gone.push((container, producer));
            }
        }
        let now = std::time::Instant::now();
        let prune = self
            .last_prune
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(60));
        if !prune {
            return;
        }
        self.last_prune = Some(now);
        for (container, rows) in &mut self.producers {
            rows.retain(|producer, t| {
                let idle = now.duration_since(t.touched) >= PRODUCER_SEQ_KEEP;
                if idle {
                    self.batch
                        .producer_seqs_gone
                        .push((container.clone(), producer.clone()));
                }
                !idle
            });
        }
        self.producers.retain(|_, rows| !rows.is_empty());
        let producers = &self.producers;
        self.producer_order
            .retain(|(c, p)| producers.get(c).is_some_and(|rows| rows.contains_key(p)));
    }

    /// A restored message: `holders` acknowledgements retire it.
    pub fn hold(&mut self, id: u64, holders: u32) {
        if holders > 0 {
            self.holders.insert(id, holders);
        }
    }

    /// A held message is on `topic` (see `topic_msgs`).
    pub fn hold_topic(&mut self, id: u64, topic: &Arc<str>) {
        if self.topic_of.insert(id, topic.clone()).is_none() {
            self.topic_msgs.entry(topic.clone()).or_default().insert(id);
        }
    }

    /// A durable subscription made now: ack rows for the topic's messages
    /// stored before it (see `topic_msgs`).
    fn pre_ack(&mut self, topic: &str, sub: &StoredSub) {
        if let Some(ids) = self.topic_msgs.get(topic) {
            for id in ids {
                self.side_rows.insert(*id);
                self.batch.topic_acks.push(TopicAck {
                    id: sql_id(*id),
                    client_id: sub.client_id.to_string(),
                    sub_name: sub.name.to_string(),
                });
            }
        }
    }

    /// A prepared part found in the tables at takeover (see
    /// [`TxPart`]): recovery applies it (TxDone) or drops it
    /// ([`DbShardStore::drop_parts`]).
    pub fn restore_part(&mut self, tx: u64, part: TxPart) {
        self.parts.insert(tx, part);
    }

    /// The prepared parts left at recovery were never decided: their
    /// prepared acknowledgements go (their SENDs are forgotten one by one,
    /// see [`DbShardStore::forget`]).
    pub fn drop_parts(&mut self) {
        self.only_acks = false;
        for (tx, part) in std::mem::take(&mut self.parts) {
            for (id, sub) in part.acks {
                self.batch.tx_acks_done.push(TxAckRow {
                    tx: sql_id(tx),
                    id: sql_id(id),
                    sub_key: sub_key(sub.as_ref()),
                });
            }
        }
    }

    /// A decision found in the tables at takeover, no longer needed once
    /// recovery settled every shard's part.
    pub fn forget_decision(&mut self, tx: u64) {
        self.only_acks = false;
        self.decisions.remove(&tx);
        self.batch.tx_forgotten.push(sql_id(tx));
    }

    /// This shard applied its part of `tx`: prepared SENDs lose their XID,
    /// prepared acknowledgements become what a plain ACK leaves (a topic
    /// ack row; a queue's row goes when its holder is released, as for a
    /// plain ACK) and their prepared rows go. Only this shard's rows: the
    /// other participants may not have applied theirs yet, and the
    /// decision stays until all of them did.
    fn apply_part(&mut self, tx: u64) {
        let Some(part) = self.parts.remove(&tx) else {
            return;
        };
        for id in part.sends {
            if let Some(&i) = self.unsent.get(&id) {
                // Not written yet: written in effect.
                self.batch.inserts[i].xid = None;
            } else {
                self.batch.xid_cleared.push(sql_id(id));
            }
        }
        for (id, sub) in part.acks {
            let key = sub_key(sub.as_ref());
            // A message retired meanwhile (its last other holder let go, or
            // its subscription was destroyed) had its rows deleted: an ack
            // row now would name nothing, for good. One still held has not
            // been released for this ack yet (TxDone comes first).
            if let Some(s) = sub.as_ref().filter(|_| self.holders.contains_key(&id)) {
                self.side_rows.insert(id);
                self.batch.topic_acks.push(TopicAck {
                    id: sql_id(id),
                    client_id: s.client_id.to_string(),
                    sub_name: s.name.to_string(),
                });
            }
            self.batch.tx_acks_done.push(TxAckRow {
                tx: sql_id(tx),
                id: sql_id(id),
                sub_key: key,
            });
        }
    }

    /// Every holder of `id` let go at once: a prepared SEND whose
    /// transaction recovery dropped.
    pub fn forget(&mut self, id: u64) {
        self.only_acks = false;
        self.holders.remove(&id);
        self.retire(id);
    }

    /// What the next write transaction should carry from this shard, and
    /// the sequence number it makes durable.
    ///
    /// A batch of nothing but acknowledged queue messages' deletes goes
    /// [`DELETES_PER_TRANSACTION`] at a time, and the sequence number made
    /// durable stops before the first delete left for the next one, so no
    /// receipt covers an acknowledgement not yet committed. Nothing else
    /// is split: a transaction's records, a SEND and its retirement, stay
    /// in one database transaction.
    pub fn take(&mut self) -> (Batch, u64) {
        self.unsent.clear();
        if !self.only_acks {
            self.producer_rows();
        }
        if self.only_acks && self.batch.deletes.len() > DELETES_PER_TRANSACTION {
            let rest = self.batch.deletes.split_off(DELETES_PER_TRANSACTION);
            let rest_seqs = self.delete_seqs.split_off(DELETES_PER_TRANSACTION);
            let upto = rest_seqs[0] - 1;
            let mut now = std::mem::take(&mut self.batch);
            split_msg_deletes(&mut now, &mut self.side_rows);
            self.batch.deletes = rest;
            self.delete_seqs = rest_seqs;
            return (now, upto);
        }
        self.only_acks = true;
        self.delete_seqs.clear();
        let mut now = std::mem::take(&mut self.batch);
        split_msg_deletes(&mut now, &mut self.side_rows);
        self.take_unreceipted(&mut now);
        (now, self.appended)
    }

    /// Up to [`DELETES_PER_TRANSACTION`] of the unreceipted retirements
    /// ride along in `batch`, oldest first, fewer if it deletes others
    /// already (promoted or sequenced ones). If any do, the batch makes a
    /// sequence number of its own durable: a receipt that must cover them
    /// (see `promote_unreceipted`) and comes while the batch is in flight
    /// then waits for it. Receipts of SENDs appended later wait for the
    /// next batch anyway.
    fn take_unreceipted(&mut self, batch: &mut Batch) {
        let room =
            DELETES_PER_TRANSACTION.saturating_sub(batch.deletes.len() + batch.msg_deletes.len());
        let n = self.unreceipted.len().min(room);
        if n > 0 {
            batch
                .msg_deletes
                .extend(self.unreceipted.drain(..n).map(|(id, _)| id));
            self.appended += 1;
        }
    }

    /// The batch up to `upto` committed.
    pub fn committed(&mut self, upto: u64) {
        self.durable = self.durable.max(upto);
    }

    fn insert(&mut self, row: MsgRow) {
        self.unsent.insert(row.id as u64, self.batch.inserts.len());
        self.batch.inserts.push(row);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_row(
        &mut self,
        id: u64,
        destination: &StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: &[(Bytes, Bytes)],
        body: &[u8],
        xid: Option<String>,
    ) {
        let mut msg = Vec::with_capacity(body.len() + 64);
        encoding::encode(timestamp_ms, properties, body, &mut msg);
        self.insert(MsgRow {
            id: sql_id(id),
            container: container(destination),
            expiration: expires_ms as i64,
            priority: i64::from(priority),
            xid,
            msg: Bytes::from(msg),
        });
    }

    fn retire(&mut self, id: u64) {
        if let Some(topic) = self.topic_of.remove(&id) {
            // A topic message's rows are always deleted everywhere (its
            // acks are marked too; this only makes sure).
            self.side_rows.insert(id);
            if let Some(ids) = self.topic_msgs.get_mut(&topic) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.topic_msgs.remove(&topic);
                }
            }
        }
        if self.cancel_unsent(id) {
            return;
        }
        self.batch.deletes.push(sql_id(id));
        self.delete_seqs.push(self.appended);
    }

    /// Written in this batch and gone again: neither goes out (true).
    /// Nothing else in the batch names it yet except what this cleans up.
    fn cancel_unsent(&mut self, id: u64) -> bool {
        if let Some(i) = self.unsent.remove(&id) {
            let row = &mut self.batch.inserts[i];
            if row.id as u64 == id && row.xid.is_none() {
                // (A prepared row keeps its insert: its prepared-ack and
                // part bookkeeping name it until the transaction settles.)
                // Leave a tombstone: remove later without shifting indices.
                row.id = -1;
                self.batch.topic_acks.retain(|a| a.id as u64 != id);
                self.batch.redeliveries.retain(|r| r.id as u64 != id);
                self.side_rows.remove(&id);
                return true;
            }
        }
        false
    }

    /// A record recovery read from the tables for this shard: a side row
    /// (topic ack, redelivery count, prepared ack) marks its message.
    pub fn note_restored(&mut self, rec: &Record) {
        match rec {
            Record::Ack {
                sub: Some(_), id, ..
            }
            | Record::Redelivered { id, .. }
            | Record::TxAck { id, .. } => {
                self.side_rows.insert(*id);
            }
            _ => {}
        }
    }
}

impl Durable for DbShardStore {
    fn appended(&self) -> u64 {
        self.appended
    }
    fn durable(&self) -> u64 {
        self.durable
    }
    fn has_pending(&self) -> bool {
        !self.batch.is_empty() || !self.unreceipted.is_empty()
    }
    fn has_unreceipted(&self) -> bool {
        !self.unreceipted.is_empty()
    }
    fn promote_unreceipted(&mut self, owner: Option<u64>) {
        let mine = |o: u64| owner.is_none_or(|x| x == o);
        if !self.unreceipted.iter().any(|&(_, o)| mine(o)) {
            return;
        }
        self.appended += 1;
        let seq = self.appended;
        let (deletes, seqs) = (&mut self.batch.deletes, &mut self.delete_seqs);
        // In place: a connection that acknowledges and asks for a
        // response per SEND promotes on every one.
        self.unreceipted.retain(|&(id, o)| {
            if !mine(o) {
                return true;
            }
            // Into the batch's sequenced deletes: the next `take` writes
            // them and makes `seq` durable only once they committed (a
            // drain is split as any; `split_msg_deletes` files them).
            deletes.push(id);
            seqs.push(seq);
            false
        });
    }
}

impl Store for DbShardStore {
    fn append(&mut self, rec: &RecordRef<'_>, holders: u32) {
        self.appended += 1;
        if !matches!(rec, RecordRef::Ack { sub: None, .. }) {
            self.only_acks = false;
        }
        match *rec {
            // One row either way; a prepared SEND's carries its XID.
            RecordRef::Send {
                id,
                destination,
                priority,
                expires_ms,
                timestamp_ms,
                properties,
                body,
            }
            | RecordRef::TxSend {
                id,
                destination,
                priority,
                expires_ms,
                timestamp_ms,
                properties,
                body,
                ..
            } => {
                let tx = match *rec {
                    RecordRef::TxSend { tx, .. } => Some(tx),
                    _ => None,
                };
                self.send_row(
                    id,
                    destination,
                    priority,
                    expires_ms,
                    timestamp_ms,
                    properties,
                    body,
                    tx.map(xid),
                );
                // A plain send's producer sequence (prepared ones are not
                // audited: see `broker::producer_audit`).
                if let (None, Some(origin)) = (tx, origin_of(properties)) {
                    self.note_origin(destination, origin);
                }
                self.hold(id, holders);
                if destination.topic && holders > 0 {
                    self.hold_topic(id, &destination.name);
                }
                if let Some(tx) = tx {
                    self.parts.entry(tx).or_default().sends.push(id);
                }
            }
            // A queue's ACK retires the row through `release`; a durable
            // subscription's is remembered until every holder let go.
            RecordRef::Ack { sub, id, .. } => {
                if let Some(s) = sub {
                    self.side_rows.insert(id);
                    self.batch.topic_acks.push(TopicAck {
                        id: sql_id(id),
                        client_id: s.client_id.to_string(),
                        sub_name: s.name.to_string(),
                    });
                }
            }
            RecordRef::Redelivered { sub, id, count, .. } => {
                self.side_rows.insert(id);
                self.batch.redeliveries.push(Redelivery {
                    id: sql_id(id),
                    sub_key: sub_key(sub),
                    count: i64::from(count),
                });
            }
            RecordRef::DurableAdd {
                topic,
                sub,
                selector,
            } => {
                self.batch.add_sub(sub_row(topic, sub, selector));
                self.pre_ack(topic, sub);
            }
            RecordRef::DurableRemove { topic, sub } => {
                self.batch.remove_sub(sub_row(topic, sub, None))
            }
            RecordRef::TxAck { tx, sub, id, .. } => {
                self.side_rows.insert(id);
                self.batch.tx_acks.push(TxAckRow {
                    tx: sql_id(tx),
                    id: sql_id(id),
                    sub_key: sub_key(sub),
                });
                self.parts
                    .entry(tx)
                    .or_default()
                    .acks
                    .push((id, sub.cloned()));
            }
            RecordRef::TxCommit { tx } => {
                self.batch.tx_decided.push(sql_id(tx));
                if holders > 0 {
                    self.decisions.insert(tx, holders);
                } else {
                    self.batch.tx_forgotten.push(sql_id(tx));
                }
            }
            RecordRef::TxDone { tx } => self.apply_part(tx),
        }
    }

    fn unreceipted_ack(&mut self, id: u64, owner: u64) -> bool {
        // Only a plain queue message's last holder, with no side row, no
        // transaction decision of that id, and no topic bookkeeping: its
        // retirement is one `ACTIVEMQ_MSGS` delete and nothing else. And
        // only up to `MAX_UNRECEIPTED`: acknowledgements coming faster
        // than the batches carry them take the sequenced path again, so
        // the rows of consumed messages do not pile up.
        if self.unreceipted.len() >= MAX_UNRECEIPTED
            || self.holders.get(&id) != Some(&1)
            || self.side_rows.contains(&id)
            || self.decisions.contains_key(&id)
            || self.topic_of.contains_key(&id)
        {
            return false;
        }
        self.holders.remove(&id);
        if !self.cancel_unsent(id) {
            self.unreceipted.push((sql_id(id), owner));
        }
        true
    }

    fn release(&mut self, id: u64) {
        // A participant applied its part of a transaction this shard
        // decided: the decision goes once none needs it.
        if let Some(left) = self.decisions.get_mut(&id) {
            self.only_acks = false;
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.decisions.remove(&id);
                self.batch.tx_forgotten.push(sql_id(id));
            }
            return;
        }
        let Some(left) = self.holders.get_mut(&id) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            self.holders.remove(&id);
            self.retire(id);
        }
    }
}

/// Moves the deletes of messages not in `side_rows` to `msg_deletes`;
/// the others keep the full delete, and their marks go. Checked here, not
/// at retirement, so that a side row written later in the same batch (no
/// record does that today) is deleted too: the deletes run after the
/// batch's inserts.
fn split_msg_deletes(batch: &mut Batch, side_rows: &mut IdSet) {
    let (keep, msg_only): (Vec<i64>, Vec<i64>) = batch
        .deletes
        .drain(..)
        .partition(|&id| side_rows.remove(&(id as u64)));
    batch.deletes = keep;
    batch.msg_deletes.extend(msg_only);
}

/// Drops the tombstones `retire` left in a batch about to be written.
pub fn compact(batch: &mut Batch) {
    batch.inserts.retain(|r| r.id >= 0);
}

fn sub_row(topic: &str, sub: &StoredSub, selector: Option<&str>) -> SubRow {
    SubRow {
        container: format!("topic://{topic}"),
        client_id: sub.client_id.to_string(),
        sub_name: sub.name.to_string(),
        selector: selector.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> StoredDestination {
        StoredDestination {
            topic: false,
            name: "orders".into(),
        }
    }

    fn send(s: &mut DbShardStore, id: u64) {
        let d = q();
        s.append(
            &RecordRef::Send {
                id,
                destination: &d,
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 7,
                properties: &[],
                body: b"hello",
            },
            1,
        );
    }

    fn ack(s: &mut DbShardStore, id: u64) {
        let d = q();
        s.append(
            &RecordRef::Ack {
                destination: &d,
                sub: None,
                id,
            },
            0,
        );
        s.release(id);
    }

    fn send_from(s: &mut DbShardStore, id: u64, origin: &str) {
        let d = q();
        let props = [(
            Bytes::from_static(crate::store::origin::ORIGIN_PROPERTY.as_bytes()),
            Bytes::copy_from_slice(origin.as_bytes()),
        )];
        s.append(
            &RecordRef::Send {
                id,
                destination: &d,
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 7,
                properties: &props,
                body: b"hello",
            },
            1,
        );
    }

    #[test]
    fn a_producers_sequence_is_written_even_when_its_message_never_is() {
        let mut s = DbShardStore::new();
        send_from(&mut s, 1, "ID:c-1-2-3-1:1:1:5");
        send_from(&mut s, 2, "ID:c-1-2-3-1:1:1:6");
        send_from(&mut s, 3, "ID:c-1-2-3-1:1:2:1");
        // Acknowledged before the batch left: its row is never written.
        ack(&mut s, 2);
        let (b, _) = s.take();
        let mut seqs: Vec<(String, i64)> = b
            .producer_seqs
            .iter()
            .map(|p| (p.producer.clone(), p.seq))
            .collect();
        seqs.sort();
        assert_eq!(
            seqs,
            [
                ("ID:c-1-2-3-1:1:1".to_string(), 6),
                ("ID:c-1-2-3-1:1:2".to_string(), 1)
            ]
        );
        assert!(b
            .producer_seqs
            .iter()
            .all(|p| p.container == "queue://orders"));
        // Written once: an unchanged row is not written again.
        send(&mut s, 4);
        let (b, _) = s.take();
        assert!(b.producer_seqs.is_empty(), "{:?}", b.producer_seqs);
        // A lower sequence (another destination's share) changes nothing.
        send_from(&mut s, 5, "ID:c-1-2-3-1:1:1:2");
        let (b, _) = s.take();
        assert!(b.producer_seqs.is_empty());
        // A NUL would fail the batch on PostgreSQL for good: not recorded.
        send_from(&mut s, 6, "ID:c\0x:1:1:9");
        let (b, _) = s.take();
        assert!(b.producer_seqs.is_empty());
    }

    #[test]
    fn producer_rows_are_bounded_oldest_first() {
        let mut s = DbShardStore::new();
        for p in 0..=MAX_PRODUCER_ROWS as u64 {
            send_from(&mut s, p + 1, &format!("ID:c-1-2-3-1:1:{p}:1"));
        }
        let (b, _) = s.take();
        assert_eq!(
            b.producer_seqs_gone,
            [("queue://orders".to_string(), "ID:c-1-2-3-1:1:0".to_string())]
        );
        assert_eq!(b.producer_seqs.len(), MAX_PRODUCER_ROWS);
        assert!(b
            .producer_seqs
            .iter()
            .all(|p| p.producer != "ID:c-1-2-3-1:1:0"));
        assert_eq!(s.producer_order.len(), MAX_PRODUCER_ROWS);
    }

    #[test]
    fn idle_producers_rows_are_pruned() {
        let mut s = DbShardStore::new();
        send_from(&mut s, 1, "ID:c-1-2-3-1:1:1:5");
        let _ = s.take();
        // As if idle for longer than kept.
        for rows in s.producers.values_mut() {
            for t in rows.values_mut() {
                t.touched -= PRODUCER_SEQ_KEEP;
            }
        }
        s.last_prune = None;
        send(&mut s, 2);
        let (b, _) = s.take();
        assert_eq!(
            b.producer_seqs_gone,
            [("queue://orders".to_string(), "ID:c-1-2-3-1:1:1".to_string())]
        );
        assert!(s.producers.is_empty());
    }

    /// Messages 1..=n sent and committed, then each acknowledged.
    fn sent_then_acked(n: u64) -> DbShardStore {
        sent_then(n, ack)
    }

    /// Messages 1..=n sent and committed, then `then` for each.
    fn sent_then(n: u64, then: impl Fn(&mut DbShardStore, u64)) -> DbShardStore {
        let mut s = DbShardStore::new();
        for id in 1..=n {
            send(&mut s, id);
        }
        let (_, upto) = s.take();
        s.committed(upto);
        for id in 1..=n {
            then(&mut s, id);
        }
        s
    }

    #[test]
    fn a_drain_is_deleted_in_bounded_transactions_and_receipts_wait_for_each() {
        let n = DELETES_PER_TRANSACTION as u64 * 2 + 10;
        let mut s = sent_then_acked(n);
        let all_acked = s.appended();
        let mut taken = Vec::new();
        while s.has_pending() {
            let (b, upto) = s.take();
            assert!(b.deletes.is_empty(), "no side rows: ACTIVEMQ_MSGS only");
            assert!(b.msg_deletes.len() <= DELETES_PER_TRANSACTION);
            // Durable up to the record before the first delete still
            // waiting, never past it.
            let waiting_from = n + 1 + (taken.len() + b.msg_deletes.len()) as u64;
            if s.has_pending() {
                assert_eq!(upto, waiting_from - 1);
            } else {
                assert_eq!(upto, all_acked);
            }
            taken.extend(b.msg_deletes);
            s.committed(upto);
        }
        assert_eq!(taken, (1..=n as i64).collect::<Vec<_>>());
        assert_eq!(s.durable(), all_acked);
    }

    /// The connection the tests' consumers acknowledge on.
    const OWNER: u64 = 7;

    #[test]
    fn a_receipt_promotes_its_own_connections_acks_only() {
        let mut s = sent_then(6, |s, id| {
            let owner = if id % 2 == 0 { OWNER } else { OWNER + 1 };
            assert!(s.unreceipted_ack(id, owner));
        });
        let before = s.appended();
        s.promote_unreceipted(Some(OWNER));
        let receipt_at = s.appended();
        assert_eq!(receipt_at, before + 1, "one number for the promoted");
        assert!(s.has_unreceipted(), "the other connection's still wait");
        // The next batch carries the promoted deletes under that number,
        // and a bounded share of the others beside them, under their own.
        let (b, upto) = s.take();
        let mut promoted = b.deletes.clone();
        promoted.extend(&b.msg_deletes);
        promoted.sort_unstable();
        assert_eq!(promoted, [1, 2, 3, 4, 5, 6]);
        assert!(upto > receipt_at);
        s.committed(upto);
        assert!(s.durable() >= receipt_at);
    }

    #[test]
    fn a_connection_with_nothing_waiting_promotes_nothing() {
        let mut s = sent_then(3, |s, id| assert!(s.unreceipted_ack(id, OWNER + 1)));
        let at = s.appended();
        s.promote_unreceipted(Some(OWNER));
        assert_eq!(s.appended(), at, "no number: the receipt is due at once");
        assert!(s.batch.deletes.is_empty());
        assert_eq!(s.unreceipted.len(), 3);
    }

    #[test]
    fn a_promotion_of_one_connection_leaves_the_others_unsequenced() {
        let mut s = sent_then(4, |s, id| {
            let owner = if id <= 2 { OWNER } else { OWNER + 1 };
            assert!(s.unreceipted_ack(id, owner));
        });
        s.promote_unreceipted(Some(OWNER));
        let first = s.appended();
        // Promoted: in the batch's sequenced deletes, under that number.
        assert_eq!(s.batch.deletes, [1, 2]);
        assert_eq!(s.delete_seqs, [first, first]);
        let waiting: Vec<i64> = s.unreceipted.iter().map(|&(id, _)| id).collect();
        assert_eq!(waiting, [3, 4]);
        // Everyone's (an operator's purge, the bound): the rest too, under
        // a later number.
        s.promote_unreceipted(None);
        assert!(s.unreceipted.is_empty());
        assert_eq!(s.batch.deletes, [1, 2, 3, 4]);
        assert_eq!(s.delete_seqs, [first, first, first + 1, first + 1]);
    }

    #[test]
    fn a_share_rides_along_only_in_the_room_other_deletes_leave() {
        let n = DELETES_PER_TRANSACTION as u64;
        let mut s = sent_then(n + 10, |s, id| {
            let owner = if id <= 10 { OWNER } else { OWNER + 1 };
            assert!(s.unreceipted_ack(id, owner));
        });
        s.promote_unreceipted(Some(OWNER));
        let (b, upto) = s.take();
        assert_eq!(
            b.deletes.len() + b.msg_deletes.len(),
            DELETES_PER_TRANSACTION,
            "the 10 promoted and {} of the others",
            DELETES_PER_TRANSACTION - 10
        );
        s.committed(upto);
        let (b, _) = s.take();
        assert_eq!(b.msg_deletes.len(), 10, "the rest in the next");
    }

    /// Messages 1..=n sent and committed, then acknowledged without a
    /// receipt waiting (each taken by `unreceipted_ack`).
    fn sent_then_acked_unreceipted(n: u64) -> DbShardStore {
        sent_then(n, |s, id| assert!(s.unreceipted_ack(id, OWNER)))
    }

    #[test]
    fn unreceipted_acks_hold_no_receipt_and_ride_along_in_bounded_shares() {
        let n = DELETES_PER_TRANSACTION as u64 * 2 + 10;
        let mut s = sent_then_acked_unreceipted(n);
        // No sequence number: a receipt asked for now is due at once.
        assert_eq!(s.appended(), n);
        assert_eq!(s.durable(), n);
        assert!(s.has_pending(), "the deletes are still to be written");
        // A SEND after them is receipted with the first batch, which
        // carries a bounded share of the deletes beside it.
        send(&mut s, n + 1);
        let (b, upto) = s.take();
        assert!(upto > n + 1, "the SEND's number, then the deletes' own");
        assert_eq!(b.inserts.len(), 1);
        assert_eq!(b.msg_deletes.len(), DELETES_PER_TRANSACTION);
        s.committed(upto);
        let mut deleted = b.msg_deletes;
        while s.has_pending() {
            let before = s.appended();
            let (b, upto) = s.take();
            assert!(!b.msg_deletes.is_empty());
            assert!(b.msg_deletes.len() <= DELETES_PER_TRANSACTION);
            assert_eq!(upto, before + 1, "each share has a number of its own");
            deleted.extend(b.msg_deletes);
            s.committed(upto);
        }
        assert_eq!(deleted, (1..=n as i64).collect::<Vec<_>>());
    }

    #[test]
    fn a_receipt_asked_for_while_unreceipted_deletes_are_in_flight_waits_for_them() {
        let mut s = sent_then_acked_unreceipted(10);
        let (b, upto) = s.take();
        assert_eq!(b.msg_deletes.len(), 10);
        // In flight; a receipt comes: nothing is left to promote, and yet
        // it must not be due before that batch committed.
        s.promote_unreceipted(Some(OWNER));
        let receipt_at = s.appended();
        assert!(s.durable() < receipt_at, "due before the deletes committed");
        assert_eq!(upto, receipt_at);
        s.committed(upto);
        assert!(s.durable() >= receipt_at);
    }

    #[test]
    fn acknowledgements_past_the_bound_take_the_sequenced_path() {
        let n = MAX_UNRECEIPTED as u64 + 5;
        let mut s = sent_then(n, |_, _| {});
        let upto = s.durable();
        let taken = (1..=n).filter(|&id| s.unreceipted_ack(id, OWNER)).count();
        assert_eq!(taken, MAX_UNRECEIPTED);
        for id in MAX_UNRECEIPTED as u64 + 1..=n {
            ack(&mut s, id);
        }
        assert_eq!(s.appended(), upto + 5, "the rest have numbers");
    }

    #[test]
    fn a_receipt_after_unreceipted_acks_waits_for_their_deletes() {
        let n = DELETES_PER_TRANSACTION as u64 + 10;
        let mut s = sent_then_acked_unreceipted(n);
        s.promote_unreceipted(Some(OWNER));
        // The receipt asked for now waits for this sequence number...
        let receipt_at = s.appended();
        assert_eq!(receipt_at, n + 1);
        let mut deleted = Vec::new();
        while s.has_pending() {
            let (b, upto) = s.take();
            deleted.extend(b.msg_deletes);
            s.committed(upto);
            // ...which is durable only once every delete committed.
            assert_eq!(
                s.durable() >= receipt_at,
                deleted.len() == n as usize,
                "durable {} with {} of {n} deleted",
                s.durable(),
                deleted.len()
            );
        }
        assert_eq!(deleted.len(), n as usize);
        // Nothing left to promote: a second receipt needs no new number.
        s.promote_unreceipted(Some(OWNER));
        assert_eq!(s.appended(), receipt_at);
    }

    #[test]
    fn an_unreceipted_ack_of_a_message_not_yet_written_cancels_both() {
        let mut s = DbShardStore::new();
        send(&mut s, 1);
        send(&mut s, 2);
        assert!(s.unreceipted_ack(1, OWNER));
        let (mut b, upto) = s.take();
        compact(&mut b);
        assert_eq!(b.inserts.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
        assert!(b.msg_deletes.is_empty() && b.deletes.is_empty());
        assert_eq!(upto, 2);
        // Acknowledged while its batch is in flight: deleted by a later
        // batch, taken only after that one committed.
        assert!(s.unreceipted_ack(2, OWNER));
        s.committed(upto);
        let (b, _) = s.take();
        assert_eq!(b.msg_deletes, [2]);
    }

    #[test]
    fn only_a_plain_queue_messages_last_holder_is_acked_unreceipted() {
        let mut s = DbShardStore::new();
        let topic = StoredDestination {
            topic: true,
            name: "prices".into(),
        };
        s.append(
            &RecordRef::Send {
                id: 1,
                destination: &topic,
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 7,
                properties: &[],
                body: b"x",
            },
            2,
        );
        send(&mut s, 2);
        redelivered(&mut s, 2);
        send(&mut s, 3);
        let (_, upto) = s.take();
        s.committed(upto);
        assert!(
            !s.unreceipted_ack(1, OWNER),
            "a topic message with two holders"
        );
        assert!(!s.unreceipted_ack(2, OWNER), "a side row names it");
        assert!(!s.unreceipted_ack(9, OWNER), "not held here");
        assert!(s.unreceipted_ack(3, OWNER));
        assert!(
            !s.unreceipted_ack(3, OWNER),
            "its last holder already let go"
        );
    }

    #[test]
    fn a_batch_with_anything_but_acks_is_not_split() {
        let n = DELETES_PER_TRANSACTION as u64 + 10;
        let mut s = sent_then_acked(n);
        send(&mut s, n + 1);
        let (b, upto) = s.take();
        assert_eq!(b.msg_deletes.len(), n as usize);
        assert_eq!(b.inserts.len(), 1);
        assert_eq!(upto, s.appended());
        assert!(!s.has_pending());
    }

    #[test]
    fn a_send_becomes_a_row_and_its_release_a_delete() {
        let mut s = DbShardStore::new();
        send(&mut s, 5);
        let (mut b, upto) = s.take();
        compact(&mut b);
        assert_eq!(upto, 1);
        assert_eq!(b.inserts.len(), 1);
        assert_eq!(b.inserts[0].container, "queue://orders");
        s.committed(upto);
        s.release(5);
        let (b, _) = s.take();
        assert_eq!(b.msg_deletes, vec![5]);
        assert!(b.deletes.is_empty());
        assert!(b.inserts.is_empty());
    }

    #[test]
    fn a_message_retired_before_its_batch_left_is_never_written() {
        let mut s = DbShardStore::new();
        send(&mut s, 5);
        send(&mut s, 6);
        redelivered(&mut s, 5);
        s.release(5);
        let (mut b, _) = s.take();
        compact(&mut b);
        assert_eq!(b.inserts.iter().map(|r| r.id).collect::<Vec<_>>(), vec![6]);
        assert!(b.deletes.is_empty() && b.msg_deletes.is_empty());
        assert!(b.redeliveries.is_empty());
        assert!(s.side_rows.is_empty(), "the mark goes with it");
    }

    fn redelivered(s: &mut DbShardStore, id: u64) {
        let d = q();
        s.append(
            &RecordRef::Redelivered {
                destination: &d,
                sub: None,
                id,
                count: 1,
            },
            0,
        );
    }

    #[test]
    fn only_a_message_a_side_row_may_name_is_deleted_from_every_table() {
        let mut s = DbShardStore::new();
        for id in 1..=4 {
            send(&mut s, id);
        }
        let (_, upto) = s.take();
        s.committed(upto);
        // 2: its redelivery count is a row; 3: one was found at takeover.
        redelivered(&mut s, 2);
        s.note_restored(&Record::Redelivered {
            destination: q(),
            sub: None,
            id: 3,
            count: 1,
        });
        for id in 1..=4 {
            ack(&mut s, id);
        }
        let (b, _) = s.take();
        assert_eq!(b.deletes, vec![2, 3]);
        assert_eq!(b.msg_deletes, vec![1, 4]);
        assert!(s.side_rows.is_empty(), "a retired message's mark goes");
    }

    #[test]
    fn a_side_row_written_after_its_message_retired_in_the_batch_goes_too() {
        let mut s = DbShardStore::new();
        send(&mut s, 1);
        let (_, upto) = s.take();
        s.committed(upto);
        ack(&mut s, 1);
        redelivered(&mut s, 1);
        let (b, _) = s.take();
        assert_eq!(b.deletes, vec![1]);
        assert!(b.msg_deletes.is_empty());
        assert!(s.side_rows.is_empty());
    }

    #[test]
    fn a_split_drain_keeps_each_delete_with_its_side_rows() {
        let n = DELETES_PER_TRANSACTION as u64 + 20;
        let mut s = DbShardStore::new();
        for id in 1..=n {
            send(&mut s, id);
        }
        let (_, upto) = s.take();
        s.committed(upto);
        for id in (1..=n).filter(|id| id % 7 == 0) {
            redelivered(&mut s, id);
        }
        let (_, upto) = s.take();
        s.committed(upto);
        for id in 1..=n {
            ack(&mut s, id);
        }
        let (mut full, mut msg_only) = (Vec::new(), Vec::new());
        while s.has_pending() {
            let (b, upto) = s.take();
            assert!(b.deletes.len() + b.msg_deletes.len() <= DELETES_PER_TRANSACTION);
            full.extend(b.deletes);
            msg_only.extend(b.msg_deletes);
            s.committed(upto);
        }
        let sevens: Vec<i64> = (1..=n as i64).filter(|id| id % 7 == 0).collect();
        let others: Vec<i64> = (1..=n as i64).filter(|id| id % 7 != 0).collect();
        assert_eq!(full, sevens);
        assert_eq!(msg_only, others);
    }

    #[test]
    fn a_transactional_ack_of_a_message_retired_meanwhile_writes_no_ack_row() {
        let t = StoredDestination {
            topic: true,
            name: "t".into(),
        };
        let sub = StoredSub {
            client_id: "c".into(),
            name: "s1".into(),
        };
        let mut s = DbShardStore::new();
        s.append(
            &RecordRef::Send {
                id: 5,
                destination: &t,
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 0,
                properties: &[],
                body: b"m",
            },
            1,
        );
        s.append(
            &RecordRef::TxAck {
                tx: 9,
                destination: &t,
                sub: Some(&sub),
                id: 5,
            },
            0,
        );
        s.take();
        // The subscription is destroyed before the decision: M goes.
        s.release(5);
        let (b, _) = s.take();
        assert_eq!(b.deletes, vec![5]);
        s.append(&RecordRef::TxDone { tx: 9 }, 0);
        let (b, _) = s.take();
        assert!(b.topic_acks.is_empty(), "an ack row for a deleted message");
        assert_eq!(b.tx_acks_done.len(), 1, "its prepared row still goes");
    }

    #[test]
    fn a_subscription_made_later_acks_the_topic_messages_stored_before_it() {
        let t = StoredDestination {
            topic: true,
            name: "t".into(),
        };
        let sub = StoredSub {
            client_id: "c".into(),
            name: "late".into(),
        };
        let mut s = DbShardStore::new();
        s.append(
            &RecordRef::Send {
                id: 9,
                destination: &t,
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 0,
                properties: &[],
                body: b"m",
            },
            1,
        );
        s.take();
        s.append(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            0,
        );
        let (b, _) = s.take();
        assert_eq!(b.topic_acks.len(), 1);
        assert_eq!(b.topic_acks[0].id, 9);
        // Once the message is gone, a new subscription acks nothing.
        s.release(9);
        s.take();
        s.append(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            0,
        );
        assert!(s.take().0.topic_acks.is_empty());
    }

    #[test]
    fn a_subscription_removed_and_made_again_in_one_batch_exists() {
        let sub = StoredSub {
            client_id: "c".into(),
            name: "s".into(),
        };
        let mut s = DbShardStore::new();
        s.append(
            &RecordRef::DurableRemove {
                topic: "t",
                sub: &sub,
            },
            0,
        );
        s.append(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            0,
        );
        let (b, _) = s.take();
        assert_eq!(b.subs_added.len(), 1);
        assert!(b.subs_removed.is_empty());
        // Made, then removed (across two merged batches): gone.
        s.append(
            &RecordRef::DurableAdd {
                topic: "t",
                sub: &sub,
                selector: None,
            },
            0,
        );
        let (mut first, _) = s.take();
        s.append(
            &RecordRef::DurableRemove {
                topic: "t",
                sub: &sub,
            },
            0,
        );
        let (second, _) = s.take();
        first.extend(second);
        assert!(first.subs_added.is_empty());
        assert_eq!(first.subs_removed.len(), 1);
    }
}
