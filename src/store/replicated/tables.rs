//! What the database tables would hold, kept in memory: every node of the
//! `zk` mode applies each committed [`Batch`] here, exactly as
//! `store::sql::write` applies it to the tables, so that a standby taking
//! over has [`Tables::to_loaded`] at once instead of reading a database.
//!
//! Mirrors `write.rs` statement by statement, with its quirks:
//! - inserts and acknowledgements keep the row already there (`ON CONFLICT
//!   DO NOTHING`), so a batch applied twice (a COMMIT whose answer was
//!   lost is repeated) changes nothing the second time;
//! - redelivery counts and subscriptions are upserts, the last row wins;
//! - producer rows pruned (`producer_seqs_gone`) go *before* the batch's
//!   upserts, which keep the greatest sequence (`GREATEST`);
//! - removing a subscription also removes its topic acks, but only those
//!   naming a message still in `ACTIVEMQ_MSGS` on the subscription's topic
//!   (the SQL joins the messages: the same client id and name may
//!   subscribe another topic);
//! - except that `msg_deletes` delete a message's side rows too, as
//!   `deletes` do (the shard sends there only messages no side row names;
//!   here that costs nothing, and the log carries one list of both).
//!
//! Strings compare byte for byte (PostgreSQL's behaviour; MySQL's
//! `utf8mb4_bin` also ignores trailing spaces, which Brokk's names do not
//! rely on). Nothing here checks foreign keys: the tables have none.
//!
//! Every operation costs O(rows it names) (hash lookups), never a scan of
//! a table; removing a subscription costs the acks of its client id and
//! name (the SQL uses the same index, `BROKK_TOPIC_ACKS_SIDX`).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::idmap::IdHasher;

/// Keyed by message id: the broker's id hasher, not SipHash (every message
/// passes through these maps on every broker).
type ById<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;
use std::sync::Arc;

use crate::store::sql::{
    Batch, Loaded, MsgRow, ProducerSeq, Redelivery, SubRow, TopicAck, TxAckRow,
};

/// `(client_id, sub_name)` of a topic ack, shared between the two indexes
/// of `BROKK_TOPIC_ACKS` (one copy of the strings per subscription).
type AckSub = Arc<(String, String)>;

/// The tables' rows. See the module documentation.
#[derive(Clone, Default)]
pub struct Tables {
    /// `ACTIVEMQ_MSGS` by ID.
    messages: ById<MsgRow>,
    /// Sum of `MSG` lengths in `messages`.
    message_bytes: u64,
    /// `ACTIVEMQ_ACKS`: (container, client_id, sub_name) -> selector.
    subs: HashMap<(String, String, String), Option<String>>,
    /// `BROKK_TOPIC_ACKS` by subscription: the IDs it acknowledged.
    topic_acks: HashMap<AckSub, HashSet<i64>>,
    /// The same rows by ID (deleting a message deletes its acks). An
    /// index: its order depends on history, so equality ignores it.
    topic_acks_by_id: ById<Vec<AckSub>>,
    /// `BROKK_REDELIVERIES`: ID -> sub_key -> count.
    redeliveries: ById<HashMap<String, i64>>,
    /// `BROKK_TX_ACKS` by ID: (tx, sub_key).
    tx_acks: ById<HashSet<(i64, String)>>,
    /// `BROKK_TX`.
    tx_decided: HashSet<i64>,
    /// `BROKK_PRODUCER_SEQ`: (container, producer) -> seq.
    producer_seqs: HashMap<(String, String), i64>,
}

impl Tables {
    pub fn new() -> Tables {
        Tables::default()
    }

    /// Rows in `ACTIVEMQ_MSGS`.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Bytes of `MSG` in `ACTIVEMQ_MSGS`.
    pub fn message_bytes(&self) -> u64 {
        self.message_bytes
    }

    /// Applies `batch` as `store::sql::write` does in one transaction.
    /// [`Tables::apply`] taking the batch: its messages move into the
    /// table instead of being cloned (the replication path, where every
    /// message passes once on every broker).
    pub fn apply_owned(&mut self, mut b: Batch) {
        // Inserts come first in `apply` too.
        for m in std::mem::take(&mut b.inserts) {
            // A negative id is a shard's tombstone (a row retired before
            // its batch left, see `shard_store::compact`), never a message.
            if m.id >= 0 && !self.messages.contains_key(&m.id) {
                self.insert_message(m);
            }
        }
        self.apply(&b);
    }

    pub fn apply(&mut self, b: &Batch) {
        for m in &b.inserts {
            // Checked first so that a repeated insert clones nothing. A
            // negative id is a tombstone (see `apply_owned`).
            if m.id >= 0 && !self.messages.contains_key(&m.id) {
                self.insert_message(m.clone());
            }
        }
        for a in &b.topic_acks {
            self.insert_topic_ack(a.clone());
        }
        for r in &b.redeliveries {
            self.upsert_redelivery(r.clone());
        }
        // Pruned rows first (as write.rs): a later batch merged into this
        // one may have sent to the producer again.
        for (container, producer) in &b.producer_seqs_gone {
            self.producer_seqs
                .remove(&(container.clone(), producer.clone()));
        }
        for p in &b.producer_seqs {
            self.upsert_producer_seq(p.clone());
        }
        for s in &b.subs_added {
            self.upsert_sub(s.clone());
        }
        for a in &b.tx_acks {
            self.insert_tx_ack(a.clone());
        }
        for &tx in &b.tx_decided {
            self.insert_decided(tx);
        }
        for &id in b.deletes.iter().chain(&b.msg_deletes) {
            self.delete_message(id);
        }
        for id in &b.xid_cleared {
            if let Some(m) = self.messages.get_mut(id) {
                m.xid = None;
            }
        }
        for a in &b.tx_acks_done {
            if let Some(rows) = self.tx_acks.get_mut(&a.id) {
                rows.remove(&(a.tx, a.sub_key.clone()));
                if rows.is_empty() {
                    self.tx_acks.remove(&a.id);
                }
            }
        }
        for tx in &b.tx_forgotten {
            self.tx_decided.remove(tx);
        }
        for s in &b.subs_removed {
            self.remove_sub(s);
        }
    }

    /// What `store::sql::load::load` would return (without a spill): the
    /// messages by ID, the other rows in the order of load.rs's `ORDER BY`
    /// (producer rows, which it reads unordered, by key). Bodies are
    /// shared, not copied.
    pub fn to_loaded(&self) -> Loaded {
        let mut subs: Vec<SubRow> = self
            .subs
            .iter()
            .map(|((container, client_id, sub_name), selector)| SubRow {
                container: container.clone(),
                client_id: client_id.clone(),
                sub_name: sub_name.clone(),
                selector: selector.clone(),
            })
            .collect();
        subs.sort_by(|a, b| {
            (&a.container, &a.client_id, &a.sub_name).cmp(&(
                &b.container,
                &b.client_id,
                &b.sub_name,
            ))
        });
        let mut topic_acks: Vec<TopicAck> = self
            .topic_acks()
            .map(|(id, client_id, sub_name)| TopicAck {
                id,
                client_id: client_id.to_string(),
                sub_name: sub_name.to_string(),
            })
            .collect();
        topic_acks.sort_by(|a, b| {
            (a.id, &a.client_id, &a.sub_name).cmp(&(b.id, &b.client_id, &b.sub_name))
        });
        let mut redeliveries: Vec<Redelivery> = self
            .redeliveries()
            .map(|(id, sub_key, count)| Redelivery {
                id,
                sub_key: sub_key.to_string(),
                count,
            })
            .collect();
        redeliveries.sort_by(|a, b| (a.id, &a.sub_key).cmp(&(b.id, &b.sub_key)));
        let mut tx_acks: Vec<TxAckRow> = self
            .tx_acks()
            .map(|(tx, id, sub_key)| TxAckRow {
                tx,
                id,
                sub_key: sub_key.to_string(),
            })
            .collect();
        tx_acks.sort_by(|a, b| (a.tx, a.id, &a.sub_key).cmp(&(b.tx, b.id, &b.sub_key)));
        let mut tx_decided: Vec<i64> = self.tx_decided.iter().copied().collect();
        tx_decided.sort_unstable();
        let mut producer_seqs: Vec<ProducerSeq> = self
            .producer_seqs()
            .map(|(container, producer, seq)| ProducerSeq {
                container: container.to_string(),
                producer: producer.to_string(),
                seq,
            })
            .collect();
        producer_seqs.sort_by(|a, b| (&a.container, &a.producer).cmp(&(&b.container, &b.producer)));
        Loaded {
            messages: {
                // By ID, as load.rs reads them (once, at takeover).
                let mut m: Vec<MsgRow> = self.messages.values().cloned().collect();
                m.sort_unstable_by_key(|r| r.id);
                m
            },
            spill: None,
            subs,
            topic_acks,
            redeliveries,
            tx_acks,
            tx_decided,
            producer_seqs,
        }
    }

    // ------------------------------------------------------------------
    // Rows one at a time, for `apply` and the snapshot codec. The
    // inserting ones say whether the row is new (a snapshot never repeats
    // a key).

    /// `ACTIVEMQ_MSGS` insert; an existing row with the ID stays.
    pub(super) fn insert_message(&mut self, m: MsgRow) -> bool {
        match self.messages.entry(m.id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                self.message_bytes += m.msg.len() as u64;
                v.insert(m);
                true
            }
        }
    }

    /// `ACTIVEMQ_ACKS` upsert: the selector is replaced.
    pub(super) fn upsert_sub(&mut self, s: SubRow) -> bool {
        self.subs
            .insert((s.container, s.client_id, s.sub_name), s.selector)
            .is_none()
    }

    /// `BROKK_TOPIC_ACKS` insert, ignoring a duplicate.
    pub(super) fn insert_topic_ack(&mut self, a: TopicAck) -> bool {
        let key = (a.client_id, a.sub_name);
        // Reuse the subscription's shared key if it has acks already.
        let sub = match self.topic_acks.get_key_value(&key) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::new(key),
        };
        if !self
            .topic_acks
            .entry(Arc::clone(&sub))
            .or_default()
            .insert(a.id)
        {
            return false;
        }
        self.topic_acks_by_id.entry(a.id).or_default().push(sub);
        true
    }

    /// `BROKK_REDELIVERIES` upsert: the count is replaced.
    pub(super) fn upsert_redelivery(&mut self, r: Redelivery) -> bool {
        self.redeliveries
            .entry(r.id)
            .or_default()
            .insert(r.sub_key, r.count)
            .is_none()
    }

    /// `BROKK_TX_ACKS` insert, ignoring a duplicate.
    pub(super) fn insert_tx_ack(&mut self, a: TxAckRow) -> bool {
        self.tx_acks
            .entry(a.id)
            .or_default()
            .insert((a.tx, a.sub_key))
    }

    /// `BROKK_TX` insert, ignoring a duplicate.
    pub(super) fn insert_decided(&mut self, tx: i64) -> bool {
        self.tx_decided.insert(tx)
    }

    /// `BROKK_PRODUCER_SEQ` upsert keeping the greatest sequence.
    pub(super) fn upsert_producer_seq(&mut self, p: ProducerSeq) -> bool {
        match self.producer_seqs.entry((p.container, p.producer)) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let seq = o.get_mut();
                *seq = (*seq).max(p.seq);
                false
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(p.seq);
                true
            }
        }
    }

    /// The message and every side row naming its ID (the four DELETEs of
    /// write.rs).
    fn delete_message(&mut self, id: i64) {
        if let Some(m) = self.messages.remove(&id) {
            self.message_bytes -= m.msg.len() as u64;
        }
        for sub in self.topic_acks_by_id.remove(&id).unwrap_or_default() {
            if let Some(ids) = self.topic_acks.get_mut(&sub) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.topic_acks.remove(&sub);
                }
            }
        }
        self.redeliveries.remove(&id);
        self.tx_acks.remove(&id);
    }

    /// The subscription's row, and its acks of messages on its topic.
    fn remove_sub(&mut self, s: &SubRow) {
        self.subs
            .remove(&(s.container.clone(), s.client_id.clone(), s.sub_name.clone()));
        let key = (s.client_id.clone(), s.sub_name.clone());
        let Some(ids) = self.topic_acks.get_mut(&key) else {
            return;
        };
        let messages = &self.messages;
        let gone: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| messages.get(id).is_some_and(|m| m.container == s.container))
            .collect();
        for id in gone {
            ids.remove(&id);
            if let Some(subs) = self.topic_acks_by_id.get_mut(&id) {
                subs.retain(|k| **k != key);
                if subs.is_empty() {
                    self.topic_acks_by_id.remove(&id);
                }
            }
        }
        if ids.is_empty() {
            self.topic_acks.remove(&key);
        }
    }

    // ------------------------------------------------------------------
    // Borrowed rows, in no particular order (for the snapshot codec).

    pub(super) fn message_rows(&self) -> impl Iterator<Item = &MsgRow> {
        self.messages.values()
    }

    /// (container, client_id, sub_name, selector).
    pub(super) fn sub_rows(&self) -> impl Iterator<Item = (&str, &str, &str, Option<&str>)> {
        self.subs
            .iter()
            .map(|((c, ci, sn), sel)| (c.as_str(), ci.as_str(), sn.as_str(), sel.as_deref()))
    }

    /// (id, client_id, sub_name).
    pub(super) fn topic_acks(&self) -> impl Iterator<Item = (i64, &str, &str)> {
        self.topic_acks.iter().flat_map(|(sub, ids)| {
            ids.iter()
                .map(move |&id| (id, sub.0.as_str(), sub.1.as_str()))
        })
    }

    /// (id, sub_key, count).
    pub(super) fn redeliveries(&self) -> impl Iterator<Item = (i64, &str, i64)> {
        self.redeliveries
            .iter()
            .flat_map(|(&id, counts)| counts.iter().map(move |(k, &n)| (id, k.as_str(), n)))
    }

    /// (tx, id, sub_key).
    pub(super) fn tx_acks(&self) -> impl Iterator<Item = (i64, i64, &str)> {
        self.tx_acks
            .iter()
            .flat_map(|(&id, rows)| rows.iter().map(move |(tx, k)| (*tx, id, k.as_str())))
    }

    pub(super) fn decided(&self) -> impl Iterator<Item = i64> + '_ {
        self.tx_decided.iter().copied()
    }

    /// (container, producer, seq).
    pub(super) fn producer_seqs(&self) -> impl Iterator<Item = (&str, &str, i64)> {
        self.producer_seqs
            .iter()
            .map(|((c, p), &n)| (c.as_str(), p.as_str(), n))
    }
}

impl PartialEq for Tables {
    /// The same rows (the by-ID ack index is derived from them).
    fn eq(&self, o: &Tables) -> bool {
        self.messages == o.messages
            && self.message_bytes == o.message_bytes
            && self.subs == o.subs
            && self.topic_acks == o.topic_acks
            && self.redeliveries == o.redeliveries
            && self.tx_acks == o.tx_acks
            && self.tx_decided == o.tx_decided
            && self.producer_seqs == o.producer_seqs
    }
}

impl Eq for Tables {}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("messages", &self.messages)
            .field("message_bytes", &self.message_bytes)
            .field("subs", &self.subs)
            .field("topic_acks", &self.topic_acks)
            .field("redeliveries", &self.redeliveries)
            .field("tx_acks", &self.tx_acks)
            .field("tx_decided", &self.tx_decided)
            .field("producer_seqs", &self.producer_seqs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(id: i64, container: &str, body: &str) -> MsgRow {
        MsgRow {
            id,
            container: container.into(),
            expiration: 0,
            priority: 4,
            xid: None,
            msg: Bytes::from(body.to_string()),
        }
    }

    fn sub(container: &str, client_id: &str, sub_name: &str) -> SubRow {
        SubRow {
            container: container.into(),
            client_id: client_id.into(),
            sub_name: sub_name.into(),
            selector: None,
        }
    }

    fn ack(id: i64, client_id: &str, sub_name: &str) -> TopicAck {
        TopicAck {
            id,
            client_id: client_id.into(),
            sub_name: sub_name.into(),
        }
    }

    fn redelivery(id: i64, sub_key: &str, count: i64) -> Redelivery {
        Redelivery {
            id,
            sub_key: sub_key.into(),
            count,
        }
    }

    fn tx_ack(tx: i64, id: i64, sub_key: &str) -> TxAckRow {
        TxAckRow {
            tx,
            id,
            sub_key: sub_key.into(),
        }
    }

    fn seq(container: &str, producer: &str, seq: i64) -> ProducerSeq {
        ProducerSeq {
            container: container.into(),
            producer: producer.into(),
            seq,
        }
    }

    /// A message 1 with a row in every side table naming it, and a message
    /// 2 with its own.
    fn populated() -> Batch {
        Batch {
            inserts: vec![msg(1, "topic://t", "one"), msg(2, "topic://t", "two")],
            topic_acks: vec![ack(1, "c", "s"), ack(1, "d", "s"), ack(2, "c", "s")],
            redeliveries: vec![redelivery(1, "", 1), redelivery(2, "", 1)],
            tx_acks: vec![tx_ack(7, 1, ""), tx_ack(7, 2, "")],
            ..Batch::default()
        }
    }

    #[test]
    fn a_delete_takes_the_message_and_every_side_row_naming_it() {
        let mut t = Tables::new();
        t.apply(&populated());
        assert_eq!((t.messages(), t.message_bytes()), (2, 6));
        t.apply(&Batch {
            deletes: vec![1, 2],
            ..Batch::default()
        });
        assert_eq!(t, Tables::new());
        assert!(t.topic_acks_by_id.is_empty());

        // Inserted and deleted in one batch: never visible.
        let mut b = populated();
        b.deletes = vec![1, 2];
        let mut t = Tables::new();
        t.apply(&b);
        assert_eq!(t, Tables::new());
        assert_eq!(t.message_bytes(), 0);
    }

    #[test]
    fn a_delete_of_a_message_alone_takes_it_and_any_side_row() {
        let mut t = Tables::new();
        t.apply(&populated());
        t.apply(&Batch {
            deletes: vec![1],
            msg_deletes: vec![2],
            ..Batch::default()
        });
        assert_eq!(t, Tables::new());
        assert!(t.topic_acks_by_id.is_empty());
    }

    #[test]
    fn a_delete_leaves_other_ids_rows() {
        let mut t = Tables::new();
        t.apply(&populated());
        t.apply(&Batch {
            deletes: vec![1],
            ..Batch::default()
        });
        let l = t.to_loaded();
        assert_eq!(l.messages, vec![msg(2, "topic://t", "two")]);
        assert_eq!(l.topic_acks, vec![ack(2, "c", "s")]);
        assert_eq!(l.redeliveries, vec![redelivery(2, "", 1)]);
        assert_eq!(l.tx_acks, vec![tx_ack(7, 2, "")]);
        assert_eq!(t.message_bytes(), 3);
    }

    #[test]
    fn applying_a_batch_twice_changes_nothing_more() {
        let mut b = populated();
        b.inserts.push(MsgRow {
            xid: Some("tx:7".into()),
            ..msg(3, "queue://q", "three")
        });
        b.subs_added = vec![sub("topic://t", "c", "s")];
        b.tx_decided = vec![7, 8];
        b.deletes = vec![2];
        b.xid_cleared = vec![3];
        b.tx_acks_done = vec![tx_ack(7, 1, "")];
        b.tx_forgotten = vec![8];
        b.subs_removed = vec![sub("topic://t", "d", "s")];
        b.producer_seqs = vec![seq("queue://q", "p", 5)];
        b.producer_seqs_gone = vec![("queue://q".into(), "old".into())];
        let mut once = Tables::new();
        once.apply(&b);
        let mut twice = once.clone();
        twice.apply(&b);
        assert_eq!(once, twice);
        assert_eq!(once.to_loaded().messages[1].xid, None);
    }

    #[test]
    fn a_repeated_insert_keeps_the_first_row() {
        let mut t = Tables::new();
        t.apply(&Batch {
            inserts: vec![msg(1, "queue://q", "first"), msg(1, "queue://q", "x")],
            ..Batch::default()
        });
        t.apply(&Batch {
            inserts: vec![msg(1, "queue://r", "second")],
            ..Batch::default()
        });
        assert_eq!(t.to_loaded().messages, vec![msg(1, "queue://q", "first")]);
        assert_eq!(t.message_bytes(), 5);
    }

    #[test]
    fn subscriptions_are_upserted_and_removal_takes_only_acks_on_their_topic() {
        let mut t = Tables::new();
        t.apply(&Batch {
            inserts: vec![msg(1, "topic://a", "x"), msg(2, "topic://b", "y")],
            // Message 9 is not in the table: its ack is joined to nothing.
            topic_acks: vec![ack(1, "c", "s"), ack(2, "c", "s"), ack(9, "c", "s")],
            subs_added: vec![sub("topic://a", "c", "s"), sub("topic://b", "c", "s")],
            ..Batch::default()
        });
        let selected = SubRow {
            selector: Some("x > 1".into()),
            ..sub("topic://a", "c", "s")
        };
        t.apply(&Batch {
            subs_added: vec![selected.clone()],
            ..Batch::default()
        });
        assert_eq!(
            t.to_loaded().subs,
            vec![selected.clone(), sub("topic://b", "c", "s")]
        );
        t.apply(&Batch {
            subs_removed: vec![selected],
            ..Batch::default()
        });
        let l = t.to_loaded();
        assert_eq!(l.subs, vec![sub("topic://b", "c", "s")]);
        assert_eq!(l.topic_acks, vec![ack(2, "c", "s"), ack(9, "c", "s")]);
        assert!(!t.topic_acks_by_id.contains_key(&1));
    }

    #[test]
    fn the_newest_redelivery_count_wins() {
        let mut t = Tables::new();
        t.apply(&Batch {
            redeliveries: vec![
                redelivery(1, "", 1),
                redelivery(1, "", 3),
                redelivery(1, "c:s", 2),
            ],
            ..Batch::default()
        });
        t.apply(&Batch {
            redeliveries: vec![redelivery(1, "", 2)],
            ..Batch::default()
        });
        assert_eq!(
            t.to_loaded().redeliveries,
            vec![redelivery(1, "", 2), redelivery(1, "c:s", 2)]
        );
    }

    #[test]
    fn producer_rows_keep_the_greatest_sequence_and_prunes_go_first() {
        let mut t = Tables::new();
        t.apply(&Batch {
            producer_seqs: vec![seq("queue://q", "p", 5), seq("queue://q", "p", 3)],
            ..Batch::default()
        });
        t.apply(&Batch {
            producer_seqs: vec![seq("queue://q", "p", 4), seq("queue://q", "r", 1)],
            ..Batch::default()
        });
        assert_eq!(
            t.to_loaded().producer_seqs,
            vec![seq("queue://q", "p", 5), seq("queue://q", "r", 1)]
        );
        // Pruned and sent to again in one (merged) batch: written afresh.
        t.apply(&Batch {
            producer_seqs: vec![seq("queue://q", "p", 2)],
            producer_seqs_gone: vec![
                ("queue://q".into(), "p".into()),
                ("queue://q".into(), "r".into()),
            ],
            ..Batch::default()
        });
        assert_eq!(t.to_loaded().producer_seqs, vec![seq("queue://q", "p", 2)]);
    }

    #[test]
    fn decisions_and_prepared_acks_last_until_forgotten_and_done() {
        let mut t = Tables::new();
        t.apply(&Batch {
            tx_acks: vec![tx_ack(7, 1, ""), tx_ack(7, 2, "c:s"), tx_ack(8, 1, "")],
            tx_decided: vec![8, 7, 7],
            ..Batch::default()
        });
        let l = t.to_loaded();
        assert_eq!(l.tx_decided, vec![7, 8]);
        assert_eq!(
            l.tx_acks,
            vec![tx_ack(7, 1, ""), tx_ack(7, 2, "c:s"), tx_ack(8, 1, "")]
        );
        t.apply(&Batch {
            tx_acks_done: vec![tx_ack(7, 1, ""), tx_ack(7, 2, "other")],
            tx_forgotten: vec![7],
            ..Batch::default()
        });
        let l = t.to_loaded();
        assert_eq!(l.tx_decided, vec![8]);
        assert_eq!(l.tx_acks, vec![tx_ack(7, 2, "c:s"), tx_ack(8, 1, "")]);
    }

    #[test]
    fn loaded_rows_come_in_load_rs_order() {
        let mut t = Tables::new();
        t.apply(&Batch {
            inserts: vec![
                msg(5, "queue://q", "e"),
                msg(1, "queue://q", "a"),
                msg(3, "queue://q", "c"),
            ],
            topic_acks: vec![
                ack(3, "b", "s"),
                ack(3, "a", "t"),
                ack(1, "z", "z"),
                ack(3, "a", "s"),
            ],
            subs_added: vec![
                sub("topic://b", "a", "a"),
                sub("topic://a", "b", "a"),
                sub("topic://a", "a", "b"),
            ],
            ..Batch::default()
        });
        let l = t.to_loaded();
        assert!(l.spill.is_none());
        let ids: Vec<i64> = l.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        assert_eq!(
            l.topic_acks,
            vec![
                ack(1, "z", "z"),
                ack(3, "a", "s"),
                ack(3, "a", "t"),
                ack(3, "b", "s")
            ]
        );
        assert_eq!(
            l.subs,
            vec![
                sub("topic://a", "a", "b"),
                sub("topic://a", "b", "a"),
                sub("topic://b", "a", "a")
            ]
        );
        // Bodies are shared with the tables, not copied.
        let held = &t.messages[&3].msg;
        assert_eq!(l.messages[1].msg.as_ptr(), held.as_ptr());
    }

    #[test]
    fn a_shards_tombstone_never_becomes_a_message() {
        // A row retired before its batch left keeps its slot with id -1; a
        // message with that id would be restored at takeover, and its id
        // (u64::MAX) would push every shard's new ids past the shard byte.
        let mut t = Tables::new();
        let mut tomb = msg(7, "queue://q", "gone");
        tomb.id = -1;
        let b = Batch {
            inserts: vec![tomb, msg(8, "queue://q", "kept")],
            ..Batch::default()
        };
        t.apply(&b);
        t.apply_owned(b);
        assert_eq!(t.messages(), 1);
        assert!(t.to_loaded().messages.iter().all(|m| m.id >= 0));
    }
}
