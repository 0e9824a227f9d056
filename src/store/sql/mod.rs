//! The database store modes (`mysql`, `postgres`): ActiveMQ's JDBC tables,
//! written in batches by one writer on the side runtime.
//!
//! Shards turn their records into [`Batch`]es (see `shard_store`); the
//! writer merges the batches of every shard into one database transaction
//! that also checks the master's lease (fencing), and answers each shard
//! once it committed. Recovery reads the tables back into the records the
//! broker's `Restorer` takes.
//!
//! Tables (named and typed as ActiveMQ 5.17 creates them, so operators'
//! queries keep working): `ACTIVEMQ_MSGS` (one row per pending message,
//! `CONTAINER` = `queue://NAME` or `topic://NAME`, `MSG` = [`encoding`]),
//! `ACTIVEMQ_ACKS` (durable subscriptions), `ACTIVEMQ_LOCK` (the lease).
//! Brokk's own side tables: `BROKK_TOPIC_ACKS` (which durable subscriptions
//! already acknowledged a topic message), `BROKK_REDELIVERIES` (redelivery
//! counts), `BROKK_TX` (transaction decisions) and `BROKK_TX_ACKS`
//! (acknowledgements prepared by a transaction).

pub mod conn;
pub mod encoding;
pub mod load;
pub mod schema;
pub mod write;

use bytes::Bytes;

pub mod recover;
pub mod shard_store;
pub mod spill;
pub mod sweep;
pub mod writer;

/// Which database, from the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL or MariaDB (`mysql://`).
    MySql,
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
}

impl Dialect {
    /// The dialect a `store.url` names, or why it names none.
    pub fn of_url(url: &str) -> Result<Dialect, String> {
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme {
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            _ => Err(format!(
                "store.url must start with mysql:// or postgres://, got '{}'",
                redact(url)
            )),
        }
    }
}

/// A URL fit for a log line: the password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A row of `ACTIVEMQ_MSGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRow {
    /// The broker's message id (`ID`, also `MSGID_SEQ`).
    pub id: i64,
    /// `queue://NAME` or `topic://NAME`.
    pub container: String,
    /// Expiry in ms since the epoch, 0 = never (`EXPIRATION`).
    pub expiration: i64,
    /// JMS priority 0-9 (`PRIORITY`).
    pub priority: i64,
    /// `tx:<id>` for a SEND prepared by a transaction not yet known to be
    /// decided (`XID`); None once in effect.
    pub xid: Option<String>,
    /// See [`encoding`].
    pub msg: Bytes,
}

/// A durable subscription: a row of `ACTIVEMQ_ACKS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubRow {
    /// `topic://NAME`.
    pub container: String,
    pub client_id: String,
    pub sub_name: String,
    /// The JMS selector, if any.
    pub selector: Option<String>,
}

impl SubRow {
    /// The same subscription (the key of `ACTIVEMQ_ACKS` but PRIORITY).
    pub fn same_sub(&self, o: &SubRow) -> bool {
        self.container == o.container
            && self.client_id == o.client_id
            && self.sub_name == o.sub_name
    }
}

/// One durable subscription's acknowledgement of a topic message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicAck {
    pub id: i64,
    pub client_id: String,
    pub sub_name: String,
}

/// How often a message was handed out and came back, for one consumer
/// (`sub_key`: empty for a queue, `client_id:sub_name` for a durable
/// subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    pub id: i64,
    pub sub_key: String,
    pub count: i64,
}

/// An acknowledgement prepared by transaction `tx` (in effect once the
/// transaction is decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxAckRow {
    pub tx: i64,
    pub id: i64,
    /// As in [`Redelivery::sub_key`].
    pub sub_key: String,
}

/// Changes for one database transaction. Applied in this order: inserts,
/// topic acks, redeliveries, subscriptions added, prepared acks, decisions,
/// then deletes (`deletes`, then `msg_deletes`), XIDs cleared, prepared acks done, decisions forgotten and
/// subscriptions removed (a message inserted and deleted
/// in one batch is never visible).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub inserts: Vec<MsgRow>,
    pub topic_acks: Vec<TopicAck>,
    /// Upserts: the newest count wins.
    pub redeliveries: Vec<Redelivery>,
    pub subs_added: Vec<SubRow>,
    pub tx_acks: Vec<TxAckRow>,
    /// Transactions decided (committed): their prepared rows are in effect.
    pub tx_decided: Vec<i64>,
    /// Messages retired for good: their `ACTIVEMQ_MSGS` row and every side
    /// row naming them (topic acks, redeliveries, prepared acks).
    pub deletes: Vec<i64>,
    /// Messages retired for good that no side row ever named (the shard
    /// knows: it wrote or read every side row): only their `ACTIVEMQ_MSGS`
    /// row goes. Most retirements are these, and the side tables' three
    /// deletes by ID cost about as much as the message's own.
    pub msg_deletes: Vec<i64>,
    /// Prepared SENDs now in effect (their shard applied the transaction):
    /// they lose the `XID`. Per message, not per transaction: every shard
    /// applies its own part, and a transaction is settled only once all
    /// of them did.
    pub xid_cleared: Vec<i64>,
    /// Prepared acknowledgements applied by their shard: their rows go.
    pub tx_acks_done: Vec<TxAckRow>,
    /// Decisions no participant needs any more: their rows go.
    pub tx_forgotten: Vec<i64>,
    pub subs_removed: Vec<SubRow>,
    /// Producers' highest sequences per destination (upserts, the highest
    /// wins): a failover resend of a message already acknowledged is still
    /// recognised after a takeover (see `broker::producer_audit`).
    pub producer_seqs: Vec<ProducerSeq>,
    /// (container, producer) rows no longer needed.
    pub producer_seqs_gone: Vec<(String, String)>,
}

/// A producer's highest sequence sent to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSeq {
    pub container: String,
    pub producer: String,
    pub seq: i64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.topic_acks.is_empty()
            && self.redeliveries.is_empty()
            && self.subs_added.is_empty()
            && self.tx_acks.is_empty()
            && self.tx_decided.is_empty()
            && self.deletes.is_empty()
            && self.msg_deletes.is_empty()
            && self.xid_cleared.is_empty()
            && self.tx_acks_done.is_empty()
            && self.tx_forgotten.is_empty()
            && self.subs_removed.is_empty()
            && self.producer_seqs.is_empty()
            && self.producer_seqs_gone.is_empty()
    }

    /// Rows this batch writes or deletes (for batch sizing).
    pub fn rows(&self) -> usize {
        self.inserts.len()
            + self.topic_acks.len()
            + self.redeliveries.len()
            + self.subs_added.len()
            + self.tx_acks.len()
            + self.tx_decided.len()
            + self.deletes.len()
            + self.msg_deletes.len()
            + self.xid_cleared.len()
            + self.tx_acks_done.len()
            + self.tx_forgotten.len()
            + self.subs_removed.len()
            + self.producer_seqs.len()
            + self.producer_seqs_gone.len()
    }

    /// Message bytes this batch inserts.
    pub fn bytes(&self) -> usize {
        self.inserts.iter().map(|r| r.msg.len()).sum()
    }

    /// A durable subscription made. Statements run by kind, not in append
    /// order, so a removal of the same subscription earlier in this batch
    /// is cancelled instead (its ACKS row is upserted either way; topic
    /// acks it would have deleted name only messages sent before it
    /// existed, which the new subscription must not get anyway).
    pub fn add_sub(&mut self, sub: SubRow) {
        self.subs_removed.retain(|s| !s.same_sub(&sub));
        self.subs_added.retain(|s| !s.same_sub(&sub));
        self.subs_added.push(sub);
    }

    /// A durable subscription destroyed: cancels an add earlier in this
    /// batch (see [`Batch::add_sub`]).
    pub fn remove_sub(&mut self, sub: SubRow) {
        self.subs_added.retain(|s| !s.same_sub(&sub));
        self.subs_removed.retain(|s| !s.same_sub(&sub));
        self.subs_removed.push(sub);
    }

    /// Appends `other` (a later batch) to this one.
    pub fn extend(&mut self, other: Batch) {
        self.inserts.extend(other.inserts);
        self.topic_acks.extend(other.topic_acks);
        self.redeliveries.extend(other.redeliveries);
        // Subscription changes in their order (see `add_sub`): removals
        // first would be wrong for an add followed by a removal.
        for s in other.subs_removed {
            self.remove_sub(s);
        }
        for s in other.subs_added {
            self.add_sub(s);
        }
        self.tx_acks.extend(other.tx_acks);
        self.tx_decided.extend(other.tx_decided);
        self.deletes.extend(other.deletes);
        self.msg_deletes.extend(other.msg_deletes);
        self.xid_cleared.extend(other.xid_cleared);
        self.tx_acks_done.extend(other.tx_acks_done);
        self.tx_forgotten.extend(other.tx_forgotten);
        // A row pruned earlier and sent to again: the upsert comes after
        // the delete when they are applied, and the later batch wins.
        let again: std::collections::HashSet<(&str, &str)> = other
            .producer_seqs
            .iter()
            .map(|p| (p.container.as_str(), p.producer.as_str()))
            .collect();
        let gone = other
            .producer_seqs_gone
            .into_iter()
            .filter(|(c, p)| !again.contains(&(c.as_str(), p.as_str())));
        let gone: Vec<(String, String)> = gone.collect();
        self.producer_seqs.retain(|p| {
            !gone
                .iter()
                .any(|(c, q)| *c == p.container && *q == p.producer)
        });
        self.producer_seqs_gone.extend(gone);
        self.producer_seqs.extend(other.producer_seqs);
    }
}

/// Everything the tables hold, as read at takeover.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Ordered by ID.
    pub messages: Vec<MsgRow>,
    /// Where the `MSG` of rows past the memory budget went (None: all in
    /// memory).
    pub spill: Option<spill::Spill>,
    pub subs: Vec<SubRow>,
    pub topic_acks: Vec<TopicAck>,
    pub redeliveries: Vec<Redelivery>,
    pub tx_acks: Vec<TxAckRow>,
    pub tx_decided: Vec<i64>,
    pub producer_seqs: Vec<ProducerSeq>,
}

/// Who holds the master lease: written into `ACTIVEMQ_LOCK.BROKER_NAME`
/// at takeover, unique per process (host, pid, random), so that a write
/// transaction can check that the lease is still its own (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(pub String);

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Could not reach or log in to the database (retry later).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// A statement failed (the transaction was rolled back).
    #[error("{what}: {reason}")]
    Query { what: &'static str, reason: String },
    /// The lease is no longer ours (or expired): nothing was committed,
    /// and this broker must stop serving.
    #[error("the master lease is no longer ours: {0}")]
    Fenced(String),
    /// A new message's id is already in `ACTIVEMQ_MSGS`, a row this
    /// broker did not write (another program writes into its tables):
    /// nothing was committed, and this broker must stop serving so that
    /// the next master starts its ids above every row (see
    /// `write::Attempt`).
    #[error("message ids already in ACTIVEMQ_MSGS, not written by this broker: {0}")]
    IdTaken(String),
    /// Tables are missing and `store.create_tables = false` forbids making
    /// them (a setting to fix, or DDL for the operator to run).
    #[error("the database lacks {0}; create it (README, High availability (shared database)) or set store.create_tables = true")]
    Missing(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(container: &str, producer: &str, seq: i64) -> ProducerSeq {
        ProducerSeq {
            container: container.into(),
            producer: producer.into(),
            seq,
        }
    }

    #[test]
    fn merged_batches_keep_the_later_word_on_a_producers_row() {
        let mut a = Batch {
            producer_seqs: vec![seq("queue://q", "p", 5), seq("queue://q", "r", 1)],
            producer_seqs_gone: vec![("queue://q".into(), "old".into())],
            ..Batch::default()
        };
        // Later: p pruned, old sent to again.
        a.extend(Batch {
            producer_seqs: vec![seq("queue://q", "old", 9)],
            producer_seqs_gone: vec![("queue://q".into(), "p".into())],
            ..Batch::default()
        });
        assert_eq!(
            a.producer_seqs,
            vec![seq("queue://q", "r", 1), seq("queue://q", "old", 9)]
        );
        // Both deletes stay: they run before the upserts, so `old` ends
        // up written.
        assert_eq!(
            a.producer_seqs_gone,
            vec![
                ("queue://q".to_string(), "old".to_string()),
                ("queue://q".to_string(), "p".to_string())
            ]
        );
    }
}
