//! The destinations one shard owns, and what it does with operations on them.
//! Pure state machine: no I/O, no awaiting. Outputs are addressed messages
//! for the router to deliver (locally or to other shards) in batches.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, warn};

use super::destination::Destination;
use super::message::{now_ms, MemoryUsage, Message, SharedMessage};
use super::ops::{ConnRef, DurableName, Op, Reply, ShardMsg, SubscribeOp};
use super::queue::{ConsumerKey, Delivery, Dispatched, Entry, MessageQueue};

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub shards: usize,
    pub max_redeliveries: u32,
    pub dead_letter_queue: Destination,
}

/// A subscription to a topic: a queue of its own with at most one consumer.
#[derive(Debug, Default)]
struct TopicSub {
    queue: MessageQueue,
    consumer: Option<ConsumerKey>,
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
    fn sub_of(&mut self, key: ConsumerKey) -> Option<&mut TopicSub> {
        let id = self.by_consumer.get(&key)?;
        self.subs.get_mut(id)
    }
}

/// Per-destination figures for the status endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestinationStats {
    pub destination: String,
    pub pending: u64,
    pub consumers: u64,
    pub enqueued: u64,
    pub dequeued: u64,
}

pub type Outbox = Vec<(usize, ShardMsg)>;

pub struct ShardBroker {
    shard: usize,
    settings: BrokerSettings,
    queues: HashMap<Arc<str>, MessageQueue>,
    topics: HashMap<Arc<str>, Topic>,
    usage: Arc<MemoryUsage>,
}

impl ShardBroker {
    pub fn new(shard: usize, settings: BrokerSettings, usage: Arc<MemoryUsage>) -> ShardBroker {
        ShardBroker {
            shard,
            settings,
            queues: HashMap::new(),
            topics: HashMap::new(),
            usage,
        }
    }

    pub fn apply(&mut self, op: Op, out: &mut Outbox) {
        match op {
            Op::Send(msg) => self.send(msg, out),
            Op::Subscribe(s) => self.subscribe(s, out),
            Op::Unsubscribe {
                destination,
                consumer,
                destroy_durable,
            } => self.unsubscribe(&destination, consumer, destroy_durable, out),
            Op::Ack {
                destination,
                consumer,
                ids,
            } => {
                if let Some(q) = self.queue_of(&destination, consumer) {
                    q.ack(consumer, &ids);
                    self.dispatch_one(&destination, consumer, out);
                }
            }
            Op::Nack {
                destination,
                consumer,
                ids,
            } => {
                let max = self.settings.max_redeliveries;
                if let Some(q) = self.queue_of(&destination, consumer) {
                    let dead = q.requeue(consumer, &ids, max);
                    self.dead_letter(dead, "delivery failed", out);
                    self.dispatch_one(&destination, consumer, out);
                }
            }
            Op::Fence { conn, token } => out.push((
                conn.shard as usize,
                ShardMsg::Reply(Reply::Fenced { conn, token }),
            )),
        }
    }

    fn send(&mut self, msg: SharedMessage, out: &mut Outbox) {
        match &msg.destination {
            Destination::Queue(name) => {
                let q = self.queues.entry(name.clone()).or_default();
                q.enqueue(Entry {
                    msg: msg.clone(),
                    redeliveries: 0,
                });
            }
            Destination::Topic(name) => {
                let Some(t) = self.topics.get_mut(name) else {
                    // Nobody subscribed: a topic message without listeners is gone.
                    return;
                };
                t.enqueued += 1;
                for sub in t.subs.values_mut() {
                    sub.queue.enqueue(Entry {
                        msg: msg.clone(),
                        redeliveries: 0,
                    });
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
                    .add_consumer(key, s.prefetch);
            }
            Destination::Topic(name) => {
                let t = self.topics.entry(name.clone()).or_default();
                let id = match s.durable {
                    Some(d) => SubId::Durable(d),
                    None => SubId::Plain(key),
                };
                let sub = t.subs.entry(id.clone()).or_default();
                if let Some(active) = sub.consumer {
                    if active != key {
                        let conn = ConnRef {
                            shard: key.shard,
                            conn: key.conn,
                        };
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
        out: &mut Outbox,
    ) {
        let max = self.settings.max_redeliveries;
        let dead = match dest {
            Destination::Queue(name) => {
                let Some(q) = self.queues.get_mut(name) else {
                    return;
                };
                // The queue itself stays: it keeps its messages and statistics.
                q.remove_consumer(key, max)
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
                let dead = sub.queue.remove_consumer(key, max);
                sub.consumer = None;
                if destroy || matches!(id, SubId::Plain(_)) {
                    // A plain subscription's messages die with it.
                    t.subs.remove(&id);
                }
                if t.subs.is_empty() {
                    self.topics.remove(name);
                }
                dead
            }
        };
        self.dead_letter(dead, "delivery failed", out);
        self.dispatch_destination(dest, out);
    }

    fn queue_of(&mut self, dest: &Destination, key: ConsumerKey) -> Option<&mut MessageQueue> {
        match dest {
            Destination::Queue(name) => self.queues.get_mut(name),
            Destination::Topic(name) => {
                self.topics.get_mut(name)?.sub_of(key).map(|s| &mut s.queue)
            }
        }
    }

    /// After credit came back to one consumer: only its queue can move.
    fn dispatch_one(&mut self, dest: &Destination, key: ConsumerKey, out: &mut Outbox) {
        let now = now_ms();
        let mut d = Dispatched::default();
        if let Some(q) = self.queue_of(dest, key) {
            q.dispatch(now, &mut d);
        }
        self.emit(d, out);
    }

    fn dispatch_destination(&mut self, dest: &Destination, out: &mut Outbox) {
        let now = now_ms();
        let mut d = Dispatched::default();
        match dest {
            Destination::Queue(name) => {
                if let Some(q) = self.queues.get_mut(name) {
                    q.dispatch(now, &mut d);
                }
            }
            Destination::Topic(name) => {
                if let Some(t) = self.topics.get_mut(name) {
                    for sub in t.subs.values_mut() {
                        sub.queue.dispatch(now, &mut d);
                    }
                }
            }
        }
        self.emit(d, out);
    }

    /// Groups deliveries per consumer so each crosses to its shard as one batch.
    fn emit(&mut self, d: Dispatched, out: &mut Outbox) {
        self.expire(d.expired, out);
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
    fn expire(&mut self, expired: Vec<Entry>, out: &mut Outbox) {
        let persistent: Vec<Entry> = expired.into_iter().filter(|e| e.msg.persistent).collect();
        self.dead_letter(persistent, "expired", out);
    }

    fn dead_letter(&mut self, entries: Vec<Entry>, reason: &'static str, out: &mut Outbox) {
        let dlq = &self.settings.dead_letter_queue;
        for e in entries {
            if e.msg.destination == *dlq {
                warn!(
                    shard = self.shard,
                    id = e.msg.id,
                    "message dropped from the dead-letter queue itself"
                );
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
            let dead = Arc::new(Message {
                id: m.id,
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
            out.push((
                dlq.owner(self.settings.shards),
                ShardMsg::Op(Op::Send(dead)),
            ));
        }
    }

    /// Periodic sweep: expired messages leave queues even with no consumer.
    pub fn sweep_expired(&mut self, out: &mut Outbox) {
        let now = now_ms();
        let mut expired = Vec::new();
        for q in self.queues.values_mut() {
            expired.extend(q.take_expired(now));
        }
        for t in self.topics.values_mut() {
            for s in t.subs.values_mut() {
                expired.extend(s.queue.take_expired(now));
            }
        }
        self.expire(expired, out);
    }

    pub fn stats(&self) -> Vec<DestinationStats> {
        let mut v: Vec<DestinationStats> = self
            .queues
            .iter()
            .map(|(name, q)| DestinationStats {
                destination: Destination::Queue(name.clone()).to_string(),
                pending: q.pending() as u64,
                consumers: q.consumer_count() as u64,
                enqueued: q.enqueued,
                dequeued: q.dequeued,
            })
            .collect();
        v.extend(self.topics.iter().map(|(name, t)| DestinationStats {
            destination: Destination::Topic(name.clone()).to_string(),
            pending: t.subs.values().map(|s| s.queue.pending() as u64).sum(),
            consumers: t.subs.values().filter(|s| s.consumer.is_some()).count() as u64,
            enqueued: t.enqueued,
            dequeued: t.subs.values().map(|s| s.queue.dequeued).sum(),
        }));
        v
    }
}
