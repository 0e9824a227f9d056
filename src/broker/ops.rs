//! What shards say to each other: operations for a destination's owner, and
//! replies for a connection's shard. Both cross executors in batches.

use std::sync::Arc;

use super::destination::Destination;
use super::message::{MessageId, SharedMessage};
use super::queue::{ConsumerKey, Delivery};
use super::selector::Selector;

/// A connection anywhere in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub conn: u64,
}

impl ConnRef {
    /// This connection's subscription `sub`, as the broker keys consumers.
    pub fn consumer(self, sub: u64) -> ConsumerKey {
        ConsumerKey {
            shard: self.shard,
            conn: self.conn,
            sub,
        }
    }

    /// This connection as one number, for the store (which knows no
    /// connections): the shard in the top 16 bits, the connection's
    /// number on it (a counter) below.
    pub fn key(self) -> u64 {
        (u64::from(self.shard) << 48) | (self.conn & ((1 << 48) - 1))
    }
}

/// A durable topic subscription's identity, as ActiveMQ names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DurableName {
    pub client_id: String,
    pub name: String,
}

#[derive(Debug)]
pub struct SubscribeOp {
    pub destination: Destination,
    pub consumer: ConsumerKey,
    pub prefetch: u32,
    pub durable: Option<DurableName>,
    /// Only messages it matches are delivered.
    pub selector: Option<Selector>,
    /// A queue consumer that takes every message while it is the first
    /// such consumer (JMS's exclusive consumer); the others wait.
    pub exclusive: bool,
    /// A topic subscriber that does not want what its own connection
    /// published (JMS's noLocal): that connection's OpenWire id.
    pub no_local: Option<Arc<str>>,
}

/// Which deliveries of a closing consumer its client may have seen: those
/// go back to the queue counted as redelivered (toward
/// `max_redeliveries`). The rest were still on their way to the client
/// when it closed (prefetched, never written) and go back as they were,
/// so a client that subscribes and unsubscribes often does not send
/// messages nobody saw to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Every one (what the session cannot tell apart).
    All,
    /// Only these (see [`Seen::only`]).
    Only(SeenIds),
}

/// Message ids, sorted, so that a closing consumer's thousand deliveries
/// are looked up without a scan each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenIds(Vec<MessageId>);

impl Seen {
    pub fn only(ids: impl IntoIterator<Item = MessageId>) -> Seen {
        let mut ids: Vec<MessageId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Seen::Only(SeenIds(ids))
    }

    pub fn covers(&self, id: MessageId) -> bool {
        match self {
            Seen::All => true,
            Seen::Only(SeenIds(ids)) => ids.binary_search(&id).is_ok(),
        }
    }
}

/// Sent to the shard that owns the destination.
#[derive(Debug)]
pub enum Op {
    Send(SharedMessage),
    Subscribe(SubscribeOp),
    Unsubscribe {
        destination: Destination,
        consumer: ConsumerKey,
        /// Also delete the durable subscription and its messages.
        destroy_durable: bool,
        /// Which of its deliveries the client may have seen.
        seen: Seen,
    },
    Ack {
        destination: Destination,
        consumer: ConsumerKey,
        ids: Vec<MessageId>,
    },
    Nack {
        destination: Destination,
        consumer: ConsumerKey,
        ids: Vec<MessageId>,
    },
    /// A consumer with prefetch 0 asks for one message (JMS's
    /// MessagePull), or (`cancel`) stopped waiting for it.
    Pull {
        destination: Destination,
        consumer: ConsumerKey,
        cancel: bool,
    },
    /// A queue browser's look: the first `max` waiting messages delivered
    /// to `consumer` (a [`Reply::Deliver`]) without being taken.
    Browse {
        destination: Destination,
        consumer: ConsumerKey,
        max: usize,
        /// Only the messages it matches are shown.
        selector: Option<Selector>,
    },
    /// The consumer's client gave up on these deliveries (JMS's POISON
    /// ack: past its own redelivery limit): to the dead-letter queue at
    /// once, whatever `broker.max_redeliveries` says.
    Poison {
        destination: Destination,
        consumer: ConsumerKey,
        ids: Vec<MessageId>,
    },
    /// The consumer's client handed `count` more deliveries to the
    /// application without acknowledging them: extend its prefetch by that
    /// much until they are (JMS's DELIVERED ack).
    Delivered {
        destination: Destination,
        consumer: ConsumerKey,
        count: u32,
    },
    /// The consumer's client set its prefetch anew (ActiveMQ's failover
    /// transport restores a consumer with prefetch 0, then gives it its
    /// own back with a ConsumerControl).
    Prefetch {
        destination: Destination,
        consumer: ConsumerKey,
        prefetch: u32,
    },
    /// A message moving to the dead-letter queue. Its owner answers with
    /// [`Reply::Retire`] once the copy is durable; only then does the shard
    /// it came from journal that it left there, so a crash in between can
    /// duplicate it but never lose it.
    DeadLetter {
        msg: SharedMessage,
        retire: Option<Retire>,
    },
    /// A temporary destination's connection removed it (or ended): its
    /// waiting messages go, and so does a queue (see `broker::temporary`).
    RemoveTemporary {
        destination: Destination,
    },
    /// Answered with [`Reply::Fenced`] once everything this connection sent
    /// to this shard before it has been applied (and, with a durable store,
    /// made durable): the basis of every RECEIPT.
    Fence {
        conn: ConnRef,
        token: u64,
    },
    /// To the connection's own shard, ahead of the transaction's
    /// [`Op::TxPrepare`]s: coordinate transaction `tx` among `participants`
    /// and answer [`Reply::Fenced`] with `token` once all of them have
    /// applied it. The state lives in the shard, not the connection: a
    /// transaction finishes even if its connection closes.
    TxCoordinate {
        tx: u64,
        conn: ConnRef,
        token: u64,
        participants: Vec<usize>,
    },
    /// A participant's part of transaction `tx`: journal it as prepared
    /// records without applying it, and answer [`Reply::TxPrepared`] to
    /// `coordinator` once durable. `alone`: the only participant, which
    /// decides by itself: it journals its TxDone with the records, applies
    /// at once, and answers [`Reply::TxDone`].
    TxPrepare {
        tx: u64,
        /// The committing connection: a participant applies one
        /// connection's transactions in the order they were committed.
        conn: ConnRef,
        coordinator: usize,
        part: TxPart,
        alone: bool,
    },
    /// The decision of `tx` is durable: apply the prepared part, answer
    /// [`Reply::TxApplied`] at once and [`Reply::TxDone`] once its TxDone
    /// is durable.
    TxApply {
        tx: u64,
        coordinator: usize,
    },
}

/// What a transaction does on one shard.
#[derive(Debug, Default)]
pub struct TxPart {
    pub sends: Vec<SharedMessage>,
    pub acks: Vec<TxAck>,
}

impl TxPart {
    /// The part of a transaction's `parts` that goes to shard `owner`.
    pub fn of(parts: &mut Vec<(usize, TxPart)>, owner: usize) -> &mut TxPart {
        let i = match parts.iter().position(|(o, _)| *o == owner) {
            Some(i) => i,
            None => {
                parts.push((owner, TxPart::default()));
                parts.len() - 1
            }
        };
        &mut parts[i].1
    }
}

/// The operations that commit transaction `tx` of connection `conn`:
/// its coordination to the connection's shard, ahead of the parts (the
/// coordinator knows the transaction before any participant can answer),
/// then each part to its shard. The coordinator answers `token` to the
/// connection once every part is applied (see `server::shard`).
pub fn commit_ops(
    tx: u64,
    conn: ConnRef,
    token: u64,
    parts: Vec<(usize, TxPart)>,
) -> Vec<(usize, Op)> {
    let coordinator = conn.shard as usize;
    let alone = parts.len() == 1;
    let mut ops = Vec::with_capacity(parts.len() + 1);
    ops.push((
        coordinator,
        Op::TxCoordinate {
            tx,
            conn,
            token,
            participants: parts.iter().map(|(o, _)| *o).collect(),
        },
    ));
    for (owner, part) in parts {
        ops.push((
            owner,
            Op::TxPrepare {
                tx,
                conn,
                coordinator,
                part,
                alone,
            },
        ));
    }
    ops
}

/// A transacted ACK or NACK of deliveries to one consumer.
#[derive(Debug)]
pub struct TxAck {
    pub destination: Destination,
    pub consumer: ConsumerKey,
    pub ids: Vec<MessageId>,
    pub nack: bool,
}

/// Sent back to the shard that holds the connection.
#[derive(Debug)]
pub enum Reply {
    Deliver {
        consumer: ConsumerKey,
        deliveries: Vec<Delivery>,
    },
    Fenced {
        conn: ConnRef,
        token: u64,
    },
    /// An operation was refused (e.g. a durable subscription already active).
    Refused {
        conn: ConnRef,
        reason: String,
    },
    /// The dead-letter copy is durable: journal the original's retirement.
    Retire(Retire),
    /// To a transaction's coordinator: this participant's prepared records
    /// are durable.
    TxPrepared {
        tx: u64,
    },
    /// To a transaction's coordinator: this participant applied its part.
    TxApplied {
        tx: u64,
    },
    /// To a transaction's coordinator: this participant's TxDone is durable
    /// (it no longer needs the decision record).
    TxDone {
        tx: u64,
    },
}

/// Which stored message to retire, and on which shard.
#[derive(Debug, Clone)]
pub struct Retire {
    pub shard: usize,
    pub destination: Destination,
    pub sub: Option<crate::store::StoredSub>,
    pub id: MessageId,
}

#[derive(Debug)]
pub enum ShardMsg {
    Op(Op),
    Reply(Reply),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_of_different_shards_have_different_keys() {
        let a = ConnRef { shard: 0, conn: 5 };
        let b = ConnRef { shard: 1, conn: 5 };
        let c = ConnRef { shard: 0, conn: 6 };
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_eq!(b.key(), (1 << 48) | 5);
    }
}
