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
use super::queue::Entry;
use crate::idmap::{IdMap, IdSet};
use crate::store::record::detach;
use crate::store::{Record, StoredDestination, StoredSub};

type SubKey = (Arc<str>, StoredSub);

/// Restored state, ready to be put in place by the shard's broker.
#[derive(Debug, Default)]
pub struct Restored {
    /// Per queue, its messages in journal order.
    pub queues: Vec<(Arc<str>, Vec<Entry>)>,
    /// Durable subscriptions that exist at the end of the journal, in the
    /// order they were made, with their messages in journal order.
    pub subs: Vec<(Arc<str>, StoredSub, Vec<Entry>)>,
    /// The highest message id (counter part) any record named, live or
    /// not: new ids must start above it (see [`super::message_ids`]).
    pub max_id_counter: u64,
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
    queues: HashMap<Arc<str>, Vec<Entry>>,
    /// The queue the last SEND went to (journals come in long runs of one
    /// queue's records): its entries are kept here, out of the map.
    run: Option<(Arc<str>, Vec<Entry>)>,
    /// Durable subscriptions per topic as the journal goes: a topic
    /// message belongs to those that existed when it was sent.
    durables: HashMap<Arc<str>, Vec<StoredSub>>,
    /// Every durable subscription's messages so far; made by DurableAdd,
    /// dropped (with its messages) by DurableRemove.
    subs: Vec<(Arc<str>, StoredSub, Vec<Entry>)>,
    queue_acks: HashMap<Arc<str>, IdSet>,
    sub_acks: HashMap<SubKey, IdSet>,
    /// By id: most messages were never redelivered, and a miss costs one
    /// id hash instead of building a (destination, sub) key.
    counts: IdMap<Vec<(StoredDestination, Option<StoredSub>, u32)>>,
    max_id_counter: u64,
}

impl Restorer {
    pub fn new(usage: Arc<MemoryUsage>) -> Restorer {
        Restorer {
            usage,
            queues: HashMap::new(),
            run: None,
            durables: HashMap::new(),
            subs: Vec::new(),
            queue_acks: HashMap::new(),
            sub_acks: HashMap::new(),
            counts: IdMap::default(),
            max_id_counter: 0,
        }
    }

    /// Takes the next records of the journal, in journal order.
    pub fn feed(&mut self, records: Vec<Record>) {
        for r in records {
            if let Some(id) = r.message_id() {
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
                    let subs = match destination.topic {
                        true => self
                            .durables
                            .get(&destination.name)
                            .filter(|s| !s.is_empty())
                            .cloned(),
                        false => None,
                    };
                    if destination.topic && subs.is_none() {
                        continue;
                    }
                    let footprint = Message::footprint(&properties, &body);
                    let name = destination.name;
                    let msg = Arc::new(Message {
                        id,
                        destination: match destination.topic {
                            true => Destination::Topic(name.clone()),
                            false => Destination::Queue(name.clone()),
                        },
                        properties,
                        body,
                        priority,
                        expires_ms,
                        persistent: true,
                        timestamp_ms,
                        charge: self.usage.charge(footprint),
                    });
                    match subs {
                        None => self.queue_entries(name).push(entry(msg)),
                        Some(subs) => {
                            for sub in subs {
                                if let Some(staged) = self.sub_entries(&name, &sub) {
                                    staged.push(entry(msg.clone()));
                                }
                            }
                        }
                    }
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
                Record::DurableAdd { topic, sub } => {
                    let subs = self.durables.entry(topic.clone()).or_default();
                    if !subs.contains(&sub) {
                        subs.push(sub.clone());
                        self.subs.push((topic, sub, Vec::new()));
                    }
                }
                Record::DurableRemove { topic, sub } => {
                    if let Some(subs) = self.durables.get_mut(&topic) {
                        subs.retain(|s| *s != sub);
                    }
                    self.subs.retain(|(t, s, _)| !(*t == topic && *s == sub));
                }
            }
        }
    }

    /// The staged entries of queue `name`, making it the current run.
    fn queue_entries(&mut self, name: Arc<str>) -> &mut Vec<Entry> {
        let same = self
            .run
            .as_ref()
            .is_some_and(|(run, _)| Arc::ptr_eq(run, &name) || *run == name);
        if !same {
            if let Some((run, entries)) = self.run.take() {
                self.queues.insert(run, entries);
            }
        }
        let queues = &mut self.queues;
        &mut self
            .run
            .get_or_insert_with(|| {
                let entries = queues.remove(&name).unwrap_or_default();
                (name, entries)
            })
            .1
    }

    fn sub_entries(&mut self, topic: &Arc<str>, sub: &StoredSub) -> Option<&mut Vec<Entry>> {
        self.subs
            .iter_mut()
            .rev()
            .find(|(t, s, _)| t == topic && s == sub)
            .map(|(_, _, e)| e)
    }

    /// Drops the retired messages, sets redelivery counts, and copies out
    /// the messages whose ids are in `copy_out` (the store's choice: they
    /// would pin a mostly dead segment), once per message.
    pub fn finish(mut self, copy_out: &IdSet) -> Restored {
        if let Some((run, entries)) = self.run.take() {
            self.queues.insert(run, entries);
        }
        let mut copies: IdMap<SharedMessage> = IdMap::default();
        let mut out = Restored {
            max_id_counter: self.max_id_counter,
            ..Restored::default()
        };
        for (name, mut entries) in self.queues {
            let dest = StoredDestination {
                topic: false,
                name: name.clone(),
            };
            if let Some(acked) = self.queue_acks.get(&name) {
                entries.retain(|e| !acked.contains(&e.msg.id));
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
        for (topic, sub, mut entries) in self.subs {
            let dest = StoredDestination {
                topic: true,
                name: topic.clone(),
            };
            if let Some(acked) = self.sub_acks.get(&(topic.clone(), sub.clone())) {
                entries.retain(|e| !acked.contains(&e.msg.id));
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
        out
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
    e: &mut Entry,
    dest: &StoredDestination,
    sub: Option<&StoredSub>,
    counts: &IdMap<Vec<(StoredDestination, Option<StoredSub>, u32)>>,
    copy_out: &IdSet,
    copies: &mut IdMap<SharedMessage>,
    usage: &Arc<MemoryUsage>,
) {
    let id = e.msg.id;
    if let Some(seen) = counts.get(&id) {
        e.redeliveries = seen
            .iter()
            .find(|(d, s, _)| d == dest && s.as_ref() == sub)
            .map_or(0, |c| c.2);
    }
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

    fn ids(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.msg.id).collect()
    }

    #[test]
    fn queues_keep_journal_order_without_acknowledged_messages() {
        let (a, b) = (dest(false, "a"), dest(false, "b"));
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()));
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
        let out = r.finish(&IdSet::default());
        assert_eq!(out.message_count(), 2);
        assert_eq!(out.queues.len(), 1, "queue b has nothing left");
        let (name, entries) = &out.queues[0];
        assert_eq!(&**name, "a");
        assert_eq!(ids(entries), vec![3, 4]);
        assert_eq!(entries[0].redeliveries, 2);
        assert_eq!(entries[1].redeliveries, 0);
    }

    #[test]
    fn a_topic_message_belongs_to_the_subscriptions_of_its_time() {
        let t = dest(true, "t");
        let (s1, s2) = (sub("one"), sub("two"));
        let add = |s: &StoredSub| Record::DurableAdd {
            topic: "t".into(),
            sub: s.clone(),
        };
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()));
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
        let out = r.finish(&IdSet::default());
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

    #[test]
    fn copied_out_messages_no_longer_share_the_segment() {
        let t = dest(true, "t");
        let segment = Bytes::from(vec![7u8; 64]);
        let body = segment.slice(8..16);
        let mut r = Restorer::new(Arc::new(MemoryUsage::default()));
        r.feed(vec![
            Record::DurableAdd {
                topic: "t".into(),
                sub: sub("one"),
            },
            Record::DurableAdd {
                topic: "t".into(),
                sub: sub("two"),
            },
            send(9, &t, body),
        ]);
        let out = r.finish(&IdSet::from_iter([9]));
        let msgs: Vec<&SharedMessage> = out.subs.iter().map(|(_, _, e)| &e[0].msg).collect();
        assert_eq!(msgs.len(), 2);
        assert!(Arc::ptr_eq(msgs[0], msgs[1]), "one copy per message");
        assert_eq!(&msgs[0].body[..], &[7u8; 8]);
        let inside = segment.as_ptr_range();
        assert!(!inside.contains(&msgs[0].body.as_ptr()));
    }
}
