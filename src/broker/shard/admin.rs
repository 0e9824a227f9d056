//! What the console and the admin API ask of a shard's destinations:
//! figures, a look at waiting messages, purge and delete. Each answer is
//! built in one pass over the shard's own state, so the admin side gets a
//! batch per shard, never a call per destination or per message.

use serde::Serialize;

use super::{stored_sub, Outbox, ShardBroker, SubId};
use crate::broker::destination::Destination;
use crate::broker::message::Message;
use crate::broker::ops::DurableName;
use crate::broker::ops::{Reply, ShardMsg};
use crate::broker::paging::PagedEntry;
use crate::broker::queue::{ConsumerKey, Delivery, Waiting};
use crate::broker::selector::{admits, Candidate, Selector};

/// Most bytes of paged messages a queue browser's look reads back.
const BROWSE_READ_BYTES: usize = 16 * 1024 * 1024;
use crate::store::RecordRef;

/// Per-destination figures.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationStats {
    pub destination: String,
    /// `queue` or `topic`.
    pub kind: &'static str,
    pub name: String,
    /// Waiting plus delivered and not yet acknowledged (topics: summed over
    /// their subscriptions).
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Waiting messages whose bytes are paged out to the spool (the rest
    /// of `pending` is in memory).
    pub paged: u64,
    pub consumers: u64,
    pub enqueued: u64,
    pub dequeued: u64,
    /// Topics: durable subscriptions, online or not (queues: 0).
    pub durable_subscriptions: u64,
}

/// One durable topic subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStats {
    pub topic: String,
    pub client_id: String,
    pub name: String,
    pub online: bool,
    pub pending: u64,
    pub in_flight: u64,
    /// Waiting messages paged out to the spool.
    pub paged: u64,
    pub dequeued: u64,
}

/// A waiting message as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BrowsedMessage {
    /// The number in the STOMP `message-id` (which adds a prefix).
    pub id: u64,
    pub priority: u8,
    pub persistent: bool,
    pub timestamp_ms: u64,
    /// 0 = never.
    pub expires_ms: u64,
    /// Delivered before and given back this many times.
    pub redeliveries: u32,
    pub headers: Vec<(String, String)>,
    pub body_bytes: usize,
    /// The first bytes of the body, lossily decoded as UTF-8.
    pub body_preview: String,
}

/// Longest body preview in a browse answer.
pub const BODY_PREVIEW_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    #[error("no such destination: {0}")]
    NotFound(String),
    #[error("{0} has {1} consumer(s); close them before deleting it")]
    InUse(String, u64),
    #[error("{0}: only queues can be {1}")]
    NotAQueue(String, &'static str),
    #[error("{0} is not a topic")]
    NotATopic(String),
}

impl ShardBroker {
    pub fn stats(&self) -> Vec<DestinationStats> {
        let mut v: Vec<DestinationStats> = self
            .queues
            .iter()
            .map(|(name, q)| DestinationStats {
                destination: Destination::Queue(name.clone()).to_string(),
                kind: "queue",
                name: name.to_string(),
                pending: q.pending() as u64,
                in_flight: q.in_flight() as u64,
                paged: q.paged() as u64,
                consumers: q.consumer_count() as u64,
                enqueued: q.enqueued,
                dequeued: q.dequeued,
                durable_subscriptions: 0,
            })
            .collect();
        v.extend(self.topics.iter().map(|(name, t)| DestinationStats {
            destination: Destination::Topic(name.clone()).to_string(),
            kind: "topic",
            name: name.to_string(),
            pending: t.subs.values().map(|s| s.queue.pending() as u64).sum(),
            in_flight: t.subs.values().map(|s| s.queue.in_flight() as u64).sum(),
            paged: t.subs.values().map(|s| s.queue.paged() as u64).sum(),
            consumers: t.subs.values().filter(|s| s.consumer.is_some()).count() as u64,
            enqueued: t.enqueued,
            dequeued: t.subs.values().map(|s| s.queue.dequeued).sum(),
            durable_subscriptions: t.durable_count() as u64,
        }));
        v
    }

    /// Every durable subscription this shard's topics hold.
    pub fn subscribers(&self) -> Vec<SubscriberStats> {
        let mut v = Vec::new();
        for (topic, t) in &self.topics {
            for (id, sub) in &t.subs {
                let SubId::Durable(d) = id else { continue };
                v.push(SubscriberStats {
                    topic: Destination::Topic(topic.clone()).to_string(),
                    client_id: d.client_id.clone(),
                    name: d.name.clone(),
                    online: sub.consumer.is_some(),
                    pending: sub.queue.pending() as u64,
                    in_flight: sub.queue.in_flight() as u64,
                    paged: sub.queue.paged() as u64,
                    dequeued: sub.queue.dequeued,
                });
            }
        }
        v
    }

    /// The first `max` waiting messages of a queue, in dispatch order.
    pub fn browse(
        &self,
        dest: &Destination,
        max: usize,
    ) -> Result<Vec<BrowsedMessage>, AdminRefusal> {
        Ok(self
            .waiting_messages(dest, max, usize::MAX, None)?
            .iter()
            .map(|(m, redeliveries)| browsed(m, *redeliveries))
            .collect())
    }

    /// The first `max` waiting messages of a queue that `selector` admits
    /// (and up to about `max_bytes` of bodies read back from the store),
    /// in the order they would be delivered, with their redelivery counts,
    /// without taking them: paged ones read back (one that cannot be is
    /// left out).
    pub fn waiting_messages(
        &self,
        dest: &Destination,
        max: usize,
        max_bytes: usize,
        selector: Option<&Selector>,
    ) -> Result<Vec<(crate::broker::message::SharedMessage, u32)>, AdminRefusal> {
        let q = self.queue_named(dest, "browsed")?;
        let mut out = Vec::with_capacity(max.min(q.pending()));
        let mut paged: Vec<(usize, PagedEntry)> = Vec::new();
        let mut paged_bytes = 0usize;
        for w in q.waiting() {
            // Paged ones are counted now and checked once read back.
            if out.len() >= max {
                break;
            }
            match w {
                Waiting::Memory(e) => {
                    let subject = Candidate {
                        msg: &e.msg,
                        redeliveries: e.redeliveries,
                    };
                    if admits(selector, &subject) {
                        out.push(Some((e.msg.clone(), e.redeliveries)));
                    }
                }
                Waiting::Paged(e) => {
                    paged_bytes += e.at.bytes() as usize;
                    // At least one, however large.
                    if paged_bytes > max_bytes && !paged.is_empty() {
                        break;
                    }
                    paged.push((out.len(), e.clone()));
                    out.push(None);
                }
            }
        }
        if let (Some(p), false) = (&self.pager, paged.is_empty()) {
            let entries: Vec<PagedEntry> = paged.iter().map(|(_, e)| e.clone()).collect();
            for ((i, e), m) in paged.iter().zip(p.read(dest, &entries)) {
                if let Ok(m) = m {
                    let subject = Candidate {
                        msg: &m,
                        redeliveries: e.redeliveries,
                    };
                    if admits(selector, &subject) {
                        out[*i] = Some((std::sync::Arc::new(m), e.redeliveries));
                    }
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// A queue browser's look (JMS `QueueBrowser`): the first `max` waiting
    /// messages delivered to `consumer` without being taken. Nothing for a
    /// queue that does not exist (yet) or a topic.
    pub fn browse_for(
        &self,
        dest: &Destination,
        consumer: ConsumerKey,
        max: usize,
        selector: Option<&Selector>,
        out: &mut Outbox,
    ) {
        // Reading paged bodies back is synchronous: bounded by bytes too.
        let Ok(found) = self.waiting_messages(dest, max, BROWSE_READ_BYTES, selector) else {
            return;
        };
        if found.is_empty() {
            return;
        }
        let deliveries = found
            .into_iter()
            .map(|(msg, redeliveries)| Delivery {
                msg,
                redelivered: redeliveries > 0,
                redeliveries,
            })
            .collect();
        out.push((
            consumer.shard as usize,
            ShardMsg::Reply(Reply::Deliver {
                consumer,
                deliveries,
            }),
        ));
    }

    /// Removes every waiting message of a queue (those delivered and not
    /// yet acknowledged stay with their consumers) and journals that they
    /// left. Returns how many went.
    pub fn purge(&mut self, dest: &Destination) -> Result<u64, AdminRefusal> {
        let q = self.queue_named_mut(dest, "purged")?;
        let gone = q.take_waiting();
        let paged = q.take_paged_all();
        let n = (gone.len() + paged.len()) as u64;
        self.retire(dest, None, &gone);
        self.retire_paged(dest, None, paged);
        Ok(n)
    }

    /// Purges a queue and removes it. Refused while it has consumers or
    /// deliveries out (they would hold messages of a queue that is gone).
    pub fn delete(&mut self, dest: &Destination) -> Result<u64, AdminRefusal> {
        let q = self.queue_named_mut(dest, "deleted")?;
        let busy = q.consumer_count() as u64;
        if busy > 0 || q.in_flight() > 0 {
            return Err(AdminRefusal::InUse(dest.to_string(), busy));
        }
        let gone = q.drain_all();
        let paged = q.take_paged_all();
        let n = (gone.len() + paged.len()) as u64;
        self.retire(dest, None, &gone);
        self.retire_paged(dest, None, paged);
        if let Destination::Queue(name) = dest {
            self.queues.remove(name);
        }
        Ok(n)
    }

    /// A temporary destination is gone (see `broker::temporary`). Its
    /// connection closed its consumers first (their Unsubscribe came ahead
    /// of this, in order), so a queue is deleted with what waits in it;
    /// one still consumed (it cannot be by another connection) keeps its
    /// consumers and loses its waiting messages. A topic holds nothing.
    pub fn remove_temporary(&mut self, dest: &Destination) {
        let result = match self.delete(dest) {
            Err(AdminRefusal::InUse(..)) => self.purge(dest),
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(destination = %dest, error = %e, "removing a temporary destination");
        }
    }

    /// Deletes an offline durable subscription and its messages, as an
    /// UNSUBSCRIBE that names it would (the same records, in the same
    /// order). Refused while a consumer holds it.
    pub fn delete_subscription(
        &mut self,
        topic: &Destination,
        d: &DurableName,
    ) -> Result<u64, AdminRefusal> {
        let missing = || AdminRefusal::NotFound(format!("{topic} {}:{}", d.client_id, d.name));
        let Destination::Topic(name) = topic else {
            return Err(AdminRefusal::NotATopic(topic.to_string()));
        };
        let t = self.topics.get_mut(name).ok_or_else(missing)?;
        let id = SubId::Durable(d.clone());
        match t.subs.get(&id) {
            None => return Err(missing()),
            Some(s) if s.consumer.is_some() => {
                return Err(AdminRefusal::InUse(
                    format!("durable subscription {}:{} on {topic}", d.client_id, d.name),
                    1,
                ))
            }
            Some(_) => {}
        }
        let (dropped, paged) = t
            .subs
            .remove(&id)
            .map(|mut s| (s.queue.drain_all(), s.queue.take_paged_all()))
            .unwrap_or_default();
        let n = (dropped.len() + paged.len()) as u64;
        if t.subs.is_empty() {
            self.topics.remove(name);
        }
        let sub = stored_sub(d);
        self.retire(topic, Some(&sub), &dropped);
        self.retire_paged(topic, Some(&sub), paged);
        let name = name.clone();
        self.release_prepared_holds(&name, d);
        self.store.borrow_mut().append(
            &RecordRef::DurableRemove {
                topic: &name,
                sub: &sub,
            },
            0,
        );
        Ok(n)
    }

    fn queue_named(
        &self,
        dest: &Destination,
        what: &'static str,
    ) -> Result<&crate::broker::queue::MessageQueue, AdminRefusal> {
        match dest {
            Destination::Queue(name) => self
                .queues
                .get(name)
                .ok_or_else(|| AdminRefusal::NotFound(dest.to_string())),
            Destination::Topic(_) => Err(AdminRefusal::NotAQueue(dest.to_string(), what)),
        }
    }

    fn queue_named_mut(
        &mut self,
        dest: &Destination,
        what: &'static str,
    ) -> Result<&mut crate::broker::queue::MessageQueue, AdminRefusal> {
        match dest {
            Destination::Queue(name) => self
                .queues
                .get_mut(name)
                .ok_or_else(|| AdminRefusal::NotFound(dest.to_string())),
            Destination::Topic(_) => Err(AdminRefusal::NotAQueue(dest.to_string(), what)),
        }
    }
}

fn browsed(m: &Message, redeliveries: u32) -> BrowsedMessage {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let preview = &m.body[..m.body.len().min(BODY_PREVIEW_BYTES)];
    BrowsedMessage {
        id: m.id,
        priority: m.priority,
        persistent: m.persistent,
        timestamp_ms: m.timestamp_ms,
        expires_ms: m.expires_ms,
        redeliveries,
        headers: m
            .properties
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect(),
        body_bytes: m.body.len(),
        body_preview: text(preview),
    }
}
