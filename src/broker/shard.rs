//! The destinations one shard owns, and what it does with operations on them.
//! A state machine without I/O or awaiting: outputs are addressed messages
//! for the router (locally or to other shards) and records for the store,
//! which the shard's runtime makes durable before answering fences.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, error, warn};

use super::destination::Destination;
use super::message::{now_ms, MemoryUsage, Message, SharedMessage};
use super::message_ids::MessageIds;
use super::ops::{
    ConnRef, DurableName, Op, Reply, Retire, Seen, ShardMsg, SubscribeOp, TxAck, TxPart,
};
use super::paging::{
    PageRef, PagedEntry, Pager, LOOKAHEAD, MIN_WINDOW, PAGE_IN_BATCH, PAGE_IN_BATCH_BYTES,
};
use super::producer_audit::{origin_of, ProducerAudit};
use super::queue::{ConsumerKey, Delivery, Dispatched, Entry, MessageQueue, Requeued};
use super::restore::Restored;
use super::selector::{admits, Candidate, Selector};
use crate::idmap::IdMap;
use crate::store::{RecordAt, RecordRef, Store, StoredDestination, StoredSub};

mod admin;
pub use admin::{
    AdminRefusal, BrowsedMessage, DestinationStats, SubscriberStats, BODY_PREVIEW_BYTES,
};

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shards: usize,
    pub max_redeliveries: u32,
    pub dead_letter_queue: Destination,
    /// The live temporary destinations: a message for one that is gone
    /// (sent before its removal, arriving after) is dropped, not left in a
    /// queue nobody can consume.
    pub temporary: std::sync::Arc<super::temporary::TempDestinations>,
}

/// A subscription to a topic: a queue of its own with at most one consumer.
#[derive(Debug, Default)]
struct TopicSub {
    queue: MessageQueue,
    consumer: Option<ConsumerKey>,
    /// Only messages it matches are enqueued (a durable subscription keeps
    /// it while offline).
    selector: Option<Selector>,
    /// Messages its own connection published are not (JMS's noLocal):
    /// that connection's OpenWire id, set by its live consumer.
    no_local: Option<Arc<str>>,
}

impl TopicSub {
    fn wants(&self, subject: &Candidate<'_>) -> bool {
        admits(self.selector.as_ref(), subject) && !self.published_by_own(subject.msg)
    }

    fn published_by_own(&self, msg: &Message) -> bool {
        let (Some(conn), Some(origin)) = (&self.no_local, origin_of(&msg.properties)) else {
            return false;
        };
        // `<connection id>:<session>:<producer>:<sequence>`.
        origin
            .strip_prefix(conn.as_bytes())
            .and_then(|rest| rest.strip_prefix(b":"))
            .is_some_and(|rest| rest.iter().filter(|b| **b == b':').count() == 2)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubId {
    Durable(DurableName),
    Plain(ConsumerKey),
}

#[derive(Debug, Default)]
struct Topic {
    subs: HashMap<SubId, TopicSub>,
    by_consumer: HashMap<ConsumerKey, SubId>,
    enqueued: u64,
}

impl Topic {
    fn sub_of(&mut self, key: ConsumerKey) -> Option<(&SubId, &mut TopicSub)> {
        let id = self.by_consumer.get(&key)?;
        let sub = self.subs.get_mut(id)?;
        Some((id, sub))
    }

    fn durable_count(&self) -> u32 {
        self.subs
            .keys()
            .filter(|k| matches!(k, SubId::Durable(_)))
            .count() as u32
    }
}

pub type Outbox = Vec<(usize, ShardMsg)>;

fn stored_dest(d: &Destination) -> StoredDestination {
    match d {
        Destination::Queue(n) => StoredDestination {
            topic: false,
            name: n.clone(),
        },
        Destination::Topic(n) => StoredDestination {
            topic: true,
            name: n.clone(),
        },
    }
}

/// Journals that a stored message left a queue (or durable subscription)
/// and lets go of its hold on the journal segment.
fn journal_ack(
    store: &mut dyn Store,
    destination: &StoredDestination,
    sub: Option<&StoredSub>,
    id: u64,
) {
    store.append(
        &RecordRef::Ack {
            destination,
            sub,
            id,
        },
        0,
    );
    store.release(id);
}

fn durable_name(s: &StoredSub) -> DurableName {
    DurableName {
        client_id: s.client_id.to_string(),
        name: s.name.to_string(),
    }
}

fn stored_sub(d: &DurableName) -> StoredSub {
    StoredSub {
        client_id: d.client_id.as_str().into(),
        name: d.name.as_str().into(),
    }
}

/// A transaction's part on this shard, journaled as prepared records and
/// waiting for the decision.
#[derive(Debug)]
struct Prepared {
    conn: ConnRef,
    coordinator: usize,
    /// The only participant: it decides by itself.
    alone: bool,
    /// May be applied (decided, or alone) once the connection's earlier
    /// transactions here are.
    decided: bool,
    sends: Vec<PreparedSend>,
    acks: Vec<ReservedAck>,
    /// NACKs retire nothing: they are applied with the part, unjournaled.
    nacks: Vec<TxAck>,
    /// Some prepared record was journaled: the part needs a TxDone.
    journaled: bool,
}

#[derive(Debug)]
struct PreparedSend {
    msg: SharedMessage,
    /// For a journaled topic message: the durable subscriptions it was
    /// journaled for (its holders), as recovery would give it to them.
    durables: Vec<DurableName>,
    /// Where the store can read its prepared SEND back (paging).
    at: Option<RecordAt>,
}

/// Deliveries a prepared transaction acknowledges, out of their queue's
/// flight (see `MessageQueue::reserve`).
#[derive(Debug)]
struct ReservedAck {
    destination: Destination,
    consumer: ConsumerKey,
    /// The topic subscription they were delivered on (queues: None).
    sub: Option<SubId>,
    entries: Vec<Entry>,
}

pub struct ShardBroker {
    shard: usize,
    settings: BrokerSettings,
    queues: HashMap<Arc<str>, MessageQueue>,
    topics: HashMap<Arc<str>, Topic>,
    usage: Arc<MemoryUsage>,
    store: Rc<RefCell<dyn Store>>,
    /// This shard's id issuer, shared with its connections: a dead-letter
    /// copy is a new message with an id of its own.
    ids: Rc<MessageIds>,
    /// Transaction parts prepared here, by transaction id.
    prepared: IdMap<Prepared>,
    /// Per committing connection, its transactions prepared here and not
    /// yet applied, in COMMIT order: they are applied in that order, so
    /// that a connection's transactions land in the order it committed
    /// them whatever each one's path through the commit.
    commit_order: HashMap<ConnRef, VecDeque<u64>>,
    /// Queues larger than memory (see [`super::paging`]); None without a
    /// durable store (nothing is stored, so nothing may be paged).
    pager: Option<Pager>,
    /// Producers' recent sequences: a resend is dropped (see
    /// [`super::producer_audit`]).
    audit: ProducerAudit,
}

/// A transaction part this shard just applied, for the runtime to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxApplied {
    pub tx: u64,
    pub coordinator: usize,
    pub alone: bool,
}

impl ShardBroker {
    pub fn new(
        shard: usize,
        settings: BrokerSettings,
        usage: Arc<MemoryUsage>,
        store: Rc<RefCell<dyn Store>>,
        ids: Rc<MessageIds>,
        pager: Option<Pager>,
    ) -> ShardBroker {
        ShardBroker {
            shard,
            settings,
            queues: HashMap::new(),
            topics: HashMap::new(),
            usage,
            store,
            ids,
            prepared: IdMap::default(),
            commit_order: HashMap::new(),
            pager,
            audit: ProducerAudit::default(),
        }
    }

    /// Writes what the pager's spool buffered (periodic, from the sweep).
    pub fn flush_spool(&mut self) {
        if let Some(p) = &mut self.pager {
            p.flush();
        }
    }

    pub fn apply(&mut self, op: Op, out: &mut Outbox) {
        match op {
            Op::Send(msg) => {
                // A producer's own send (never a copy the broker makes,
                // such as a dead-letter one, which keeps its origin).
                if !self.resent(&msg) {
                    self.send(msg, out);
                }
            }
            Op::Subscribe(s) => self.subscribe(s, out),
            Op::Unsubscribe {
                destination,
                consumer,
                destroy_durable,
                seen,
            } => self.unsubscribe(&destination, consumer, destroy_durable, &seen, out),
            Op::Ack {
                destination,
                consumer,
                ids,
            } => {
                let acked = match self.queue_of(&destination, consumer) {
                    Some((_, q)) => q.ack(consumer, &ids),
                    None => return,
                };
                let sub = self.durable_of(&destination, consumer);
                self.retire_acked(&destination, sub.as_ref(), &acked, consumer.conn_ref());
                self.dispatch_one(&destination, consumer, out);
            }
            Op::Browse {
                destination,
                consumer,
                max,
                selector,
            } => self.browse_for(&destination, consumer, max, selector.as_ref(), out),
            Op::Pull {
                destination,
                consumer,
                cancel,
            } => self.widen(&destination, consumer, out, |q| q.pull(consumer, cancel)),
            // A limit of 0: every one of them is past it.
            Op::Poison {
                destination,
                consumer,
                ids,
            } => self.give_back(&destination, consumer, &ids, 0, out),
            Op::Nack {
                destination,
                consumer,
                ids,
            } => {
                let max = self.settings.max_redeliveries;
                self.give_back(&destination, consumer, &ids, max, out);
            }
            Op::Delivered {
                destination,
                consumer,
                count,
            } => self.widen(&destination, consumer, out, |q| {
                q.extend_credit(consumer, count)
            }),
            Op::Prefetch {
                destination,
                consumer,
                prefetch,
            } => self.widen(&destination, consumer, out, |q| {
                q.set_prefetch(consumer, prefetch)
            }),
            Op::DeadLetter { msg, retire } => {
                // Without a runtime that waits for durability (see
                // server::shard), the retirement follows at once.
                self.send(msg, out);
                if let Some(r) = retire {
                    out.push((r.shard, ShardMsg::Reply(Reply::Retire(r))));
                }
            }
            Op::RemoveTemporary { destination } => self.remove_temporary(&destination),
            Op::Fence { conn, token } => out.push((
                conn.shard as usize,
                ShardMsg::Reply(Reply::Fenced { conn, token }),
            )),
            // Without a runtime that waits for durability, a transaction is
            // decided as soon as it is prepared.
            Op::TxPrepare {
                tx,
                conn,
                coordinator,
                part,
                alone,
            } => {
                let applied = self.tx_prepare(tx, conn, coordinator, part, alone, out);
                if !alone {
                    out.push((coordinator, ShardMsg::Reply(Reply::TxPrepared { tx })));
                }
                tx_answers(&applied, out);
            }
            Op::TxApply { tx, .. } => {
                let applied = self.tx_decided(tx, out);
                tx_answers(&applied, out);
            }
            // Coordination is the runtime's (see server::shard).
            Op::TxCoordinate { .. } => {}
        }
    }

    /// Journals this shard's part of transaction `tx` (committed on
    /// `conn`) as prepared records and keeps it aside, unapplied: its
    /// messages are not enqueued, and the deliveries it acknowledges are
    /// reserved (neither redelivered nor retired) until it is decided
    /// ([`ShardBroker::tx_decided`]). `alone`: the only participant, so
    /// decided already; it is applied at once unless an earlier transaction
    /// of `conn` waits here (then it follows that one). Returns the parts
    /// applied.
    pub fn tx_prepare(
        &mut self,
        tx: u64,
        conn: ConnRef,
        coordinator: usize,
        part: TxPart,
        alone: bool,
        out: &mut Outbox,
    ) -> Vec<TxApplied> {
        let mut p = Prepared {
            conn,
            coordinator,
            alone,
            decided: alone,
            sends: Vec::new(),
            acks: Vec::new(),
            nacks: Vec::new(),
            journaled: false,
        };
        let store = self.store.clone();
        let mut store = store.borrow_mut();
        for msg in part.sends {
            let mut durables = Vec::new();
            let holders = match &msg.destination {
                _ if !msg.persistent => 0,
                Destination::Queue(_) => 1,
                Destination::Topic(name) => {
                    if let Some(t) = self.topics.get(name) {
                        durables = t
                            .subs
                            .keys()
                            .filter_map(|id| match id {
                                SubId::Durable(d) => Some(d.clone()),
                                SubId::Plain(_) => None,
                            })
                            .collect();
                    }
                    durables.len() as u32
                }
            };
            let mut at = None;
            if holders > 0 {
                let sd = stored_dest(&msg.destination);
                store.append(
                    &RecordRef::TxSend {
                        tx,
                        id: msg.id,
                        destination: &sd,
                        priority: msg.priority,
                        expires_ms: msg.expires_ms,
                        timestamp_ms: msg.timestamp_ms,
                        properties: &msg.properties,
                        body: &msg.body,
                    },
                    holders,
                );
                at = store.last_send_at();
                p.journaled = true;
            }
            p.sends.push(PreparedSend { msg, durables, at });
        }
        for ack in part.acks {
            if ack.nack {
                p.nacks.push(ack);
                continue;
            }
            let (sub, entries) = match self.queue_of(&ack.destination, ack.consumer) {
                Some((sub, q)) => (sub.cloned(), q.reserve(ack.consumer, &ack.ids)),
                None => continue,
            };
            let durable = match &sub {
                Some(SubId::Durable(d)) => Some(stored_sub(d)),
                _ => None,
            };
            let sd = stored_dest(&ack.destination);
            for e in entries.iter().filter(|e| e.stored) {
                store.append(
                    &RecordRef::TxAck {
                        tx,
                        destination: &sd,
                        sub: durable.as_ref(),
                        id: e.msg.id,
                    },
                    0,
                );
                p.journaled = true;
            }
            p.acks.push(ReservedAck {
                destination: ack.destination,
                consumer: ack.consumer,
                sub,
                entries,
            });
        }
        drop(store);
        self.prepared.insert(tx, p);
        self.commit_order.entry(conn).or_default().push_back(tx);
        self.apply_decided(conn, out)
    }

    /// The decision of transaction `tx` is durable: its part here is
    /// applied as soon as the connection's earlier ones are. Returns the
    /// parts applied.
    pub fn tx_decided(&mut self, tx: u64, out: &mut Outbox) -> Vec<TxApplied> {
        let Some(p) = self.prepared.get_mut(&tx) else {
            return Vec::new();
        };
        p.decided = true;
        let conn = p.conn;
        self.apply_decided(conn, out)
    }

    /// Applies `conn`'s decided parts from the oldest, up to the first
    /// that is still undecided.
    fn apply_decided(&mut self, conn: ConnRef, out: &mut Outbox) -> Vec<TxApplied> {
        let mut applied = Vec::new();
        while let Some(order) = self.commit_order.get_mut(&conn) {
            let next = match order.front() {
                Some(tx) if self.prepared.get(tx).is_some_and(|p| p.decided) => *tx,
                _ => break,
            };
            order.pop_front();
            if order.is_empty() {
                self.commit_order.remove(&conn);
            }
            if let Some(p) = self.prepared.remove(&next) {
                applied.push(TxApplied {
                    tx: next,
                    coordinator: p.coordinator,
                    alone: p.alone,
                });
                self.tx_apply(next, p, out);
            }
        }
        applied
    }

    /// Journals TxDone for `tx`, then applies its prepared part as if its
    /// SENDs and ACKs came now.
    fn tx_apply(&mut self, tx: u64, p: Prepared, out: &mut Outbox) {
        if p.journaled {
            // Before any holder is released: a segment freed by this
            // transaction is reused only after a durable round covers it.
            self.store.borrow_mut().append(&RecordRef::TxDone { tx }, 0);
        }
        for PreparedSend { msg, durables, at } in p.sends {
            self.enqueue_prepared(msg, &durables, at, out);
        }
        for a in p.acks {
            let stored: Vec<u64> = a
                .entries
                .iter()
                .filter(|e| e.stored)
                .map(|e| e.msg.id)
                .collect();
            {
                let mut store = self.store.borrow_mut();
                for id in stored {
                    store.release(id);
                }
            }
            if let Some(q) = self.queue_by(&a.destination, a.sub.as_ref()) {
                q.settle_reserved(a.consumer, a.entries.len());
            }
            self.dispatch_one(&a.destination, a.consumer, out);
        }
        for n in p.nacks {
            self.apply(
                Op::Nack {
                    destination: n.destination,
                    consumer: n.consumer,
                    ids: n.ids,
                },
                out,
            );
        }
    }

    /// Enqueues a prepared message, already journaled (if at all) with
    /// holders for `durables`.
    fn enqueue_prepared(
        &mut self,
        msg: SharedMessage,
        durables: &[DurableName],
        at: Option<RecordAt>,
        out: &mut Outbox,
    ) {
        if self.temporary_gone(&msg.destination) {
            return;
        }
        match &msg.destination {
            Destination::Queue(name) => {
                let q = self.queues.entry(name.clone()).or_default();
                let entry = Entry {
                    msg: msg.clone(),
                    redeliveries: 0,
                    stored: msg.persistent,
                };
                enqueue(&mut self.pager, q, entry, at, &mut None);
            }
            Destination::Topic(name) => {
                let mut kept = 0;
                let mut paged = None;
                let subject = Candidate {
                    msg: &msg,
                    redeliveries: 0,
                };
                if let Some(t) = self.topics.get_mut(name) {
                    t.enqueued += 1;
                    for (id, sub) in t.subs.iter_mut() {
                        if !sub.wants(&subject) {
                            continue;
                        }
                        // Stored for the durable subscriptions it was
                        // journaled for, as recovery would restore it;
                        // others present now get it as a passing message.
                        let stored = matches!(id, SubId::Durable(d) if durables.contains(d));
                        kept += usize::from(stored);
                        let entry = Entry {
                            msg: msg.clone(),
                            redeliveries: 0,
                            stored,
                        };
                        enqueue(&mut self.pager, &mut sub.queue, entry, at, &mut paged);
                    }
                }
                // Journaled for subscriptions gone since, or whose selector
                // passes it over: they let go, as a journaled ACK, so that
                // recovery agrees.
                if kept < durables.len() {
                    let present: Vec<&DurableName> = self
                        .topics
                        .get(name)
                        .map(|t| {
                            t.subs
                                .iter()
                                .filter_map(|(id, sub)| match id {
                                    SubId::Durable(d) if sub.wants(&subject) => Some(d),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let sd = stored_dest(&msg.destination);
                    let gone: Vec<StoredSub> = durables
                        .iter()
                        .filter(|d| !present.contains(d))
                        .map(stored_sub)
                        .collect();
                    let mut store = self.store.borrow_mut();
                    for d in &gone {
                        journal_ack(&mut *store, &sd, Some(d), msg.id);
                    }
                }
            }
        }
        self.dispatch_destination(&msg.destination, out);
    }

    /// The queue a reservation was made in, by subscription rather than by
    /// consumer (the consumer may have left since).
    fn queue_by(&mut self, dest: &Destination, sub: Option<&SubId>) -> Option<&mut MessageQueue> {
        match (dest, sub) {
            (Destination::Queue(name), _) => self.queues.get_mut(name),
            (Destination::Topic(name), Some(id)) => {
                Some(&mut self.topics.get_mut(name)?.subs.get_mut(id)?.queue)
            }
            (Destination::Topic(_), None) => None,
        }
    }

    /// Journals the decision of transaction `tx` (this shard coordinates
    /// it): held until each of `participants` has made its TxDone durable
    /// ([`ShardBroker::tx_forget`]).
    pub fn tx_decide(&mut self, tx: u64, participants: usize) {
        self.store
            .borrow_mut()
            .append(&RecordRef::TxCommit { tx }, participants as u32);
    }

    /// One participant no longer needs the decision of `tx`.
    pub fn tx_forget(&mut self, tx: u64) {
        self.store.borrow_mut().release(tx);
    }

    /// `consumer` gives `ids` back to its queue (NACK, POISON): past
    /// `max_redeliveries` they go to the dead-letter queue, the others wait
    /// again; then the queue dispatches to it.
    fn give_back(
        &mut self,
        destination: &Destination,
        consumer: ConsumerKey,
        ids: &[super::MessageId],
        max_redeliveries: u32,
        out: &mut Outbox,
    ) {
        let back = match self.queue_of(destination, consumer) {
            Some((_, q)) => q.requeue(consumer, ids, max_redeliveries),
            None => return,
        };
        let sub = self.durable_of(destination, consumer);
        self.came_back(destination, sub.as_ref(), back, out);
        self.dispatch_one(destination, consumer, out);
    }

    /// `change` may give `consumer` more credit on its queue (a pull, a
    /// prefetch extension); if it did, the queue dispatches to it.
    fn widen(
        &mut self,
        destination: &Destination,
        consumer: ConsumerKey,
        out: &mut Outbox,
        change: impl FnOnce(&mut MessageQueue) -> bool,
    ) {
        let gained = match self.queue_of(destination, consumer) {
            Some((_, q)) => change(q),
            None => return,
        };
        if gained {
            self.dispatch_one(destination, consumer, out);
        }
    }

    /// `d` is a temporary destination whose connection removed it.
    fn temporary_gone(&self, d: &Destination) -> bool {
        let gone = d.is_temporary() && self.settings.temporary.owner(d).is_none();
        if gone {
            tracing::debug!(destination = %d, "a message for a removed temporary destination is dropped");
        }
        gone
    }

    /// Whether `msg` is one its producer sent before (see
    /// [`super::producer_audit`]); it is then dropped, stored once.
    fn resent(&mut self, msg: &Message) -> bool {
        let Some(origin) = origin_of(&msg.properties) else {
            return false;
        };
        if !self.audit.repeat(&msg.destination, origin) {
            return false;
        }
        debug!(shard = self.shard, destination = %msg.destination,
            origin = %String::from_utf8_lossy(origin),
            "a producer sent this message again (failover resend): stored once");
        true
    }

    fn send(&mut self, msg: SharedMessage, out: &mut Outbox) {
        if self.temporary_gone(&msg.destination) {
            return;
        }
        match &msg.destination {
            Destination::Queue(name) => {
                let mut at = None;
                if msg.persistent {
                    let mut store = self.store.borrow_mut();
                    store.append(&send_record(&msg, &stored_dest(&msg.destination)), 1);
                    at = store.last_send_at();
                }
                let q = self.queues.entry(name.clone()).or_default();
                let entry = Entry {
                    msg: msg.clone(),
                    redeliveries: 0,
                    stored: msg.persistent,
                };
                enqueue(&mut self.pager, q, entry, at, &mut None);
            }
            Destination::Topic(name) => {
                let Some(t) = self.topics.get_mut(name) else {
                    // Nobody subscribed: a topic message without listeners is gone.
                    return;
                };
                t.enqueued += 1;
                let durable = t.durable_count();
                let stored = msg.persistent && durable > 0;
                let subject = Candidate {
                    msg: &msg,
                    redeliveries: 0,
                };
                let mut kept = 0;
                // Durable subscriptions whose selector passes it over.
                let mut passed = Vec::new();
                if stored {
                    for (id, sub) in &t.subs {
                        if let SubId::Durable(d) = id {
                            if sub.wants(&subject) {
                                kept += 1;
                            } else {
                                passed.push(stored_sub(d));
                            }
                        }
                    }
                }
                // Journaled first: a subscription that pages it out reads
                // it back from its record.
                let mut at = None;
                if stored && kept > 0 {
                    // Journaled for every durable subscription, as recovery
                    // counts them; those that do not want it let go at once,
                    // so that the store needs no selector to agree.
                    let sd = stored_dest(&msg.destination);
                    let mut store = self.store.borrow_mut();
                    store.append(&send_record(&msg, &sd), durable);
                    at = store.last_send_at();
                    for d in &passed {
                        journal_ack(&mut *store, &sd, Some(d), msg.id);
                    }
                }
                // Paged once however many subscriptions page it.
                let mut paged = None;
                for (id, sub) in t.subs.iter_mut() {
                    let is_durable = matches!(id, SubId::Durable(_));
                    if !sub.wants(&subject) {
                        continue;
                    }
                    let entry = Entry {
                        msg: msg.clone(),
                        redeliveries: 0,
                        stored: stored && is_durable,
                    };
                    enqueue(&mut self.pager, &mut sub.queue, entry, at, &mut paged);
                }
            }
        }
        self.dispatch_destination(&msg.destination, out);
    }

    fn subscribe(&mut self, s: SubscribeOp, out: &mut Outbox) {
        let key = s.consumer;
        match &s.destination {
            Destination::Queue(name) => {
                self.queues
                    .entry(name.clone())
                    .or_default()
                    .add_selective_consumer(key, s.prefetch, s.selector.clone());
                if s.exclusive {
                    if let Some(q) = self.queues.get_mut(name) {
                        q.make_exclusive(key);
                    }
                }
            }
            Destination::Topic(name) => {
                let id = match s.durable {
                    Some(d) => SubId::Durable(d),
                    None => SubId::Plain(key),
                };
                let t = self.topics.entry(name.clone()).or_default();
                let offline = t.subs.get(&id).is_some_and(|sub| sub.consumer.is_none());
                let changed = t
                    .subs
                    .get(&id)
                    .is_some_and(|sub| sub.selector != s.selector);
                if let (true, true, SubId::Durable(d)) = (offline, changed, &id) {
                    // As in ActiveMQ: another selector makes another
                    // subscription; the old one goes with its messages.
                    if let Err(e) = self.delete_subscription(&s.destination, d) {
                        warn!(shard = self.shard, error = %e, "replacing a durable subscription");
                    }
                }
                let t = self.topics.entry(name.clone()).or_default();
                if let SubId::Durable(d) = &id {
                    if !t.subs.contains_key(&id) {
                        self.store.borrow_mut().append(
                            &RecordRef::DurableAdd {
                                topic: name,
                                sub: &stored_sub(d),
                                selector: s.selector.as_ref().map(Selector::text),
                            },
                            0,
                        );
                    }
                }
                let sub = t.subs.entry(id.clone()).or_insert_with(|| TopicSub {
                    selector: s.selector.clone(),
                    ..TopicSub::default()
                });
                if let Some(active) = sub.consumer {
                    if active != key {
                        let conn = key.conn_ref();
                        let reason = format!(
                            "durable subscription on {} is already active on another connection",
                            s.destination
                        );
                        out.push((
                            key.shard as usize,
                            ShardMsg::Reply(Reply::Refused { conn, reason }),
                        ));
                        return;
                    }
                }
                sub.consumer = Some(key);
                sub.no_local = s.no_local.clone();
                sub.queue.add_consumer(key, s.prefetch);
                t.by_consumer.insert(key, id);
            }
        }
        debug!(shard = self.shard, destination = %s.destination, "subscribed");
        self.dispatch_one(&s.destination, key, out);
    }

    fn unsubscribe(
        &mut self,
        dest: &Destination,
        key: ConsumerKey,
        destroy: bool,
        seen: &Seen,
        out: &mut Outbox,
    ) {
        let max = self.settings.max_redeliveries;
        match dest {
            Destination::Queue(name) => {
                let Some(q) = self.queues.get_mut(name) else {
                    return;
                };
                // The queue itself stays: it keeps its messages and statistics.
                let back = q.remove_consumer(key, max, seen);
                self.came_back(dest, None, back, out);
            }
            Destination::Topic(name) => {
                let Some(t) = self.topics.get_mut(name) else {
                    return;
                };
                let Some(id) = t.by_consumer.remove(&key) else {
                    return;
                };
                let Some(sub) = t.subs.get_mut(&id) else {
                    return;
                };
                let back = sub.queue.remove_consumer(key, max, seen);
                sub.consumer = None;
                let durable = match &id {
                    SubId::Durable(d) => Some(stored_sub(d)),
                    SubId::Plain(_) => None,
                };
                let mut dropped = Vec::new();
                let mut dropped_paged = Vec::new();
                if destroy || durable.is_none() {
                    // A plain subscription's messages die with it; so do a
                    // deleted durable one's.
                    if let Some(mut s) = t.subs.remove(&id) {
                        dropped = s.queue.drain_all();
                        dropped_paged = s.queue.take_paged_all();
                    }
                }
                if t.subs.is_empty() {
                    self.topics.remove(name);
                }
                self.came_back(dest, durable.as_ref(), back, out);
                self.retire(dest, durable.as_ref(), &dropped);
                self.retire_paged(dest, durable.as_ref(), dropped_paged);
                if let (true, SubId::Durable(d)) = (destroy, &id) {
                    self.release_prepared_holds(name, d);
                }
                if destroy {
                    if let Some(d) = &durable {
                        self.store.borrow_mut().append(
                            &RecordRef::DurableRemove {
                                topic: name,
                                sub: d,
                            },
                            0,
                        );
                    }
                }
            }
        }
        self.dispatch_destination(dest, out);
    }

    /// Durable subscription `d` of `topic` is destroyed: the transactions
    /// prepared here that counted it (a SEND journaled with it as a holder,
    /// an ACK of one of its deliveries) let go of it now, as journaled ACKs,
    /// so that its holds on the journal end in order and recovery agrees;
    /// a subscription made again under the same name is a new one.
    fn release_prepared_holds(&mut self, topic: &Arc<str>, d: &DurableName) {
        let dest = Destination::Topic(topic.clone());
        let sd = stored_dest(&dest);
        let ss = stored_sub(d);
        let mut store = self.store.borrow_mut();
        for p in self.prepared.values_mut() {
            for s in p.sends.iter_mut().filter(|s| s.msg.destination == dest) {
                if let Some(k) = s.durables.iter().position(|x| x == d) {
                    s.durables.remove(k);
                    journal_ack(&mut *store, &sd, Some(&ss), s.msg.id);
                }
            }
            for a in p.acks.iter_mut().filter(|a| a.destination == dest) {
                if matches!(&a.sub, Some(SubId::Durable(x)) if x == d) {
                    for e in a.entries.drain(..).filter(|e| e.stored) {
                        journal_ack(&mut *store, &sd, Some(&ss), e.msg.id);
                    }
                }
            }
        }
    }

    fn queue_of(
        &mut self,
        dest: &Destination,
        key: ConsumerKey,
    ) -> Option<(Option<&SubId>, &mut MessageQueue)> {
        match dest {
            Destination::Queue(name) => self.queues.get_mut(name).map(|q| (None, q)),
            Destination::Topic(name) => {
                let (id, sub) = self.topics.get_mut(name)?.sub_of(key)?;
                Some((Some(id), &mut sub.queue))
            }
        }
    }

    fn durable_of(&mut self, dest: &Destination, key: ConsumerKey) -> Option<StoredSub> {
        match self.queue_of(dest, key)? {
            (Some(SubId::Durable(d)), _) => Some(stored_sub(d)),
            _ => None,
        }
    }

    /// The dead-letter copy of a stored message is durable: journal that the
    /// original left its queue.
    pub fn retire_one(&mut self, r: &Retire) {
        journal_ack(
            &mut *self.store.borrow_mut(),
            &stored_dest(&r.destination),
            r.sub.as_ref(),
            r.id,
        );
    }

    /// Journals the retirement of stored entries (ack, expiry, dead-letter).
    fn retire(&mut self, dest: &Destination, sub: Option<&StoredSub>, entries: &[Entry]) {
        self.retire_stored(dest, sub, entries, None);
    }

    /// Journals what a consumer acknowledged: as `retire`, except that a
    /// queue's messages may be retired by the store without holding later
    /// receipts back (see `Store::unreceipted_ack`; a receipt the consumer
    /// asks for promotes them, see the server's shard).
    fn retire_acked(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        entries: &[Entry],
        by: ConnRef,
    ) {
        let plain_queue = sub.is_none() && !dest.is_topic();
        self.retire_stored(dest, sub, entries, plain_queue.then_some(by));
    }

    /// `unreceipted`: offer each to `Store::unreceipted_ack` first, as
    /// acknowledged on that connection.
    fn retire_stored(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        entries: &[Entry],
        unreceipted: Option<ConnRef>,
    ) {
        if !entries.iter().any(|e| e.stored) {
            return;
        }
        let sd = stored_dest(dest);
        let mut store = self.store.borrow_mut();
        for e in entries.iter().filter(|e| e.stored) {
            let taken = unreceipted.is_some_and(|by| store.unreceipted_ack(e.msg.id, by.key()));
            if !taken {
                journal_ack(&mut *store, &sd, sub, e.msg.id);
            }
        }
    }

    /// Journals the retirement of paged entries (never read back) and lets
    /// go of their spool records.
    fn retire_paged(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        paged: Vec<PagedEntry>,
    ) {
        if paged.is_empty() {
            return;
        }
        let sd = stored_dest(dest);
        let mut store = self.store.borrow_mut();
        for e in &paged {
            journal_ack(&mut *store, &sd, sub, e.id);
            if let Some(p) = &mut self.pager {
                p.drop_entry(e);
            }
        }
    }

    /// Messages a consumer gave back: journal their redelivery counts, and
    /// dead-letter those past the limit.
    fn came_back(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        back: Requeued,
        out: &mut Outbox,
    ) {
        if !back.counted.is_empty() {
            let sd = stored_dest(dest);
            let mut store = self.store.borrow_mut();
            for (id, count) in &back.counted {
                store.append(
                    &RecordRef::Redelivered {
                        destination: &sd,
                        sub,
                        id: *id,
                        count: *count,
                    },
                    0,
                );
            }
        }
        self.dead_letter(dest, sub, back.dead, "delivery failed", out);
    }

    /// After credit came back to one consumer: only its queue can move.
    fn dispatch_one(&mut self, dest: &Destination, key: ConsumerKey, out: &mut Outbox) {
        let now = now_ms();
        let mut d = Dispatched::default();
        let pager = &mut self.pager;
        let q = match dest {
            Destination::Queue(name) => self.queues.get_mut(name),
            Destination::Topic(name) => self
                .topics
                .get_mut(name)
                .and_then(|t| t.sub_of(key))
                .map(|(_, s)| &mut s.queue),
        };
        if let Some(q) = q {
            dispatch(pager, q, dest, now, &mut d);
        }
        let sub = self.durable_of(dest, key);
        self.emit(dest, sub.as_ref(), d, out);
    }

    fn dispatch_destination(&mut self, dest: &Destination, out: &mut Outbox) {
        let now = now_ms();
        match dest {
            Destination::Queue(name) => {
                let mut d = Dispatched::default();
                if let Some(q) = self.queues.get_mut(name) {
                    dispatch(&mut self.pager, q, dest, now, &mut d);
                }
                self.emit(dest, None, d, out);
            }
            Destination::Topic(name) => {
                let mut per_sub = Vec::new();
                if let Some(t) = self.topics.get_mut(name) {
                    for (id, sub) in t.subs.iter_mut() {
                        let mut d = Dispatched::default();
                        dispatch(&mut self.pager, &mut sub.queue, dest, now, &mut d);
                        let durable = match id {
                            SubId::Durable(n) => Some(stored_sub(n)),
                            SubId::Plain(_) => None,
                        };
                        per_sub.push((durable, d));
                    }
                }
                for (durable, d) in per_sub {
                    self.emit(dest, durable.as_ref(), d, out);
                }
            }
        }
    }

    /// Groups deliveries per consumer so each crosses to its shard as one batch.
    fn emit(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        d: Dispatched,
        out: &mut Outbox,
    ) {
        if !d.expired.is_empty() {
            self.expire(dest, sub, d.expired, out);
        }
        let mut batches: Vec<(ConsumerKey, Vec<Delivery>)> = Vec::new();
        for (key, delivery) in d.deliveries {
            match batches.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(delivery),
                None => batches.push((key, vec![delivery])),
            }
        }
        for (consumer, deliveries) in batches {
            out.push((
                consumer.shard as usize,
                ShardMsg::Reply(Reply::Deliver {
                    consumer,
                    deliveries,
                }),
            ));
        }
    }

    /// Expired persistent messages go to the dead-letter queue, as in
    /// ActiveMQ; non-persistent ones are discarded.
    fn expire(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        expired: Vec<Entry>,
        out: &mut Outbox,
    ) {
        let (persistent, gone): (Vec<Entry>, Vec<Entry>) =
            expired.into_iter().partition(|e| e.msg.persistent);
        self.retire(dest, sub, &gone);
        self.dead_letter(dest, sub, persistent, "expired", out);
    }

    /// Moves entries to the dead-letter queue. A stored entry is retired
    /// here only once the DLQ's owner says its copy is durable
    /// ([`Reply::Retire`]); until then a crash keeps the original.
    fn dead_letter(
        &mut self,
        dest: &Destination,
        sub: Option<&StoredSub>,
        entries: Vec<Entry>,
        reason: &'static str,
        out: &mut Outbox,
    ) {
        let dlq = self.settings.dead_letter_queue.clone();
        for e in entries {
            if e.msg.destination == dlq {
                warn!(
                    shard = self.shard,
                    id = e.msg.id,
                    "message dropped from the dead-letter queue itself"
                );
                self.retire(dest, sub, std::slice::from_ref(&e));
                continue;
            }
            let m = &e.msg;
            let mut properties = m.properties.clone();
            properties.push((
                Bytes::from_static(b"original-destination"),
                Bytes::from(m.destination.to_string()),
            ));
            properties.push((
                Bytes::from_static(b"dlqDeliveryFailureCause"),
                Bytes::from_static(reason.as_bytes()),
            ));
            let footprint = Message::footprint(&properties, &m.body);
            // A new id: the copy is a message of its own in the store, and
            // the original (same id) may still be live until it is retired,
            // in this destination or, for a topic, in other subscriptions.
            let dead = Arc::new(Message {
                id: self.ids.next(),
                destination: dlq.clone(),
                properties,
                body: m.body.clone(),
                priority: m.priority,
                expires_ms: 0,
                persistent: m.persistent,
                timestamp_ms: m.timestamp_ms,
                charge: self.usage.charge(footprint),
            });
            debug!(shard = self.shard, destination = %m.destination, id = m.id, reason, "dead-lettered");
            let retire = e.stored.then(|| Retire {
                shard: self.shard,
                destination: dest.clone(),
                sub: sub.cloned(),
                id: m.id,
            });
            out.push((
                dlq.owner(self.settings.shards),
                ShardMsg::Op(Op::DeadLetter { msg: dead, retire }),
            ));
        }
    }

    /// Reads ahead are done: the destinations that waited for them page
    /// in and dispatch again.
    pub fn page_in_waiting(&mut self, out: &mut Outbox) {
        let Some(p) = self.pager.as_mut() else {
            return;
        };
        for dest in p.take_waiting() {
            self.dispatch_destination(&dest, out);
        }
    }

    /// Periodic sweep: expired messages leave queues even with no consumer.
    pub fn sweep_expired(&mut self, out: &mut Outbox) {
        let now = now_ms();
        let expired = self.take_from_every_queue(|q| q.take_expired(now));
        for (dest, sub, e) in expired {
            self.expire(&dest, sub.as_ref(), e, out);
        }
        self.sweep_expired_paged(now, out);
    }

    /// What `take` takes from each queue and subscription, with where it
    /// came from (those it took nothing from are left out).
    #[allow(clippy::type_complexity)]
    fn take_from_every_queue<T>(
        &mut self,
        mut take: impl FnMut(&mut MessageQueue) -> Vec<T>,
    ) -> Vec<(Destination, Option<StoredSub>, Vec<T>)> {
        let mut taken = Vec::new();
        for (name, q) in self.queues.iter_mut() {
            let e = take(q);
            if !e.is_empty() {
                taken.push((Destination::Queue(name.clone()), None, e));
            }
        }
        for (name, t) in self.topics.iter_mut() {
            for (id, s) in t.subs.iter_mut() {
                let e = take(&mut s.queue);
                if !e.is_empty() {
                    let durable = match id {
                        SubId::Durable(d) => Some(stored_sub(d)),
                        SubId::Plain(_) => None,
                    };
                    taken.push((Destination::Topic(name.clone()), durable, e));
                }
            }
        }
        taken
    }

    /// Paged messages that expired are read back (their bodies go to the
    /// dead-letter queue) and leave, with no consumer needed.
    fn sweep_expired_paged(&mut self, now: u64, out: &mut Outbox) {
        if self.pager.is_none() {
            return;
        }
        let expired = self.take_from_every_queue(|q| q.take_expired_paged(now));
        let Some(pager) = self.pager.as_mut() else {
            return;
        };
        let mut read = Vec::new();
        for (dest, sub, paged) in expired {
            let entries = read_back(pager, &dest, &paged);
            read.push((dest, sub, entries));
        }
        for (dest, sub, entries) in read {
            self.expire(&dest, sub.as_ref(), entries, out);
        }
    }

    /// Puts restored queues and durable subscriptions in place (see
    /// [`super::restore`]); returns how many messages came back.
    pub fn install(&mut self, mut restored: Restored) -> usize {
        let count = restored.message_count();
        self.audit.absorb(std::mem::take(&mut restored.audit));
        for (name, entries) in restored.queues {
            let q = self.queues.entry(name).or_default();
            for entry in entries {
                q.restore(entry);
            }
        }
        for (topic, sub, entries) in restored.subs {
            let selector = restored
                .selectors
                .get(&(topic.clone(), sub.clone()))
                .and_then(|text| match Selector::parse(text) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        // Kept by another version, or written into the
                        // database by hand: the subscription is worth
                        // more than its filter.
                        warn!(topic = %topic, client_id = %sub.client_id, name = %sub.name,
                            error = %e, "a durable subscription's stored selector does not parse; it receives every message");
                        None
                    }
                });
            let s = self.durable_sub(&topic, &sub);
            s.selector = selector;
            for entry in entries {
                s.queue.restore(entry);
            }
        }
        count
    }

    /// A durable subscription, made if new.
    fn durable_sub(&mut self, topic: &Arc<str>, sub: &StoredSub) -> &mut TopicSub {
        let t = self.topics.entry(topic.clone()).or_default();
        t.subs.entry(SubId::Durable(durable_name(sub))).or_default()
    }
}

/// Puts a new (or dead-lettered) entry in its queue, paging it out when
/// the queue's window is full (see [`super::paging`]): to its record in
/// the store if the store said where (`stored_at`), else to the spool.
/// `paged`: where this message went if another subscription already
/// paged it.
fn enqueue(
    pager: &mut Option<Pager>,
    q: &mut MessageQueue,
    entry: Entry,
    stored_at: Option<RecordAt>,
    paged: &mut Option<PageRef>,
) {
    if let Some(p) = pager.as_mut().filter(|_| entry.stored) {
        if q.should_page_out(entry.msg.priority, p.pressure(), MIN_WINDOW) {
            let at = match *paged {
                Some(r) => {
                    p.hold(r);
                    r
                }
                None => *paged.insert(p.page_out(&entry.msg, stored_at)),
            };
            q.enqueue_paged(PagedEntry {
                id: entry.msg.id,
                expires_ms: entry.msg.expires_ms,
                at,
                redeliveries: entry.redeliveries,
                priority: entry.msg.priority,
            });
            return;
        }
    }
    q.enqueue(entry);
}

/// Reads paged messages back as far as the consumers' free prefetch (plus
/// a look-ahead) asks, one batch per read.
fn page_in(pager: &mut Option<Pager>, q: &mut MessageQueue, dest: &Destination) -> bool {
    let Some(p) = pager.as_mut() else {
        return false;
    };
    let n = q
        .page_in_wanted(p.pressure(), MIN_WINDOW, LOOKAHEAD)
        .min(PAGE_IN_BATCH);
    if n == 0 {
        return false;
    }
    // The store reads this batch and what follows it ahead (what it has
    // read or is reading already is not asked for again)...
    p.read_ahead(q.next_paged());
    // ...and the batch goes up to the first message whose bytes are still
    // on their way: the shard does not wait for the disk; the store wakes
    // it when they are in (see `page_in_waiting`).
    let n = q.next_paged().take(n).take_while(|e| !p.reading(e)).count();
    if n == 0 {
        p.wait_for_read(dest);
        return false;
    }
    let batch = q.take_paged(n, PAGE_IN_BATCH_BYTES);
    let entries = read_back(p, dest, &batch);
    q.paged_in(entries);
    true
}

/// Reads paged entries back as queue entries. One that cannot be read is
/// left out of this run, not lost: the store still holds it (no ACK is
/// journaled) and the next start reads it from there; put back, it would
/// block its queue for good.
fn read_back(p: &mut Pager, dest: &Destination, paged: &[PagedEntry]) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(paged.len());
    for (e, m) in paged.iter().zip(p.page_in(dest, paged)) {
        match m {
            Ok(m) => entries.push(Entry {
                msg: Arc::new(m),
                redeliveries: e.redeliveries,
                stored: true,
            }),
            Err(err) => error!(destination = %dest, id = e.id, error = %err,
                "a paged message cannot be read back; it stays in the store and comes back at the next start"),
        }
    }
    entries
}

/// A dispatch pass that pages in ahead of it: read, then hand out, while
/// consumers still have credit for paged messages. Not a fixed number of
/// rounds: a consumer that acknowledges only every few hundred messages
/// sends nothing that would start another pass, and would wait for good
/// with credit left. Each round reads (up to the window's target) or hands
/// out (up to the consumers' credit), so the pass ends.
fn dispatch(
    pager: &mut Option<Pager>,
    q: &mut MessageQueue,
    dest: &Destination,
    now_ms: u64,
    d: &mut Dispatched,
) {
    loop {
        let read = page_in(pager, q, dest);
        let before = d.deliveries.len();
        q.dispatch(now_ms, d);
        // Done when a round neither read nor handed out anything. Handing
        // out may make a read wanted (the messages ahead of a paged
        // priority are gone), and a read may make a hand-out possible.
        if !read && d.deliveries.len() == before {
            return;
        }
    }
}

fn send_record<'a>(m: &'a Message, destination: &'a StoredDestination) -> RecordRef<'a> {
    RecordRef::Send {
        id: m.id,
        destination,
        priority: m.priority,
        expires_ms: m.expires_ms,
        timestamp_ms: m.timestamp_ms,
        properties: &m.properties,
        body: &m.body,
    }
}

/// The answers to the coordinators of parts applied, for a runtime without
/// durability to wait for (see server::shard for the one with).
fn tx_answers(applied: &[TxApplied], out: &mut Outbox) {
    for a in applied {
        if !a.alone {
            out.push((
                a.coordinator,
                ShardMsg::Reply(Reply::TxApplied { tx: a.tx }),
            ));
        }
        out.push((a.coordinator, ShardMsg::Reply(Reply::TxDone { tx: a.tx })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::producer_audit::ORIGIN_PROPERTY;
    use crate::broker::restore::Restorer;
    use crate::idmap::IdSet;
    use crate::store::memory::MemoryStore;
    use crate::store::Record;

    fn broker(usage: &Arc<MemoryUsage>) -> ShardBroker {
        ShardBroker::new(
            0,
            BrokerSettings {
                shards: 1,
                max_redeliveries: 6,
                dead_letter_queue: Destination::queue("DLQ"),
                temporary: Default::default(),
            },
            usage.clone(),
            Rc::new(RefCell::new(MemoryStore)),
            Rc::new(MessageIds::new(0, 0)),
            None,
        )
    }

    fn origin(seq: u64) -> Bytes {
        Bytes::from(format!("ID:client-1-2-3-1:1:1:{seq}"))
    }

    fn message(usage: &Arc<MemoryUsage>, id: u64, seq: u64) -> SharedMessage {
        message_to(usage, "q", id, seq)
    }

    fn message_to(usage: &Arc<MemoryUsage>, q: &str, id: u64, seq: u64) -> SharedMessage {
        Arc::new(Message {
            properties: vec![(Bytes::from_static(ORIGIN_PROPERTY.as_bytes()), origin(seq))],
            ..Message::for_tests(id, Destination::queue(q), usage)
        })
    }

    fn pending(b: &ShardBroker, q: &str) -> usize {
        b.queues.get(q).map_or(0, MessageQueue::pending)
    }

    #[test]
    fn a_resend_is_stored_once_but_a_dead_letter_copy_is_not_a_resend() {
        let usage = Arc::new(MemoryUsage::default());
        let mut b = broker(&usage);
        let mut out = Vec::new();
        b.apply(Op::Send(message(&usage, 1, 5)), &mut out);
        b.apply(Op::Send(message(&usage, 2, 5)), &mut out);
        b.apply(Op::Send(message(&usage, 3, 6)), &mut out);
        assert_eq!(pending(&b, "q"), 2);
        // The broker's copy for the dead-letter queue keeps the origin
        // (its JMSMessageID) and must land, though the DLQ is on this shard.
        b.apply(Op::Send(message_to(&usage, "DLQ", 4, 7)), &mut out);
        b.apply(
            Op::DeadLetter {
                msg: message_to(&usage, "DLQ", 5, 7),
                retire: None,
            },
            &mut out,
        );
        assert_eq!(pending(&b, "DLQ"), 2);
    }

    #[test]
    fn recovery_remembers_sends_that_were_acknowledged_but_not_prepared_ones() {
        let usage = Arc::new(MemoryUsage::default());
        let q = StoredDestination {
            topic: false,
            name: "q".into(),
        };
        let send = |id: u64, seq: u64| Record::Send {
            id,
            destination: q.clone(),
            priority: 4,
            expires_ms: 0,
            timestamp_ms: 0,
            properties: vec![(Bytes::from_static(ORIGIN_PROPERTY.as_bytes()), origin(seq))],
            body: Bytes::from_static(b"x"),
        };
        let mut r = Restorer::new(usage.clone(), None);
        r.feed(vec![
            send(1, 1),
            send(2, 2),
            Record::Ack {
                destination: q.clone(),
                sub: None,
                id: 2,
            },
            Record::TxSend {
                tx: 9,
                id: 3,
                destination: q.clone(),
                priority: 4,
                expires_ms: 0,
                timestamp_ms: 0,
                properties: vec![(Bytes::from_static(ORIGIN_PROPERTY.as_bytes()), origin(3))],
                body: Bytes::from_static(b"x"),
            },
        ]);
        let mut b = broker(&usage);
        b.install(r.finish(&IdSet::default(), &IdSet::default()).0);
        assert_eq!(pending(&b, "q"), 1, "message 1 is restored");
        let mut out = Vec::new();
        for (id, seq) in [(11, 1), (12, 2), (13, 3), (14, 4)] {
            b.apply(Op::Send(message(&usage, id, seq)), &mut out);
        }
        // 1 waits, 2 was acknowledged: both resends are dropped; 3 was
        // prepared in a transaction never decided (so never applied), 4 is new.
        assert_eq!(pending(&b, "q"), 3);
    }
}
