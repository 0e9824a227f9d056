//! Rebuilding a shard's queues and durable subscriptions from its journal,
//! fed one segment at a time while later segments are still being read.
//!
//! Messages are built as their SEND records arrive (optimistically: an
//! acknowledgement further on may retire them), so the building overlaps
//! the reading of the journal instead of following it; at the end the
//! retired ones are dropped and the survivors put in place, in journal
//! order. A built message keeps the bytes the store read (slices of the
//! segment); those the store asks to be copied out (see `finish`) get
//! memory of their own.

use std::collections::HashMap;
use std::sync::Arc;

use super::destination::Destination;
use super::message::{MemoryUsage, Message, SharedMessage};
use super::message_ids::counter;
use super::paging::{PageRef, PagedEntry, Pager};
use super::producer_audit::{origin_of, ProducerAudit};
use super::queue::Entry;
use super::selector::{admits, Candidate, Selector};
use crate::idmap::{IdMap, IdSet};
use crate::store::record::detach;
use crate::store::{Record, RecordAt, RecordSource, StoredDestination, StoredSub};

pub type SubKey = (Arc<str>, StoredSub);

/// A restored message: in memory, or (past the paging point, see
/// [`super::paging`]) spooled while the journal was read.
#[derive(Debug)]
pub enum RestoredEntry {
    Memory(Entry),
    Paged(PagedEntry),
}

impl RestoredEntry {
    pub fn id(&self) -> u64 {
        match self {
            RestoredEntry::Memory(e) => e.msg.id,
            RestoredEntry::Paged(p) => p.id,
        }
    }
}

/// One destination's (or durable subscription's) staged messages, and
/// the priorities of which some are spooled: a later message of such a
/// priority is spooled too, so that every priority's messages in memory
/// come before its paged ones, as a queue keeps them.
#[derive(Debug, Default)]
struct Staged {
    entries: Vec<RestoredEntry>,
    paged_priorities: u16,
}

/// Restored state, ready to be put in place by the shard's broker.
#[derive(Debug, Default)]
pub struct Restored {
    /// Per queue, its messages in journal order.
    pub queues: Vec<(Arc<str>, Vec<RestoredEntry>)>,
    /// Durable subscriptions that exist at the end of the journal, in the
    /// order they were made, with their messages in journal order.
    pub subs: Vec<(Arc<str>, StoredSub, Vec<RestoredEntry>)>,
    /// The pager the restorer spooled with, for the broker to go on with.
    pub pager: Option<Pager>,
    /// The selectors of those durable subscriptions that have one.
    pub selectors: HashMap<SubKey, Arc<str>>,
    /// The highest message id (counter part) any record named, live or
    /// not: new ids must start above it (see [`super::message_ids`]).
    pub max_id_counter: u64,
    /// The producers' sequences of every plain SEND read, live or not.
    pub audit: ProducerAudit,
}

/// The journal's side of the transactions recovery decided (see
/// [`Restorer::finish`]).
#[derive(Debug, Default)]
pub struct TxOutcome {
    /// Applied here without a TxDone in this journal: one must be journaled
    /// (and made durable) before the decision may be forgotten elsewhere.
    pub undone: Vec<u64>,
    /// Messages of prepared SENDs that were dropped: nothing holds them.
    pub dropped_sends: Vec<u64>,
    /// Messages retired by applied prepared ACKs: one holder each.
    pub applied_acks: Vec<u64>,
    /// Topic messages of applied transactions that a durable
    /// subscription's selector passes over and that have no ACK stored for
    /// it (recovery applied them, or a torn write lost the live apply's
    /// ACK): the restored state leaves them out of that subscription, and
    /// each must be stored as its ACK, letting go of one holder, as the
    /// live apply does (`ShardBroker::enqueue_prepared`): the prepared
    /// SEND was stored for every durable subscription of its topic.
    pub passed_over: Vec<(StoredDestination, StoredSub, u64)>,
    /// Transaction decisions (TxCommit) in this journal: held until every
    /// shard has made its TxDone durable.
    pub commits: Vec<u64>,
}

impl Restored {
    pub fn message_count(&self) -> usize {
        self.queues.iter().map(|(_, e)| e.len()).sum::<usize>()
            + self.subs.iter().map(|(_, _, e)| e.len()).sum::<usize>()
    }
}

#[derive(Debug)]
pub struct Restorer {
    usage: Arc<MemoryUsage>,
    /// Queue name -> its messages so far, in journal order.
    queues: HashMap<Arc<str>, Staged>,
    /// The queue the last SEND went to (journals come in long runs of one
    /// queue's records): its entries are kept here, out of the map.
    run: Option<(Arc<str>, Staged)>,
    /// Spools messages staged past the paging point, so that a journal
    /// larger than memory is taken over within bounded memory.
    pager: Option<Pager>,
    /// Durable subscriptions per topic as the journal goes: a topic
    /// message belongs to those that existed when it was sent.
    durables: HashMap<Arc<str>, Vec<StoredSub>>,
    /// Every durable subscription's messages so far; made by DurableAdd,
    /// dropped (with its messages) by DurableRemove.
    subs: Vec<(Arc<str>, StoredSub, Staged)>,
    selectors: HashMap<SubKey, Arc<str>>,
    queue_acks: HashMap<Arc<str>, IdSet>,
    sub_acks: HashMap<SubKey, IdSet>,
    /// By id: most messages were never redelivered, and a miss costs one
    /// id hash instead of building a (destination, sub) key.
    counts: IdMap<Vec<(StoredDestination, Option<StoredSub>, u32)>>,
    max_id_counter: u64,
    /// Prepared SENDs: message id -> transaction. They are staged like
    /// SENDs, in journal order, and dropped at the end unless their
    /// transaction is applied.
    tagged: IdMap<u64>,
    /// Prepared ACKs per transaction, kept aside until it is decided.
    tx_acks: IdMap<Vec<(StoredDestination, Option<StoredSub>, u64)>>,
    /// Prepared topic SENDs a durable subscription's selector passes over,
    /// by message, with no ACK for it read so far: (transaction, topic,
    /// subscription). Not staged for it (see [`TxOutcome::passed_over`]);
    /// an ACK read later (the file journal's, written by the live apply)
    /// takes the entry out, so what stays is what recovery must settle.
    passed: IdMap<Vec<(u64, Arc<str>, StoredSub)>>,
    /// The durable subscriptions' selectors, parsed when first needed
    /// (None: no selector, or one that no longer parses, which its
    /// SUBSCRIBE would have refused: it takes everything, as the broker's
    /// `install` does).
    parsed: HashMap<SubKey, Option<Selector>>,
    /// Transactions with prepared records in this journal.
    prepared: IdSet,
    /// Transactions this shard applied (TxDone).
    done: IdSet,
    /// Transactions this shard coordinated and decided (TxCommit).
    commits: IdSet,
    audit: ProducerAudit,
}

impl Restorer {
    pub fn new(usage: Arc<MemoryUsage>, pager: Option<Pager>) -> Restorer {
        Restorer {
            usage,
            queues: HashMap::new(),
            run: None,
            pager,
            durables: HashMap::new(),
            subs: Vec::new(),
            selectors: HashMap::new(),
            queue_acks: HashMap::new(),
            sub_acks: HashMap::new(),
            counts: IdMap::default(),
            max_id_counter: 0,
            tagged: IdMap::default(),
            tx_acks: IdMap::default(),
            passed: IdMap::default(),
            parsed: HashMap::new(),
            prepared: IdSet::default(),
            done: IdSet::default(),
            commits: IdSet::default(),
            audit: ProducerAudit::default(),
        }
    }

    /// Paged messages are read back from `records` (see
    /// [`Restorer::feed_at`]).
    pub fn read_store(&mut self, records: std::rc::Rc<dyn RecordSource>) {
        if let Some(p) = &mut self.pager {
            p.read_store(records);
        }
    }

    /// A store's record that `producer` sent `seq` to `destination` (its
    /// highest there), kept when the message itself is gone.
    pub fn remember_producer(&mut self, destination: &Destination, producer: &[u8], seq: u64) {
        self.audit.note(destination, producer, seq);
    }

    /// The highest id counter met so far (messages and transactions).
    pub fn max_id_counter(&self) -> u64 {
        self.max_id_counter
    }

    /// The transactions decided in this journal: every shard's recovery
    /// needs them all (see [`Restorer::finish`]).
    pub fn commits(&self) -> &IdSet {
        &self.commits
    }

    /// Takes the next records of the store, in journal order.
    pub fn feed(&mut self, records: Vec<Record>) {
        self.feed_at(records, Vec::new());
    }

    /// [`Restorer::feed`], with where each record can be read back from
    /// the store (`at[k]` for `records[k]`; empty if it cannot): a message
    /// staged past the paging point is then paged to its record, with
    /// nothing written (see [`super::paging`]).
    pub fn feed_at(&mut self, records: Vec<Record>, at: Vec<RecordAt>) {
        let mut at = at.into_iter();
        for r in records {
            let here = at.next();
            for id in r.message_id().into_iter().chain(r.tx_id()) {
                self.max_id_counter = self.max_id_counter.max(counter(id));
            }
            match r {
                Record::Send {
                    id,
                    destination,
                    priority,
                    expires_ms,
                    timestamp_ms,
                    properties,
                    body,
                } => {
                    // Acknowledged or not: a producer's resend of it is
                    // a repeat either way.
                    if let Some(origin) = origin_of(&properties) {
                        self.audit.repeat(&Destination::from(&destination), origin);
                    }
                    self.stage(
                        id,
                        destination,
                        priority,
                        expires_ms,
                        timestamp_ms,
                        properties,
                        body,
                        here,
                        None,
                    );
                }
                Record::TxSend {
                    tx,
                    id,
                    destination,
                    priority,
                    expires_ms,
                    timestamp_ms,
                    properties,
                    body,
                } => {
                    // In journal order like any SEND; whether it stays is
                    // known only once every shard's decisions are.
                    self.tagged.insert(id, tx);
                    self.prepared.insert(tx);
                    self.stage(
                        id,
                        destination,
                        priority,
                        expires_ms,
                        timestamp_ms,
                        properties,
                        body,
                        here,
                        Some(tx),
                    );
                }
                Record::TxAck {
                    tx,
                    destination,
                    sub,
                    id,
                } => {
                    self.prepared.insert(tx);
                    self.tx_acks
                        .entry(tx)
                        .or_default()
                        .push((destination, sub, id));
                }
                Record::TxCommit { tx } => {
                    self.commits.insert(tx);
                }
                Record::TxDone { tx } => {
                    self.done.insert(tx);
                }
                Record::Ack {
                    destination,
                    sub,
                    id,
                } => match (destination.topic, sub) {
                    (false, _) => {
                        self.queue_acks
                            .entry(destination.name)
                            .or_default()
                            .insert(id);
                    }
                    (true, Some(s)) => {
                        if let Some(left) = self.passed.get_mut(&id) {
                            left.retain(|(_, t, p)| *t != destination.name || *p != s);
                            if left.is_empty() {
                                self.passed.remove(&id);
                            }
                        }
                        self.sub_acks
                            .entry((destination.name, s))
                            .or_default()
                            .insert(id);
                    }
                    (true, None) => {}
                },
                Record::Redelivered {
                    destination,
                    sub,
                    id,
                    count,
                } => {
                    let seen = self.counts.entry(id).or_default();
                    match seen
                        .iter_mut()
                        .find(|(d, s, _)| *d == destination && *s == sub)
                    {
                        Some(c) => c.2 = count,
                        None => seen.push((destination, sub, count)),
                    }
                }
                Record::DurableAdd {
                    topic,
                    sub,
                    selector,
                } => {
                    let key = (topic.clone(), sub.clone());
                    self.parsed.remove(&key);
                    match selector {
                        Some(s) => self.selectors.insert(key, s),
                        None => self.selectors.remove(&key),
                    };
                    let subs = self.durables.entry(topic.clone()).or_default();
                    if !subs.contains(&sub) {
                        subs.push(sub.clone());
                        self.subs.push((topic, sub, Staged::default()));
                    }
                }
                Record::DurableRemove { topic, sub } => {
                    self.selectors.remove(&(topic.clone(), sub.clone()));
                    self.parsed.remove(&(topic.clone(), sub.clone()));
                    if let Some(subs) = self.durables.get_mut(&topic) {
                        subs.retain(|s| *s != sub);
                    }
                    let pager = &mut self.pager;
                    self.subs.retain_mut(|(t, s, staged)| {
                        let gone = *t == topic && *s == sub;
                        if gone {
                            release_all(pager, &mut staged.entries);
                        }
                        !gone
                    });
                }
            }
        }
    }

    /// Stages a stored message for its queue, or for the durable
    /// subscriptions of its topic that exist at this point of the journal;
    /// a prepared one (of transaction `tx`) not for those whose selector
    /// passes it over (a plain SEND's are stored as ACKs with it).
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        id: u64,
        destination: StoredDestination,
        priority: u8,
        expires_ms: u64,
        timestamp_ms: u64,
        properties: Vec<(bytes::Bytes, bytes::Bytes)>,
        body: bytes::Bytes,
        stored_at: Option<RecordAt>,
        tx: Option<u64>,
    ) {
        let subs = match destination.topic {
            true => match self
                .durables
                .get(&destination.name)
                .filter(|s| !s.is_empty())
            {
                Some(subs) => Some(subs.clone()),
                // Nobody to keep it for.
                None => return,
            },
            false => None,
        };
        let footprint = Message::footprint(&properties, &body);
        let msg = Arc::new(Message {
            id,
            destination: Destination::from(&destination),
            properties,
            body,
            priority,
            expires_ms,
            persistent: true,
            timestamp_ms,
            charge: self.usage.charge(footprint),
        });
        let name = destination.name;
        let pressure = self.pager.as_ref().is_some_and(|p| p.pressure());
        let mut paged = None;
        let pager = &mut self.pager;
        let mut stage = |staged: &mut Staged| {
            stage_one(pager, staged, &msg, pressure, stored_at, &mut paged);
        };
        match subs {
            None => stage(queue_entries(&mut self.run, &mut self.queues, name)),
            Some(subs) => {
                for sub in subs {
                    // Prepared SENDs only: a plain SEND's passed-over ACKs
                    // are stored with it (in the database modes in the same
                    // transaction; a torn journal write could lose them,
                    // but checking every topic message would cost every
                    // recovery, and in the database modes, which read the
                    // ack rows last, memory per pending message).
                    if let (Some(tx), false) = (tx, self.selectors.is_empty()) {
                        let key = (name.clone(), sub.clone());
                        let selectors = &self.selectors;
                        let selector = self.parsed.entry(key.clone()).or_insert_with_key(|k| {
                            selectors.get(k).and_then(|text| Selector::parse(text).ok())
                        });
                        let subject = Candidate {
                            msg: &msg,
                            redeliveries: 0,
                        };
                        if !admits(selector.as_ref(), &subject) {
                            let acked = self.sub_acks.get(&key).is_some_and(|a| a.contains(&id));
                            if !acked {
                                self.passed
                                    .entry(id)
                                    .or_default()
                                    .push((tx, name.clone(), sub));
                            }
                            continue;
                        }
                    }
                    if let Some(staged) = sub_entries(&mut self.subs, &name, &sub) {
                        stage(staged);
                    }
                }
            }
        }
    }
}

/// Stages `msg` in memory, or paged: under memory pressure, or behind a
/// paged message of its priority. A topic message is paged once for all
/// its subscriptions (`paged`): to its record in the store (`stored_at`),
/// or spooled.
fn stage_one(
    pager: &mut Option<Pager>,
    staged: &mut Staged,
    msg: &SharedMessage,
    pressure: bool,
    stored_at: Option<RecordAt>,
    paged: &mut Option<PageRef>,
) {
    let bit = 1u16 << msg.priority.min(9);
    match pager {
        Some(p) if pressure || staged.paged_priorities & bit != 0 => {
            let at = match *paged {
                Some(r) => {
                    p.hold(r);
                    r
                }
                None => *paged.insert(p.page_out(msg, stored_at)),
            };
            staged.paged_priorities |= bit;
            staged.entries.push(RestoredEntry::Paged(PagedEntry {
                id: msg.id,
                expires_ms: msg.expires_ms,
                at,
                redeliveries: 0,
                priority: msg.priority,
            }));
        }
        _ => staged
            .entries
            .push(RestoredEntry::Memory(entry(msg.clone()))),
    }
}

/// Lets go of the spool records of entries dropped from a restore.
fn release_all(pager: &mut Option<Pager>, entries: &mut Vec<RestoredEntry>) {
    if let Some(p) = pager {
        for e in entries.drain(..) {
            if let RestoredEntry::Paged(pe) = e {
                p.drop_entry(&pe);
            }
        }
    }
}

/// Keeps the entries `keep` says, letting go of the spool records of the
/// others.
fn retain_entries(
    pager: &mut Option<Pager>,
    entries: &mut Vec<RestoredEntry>,
    keep: impl Fn(u64) -> bool,
) {
    entries.retain(|e| {
        let k = keep(e.id());
        if let (false, RestoredEntry::Paged(pe), Some(p)) = (k, e, pager.as_mut()) {
            p.drop_entry(pe);
        }
        k
    });
}

/// The staged entries of queue `name`, making it the current run.
fn queue_entries<'a>(
    run: &'a mut Option<(Arc<str>, Staged)>,
    queues: &mut HashMap<Arc<str>, Staged>,
    name: Arc<str>,
) -> &'a mut Staged {
    {
        let same = run
            .as_ref()
            .is_some_and(|(r, _)| Arc::ptr_eq(r, &name) || *r == name);
        if !same {
            if let Some((r, entries)) = run.take() {
                queues.insert(r, entries);
            }
        }
        &mut run
            .get_or_insert_with(|| {
                let entries = queues.remove(&name).unwrap_or_default();
                (name, entries)
            })
            .1
    }
}

fn sub_entries<'a>(
    subs: &'a mut [(Arc<str>, StoredSub, Staged)],
    topic: &Arc<str>,
    sub: &StoredSub,
) -> Option<&'a mut Staged> {
    subs.iter_mut()
        .rev()
        .find(|(t, s, _)| t == topic && s == sub)
        .map(|(_, _, e)| e)
}

impl Restorer {
    /// Decides the transactions, drops the retired messages, sets
    /// redelivery counts, and copies out the messages whose ids are in
    /// `copy_out` (the store's choice: they would pin a mostly dead
    /// segment), once per message.
    ///
    /// A transaction is applied if this journal has its TxDone or any
    /// shard's journal its TxCommit (`committed`: every shard's
    /// [`Restorer::commits`]); its prepared records then count as plain
    /// SENDs and ACKs. Otherwise it never reached its decision and is
    /// dropped: no shard applied any of it, since a participant applies
    /// only after the decision is durable (or, alone in its transaction,
    /// journals its TxDone with its records).
    /// The transactions' outcome comes apart from the state, to be settled
    /// by its own code (a field of `Restored` would be read after it was
    /// taken: that hid applied ACKs from the database modes' holders).
    pub fn finish(mut self, copy_out: &IdSet, committed: &IdSet) -> (Restored, TxOutcome) {
        if let Some((run, entries)) = self.run.take() {
            self.queues.insert(run, entries);
        }
        let done = std::mem::take(&mut self.done);
        let applies = |tx: &u64| done.contains(tx) || committed.contains(tx);
        let mut tx = TxOutcome {
            undone: self
                .prepared
                .iter()
                .filter(|t| applies(t) && !done.contains(*t))
                .copied()
                .collect(),
            commits: self.commits.iter().copied().collect(),
            ..TxOutcome::default()
        };
        for (t, acks) in std::mem::take(&mut self.tx_acks) {
            if !applies(&t) {
                continue;
            }
            for (destination, sub, id) in acks {
                // A plain ACK of the same delivery (its durable subscription
                // was destroyed while the transaction was prepared) already
                // let go of the message's hold: not twice.
                let fresh = match (destination.topic, sub) {
                    (false, _) => self
                        .queue_acks
                        .entry(destination.name)
                        .or_default()
                        .insert(id),
                    (true, Some(s)) => self
                        .sub_acks
                        .entry((destination.name, s))
                        .or_default()
                        .insert(id),
                    (true, None) => continue,
                };
                if fresh {
                    tx.applied_acks.push(id);
                }
            }
        }
        // Once: unless an ACK for it is stored already, by the live apply
        // or by an earlier settling that crashed before its TxDones. A
        // transaction applied live (TxDone here) whose ACK is missing lost
        // it to a torn write: its holder is let go of now, or never.
        let sub_acks = &self.sub_acks;
        let mut passed_over: Vec<(StoredDestination, StoredSub, u64)> = Vec::new();
        for (id, subs) in std::mem::take(&mut self.passed) {
            for (t, topic, sub) in subs {
                let acked = sub_acks
                    .get(&(topic.clone(), sub.clone()))
                    .is_some_and(|a| a.contains(&id));
                if applies(&t) && !acked {
                    let topic = StoredDestination {
                        topic: true,
                        name: topic,
                    };
                    passed_over.push((topic, sub, id));
                }
            }
        }
        passed_over.sort_by_key(|p| p.2);
        tx.passed_over = passed_over;
        let dropped: IdSet = self
            .tagged
            .iter()
            .filter(|(_, t)| !applies(t))
            .map(|(id, _)| *id)
            .collect();
        tx.dropped_sends = dropped.iter().copied().collect();
        let mut copies: IdMap<SharedMessage> = IdMap::default();
        let mut pager = self.pager.take();
        let mut out = Restored {
            selectors: std::mem::take(&mut self.selectors),
            max_id_counter: self.max_id_counter,
            audit: std::mem::take(&mut self.audit),
            ..Restored::default()
        };
        for (name, staged) in self.queues {
            let mut entries = staged.entries;
            let dest = StoredDestination {
                topic: false,
                name: name.clone(),
            };
            if !dropped.is_empty() {
                retain_entries(&mut pager, &mut entries, |id| !dropped.contains(&id));
            }
            if let Some(acked) = self.queue_acks.get(&name) {
                retain_entries(&mut pager, &mut entries, |id| !acked.contains(&id));
            }
            if entries.is_empty() {
                continue;
            }
            for e in &mut entries {
                settle(
                    e,
                    &dest,
                    None,
                    &self.counts,
                    copy_out,
                    &mut copies,
                    &self.usage,
                );
            }
            out.queues.push((name, entries));
        }
        for (topic, sub, staged) in self.subs {
            let mut entries = staged.entries;
            let dest = StoredDestination {
                topic: true,
                name: topic.clone(),
            };
            if !dropped.is_empty() {
                retain_entries(&mut pager, &mut entries, |id| !dropped.contains(&id));
            }
            if let Some(acked) = self.sub_acks.get(&(topic.clone(), sub.clone())) {
                retain_entries(&mut pager, &mut entries, |id| !acked.contains(&id));
            }
            for e in &mut entries {
                settle(
                    e,
                    &dest,
                    Some(&sub),
                    &self.counts,
                    copy_out,
                    &mut copies,
                    &self.usage,
                );
            }
            out.subs.push((topic, sub, entries));
        }
        out.pager = pager;
        (out, tx)
    }
}

fn entry(msg: SharedMessage) -> Entry {
    Entry {
        msg,
        redeliveries: 0,
        stored: true,
    }
}

/// Gives a surviving entry its redelivery count and, if the store asked,
/// bytes of its own (shared by every entry of the same message).
fn settle(
    e: &mut RestoredEntry,
    dest: &StoredDestination,
    sub: Option<&StoredSub>,
    counts: &IdMap<Vec<(StoredDestination, Option<StoredSub>, u32)>>,
    copy_out: &IdSet,
    copies: &mut IdMap<SharedMessage>,
    usage: &Arc<MemoryUsage>,
) {
    let id = e.id();
    if let Some(seen) = counts.get(&id) {
        let n = seen
            .iter()
            .find(|(d, s, _)| d == dest && s.as_ref() == sub)
            .map_or(0, |c| c.2);
        match e {
            RestoredEntry::Memory(m) => m.redeliveries = n,
            RestoredEntry::Paged(p) => p.redeliveries = n,
        }
    }
    let RestoredEntry::Memory(e) = e else {
        return;
    };
    if copy_out.contains(&id) {
        let copy = copies.entry(id).or_insert_with(|| {
            let m = &e.msg;
            let mut properties = m.properties.clone();
            let mut body = m.body.clone();
            detach(&mut properties, &mut body);
            Arc::new(Message {
                id,
                destination: m.destination.clone(),
                properties,
                body,
                priority: m.priority,
                expires_ms: m.expires_ms,
                persistent: m.persistent,
                timestamp_ms: m.timestamp_ms,
                charge: usage.charge(Message::footprint(&m.properties, &m.body)),
            })
        });
        e.msg = copy.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn dest(topic: bool, name: &str) -> StoredDestination {
        StoredDestination {
            topic,
            name: name.into(),
        }
    }

    fn sub(name: &str) -> StoredSub {
        StoredSub {
            client_id: "c".into(),
            name: name.into(),
        }
    }

    fn send(id: u64, d: &StoredDestination, body: Bytes) -> Record {
        Record::Send {
            id,
            destination: d.clone(),
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: Vec::new(),
            body,
        }
    }

    fn memory(e: &RestoredEntry) -> &Entry {
        match e {
            RestoredEntry::Memory(e) => e,
            RestoredEntry::Paged(p) => panic!("message {} was paged", p.id),
        }
    }

    fn ids(entries: &[RestoredEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.id()).collect()
    }

    #[test]
    fn queues_keep_journal_order_without_acknowledged_messages() {
        let (a, b) = (dest(false, "a"), dest(false, "b"));
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()), None);
        // Fed in two segments, the acks of the first in the second.
        r.feed(vec![
            send(1, &a, Bytes::from_static(b"1")),
            send(2, &b, Bytes::from_static(b"2")),
            send(3, &a, Bytes::from_static(b"3")),
        ]);
        r.feed(vec![
            Record::Ack {
                destination: a.clone(),
                sub: None,
                id: 1,
            },
            Record::Redelivered {
                destination: a.clone(),
                sub: None,
                id: 3,
                count: 2,
            },
            send(4, &a, Bytes::from_static(b"4")),
            Record::Ack {
                destination: b.clone(),
                sub: None,
                id: 2,
            },
        ]);
        let (out, _) = r.finish(&IdSet::default(), &IdSet::default());
        assert_eq!(out.message_count(), 2);
        assert_eq!(out.queues.len(), 1, "queue b has nothing left");
        let (name, entries) = &out.queues[0];
        assert_eq!(&**name, "a");
        assert_eq!(ids(entries), vec![3, 4]);
        assert_eq!(memory(&entries[0]).redeliveries, 2);
        assert_eq!(memory(&entries[1]).redeliveries, 0);
    }

    #[test]
    fn a_topic_message_belongs_to_the_subscriptions_of_its_time() {
        let t = dest(true, "t");
        let (s1, s2) = (sub("one"), sub("two"));
        let add = |s: &StoredSub| Record::DurableAdd {
            topic: "t".into(),
            sub: s.clone(),
            selector: None,
        };
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()), None);
        r.feed(vec![
            send(1, &t, Bytes::from_static(b"nobody")),
            add(&s1),
            send(2, &t, Bytes::from_static(b"one")),
            add(&s2),
            // A snapshot at a segment head repeats an existing subscription.
            add(&s1),
            send(3, &t, Bytes::from_static(b"both")),
            Record::Ack {
                destination: t.clone(),
                sub: Some(s2.clone()),
                id: 3,
            },
            Record::DurableRemove {
                topic: "t".into(),
                sub: s1.clone(),
            },
            add(&s1),
            send(4, &t, Bytes::from_static(b"both again")),
        ]);
        let (out, _) = r.finish(&IdSet::default(), &IdSet::default());
        let by_name = |n: &str| {
            out.subs
                .iter()
                .find(|(_, s, _)| &*s.name == n)
                .map(|(_, _, e)| ids(e))
        };
        // "one" was removed and made again: only what came after.
        assert_eq!(by_name("one"), Some(vec![4]));
        assert_eq!(by_name("two"), Some(vec![4]));
        assert_eq!(out.subs.len(), 2);
    }

    fn tx_send(tx: u64, id: u64, d: &StoredDestination) -> Record {
        Record::TxSend {
            tx,
            id,
            destination: d.clone(),
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: Vec::new(),
            body: Bytes::from_static(b"tx"),
        }
    }

    fn tx_ack(tx: u64, id: u64, d: &StoredDestination, sub: Option<&StoredSub>) -> Record {
        Record::TxAck {
            tx,
            destination: d.clone(),
            sub: sub.cloned(),
            id,
        }
    }

    #[test]
    fn a_transaction_is_applied_only_if_decided_somewhere() {
        let a = dest(false, "a");
        let t = dest(true, "t");
        let s1 = sub("one");
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()), None);
        r.feed(vec![
            send(1, &a, Bytes::from_static(b"1")),
            send(2, &a, Bytes::from_static(b"2")),
            Record::DurableAdd {
                topic: "t".into(),
                sub: s1.clone(),
                selector: None,
            },
            send(3, &t, Bytes::from_static(b"3")),
            // Decided by another shard's TxCommit.
            tx_send(100, 10, &a),
            tx_ack(100, 1, &a, None),
            tx_send(100, 11, &t),
            tx_ack(100, 3, &t, Some(&s1)),
        ]);
        r.feed(vec![
            // Never decided: dropped, its ACK not in effect.
            tx_send(200, 20, &a),
            tx_ack(200, 2, &a, None),
            // Applied here (TxDone), whatever the others say.
            tx_send(300, 30, &a),
            Record::TxDone { tx: 300 },
            // This shard's own decision for a transaction prepared elsewhere.
            Record::TxCommit { tx: 500 },
        ]);
        assert_eq!(r.max_id_counter(), 500, "transaction ids count too");
        assert_eq!(r.commits(), &IdSet::from_iter([500]));
        let (out, tx) = r.finish(&IdSet::default(), &IdSet::from_iter([100, 500]));
        let (_, queue) = out.queues.iter().find(|(n, _)| &**n == "a").unwrap();
        assert_eq!(ids(queue), vec![2, 10, 30]);
        let (_, _, topic) = &out.subs[0];
        assert_eq!(ids(topic), vec![11]);
        let mut undone = tx.undone.clone();
        undone.sort_unstable();
        assert_eq!(undone, vec![100], "300 has its TxDone already");
        assert_eq!(tx.dropped_sends, vec![20]);
        let mut acked = tx.applied_acks.clone();
        acked.sort_unstable();
        assert_eq!(acked, vec![1, 3]);
        assert_eq!(tx.commits, vec![500]);
    }

    #[test]
    fn a_transaction_applied_by_recovery_skips_subscriptions_whose_selector_passes_it_over() {
        let t = dest(true, "t");
        let (all, red) = (sub("all"), sub("red"));
        let blue = |tx: u64, id: u64| Record::TxSend {
            tx,
            id,
            destination: t.clone(),
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: vec![(Bytes::from_static(b"color"), Bytes::from_static(b"blue"))],
            body: Bytes::from_static(b"tx"),
        };
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()), None);
        r.feed(vec![
            Record::DurableAdd {
                topic: "t".into(),
                sub: all.clone(),
                selector: None,
            },
            Record::DurableAdd {
                topic: "t".into(),
                sub: red.clone(),
                selector: Some("color = 'red'".into()),
            },
            // Decided elsewhere, applied by this recovery.
            blue(100, 10),
            // Decided, its ACK for `red` stored by an earlier settling
            // that crashed before its TxDone.
            blue(200, 20),
            Record::Ack {
                destination: t.clone(),
                sub: Some(red.clone()),
                id: 20,
            },
            // Applied live (TxDone): its ACK for `red` was stored then.
            blue(300, 30),
            Record::Ack {
                destination: t.clone(),
                sub: Some(red.clone()),
                id: 30,
            },
            Record::TxDone { tx: 300 },
            // Never decided: dropped.
            blue(400, 40),
            // Applied live, its ACK for `red` lost to a torn write.
            blue(500, 50),
            Record::TxDone { tx: 500 },
        ]);
        let (out, tx) = r.finish(&IdSet::default(), &IdSet::from_iter([100, 200]));
        let of = |name: &str| {
            out.subs
                .iter()
                .find(|(_, s, _)| &*s.name == name)
                .map(|(_, _, e)| ids(e))
                .unwrap()
        };
        assert_eq!(of("all"), vec![10, 20, 30, 50]);
        assert_eq!(
            of("red"),
            Vec::<u64>::new(),
            "its selector passes them over"
        );
        let ids: Vec<u64> = tx.passed_over.iter().map(|(_, _, id)| *id).collect();
        assert_eq!(ids, vec![10, 50], "each holder let go of once");
        assert!(tx.passed_over.iter().all(|(d, s, _)| *d == t && *s == red));
        assert_eq!(tx.dropped_sends, vec![40]);
    }

    #[test]
    fn copied_out_messages_no_longer_share_the_segment() {
        let t = dest(true, "t");
        let segment = Bytes::from(vec![7u8; 64]);
        let body = segment.slice(8..16);
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()), None);
        r.feed(vec![
            Record::DurableAdd {
                topic: "t".into(),
                sub: sub("one"),
                selector: None,
            },
            Record::DurableAdd {
                topic: "t".into(),
                sub: sub("two"),
                selector: None,
            },
            send(9, &t, body),
        ]);
        let (out, _) = r.finish(&IdSet::from_iter([9]), &IdSet::default());
        let msgs: Vec<&SharedMessage> = out
            .subs
            .iter()
            .map(|(_, _, e)| &memory(&e[0]).msg)
            .collect();
        assert_eq!(msgs.len(), 2);
        assert!(Arc::ptr_eq(msgs[0], msgs[1]), "one copy per message");
        assert_eq!(&msgs[0].body[..], &[7u8; 8]);
        let inside = segment.as_ptr_range();
        assert!(!inside.contains(&msgs[0].body.as_ptr()));
    }
}
