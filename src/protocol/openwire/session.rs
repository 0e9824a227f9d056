//! One OpenWire connection's state machine: commands in, broker operations
//! and commands out. No I/O here, and no codec: `server::openwire_connection`
//! decodes, negotiates the wire format, authenticates and writes.
//!
//! The broker's model is STOMP's (string properties, `/queue/` and
//! `/topic/` destinations, numeric message ids), so this file is also
//! where OpenWire maps onto it, the way ActiveMQ maps JMS messages to
//! STOMP frames (see docs/design/openwire.md).

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::commands::{
    self as wire, AckType, Command, ConnectionError, ConsumerId, ConsumerInfo, DataStructure,
    DestinationInfo, DestinationKind, ExceptionResponse, KeepAliveInfo, MessageAck,
    MessageDispatch, MessageKind, ProducerId, RemoveInfo, Response, TransactionId, TransactionInfo,
    TransactionType,
};
use super::compress;
use super::primitives::Throwable;
use super::properties;
use crate::broker::destination::{sub_name_problem, MAX_NAME_BYTES, TEMPORARY_PREFIX};
use crate::broker::message::{now_ms, Property, MESSAGE_ID_PREFIX};
use crate::broker::message_ids::MessageIds;
use crate::broker::ops::{commit_ops, ConnRef, DurableName, Op, Seen, SubscribeOp, TxAck, TxPart};
use crate::broker::producer_audit::{origin_of, ORIGIN_PROPERTY};
use crate::broker::queue::{ConsumerKey, Delivery};
use crate::broker::selector::{Selector, MAX_DURABLE_SELECTOR_BYTES};
use crate::broker::temporary::{ADVISORY_TOPIC, MAX_PER_CONNECTION};
use crate::broker::{Destination, Message, MessageId};
use crate::protocol::stomp::session::SessionConfig;
use crate::security::{Decisions, Right, UserInfo};

/// The property that says a message was sent as a BytesMessage (`bytes`),
/// so that it comes back to an OpenWire consumer as one even when its bytes
/// are valid UTF-8, or as a MapMessage, StreamMessage or ObjectMessage
/// (`map`, `stream`, `object`: the body is then ActiveMQ's marshalled
/// form). STOMP consumers see it as a header.
pub const BODY_KIND_PROPERTY: &str = "brokk-body";

/// The most a consumer may ask for (ActiveMQ's client clamps to the same,
/// `ActiveMQPrefetchPolicy.MAX_PREFETCH_SIZE`): a queue larger than memory
/// is read back no faster than its consumers' windows.
const MAX_PREFETCH: u32 = 32_767;

/// Past this a producer's connection id is not kept as its messages'
/// origin (ActiveMQ's are about 40 bytes).
const MAX_ORIGIN_CONNECTION_ID: usize = 256;

/// This broker process's start, in ms: tells its dispatch ids from an
/// earlier master's.
fn run_id() -> u64 {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RUN.get_or_init(now_ms)
}

/// What the connection must do on the session's behalf.
#[derive(Debug)]
pub enum Action {
    /// Write this command to the client.
    Write(Command),
    /// Apply this operation on the shard that owns its destination.
    Route(usize, Op),
    /// Close after the commands already queued are written.
    Close,
    /// Call [`Session::timer`] with `token` after `after`.
    Timer {
        after: std::time::Duration,
        token: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    AwaitConnectionInfo,
    Open,
    Closed,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    destination: Destination,
    wire_destination: wire::Destination,
    durable: Option<DurableName>,
    /// Dispatched, not yet acknowledged, in dispatch order.
    unacked: VecDeque<MessageId>,
    /// A watcher of the temporary-destination advisories: what it gets
    /// are announcements (see `broker::temporary`), dispatched as
    /// ActiveMQ's advisory messages.
    advisory: bool,
    /// A queue browser: what it gets is a look, never taken, never
    /// acknowledged (see [`BROWSE_MAX`]).
    browser: bool,
    /// Prefetch 0: it gets a message only when it asks (MessagePull). The
    /// token of the pull it waits on, if that pull has a deadline (or is
    /// answered at once when nothing waits), and whether it got a message
    /// since it asked.
    pulling: Option<(u64, bool)>,
}

/// How far a closing consumer's application got through its deliveries:
/// what decides which of them come back counted as redelivered (and
/// toward `max_redeliveries`). A JMS client prefetches (1 000 by default
/// on a queue); a consumer that takes one message and closes gives the
/// other 999 back never seen, and counting those would send messages
/// nobody saw to the dead-letter queue after a few such closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Nothing known (the connection broke, or the client said
    /// `LAST_DELIVERED_UNKNOWN`): every delivery counts.
    Unknown,
    /// A consumer's own RemoveInfo: ActiveMQ's `lastDeliveredSequenceId`,
    /// the broker sequence id (Brokk's message id, as the wire carries it)
    /// of the last message its application received. Deliveries up to it
    /// in dispatch order count, the rest do not; an id that is not among
    /// the consumer's unacknowledged deliveries (-1: none delivered; or one
    /// already acknowledged, as in auto-acknowledge) counts none. ActiveMQ's
    /// broker applies the same rule to a queue consumer
    /// (`Queue.removeSubscription`).
    UpTo(i64),
    /// A session's or connection's RemoveInfo: the client sends no
    /// consumer's own, only the highest `lastDeliveredSequenceId` over all
    /// of them (`Math.max`), which names a message of one consumer at most
    /// (and Brokk's ids are not in time order across shards). The consumer
    /// holding it counts as [`Delivered::UpTo`]; every other one counts
    /// the head of what it holds, if the application got anything at all
    /// (an id above 0): the oldest unacknowledged delivery is what a
    /// client-acknowledge application had in hand when it gave up, and a
    /// message that makes it close its connection each time must still
    /// reach the dead-letter queue. ActiveMQ counts none there, and loops.
    Highest(i64),
}

impl Delivered {
    /// ActiveMQ's `RemoveInfo.LAST_DELIVERED_UNKNOWN`.
    const UNKNOWN: i64 = -2;

    /// From a RemoveInfo's `lastDeliveredSequenceId`, for a consumer
    /// (`own`) or for a session or connection.
    fn from_wire(last_delivered_sequence_id: i64, own: bool) -> Delivered {
        match last_delivered_sequence_id {
            Self::UNKNOWN => Delivered::Unknown,
            last if own => Delivered::UpTo(last),
            last => Delivered::Highest(last),
        }
    }

    /// Which of `unacked` (in dispatch order) the application may have seen.
    fn seen(self, unacked: &VecDeque<MessageId>) -> Seen {
        let (last, otherwise) = match self {
            Delivered::Unknown => return Seen::All,
            Delivered::UpTo(last) => (last, 0),
            Delivered::Highest(last) => (last, usize::from(last > 0)),
        };
        // Compared as the wire carries it (`broker_sequence_id`): an id
        // issued on shard 128 or above is negative there.
        let got = unacked
            .iter()
            .position(|id| *id as i64 == last)
            .map_or(otherwise, |at| at + 1);
        Seen::only(unacked.iter().take(got).copied())
    }
}

impl Consumer {
    /// A dispatch without a message: the end of a browse, or a pull that
    /// got nothing.
    fn empty_dispatch(&self) -> Command {
        MessageDispatch {
            consumer_id: Some(self.id.clone()),
            destination: Some(self.wire_destination.clone()),
            message: None,
            ..MessageDispatch::default()
        }
        .into()
    }
}

/// Most messages a queue browser sees: ActiveMQ's default
/// `maxBrowsePageSize`.
const BROWSE_MAX: usize = 400;

/// What a local transaction did, held until it commits (a rollback drops
/// it: its sends never happened, its acknowledged messages stay
/// unacknowledged, and the client redelivers them from what it holds).
#[derive(Debug)]
enum TxWork {
    Send(Arc<Message>),
    /// A MessageAck, settled against the consumer's unacknowledged
    /// messages when the transaction commits.
    Ack(Settle),
}

/// An open local transaction.
#[derive(Debug, Default)]
struct Tx {
    work: Vec<TxWork>,
    /// Bytes of the messages it holds (see [`MAX_TX_BYTES`]).
    bytes: usize,
    /// Something it was given was refused: its commit must fail, or it
    /// would commit without it (the client sends transacted commands
    /// without waiting, and hears of a refusal only as a ConnectionError).
    rollback_only: Option<String>,
}

/// Most message bytes one transaction holds until it commits, and most
/// sends and acks: a transaction past them is refused (and rolls back)
/// rather than hold memory every producer of the broker waits on.
const MAX_TX_BYTES: usize = 64 * 1024 * 1024;
const MAX_TX_OPS: usize = 100_000;

/// Most transactions one connection keeps open (one per transacted
/// session is what a client uses).
const MAX_OPEN_TX: usize = 1024;

const ROLLED_BACK_EXCEPTION: &str = "javax.jms.TransactionRolledBackException";

/// Which of a consumer's unacknowledged messages an ack settles.
#[derive(Debug, Clone, Copy)]
struct Settle {
    sub: u64,
    /// The broker ids of the range's ends (`first` None: from the oldest).
    first: Option<u64>,
    last: u64,
    /// Only `last` (INDIVIDUAL_ACKNOWLEDGE).
    individual: bool,
    /// Poison: back to the queue, counted as a failed delivery.
    nack: bool,
}

/// A refused command: the client gets an ExceptionResponse (or, for a
/// command that asked for no answer, a ConnectionError) of `class`.
#[derive(Debug)]
struct Refusal {
    class: &'static str,
    message: String,
    /// The connection cannot go on (bad credentials, a protocol error).
    fatal: bool,
}

const JMS_EXCEPTION: &str = "javax.jms.JMSException";
const SECURITY_EXCEPTION: &str = "javax.jms.JMSSecurityException";
const SELECTOR_EXCEPTION: &str = "javax.jms.InvalidSelectorException";

fn refuse<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        class: JMS_EXCEPTION,
        message: message.into(),
        fatal: false,
    })
}

/// XA (two-phase commit driven by a transaction manager) is not
/// implemented; local transactions are.
const XA_REFUSAL: &str =
    "XA transactions are not supported by Brokk; use a transacted session (local transaction)";

fn rolled_back(message: String) -> Refusal {
    Refusal {
        class: ROLLED_BACK_EXCEPTION,
        message,
        fatal: false,
    }
}

fn unsupported<T>(what: &str) -> Result<T, Refusal> {
    refuse(format!(
        "{what} is not supported by Brokk's OpenWire listener yet"
    ))
}

pub struct Session {
    cfg: Rc<SessionConfig>,
    ids: Rc<MessageIds>,
    conn: ConnRef,
    phase: Phase,
    user: Option<Arc<UserInfo>>,
    decisions: Decisions,
    connection_id: Option<wire::ConnectionId>,
    /// JMS client id: names this connection's durable subscriptions.
    client_id: Option<String>,
    /// Durable subscriptions opened on this connection, by name, with
    /// their topic: RemoveSubscriptionInfo names only the subscription.
    durables: HashMap<String, Destination>,
    consumers: HashMap<u64, Consumer>,
    by_consumer_id: HashMap<ConsumerId, u64>,
    /// Consumers of ActiveMQ's other advisory topics, which Brokk does not
    /// publish.
    advisory_consumers: HashSet<ConsumerId>,
    /// Temporary destinations this connection made (and has not removed):
    /// the broker's name and the client's.
    temporaries: Vec<(Destination, wire::Destination)>,
    /// Queue browsers waiting for the end of their look, by fence token.
    browse_ends: HashMap<u64, u64>,
    /// MessagePulls with a deadline (or answered at a fence), by token.
    pulls: HashMap<u64, u64>,
    /// Producers with a window (see ProducerInfo): each message they send
    /// without asking for a Response is answered with a ProducerAck.
    windowed: HashSet<ProducerId>,
    /// Advisory watchers waiting for their subscription to be in place,
    /// by fence token: then they are told what lives (see `fenced`).
    snapshots: HashMap<u64, u64>,
    next_sub: u64,
    /// Responses waiting for fences, by token: shards yet to answer and
    /// the command id to answer.
    pending: HashMap<u64, (usize, i32)>,
    /// Open local transactions (begun, not yet committed or rolled back).
    transactions: HashMap<TransactionId, Tx>,
    next_token: u64,
    /// Sequence of the next dispatch's message id. The client checks
    /// (producer id, sequence) for duplicates within a window: one
    /// producer id per connection and a counter keep it happy.
    next_dispatch: i64,
    dispatch_producer: ProducerId,
    /// Bound on an inflated body (the negotiated maxFrameSize).
    max_body_bytes: usize,
}

impl Session {
    pub fn new(
        cfg: Rc<SessionConfig>,
        ids: Rc<MessageIds>,
        conn: ConnRef,
        max_body_bytes: usize,
    ) -> Session {
        Session {
            cfg,
            ids,
            conn,
            phase: Phase::AwaitConnectionInfo,
            user: None,
            decisions: Decisions::default(),
            connection_id: None,
            client_id: None,
            durables: HashMap::new(),
            consumers: HashMap::new(),
            by_consumer_id: HashMap::new(),
            advisory_consumers: HashSet::new(),
            temporaries: Vec::new(),
            snapshots: HashMap::new(),
            windowed: HashSet::new(),
            browse_ends: HashMap::new(),
            pulls: HashMap::new(),
            next_sub: 0,
            pending: HashMap::new(),
            transactions: HashMap::new(),
            next_token: 0,
            next_dispatch: 1,
            dispatch_producer: ProducerId {
                // Unique across broker runs too: a failover client keeps
                // its duplicate audit, and would take a new master's
                // (connection, counter) pairs for ones it already had.
                connection_id: Some(format!(
                    "ID:brokk-{}-{}-{}",
                    run_id(),
                    conn.shard,
                    conn.conn
                )),
                value: 0,
                session_id: 0,
            },
            max_body_bytes,
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn awaits_connection_info(&self) -> bool {
        self.phase == Phase::AwaitConnectionInfo
    }

    /// The user the connection authenticated, before ConnectionInfo is handled.
    pub fn authenticated(&mut self, user: Option<Arc<UserInfo>>) {
        self.user = user;
    }

    /// Handles one command from the client (WireFormatInfo is the
    /// connection's: it owns the codec).
    pub fn handle(&mut self, cmd: Command, out: &mut Vec<Action>) {
        if self.phase == Phase::Closed {
            return;
        }
        let command_id = cmd.command_id();
        let response_required = cmd.response_required();
        let result = match (&self.phase, cmd) {
            (Phase::AwaitConnectionInfo, Command::ConnectionInfo(c)) => self.connect(&c),
            (_, Command::KeepAliveInfo(_)) => {
                if response_required {
                    out.push(Action::Write(KeepAliveInfo::default().into()));
                }
                return;
            }
            (_, Command::ShutdownInfo(_)) => {
                self.teardown(out);
                out.push(Action::Close);
                return;
            }
            // A failover client says it is one before it restores its
            // connection (FailoverTransport.restoreTransport): nothing to do.
            (Phase::AwaitConnectionInfo, Command::ConnectionControl(_)) => {
                if response_required {
                    out.push(Action::Write(response(command_id)));
                }
                return;
            }
            (Phase::AwaitConnectionInfo, other) => Err(Refusal {
                class: JMS_EXCEPTION,
                message: format!(
                    "expected ConnectionInfo first, got command type {}",
                    other.type_code()
                ),
                fatal: true,
            }),
            (_, Command::ConnectionInfo(_)) => refuse("this connection is already open"),
            (_, Command::SessionInfo(_)) => Ok(Vec::new()),
            (_, Command::ProducerInfo(p)) => {
                // A producer window (producerWindowSize): its client
                // counts what it sent without waiting and blocks when the
                // window is full, until ProducerAcks give it back.
                if let (Some(id), true) = (&p.producer_id, p.window_size > 0) {
                    self.windowed.insert(id.clone());
                }
                Ok(Vec::new())
            }
            (_, Command::ConsumerInfo(c)) => self.subscribe(*c, out),
            (_, Command::RemoveInfo(r)) => self.remove(r, out),
            (_, Command::Message(m)) => self.send(*m, out),
            (_, Command::MessageAck(a)) => self.ack(&a, out),
            (_, Command::ConsumerControl(cc)) => Ok(self.consumer_control(&cc, out)),
            (
                _,
                Command::FlushCommand(_)
                | Command::ControlCommand(_)
                | Command::ConnectionControl(_),
            ) => Ok(Vec::new()),
            (_, Command::TransactionInfo(t)) => match self.transaction(&t, out) {
                // A commit is answered when every part is applied.
                Ok(Some(token)) => {
                    if response_required {
                        self.pending.insert(token, (1, command_id));
                    }
                    return;
                }
                Ok(None) => Ok(Vec::new()),
                Err(r) => Err(r),
            },
            (_, Command::MessagePull(p)) => self.pull(&p, out),
            (_, Command::DestinationInfo(d)) => self.destination_info(&d, out),
            (_, Command::RemoveSubscriptionInfo(r)) => self.remove_subscription(&r, out),
            (_, other) => Err(Refusal {
                class: JMS_EXCEPTION,
                message: format!(
                    "command type {} is sent by brokers, not clients",
                    other.type_code()
                ),
                fatal: true,
            }),
        };
        match result {
            Ok(shards) if response_required => self.fence(shards, command_id, out),
            Ok(_) => {}
            Err(r) => self.error(r, response_required.then_some(command_id), out),
        }
    }

    /// Bad credentials (or a verification that timed out): a
    /// JMSSecurityException answers the ConnectionInfo, then the
    /// connection closes.
    pub fn reject_credentials(&mut self, command_id: i32, message: &str, out: &mut Vec<Action>) {
        self.reject_connection(command_id, SECURITY_EXCEPTION, message, out);
    }

    /// The client id is in use on another connection.
    pub fn reject_client_id(&mut self, command_id: i32, client_id: &str, out: &mut Vec<Action>) {
        let message = format!("client id '{client_id}' is already connected");
        self.reject_connection(
            command_id,
            "javax.jms.InvalidClientIDException",
            &message,
            out,
        );
    }

    fn reject_connection(
        &mut self,
        command_id: i32,
        class: &'static str,
        message: &str,
        out: &mut Vec<Action>,
    ) {
        let refusal = Refusal {
            class,
            message: message.to_string(),
            fatal: true,
        };
        self.error(refusal, Some(command_id), out);
    }

    /// A fault that is no command's (bytes that do not decode, no
    /// handshake in time): a ConnectionError, then the connection closes.
    pub fn protocol_error(&mut self, message: &str, out: &mut Vec<Action>) {
        let refusal = Refusal {
            class: "java.io.IOException",
            message: message.to_string(),
            fatal: true,
        };
        self.error(refusal, None, out);
    }

    fn error(&mut self, r: Refusal, answer: Option<i32>, out: &mut Vec<Action>) {
        tracing::debug!(message = %r.message, fatal = r.fatal, "OpenWire command refused");
        let exception = Some(Throwable::new(r.class, r.message));
        let cmd: Command = match answer {
            Some(correlation_id) => ExceptionResponse {
                correlation_id,
                exception,
                ..ExceptionResponse::default()
            }
            .into(),
            None => ConnectionError {
                exception,
                connection_id: self.connection_id.clone(),
                ..ConnectionError::default()
            }
            .into(),
        };
        out.push(Action::Write(cmd));
        if r.fatal {
            self.teardown(out);
            out.push(Action::Close);
        }
    }

    /// Answers `command_id` once every shard in `shards` has applied (and,
    /// with a durable store, made durable) what this connection sent it
    /// before: STOMP's RECEIPT mechanism.
    fn fence(&mut self, mut shards: Vec<usize>, command_id: i32, out: &mut Vec<Action>) {
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            out.push(Action::Write(response(command_id)));
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, (shards.len(), command_id));
        for s in shards {
            out.push(Action::Route(
                s,
                Op::Fence {
                    conn: self.conn,
                    token,
                },
            ));
        }
    }

    /// A consumer with prefetch 0 asks for a message (JMS `receive`): one
    /// more may be dispatched to it. `timeout` -1 (`receiveNoWait`): the
    /// answer is a message if one waits now, else a dispatch without one;
    /// above 0, the same once that many ms passed; 0: wait for one.
    fn pull(
        &mut self,
        p: &wire::MessagePull,
        out: &mut Vec<Action>,
    ) -> Result<Vec<usize>, Refusal> {
        let Some(sub) = p
            .consumer_id
            .as_ref()
            .and_then(|id| self.by_consumer_id.get(id))
            .copied()
        else {
            return refuse("MessagePull for an unknown consumer");
        };
        let consumer = self.consumer_key(sub);
        let token = self.next_token;
        self.next_token += 1;
        let Some(c) = self.consumers.get_mut(&sub) else {
            return refuse("MessagePull for a closed consumer");
        };
        let owner = c.destination.owner(self.cfg.shards);
        out.push(Action::Route(
            owner,
            Op::Pull {
                destination: c.destination.clone(),
                consumer,
                cancel: false,
            },
        ));
        // A pull replaced by this one needs no answer any more.
        if let Some((old, _)) = c.pulling.take() {
            self.pulls.remove(&old);
        }
        match p.timeout {
            0 => c.pulling = None,
            t if t < 0 => {
                // Whatever the owner had is on its way once this fence is.
                c.pulling = Some((token, false));
                self.pulls.insert(token, sub);
                out.push(Action::Route(
                    owner,
                    Op::Fence {
                        conn: self.conn,
                        token,
                    },
                ));
            }
            t => {
                c.pulling = Some((token, false));
                self.pulls.insert(token, sub);
                out.push(Action::Timer {
                    after: std::time::Duration::from_millis(t as u64),
                    token,
                });
            }
        }
        Ok(vec![owner])
    }

    /// A timer the session set went off (a MessagePull's deadline).
    pub fn timer(&mut self, token: u64, out: &mut Vec<Action>) {
        self.pull_expired(token, out);
    }

    /// The pull `token` is over: if its consumer got nothing since, it is
    /// told so (a dispatch without a message: `receive` returns null) and
    /// the owner stops holding a message for it. One on its way meanwhile
    /// still comes, and the client keeps it for its next `receive`.
    fn pull_expired(&mut self, token: u64, out: &mut Vec<Action>) -> bool {
        let Some(sub) = self.pulls.remove(&token) else {
            return false;
        };
        let consumer = self.consumer_key(sub);
        let Some(c) = self.consumers.get_mut(&sub) else {
            return true;
        };
        if let Some((t, got)) = c.pulling {
            if t == token {
                c.pulling = None;
                // Cancelled even when a message came: one the owner handed
                // out just as an earlier pull expired may have been counted
                // for this one, and the owner must not keep a pull open.
                out.push(Action::Route(
                    c.destination.owner(self.cfg.shards),
                    Op::Pull {
                        destination: c.destination.clone(),
                        consumer,
                        cancel: true,
                    },
                ));
                if !got {
                    out.push(Action::Write(c.empty_dispatch()));
                }
            }
        }
        true
    }

    /// A shard has applied everything up to fence `token`.
    pub fn fenced(&mut self, token: u64, out: &mut Vec<Action>) {
        if self.pull_expired(token, out) {
            return;
        }
        if let Some(sub) = self.browse_ends.remove(&token) {
            if let Some(c) = self.consumers.get(&sub) {
                out.push(Action::Write(c.empty_dispatch()));
            }
            return;
        }
        if let Some(sub) = self.snapshots.remove(&token) {
            for d in self.cfg.temporary.all() {
                let cmd = self.advisory_dispatch(sub, &wire_temporary(&d), true, None);
                out.extend(cmd.map(Action::Write));
            }
            return;
        }
        let Some((remaining, command_id)) = self.pending.get_mut(&token) else {
            return;
        };
        *remaining -= 1;
        if *remaining == 0 {
            let command_id = *command_id;
            self.pending.remove(&token);
            out.push(Action::Write(response(command_id)));
        }
    }

    /// A broker refusal (e.g. a durable subscription in use elsewhere).
    pub fn refused(&mut self, reason: &str, out: &mut Vec<Action>) {
        let refusal = Refusal {
            class: JMS_EXCEPTION,
            message: reason.to_string(),
            fatal: true,
        };
        self.error(refusal, None, out);
    }

    fn connect(&mut self, c: &wire::ConnectionInfo) -> Result<Vec<usize>, Refusal> {
        let client_id = c.client_id.as_deref().filter(|id| !id.is_empty());
        if let Some(problem) = client_id.and_then(sub_name_problem) {
            return Err(Refusal {
                class: "javax.jms.InvalidClientIDException",
                message: format!("the client id {problem}"),
                fatal: true,
            });
        }
        self.client_id = client_id.map(str::to_string);
        self.connection_id = c.connection_id.clone();
        self.phase = Phase::Open;
        Ok(Vec::new())
    }

    /// The durable subscription a ConsumerInfo names, if any.
    fn durable_name(
        &self,
        name: Option<&str>,
        selector: Option<&str>,
        destination: &Destination,
    ) -> Result<Option<DurableName>, Refusal> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        if !destination.is_topic() {
            return refuse("a durable subscription needs a topic");
        }
        if let Some(problem) = sub_name_problem(name) {
            return refuse(format!("the durable subscription name {problem}"));
        }
        if selector.is_some_and(|s| s.len() > MAX_DURABLE_SELECTOR_BYTES) {
            return refuse(format!(
                "a durable subscription's selector is longer than {MAX_DURABLE_SELECTOR_BYTES} bytes"
            ));
        }
        match &self.client_id {
            Some(client_id) => Ok(Some(DurableName {
                client_id: client_id.clone(),
                name: name.to_string(),
            })),
            None => refuse("a durable subscription needs a client id on the connection"),
        }
    }

    /// Deletes a durable subscription (`Session.unsubscribe`). The broker
    /// deletes one through a consumer: this attaches a consumer that no
    /// message reaches (deliveries to it are dropped here and the
    /// subscription's messages go with it) and detaches it, deleting.
    /// Both ops go to the topic's owner in order.
    fn remove_subscription(
        &mut self,
        r: &wire::RemoveSubscriptionInfo,
        out: &mut Vec<Action>,
    ) -> Result<Vec<usize>, Refusal> {
        let Some(name) = r.subscription_name.as_deref() else {
            return refuse("RemoveSubscriptionInfo without a subscription name");
        };
        let client_id = r.client_id.clone().or_else(|| self.client_id.clone());
        let Some(client_id) = client_id else {
            return refuse("RemoveSubscriptionInfo without a client id");
        };
        if self
            .consumers
            .values()
            .any(|c| c.durable.as_ref().is_some_and(|d| d.name == name))
        {
            return Err(Refusal {
                class: "javax.jms.IllegalStateException",
                message: format!("the durable subscription '{name}' has an active consumer"),
                fatal: false,
            });
        }
        let Some(destination) = self.durables.remove(name) else {
            return unsupported(
                "deleting a durable subscription that was not opened on this connection",
            );
        };
        let sub = self.next_sub;
        self.next_sub += 1;
        let owner = destination.owner(self.cfg.shards);
        let consumer = self.consumer_key(sub);
        out.push(Action::Route(
            owner,
            Op::Subscribe(SubscribeOp {
                destination: destination.clone(),
                consumer,
                prefetch: 1,
                durable: Some(DurableName {
                    client_id,
                    name: name.to_string(),
                }),
                selector: None,
                exclusive: false,
                no_local: None,
            }),
        ));
        out.push(Action::Route(
            owner,
            Op::Unsubscribe {
                destination,
                consumer,
                destroy_durable: true,
                seen: Seen::All,
            },
        ));
        Ok(vec![owner])
    }

    fn send(&mut self, m: wire::Message, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        // Given back to a windowed producer whatever becomes of the
        // message (a refusal too: the client counted it), in the size its
        // client counted: ActiveMQ's `Message.getSize()`, 1 KiB plus the
        // marshalled properties and content as they came.
        if let (false, Some(id)) = (m.response_required, &m.producer_id) {
            if self.windowed.contains(id) {
                let size = 1024
                    + m.marshalled_properties.as_ref().map_or(0, Bytes::len)
                    + m.content.as_ref().map_or(0, Bytes::len);
                out.push(Action::Write(
                    wire::ProducerAck {
                        producer_id: Some(id.clone()),
                        size: i32::try_from(size).unwrap_or(i32::MAX),
                        ..wire::ProducerAck::default()
                    }
                    .into(),
                ));
            }
        }
        let tx = m.transaction_id.clone();
        if let Some(t) = &tx {
            self.open_transaction(t)?;
        }
        let msg = match (self.message(m), &tx) {
            (Ok(msg), _) => msg,
            (Err(r), Some(t)) => return Err(self.doom(t, r)),
            (Err(r), None) => return Err(r),
        };
        if let Some(t) = tx {
            self.hold(&t, TxWork::Send(msg))?;
            // Applied at commit; a Response now says only that it is held.
            return Ok(Vec::new());
        }
        let owner = msg.destination.owner(self.cfg.shards);
        out.push(Action::Route(owner, Op::Send(msg)));
        Ok(vec![owner])
    }

    /// Transaction `t` is to fail at commit because of `r` (which is
    /// returned, for the client to hear now too).
    fn doom(&mut self, t: &TransactionId, r: Refusal) -> Refusal {
        if let Some(tx) = self.transactions.get_mut(t) {
            tx.rollback_only.get_or_insert_with(|| r.message.clone());
        }
        r
    }

    /// Holds `work` in open transaction `t` until it commits, within
    /// [`MAX_TX_BYTES`] and [`MAX_TX_OPS`].
    fn hold(&mut self, t: &TransactionId, work: TxWork) -> Result<(), Refusal> {
        let bytes = match &work {
            TxWork::Send(m) => m.body.len() + Message::footprint(&m.properties, &m.body),
            TxWork::Ack(_) => 0,
        };
        let Some(tx) = self.transactions.get_mut(t) else {
            return refuse("the transaction is over");
        };
        if tx.work.len() >= MAX_TX_OPS || tx.bytes + bytes > MAX_TX_BYTES {
            let r = Refusal {
                class: "javax.jms.ResourceAllocationException",
                message: format!(
                    "a transaction holds at most {MAX_TX_OPS} sends and acks and {} MiB of messages until it commits; this one rolls back",
                    MAX_TX_BYTES >> 20
                ),
                fatal: false,
            };
            return Err(self.doom(t, r));
        }
        tx.bytes += bytes;
        tx.work.push(work);
        Ok(())
    }

    /// `t` is an open local transaction of this connection.
    fn open_transaction(&self, t: &TransactionId) -> Result<(), Refusal> {
        match t {
            TransactionId::Xa(_) => refuse(XA_REFUSAL),
            TransactionId::Local(_) if self.transactions.contains_key(t) => Ok(()),
            TransactionId::Local(l) => refuse(format!(
                "transaction {} was not begun on this connection (or is over)",
                l.value
            )),
        }
    }

    /// The broker's message for an OpenWire one.
    fn message(&mut self, m: wire::Message) -> Result<Arc<Message>, Refusal> {
        let Some(wire_dest) = &m.destination else {
            return refuse("a message without a destination");
        };
        let destination = broker_destination(wire_dest)?;
        let temporary = is_temporary(wire_dest);
        if temporary {
            // Anyone may answer to a live one (request/reply); the rights
            // in [[users]] name ordinary destinations.
            if self.cfg.temporary.owner(&destination).is_none() {
                return refuse(format!(
                    "temporary destination {} does not exist (its connection removed it or ended)",
                    wire_dest.physical_name
                ));
            }
        } else {
            self.decisions
                .authorize(
                    &self.cfg.security,
                    self.user.as_deref(),
                    &destination,
                    Right::Write,
                )
                .or_else(refuse)?;
        }
        let mut properties: Vec<Property> = Vec::with_capacity(8);
        let body = match m.kind {
            MessageKind::Text => compress::text_utf8(&m, self.max_body_bytes)
                .or_else(|e| refuse(format!("cannot read the TextMessage's body: {e}")))?
                .unwrap_or_default(),
            MessageKind::Bytes => {
                properties.push(body_kind("bytes"));
                compress::bytes(&m, self.max_body_bytes)
                    .or_else(|e| refuse(format!("cannot read the BytesMessage's body: {e}")))?
            }
            MessageKind::Message => Bytes::new(),
            // Kept as the client marshalled them (inflated if compressed),
            // and given back as the same kind: a map and a stream are
            // checked first, an object (Java serialization) never opened.
            MessageKind::Map | MessageKind::Stream | MessageKind::Object => {
                let (name, kind) = match m.kind {
                    MessageKind::Map => ("MapMessage", "map"),
                    MessageKind::Stream => ("StreamMessage", "stream"),
                    _ => ("ObjectMessage", "object"),
                };
                let checked = match m.kind {
                    MessageKind::Map => compress::map(&m, self.max_body_bytes).map(drop),
                    MessageKind::Stream => compress::stream(&m, self.max_body_bytes).map(drop),
                    _ => Ok(()),
                };
                checked.or_else(|e| refuse(format!("cannot read the {name}'s body: {e}")))?;
                properties.push(body_kind(kind));
                compress::plain_content(&m, self.max_body_bytes)
                    .or_else(|e| refuse(format!("cannot read the {name}'s body: {e}")))?
            }
        };
        if let Some(c) = &m.correlation_id {
            properties.push(property("correlation-id", c));
        }
        if let Some(r) = &m.reply_to {
            properties.push(property("reply-to", &reply_to_header(r)));
        }
        if let Some(t) = &m.jms_type {
            properties.push(property("type", t));
        }
        // The producer's own name for it (its JMSMessageID): a failover
        // resend is recognised by it (see `broker::producer_audit`).
        // Only for this connection's own producers (a client cannot speak
        // for another's, whose resends it would suppress), and bounded: it
        // goes out again as the JMSMessageID, a tight string.
        let own = self.connection_id.as_ref().and_then(|c| c.value.as_deref());
        if let Some(id) = &m.message_id {
            if let Some((p, conn)) = id
                .producer_id
                .as_ref()
                .and_then(|p| Some((p, p.connection_id.as_deref()?)))
                .filter(|(_, conn)| {
                    // Control characters (a NUL) would not survive a
                    // database's text column (see store::sql).
                    Some(*conn) == own
                        && conn.len() <= MAX_ORIGIN_CONNECTION_ID
                        && !conn.bytes().any(|b| b < 0x20)
                })
            {
                let origin = format!(
                    "{conn}:{}:{}:{}",
                    p.session_id, p.value, id.producer_sequence_id
                );
                properties.push((
                    Bytes::from_static(ORIGIN_PROPERTY.as_bytes()),
                    Bytes::from(origin),
                ));
            }
        }
        if let Some(marshalled) = &m.marshalled_properties {
            // The broker's own names are not a client's to set: a forged
            // kind would make other consumers misread the body.
            properties::for_each_as_text(marshalled, |k, v| {
                if k.as_ref() != ORIGIN_PROPERTY.as_bytes()
                    && k.as_ref() != BODY_KIND_PROPERTY.as_bytes()
                {
                    properties.push((k, v));
                }
            })
            .or_else(|e| refuse(format!("cannot read the message's properties: {e}")))?;
        }
        let footprint = Message::footprint(&properties, &body);
        // The frame was within the limit, but a compressed body inflates
        // and typed properties grow as text: what is stored must still fit
        // (a database mode could never write a bigger one, and would hold
        // every later receipt of the shard behind it).
        if footprint > self.max_body_bytes {
            return refuse(format!(
                "the message is {footprint} bytes once inflated, with its properties; the limit is {} (limits.max_frame_size, or what the database takes in one statement)",
                self.max_body_bytes
            ));
        }
        let msg = Arc::new(Message {
            id: self.ids.next(),
            destination,
            properties,
            body,
            priority: m.priority.clamp(0, 9) as u8,
            expires_ms: m.expiration.max(0) as u64,
            // A temporary destination does not outlive its connection, so
            // its messages are never stored (see `broker::temporary`).
            persistent: m.persistent && !temporary,
            timestamp_ms: if m.timestamp > 0 {
                m.timestamp as u64
            } else {
                now_ms()
            },
            charge: self.cfg.usage.charge(footprint),
        });
        Ok(msg)
    }

    /// Begin, commit (one phase) or roll back a local transaction. A commit
    /// goes through the broker's cross-shard commit (as STOMP's COMMIT):
    /// its sends and acks, grouped by owner shard, are applied atomically,
    /// and the returned token is answered once every part is applied (and,
    /// with a durable store, durable).
    fn transaction(
        &mut self,
        t: &TransactionInfo,
        out: &mut Vec<Action>,
    ) -> Result<Option<u64>, Refusal> {
        let Some(id) = &t.transaction_id else {
            return refuse("a TransactionInfo without a transaction id");
        };
        if matches!(id, TransactionId::Xa(_)) {
            return refuse(XA_REFUSAL);
        }
        match TransactionType::from_byte(t.transaction_type) {
            Some(TransactionType::Begin) => {
                if self.transactions.len() >= MAX_OPEN_TX && !self.transactions.contains_key(id) {
                    return refuse(format!(
                        "a connection keeps at most {MAX_OPEN_TX} transactions open"
                    ));
                }
                self.transactions.entry(id.clone()).or_default();
                Ok(None)
            }
            Some(TransactionType::Rollback) => {
                self.transactions.remove(id);
                Ok(None)
            }
            Some(TransactionType::CommitOnePhase) => {
                self.open_transaction(id)?;
                let tx = self.transactions.remove(id).unwrap_or_default();
                if let Some(why) = tx.rollback_only {
                    return Err(rolled_back(format!(
                        "the transaction was rolled back: part of it was refused ({why})"
                    )));
                }
                self.commit(tx.work, out)
            }
            Some(_) => refuse(XA_REFUSAL),
            None => refuse(format!(
                "unknown TransactionInfo type {}",
                t.transaction_type
            )),
        }
    }

    fn commit(&mut self, work: Vec<TxWork>, out: &mut Vec<Action>) -> Result<Option<u64>, Refusal> {
        // Every ack must still name what it was given for, before any is
        // settled: a consumer closed meanwhile gave its messages back (they
        // will come again), and a range that does not hold what the client
        // counted is not guessed at. Either way nothing is committed.
        for w in &work {
            if let TxWork::Ack(settle) = w {
                self.check_settle(settle).map_err(|why| {
                    rolled_back(format!("the transaction was rolled back: {why}"))
                })?;
            }
        }
        let mut parts: Vec<(usize, TxPart)> = Vec::new();
        for w in work {
            match w {
                TxWork::Send(msg) => {
                    let owner = msg.destination.owner(self.cfg.shards);
                    TxPart::of(&mut parts, owner).sends.push(msg);
                }
                // None: settled by an earlier ack of the same transaction.
                TxWork::Ack(settle) => {
                    if let Some((owner, destination, consumer, ids)) = self.settle(settle) {
                        TxPart::of(&mut parts, owner).acks.push(TxAck {
                            destination,
                            consumer,
                            ids,
                            nack: settle.nack,
                        });
                    }
                }
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        // The coordinator's id issuer, unique for the life of the data
        // directory: recovery matches prepared records to decisions by it.
        let tx = self.ids.next();
        let token = self.next_token;
        self.next_token += 1;
        for (shard, op) in commit_ops(tx, self.conn, token, parts) {
            out.push(Action::Route(shard, op));
        }
        Ok(Some(token))
    }

    /// Makes (operation 0) or removes (1) a temporary destination, and
    /// announces it on the advisory topic. DestinationInfo for an ordinary
    /// destination changes nothing (destinations exist when used).
    fn destination_info(
        &mut self,
        d: &DestinationInfo,
        out: &mut Vec<Action>,
    ) -> Result<Vec<usize>, Refusal> {
        let Some(wire_dest) = &d.destination else {
            return refuse("a DestinationInfo without a destination");
        };
        if !is_temporary(wire_dest) {
            return Ok(Vec::new());
        }
        let destination = broker_destination(wire_dest)?;
        match d.operation_type {
            0 => {
                let known = self.temporaries.iter().any(|(t, _)| *t == destination);
                if !known && self.temporaries.len() >= MAX_PER_CONNECTION {
                    return Err(Refusal {
                        class: "javax.jms.ResourceAllocationException",
                        message: format!(
                            "a connection has at most {MAX_PER_CONNECTION} temporary destinations"
                        ),
                        fatal: false,
                    });
                }
                if !self.cfg.temporary.add(&destination, self.conn) {
                    return refuse(format!(
                        "temporary destination {} belongs to another connection",
                        wire_dest.physical_name
                    ));
                }
                if !known {
                    self.temporaries.push((destination, wire_dest.clone()));
                }
                Ok(vec![self.announce(wire_dest, true, out)])
            }
            1 => {
                let Some(k) = self.temporaries.iter().position(|(t, _)| *t == destination) else {
                    return refuse(format!(
                        "temporary destination {} is not this connection's",
                        wire_dest.physical_name
                    ));
                };
                if self
                    .consumers
                    .values()
                    .any(|c| c.destination == destination)
                {
                    return refuse("a consumer is consuming from the temporary destination");
                }
                self.temporaries.remove(k);
                Ok(self.remove_temporary(destination, wire_dest, out))
            }
            other => refuse(format!("unknown DestinationInfo operation {other}")),
        }
    }

    /// Removes a temporary destination of this connection: from the
    /// broker-wide list, announced, and its messages (and queue) gone.
    /// The shards involved.
    fn remove_temporary(
        &mut self,
        destination: Destination,
        wire_dest: &wire::Destination,
        out: &mut Vec<Action>,
    ) -> Vec<usize> {
        self.cfg.temporary.remove(&destination, self.conn);
        let advisories = self.announce(wire_dest, false, out);
        let owner = destination.owner(self.cfg.shards);
        out.push(Action::Route(owner, Op::RemoveTemporary { destination }));
        vec![advisories, owner]
    }

    /// Publishes that `wire_dest` was made (or removed) on the advisory
    /// topic, as a message every watcher gets; the topic's shard.
    fn announce(
        &mut self,
        wire_dest: &wire::Destination,
        made: bool,
        out: &mut Vec<Action>,
    ) -> usize {
        let topic = Destination::Topic(ADVISORY_TOPIC.into());
        let owner = topic.owner(self.cfg.shards);
        let properties = vec![property(
            ADVISORY_OPERATION,
            if made { "add" } else { "remove" },
        )];
        let body = Bytes::from(reply_to_header(wire_dest));
        let footprint = Message::footprint(&properties, &body);
        let msg = Arc::new(Message {
            id: self.ids.next(),
            destination: topic,
            properties,
            body,
            priority: 4,
            expires_ms: 0,
            persistent: false,
            timestamp_ms: now_ms(),
            charge: self.cfg.usage.charge(footprint),
        });
        out.push(Action::Route(owner, Op::Send(msg)));
        owner
    }

    /// An advisory for consumer `sub`: `wire_dest` was made or removed.
    /// `id`: the broker message it comes from (acknowledged as any), or
    /// None for one made up from the list of live ones.
    fn advisory_dispatch(
        &mut self,
        sub: u64,
        wire_dest: &wire::Destination,
        made: bool,
        id: Option<MessageId>,
    ) -> Option<Command> {
        let c = self.consumers.get_mut(&sub)?;
        let mut msg = wire::Message::new(MessageKind::Message);
        msg.destination = Some(c.wire_destination.clone());
        msg.data_structure = Some(DataStructure::Command(Box::new(Command::DestinationInfo(
            DestinationInfo {
                destination: Some(wire_dest.clone()),
                operation_type: if made { 0 } else { 1 },
                ..DestinationInfo::default()
            },
        ))));
        let broker_id = id.unwrap_or_else(|| self.ids.next());
        msg.message_id = Some(wire::MessageId {
            text_view: Some(format!("{MESSAGE_ID_PREFIX}{broker_id}")),
            producer_id: Some(self.dispatch_producer.clone()),
            producer_sequence_id: self.next_dispatch,
            broker_sequence_id: broker_id as i64,
        });
        self.next_dispatch += 1;
        msg.producer_id = Some(self.dispatch_producer.clone());
        if id.is_some() {
            c.unacked.push_back(broker_id);
        }
        Some(
            MessageDispatch {
                consumer_id: Some(c.id.clone()),
                destination: Some(c.wire_destination.clone()),
                message: Some(Box::new(msg)),
                ..MessageDispatch::default()
            }
            .into(),
        )
    }

    fn subscribe(&mut self, c: ConsumerInfo, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let Some(consumer_id) = c.consumer_id else {
            return refuse("a ConsumerInfo without a consumer id");
        };
        if self.by_consumer_id.contains_key(&consumer_id) {
            return refuse("this consumer id is already in use");
        }
        let Some(wire_destination) = c.destination else {
            return refuse("a ConsumerInfo without a destination");
        };
        let advisory = is_temp_advisory(&wire_destination);
        if is_advisory(&wire_destination) && !advisory {
            // Brokk publishes no other advisories: the consumer is
            // accepted and never gets a message.
            self.advisory_consumers.insert(consumer_id);
            return Ok(Vec::new());
        }
        let destination = if advisory {
            Destination::Topic(ADVISORY_TOPIC.into())
        } else {
            broker_destination(&wire_destination)?
        };
        let temporary = is_temporary(&wire_destination);
        if temporary && self.cfg.temporary.owner(&destination) != Some(self.conn) {
            return refuse(format!(
                "temporary destination {} can be consumed only by the connection that made it, while it exists",
                wire_destination.physical_name
            ));
        }
        if c.browser && (advisory || destination.is_topic()) {
            return refuse("only a queue can be browsed");
        }
        let durable = self.durable_name(
            c.subscription_name.as_deref(),
            c.selector.as_deref(),
            &destination,
        )?;
        if durable.is_some() && temporary {
            // It would outlive the topic, which ends with its connection.
            return refuse("a durable subscription to a temporary topic");
        }
        let destination_is_topic = destination.is_topic();
        if c.prefetch_size < 0 {
            return refuse("a negative prefetch");
        }
        if !temporary && !advisory {
            self.decisions
                .authorize(
                    &self.cfg.security,
                    self.user.as_deref(),
                    &destination,
                    Right::Read,
                )
                .or_else(refuse)?;
        }
        let selector = match c.selector.as_deref().filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(text) => match Selector::parse(text) {
                Ok(s) => Some(s),
                Err(e) => {
                    let shown: String = text.chars().take(200).collect();
                    return Err(Refusal {
                        class: SELECTOR_EXCEPTION,
                        message: format!("{e} (selector: {shown})"),
                        fatal: false,
                    });
                }
            },
        };
        let sub = self.next_sub;
        self.next_sub += 1;
        let owner = destination.owner(self.cfg.shards);
        self.by_consumer_id.insert(consumer_id.clone(), sub);
        if let Some(d) = &durable {
            self.durables.insert(d.name.clone(), destination.clone());
        }
        self.consumers.insert(
            sub,
            Consumer {
                id: consumer_id,
                destination: destination.clone(),
                wire_destination,
                durable: durable.clone(),
                unacked: VecDeque::new(),
                advisory,
                browser: c.browser,
                pulling: None,
            },
        );
        if c.browser {
            // A look at what waits, then the end of it (a dispatch without
            // a message) once the owner has sent it: nothing is taken.
            let token = self.next_token;
            self.next_token += 1;
            self.browse_ends.insert(token, sub);
            out.push(Action::Route(
                owner,
                Op::Browse {
                    destination,
                    consumer: self.consumer_key(sub),
                    max: BROWSE_MAX,
                    selector,
                },
            ));
            out.push(Action::Route(
                owner,
                Op::Fence {
                    conn: self.conn,
                    token,
                },
            ));
            return Ok(vec![owner]);
        }
        let subscribe_then_fence = advisory.then(|| {
            let token = self.next_token;
            self.next_token += 1;
            self.snapshots.insert(token, sub);
            token
        });
        out.push(Action::Route(
            owner,
            Op::Subscribe(SubscribeOp {
                destination,
                consumer: self.consumer_key(sub),
                prefetch: (c.prefetch_size as u32).min(MAX_PREFETCH),
                durable,
                selector,
                // Queues only, as in ActiveMQ; noLocal means topics.
                exclusive: c.exclusive && !destination_is_topic,
                no_local: (c.no_local && destination_is_topic)
                    .then(|| {
                        self.connection_id
                            .as_ref()
                            .and_then(|id| id.value.as_deref())
                    })
                    .flatten()
                    .map(Arc::from),
            }),
        ));
        if let Some(token) = subscribe_then_fence {
            // Told what lives once the subscription is in place on the
            // topic's shard: every name announced there before it is in
            // the list by then, and any later one reaches the subscription
            // (one may come twice; the client keeps a set).
            out.push(Action::Route(
                owner,
                Op::Fence {
                    conn: self.conn,
                    token,
                },
            ));
        }
        Ok(vec![owner])
    }

    fn consumer_key(&self, sub: u64) -> ConsumerKey {
        self.conn.consumer(sub)
    }

    fn remove(&mut self, r: RemoveInfo, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let own = matches!(r.object_id, Some(wire::DataStructure::ConsumerId(_)));
        let delivered = Delivered::from_wire(r.last_delivered_sequence_id, own);
        let subs: Vec<u64> = match &r.object_id {
            Some(wire::DataStructure::ConsumerId(id)) => match self.by_consumer_id.get(id) {
                Some(sub) => vec![*sub],
                None if self.advisory_consumers.remove(id) => Vec::new(),
                None => return refuse("RemoveInfo of an unknown consumer"),
            },
            Some(wire::DataStructure::SessionId(id)) => {
                // The client removes a session's producers with it.
                self.windowed
                    .retain(|p| !(p.session_id == id.value && p.connection_id == id.connection_id));
                self.consumers
                    .iter()
                    .filter(|(_, c)| {
                        c.id.session_id == id.value && c.id.connection_id == id.connection_id
                    })
                    .map(|(sub, _)| *sub)
                    .collect()
            }
            Some(wire::DataStructure::ConnectionId(_)) => self.consumers.keys().copied().collect(),
            Some(wire::DataStructure::ProducerId(id)) => {
                self.windowed.remove(id);
                Vec::new()
            }
            _ => Vec::new(),
        };
        let mut shards: Vec<usize> = subs
            .into_iter()
            .filter_map(|sub| self.close_consumer(sub, delivered, out))
            .collect();
        if matches!(r.object_id, Some(wire::DataStructure::ConnectionId(_))) {
            // Its temporary destinations end with it (after its consumers).
            for (destination, wire_dest) in std::mem::take(&mut self.temporaries) {
                shards.extend(self.remove_temporary(destination, &wire_dest, out));
            }
        }
        Ok(shards)
    }

    /// Closes one consumer; what it had not acknowledged goes back to its
    /// destination for redelivery, counted as redelivered only where the
    /// application got it (`delivered`). Returns the owner shard.
    fn close_consumer(
        &mut self,
        sub: u64,
        delivered: Delivered,
        out: &mut Vec<Action>,
    ) -> Option<usize> {
        let c = self.consumers.remove(&sub)?;
        self.by_consumer_id.remove(&c.id);
        if let Some((token, _)) = c.pulling {
            self.pulls.remove(&token);
        }
        let owner = c.destination.owner(self.cfg.shards);
        if c.browser {
            // It never subscribed.
            return None;
        }
        out.push(Action::Route(
            owner,
            Op::Unsubscribe {
                destination: c.destination,
                consumer: self.consumer_key(sub),
                destroy_durable: false,
                seen: delivered.seen(&c.unacked),
            },
        ));
        Some(owner)
    }

    /// The connection is gone: every consumer closes, then its temporary
    /// destinations go (after the consumers: their messages come back to
    /// the queue first, in order on its shard, and go with it).
    pub fn teardown(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Closed;
        let subs: Vec<u64> = self.consumers.keys().copied().collect();
        for sub in subs {
            // A broken connection says nothing of what its application got.
            self.close_consumer(sub, Delivered::Unknown, out);
        }
        for (destination, wire_dest) in std::mem::take(&mut self.temporaries) {
            self.remove_temporary(destination, &wire_dest, out);
        }
    }

    fn ack(&mut self, a: &MessageAck, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let Some(kind) = AckType::from_byte(a.ack_type) else {
            return refuse(format!("unknown MessageAck type {}", a.ack_type));
        };
        // Consuming acks of an open transaction wait for its commit; the
        // others (and any naming a transaction that is over: the client
        // sends its POISON ack after the rollback) apply now.
        // A POISON ack is never held: the client gave up on the messages
        // (ActiveMQ refuses one in a transaction; its client sends it
        // after the rollback).
        let consuming = !matches!(
            kind,
            AckType::Delivered | AckType::Redelivered | AckType::Poison
        );
        let tx = a
            .transaction_id
            .clone()
            .filter(|t| consuming && self.transactions.contains_key(t));
        if tx.is_none() && matches!(kind, AckType::Standard | AckType::Individual) {
            if let Some(t) = &a.transaction_id {
                self.open_transaction(t)?;
            }
        }
        let result = self.ack_in(a, kind, tx.as_ref(), out);
        match (result, &tx) {
            (Err(r), Some(t)) => Err(self.doom(t, r)),
            (result, _) => result,
        }
    }

    fn ack_in(
        &mut self,
        a: &MessageAck,
        kind: AckType,
        tx: Option<&TransactionId>,
        out: &mut Vec<Action>,
    ) -> Result<Vec<usize>, Refusal> {
        let Some(sub) = a
            .consumer_id
            .as_ref()
            .and_then(|id| self.by_consumer_id.get(id))
        else {
            return refuse("MessageAck for an unknown consumer");
        };
        let sub = *sub;
        if self.consumers.get(&sub).is_some_and(|c| c.browser) {
            // A browser's messages were never taken: nothing to settle,
            // in a transaction or not.
            return Ok(Vec::new());
        }
        let nack = match kind {
            // Handed to the application, not acknowledged: the prefetch
            // window grows by that much (ActiveMQ's prefetch extension), or
            // a transacted session could not receive more than its
            // prefetch before it commits.
            AckType::Delivered => return Ok(self.delivered(sub, a.message_count, out)),
            // A note about a redelivery: nothing changes.
            AckType::Redelivered => return Ok(Vec::new()),
            AckType::Poison => true,
            AckType::Standard | AckType::Individual | AckType::Unmatched | AckType::Expired => {
                false
            }
        };
        let broker_id =
            |id: &Option<wire::MessageId>| id.as_ref().map(|m| m.broker_sequence_id as u64);
        let Some(last) = broker_id(&a.last_message_id) else {
            return refuse("MessageAck without a last message id");
        };
        if !self.consumers.contains_key(&sub) {
            return refuse("MessageAck for a closed consumer");
        }
        let settle = Settle {
            sub,
            first: broker_id(&a.first_message_id),
            last,
            individual: kind == AckType::Individual,
            nack,
        };
        if let Some(t) = tx {
            self.hold(t, TxWork::Ack(settle))?;
            return Ok(Vec::new());
        }
        let Some((owner, destination, consumer, ids)) = self.settle(settle) else {
            return Ok(Vec::new());
        };
        let op = if nack {
            // The client gave up on them (past its redelivery limit):
            // dead-lettered at once, as ActiveMQ does.
            Op::Poison {
                destination,
                consumer,
                ids,
            }
        } else {
            Op::Ack {
                destination,
                consumer,
                ids,
            }
        };
        out.push(Action::Route(owner, op));
        Ok(vec![owner])
    }

    /// A client's ConsumerControl: ActiveMQ's failover transport restores
    /// a consumer with prefetch 0 while the connection recovers, then sends
    /// its own prefetch this way; without it the consumer, which does not
    /// pull, would get nothing more. Other fields (close, stop, start,
    /// flush) are the broker's to send.
    fn consumer_control(
        &mut self,
        cc: &wire::ConsumerControl,
        out: &mut Vec<Action>,
    ) -> Vec<usize> {
        let Some(sub) = cc
            .consumer_id
            .as_ref()
            .and_then(|id| self.by_consumer_id.get(id))
            .copied()
        else {
            return Vec::new();
        };
        let Some(c) = self.consumers.get(&sub).filter(|c| !c.browser) else {
            return Vec::new();
        };
        let Ok(prefetch) = u32::try_from(cc.prefetch) else {
            return Vec::new();
        };
        let prefetch = prefetch.min(MAX_PREFETCH);
        let owner = c.destination.owner(self.cfg.shards);
        out.push(Action::Route(
            owner,
            Op::Prefetch {
                destination: c.destination.clone(),
                consumer: self.consumer_key(sub),
                prefetch,
            },
        ));
        vec![owner]
    }

    /// A DELIVERED ack of `count` messages for consumer `sub`.
    fn delivered(&mut self, sub: u64, count: i32, out: &mut Vec<Action>) -> Vec<usize> {
        let Some(c) = self.consumers.get(&sub) else {
            return Vec::new();
        };
        let count = u32::try_from(count).unwrap_or(0);
        if count == 0 {
            return Vec::new();
        }
        let owner = c.destination.owner(self.cfg.shards);
        out.push(Action::Route(
            owner,
            Op::Delivered {
                destination: c.destination.clone(),
                consumer: self.consumer_key(sub),
                count,
            },
        ));
        vec![owner]
    }

    /// Whether `s` still names what it was given for (a transacted ack,
    /// checked at commit): its consumer is open, and its first and last
    /// messages are unacknowledged, in that order (a range that is not is
    /// not guessed at).
    fn check_settle(&self, s: &Settle) -> Result<(), String> {
        let Some(c) = self.consumers.get(&s.sub) else {
            return Err("it acknowledges messages of a consumer closed before the commit".into());
        };
        let Some(end) = c.unacked.iter().position(|m| *m == s.last) else {
            return Err(format!(
                "message {} it acknowledges is not held by its consumer",
                s.last
            ));
        };
        if s.individual {
            return Ok(());
        }
        // The message count is not checked: ActiveMQ does not hold a
        // transacted ack to it either (a rollback's redelivery can make
        // what the client counted differ from the range).
        match s.first {
            Some(first)
                if c.unacked
                    .iter()
                    .position(|m| *m == first)
                    .is_some_and(|i| i <= end) =>
            {
                Ok(())
            }
            Some(first) => Err(format!(
                "message {first} it acknowledges is not held by its consumer"
            )),
            None => Err("an acknowledgement without a first message".into()),
        }
    }

    /// Takes what `s` settles out of its consumer's unacknowledged
    /// messages: (owner shard, destination, consumer, ids). None when there
    /// is nothing (the consumer closed, or a range overlapping an earlier
    /// one was settled already).
    fn settle(&mut self, s: Settle) -> Option<(usize, Destination, ConsumerKey, Vec<MessageId>)> {
        let consumer = self.consumer_key(s.sub);
        let c = self.consumers.get_mut(&s.sub)?;
        let end = c.unacked.iter().position(|m| *m == s.last)?;
        let ids: Vec<MessageId> = if s.individual {
            c.unacked.remove(end).into_iter().collect()
        } else {
            // A range: first..=last of what was dispatched to this consumer.
            let start = s
                .first
                .and_then(|first| c.unacked.iter().position(|m| *m == first))
                .filter(|i| *i <= end)
                .unwrap_or(0);
            c.unacked.drain(start..=end).collect()
        };
        let destination = c.destination.clone();
        Some((
            destination.owner(self.cfg.shards),
            destination,
            consumer,
            ids,
        ))
    }

    /// Turns deliveries for consumer `sub` into MessageDispatch commands.
    /// Every delivery waits for the client's MessageAck, which is also
    /// what returns prefetch credit. Returns how many dispatches went into
    /// `out` (none for a consumer closed meanwhile: those are not sent).
    pub fn deliver(
        &mut self,
        sub: u64,
        deliveries: Vec<Delivery>,
        out: &mut Vec<Command>,
    ) -> usize {
        let before = out.len();
        let Some(c) = self.consumers.get_mut(&sub) else {
            // Closed meanwhile: the owner took these back already.
            return 0;
        };
        if c.advisory {
            for d in deliveries {
                let announced = reply_to_destination(&String::from_utf8_lossy(&d.msg.body));
                let made = d.msg.properties.iter().any(|(k, v)| {
                    k.as_ref() == ADVISORY_OPERATION.as_bytes() && v.as_ref() == b"add"
                });
                let cmd =
                    announced.and_then(|w| self.advisory_dispatch(sub, &w, made, Some(d.msg.id)));
                out.extend(cmd);
            }
            return out.len() - before;
        }
        for d in deliveries {
            let m = &d.msg;
            let mut msg = to_wire_message(m, &c.wire_destination);
            // The JMSMessageID its producer knows it by, if an OpenWire
            // one sent it; the client's own audit goes by the producer id
            // and sequence below, unique per delivery.
            let text_view = match origin_of(&m.properties) {
                Some(o) => std::str::from_utf8(o)
                    .map(str::to_owned)
                    .unwrap_or_else(|_| String::from_utf8_lossy(o).into_owned()),
                None => format!("{MESSAGE_ID_PREFIX}{}", m.id),
            };
            msg.message_id = Some(wire::MessageId {
                text_view: Some(text_view),
                producer_id: Some(self.dispatch_producer.clone()),
                producer_sequence_id: self.next_dispatch,
                broker_sequence_id: m.id as i64,
            });
            self.next_dispatch += 1;
            msg.producer_id = Some(self.dispatch_producer.clone());
            let redelivery_counter = i32::try_from(d.redeliveries).unwrap_or(i32::MAX);
            msg.redelivery_counter = redelivery_counter;
            if !c.browser {
                c.unacked.push_back(m.id);
            }
            if let Some((_, got)) = &mut c.pulling {
                *got = true;
            }
            out.push(
                MessageDispatch {
                    consumer_id: Some(c.id.clone()),
                    destination: Some(c.wire_destination.clone()),
                    message: Some(Box::new(msg)),
                    redelivery_counter,
                    ..MessageDispatch::default()
                }
                .into(),
            );
        }
        out.len() - before
    }
}

fn response(correlation_id: i32) -> Command {
    Response {
        correlation_id,
        ..Response::default()
    }
    .into()
}

fn body_kind(kind: &'static str) -> Property {
    (
        Bytes::from_static(BODY_KIND_PROPERTY.as_bytes()),
        Bytes::from_static(kind.as_bytes()),
    )
}

fn property(name: &str, value: &str) -> Property {
    (
        Bytes::copy_from_slice(name.as_bytes()),
        Bytes::copy_from_slice(value.as_bytes()),
    )
}

/// ActiveMQ's advisory topics (`ActiveMQ.Advisory.TempQueue,...`, which
/// the client subscribes to on its own).
fn is_advisory(d: &wire::Destination) -> bool {
    d.kind == DestinationKind::Topic && d.physical_name.starts_with("ActiveMQ.Advisory.")
}

/// The broker's destination for an OpenWire one. Temporary and composite
/// destinations are not supported yet.
fn broker_destination(d: &wire::Destination) -> Result<Destination, Refusal> {
    let prefix = match d.kind {
        DestinationKind::Queue => "/queue/",
        DestinationKind::Topic => "/topic/",
        // The client's generated name (`ID:<connection id>:<n>`) under the
        // broker's reserved prefix: no client can name it directly.
        DestinationKind::TempQueue | DestinationKind::TempTopic => {
            let name = &d.physical_name;
            if name.is_empty() || name.len() > MAX_NAME_BYTES - TEMPORARY_PREFIX.len() {
                return refuse("a temporary destination name must have 1 to 236 bytes");
            }
            if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return refuse(
                    "a temporary destination name contains a control character or whitespace",
                );
            }
            return Ok(Destination::temporary(
                name,
                d.kind == DestinationKind::TempTopic,
            ));
        }
    };
    if d.physical_name.contains(',') {
        return unsupported("a composite destination");
    }
    Destination::parse(&format!("{prefix}{}", d.physical_name)).or_else(|e| refuse(e.to_string()))
}

fn is_temporary(d: &wire::Destination) -> bool {
    matches!(
        d.kind,
        DestinationKind::TempQueue | DestinationKind::TempTopic
    )
}

/// The client's advisory consumer for temporary destinations (ActiveMQ's
/// `ActiveMQ.Advisory.TempQueue,ActiveMQ.Advisory.TempTopic`).
fn is_temp_advisory(d: &wire::Destination) -> bool {
    is_advisory(d) && d.physical_name.contains("ActiveMQ.Advisory.Temp")
}

/// The client's name of a live temporary destination.
fn wire_temporary(d: &Destination) -> wire::Destination {
    wire::Destination {
        kind: if d.is_topic() {
            DestinationKind::TempTopic
        } else {
            DestinationKind::TempQueue
        },
        physical_name: d.client_name().to_string(),
    }
}

/// The property of an announcement on the advisory topic: `add` or
/// `remove` (the body is the destination, as a `reply-to` header).
const ADVISORY_OPERATION: &str = "brokk-temporary";

/// `reply-to` as ActiveMQ's STOMP mapping writes it.
fn reply_to_header(d: &wire::Destination) -> String {
    let prefix = match d.kind {
        DestinationKind::Queue => "/queue/",
        DestinationKind::Topic => "/topic/",
        DestinationKind::TempQueue => "/temp-queue/",
        DestinationKind::TempTopic => "/temp-topic/",
    };
    format!("{prefix}{}", d.physical_name)
}

fn reply_to_destination(header: &str) -> Option<wire::Destination> {
    let kinds = [
        ("/queue/", DestinationKind::Queue),
        ("/topic/", DestinationKind::Topic),
        ("/temp-queue/", DestinationKind::TempQueue),
        ("/temp-topic/", DestinationKind::TempTopic),
    ];
    kinds.iter().find_map(|(prefix, kind)| {
        header.strip_prefix(prefix).map(|name| wire::Destination {
            kind: *kind,
            physical_name: name.to_string(),
        })
    })
}

/// The broker's message as ActiveMQ's client expects it: JMS headers from
/// their STOMP names, every other property a string property; a
/// BytesMessage if it was sent as one or its body is not UTF-8, else a
/// TextMessage.
fn to_wire_message(m: &Message, destination: &wire::Destination) -> wire::Message {
    // The kind it was sent as, when not text (see BODY_KIND_PROPERTY).
    let mut kind = None;
    let mut msg = wire::Message::new(MessageKind::Text);
    // Everything but these travels as a string property.
    let header = |k: &[u8]| {
        matches!(k, b"correlation-id" | b"reply-to" | b"type")
            || k == BODY_KIND_PROPERTY.as_bytes()
            || k == ORIGIN_PROPERTY.as_bytes()
    };
    for (k, v) in &m.properties {
        let value = || String::from_utf8_lossy(v);
        match &k[..] {
            b"correlation-id" => msg.correlation_id = Some(value().into_owned()),
            b"reply-to" => msg.reply_to = reply_to_destination(&value()),
            b"type" => msg.jms_type = Some(value().into_owned()),
            k if k == BODY_KIND_PROPERTY.as_bytes() => {
                kind = match v.as_ref() {
                    b"bytes" => Some(MessageKind::Bytes),
                    b"map" => Some(MessageKind::Map),
                    b"stream" => Some(MessageKind::Stream),
                    b"object" => Some(MessageKind::Object),
                    _ => None,
                }
            }
            // The message id (see `deliver`), not a property.
            _ => {}
        }
    }
    match kind {
        Some(k @ (MessageKind::Map | MessageKind::Stream | MessageKind::Object)) => {
            msg.kind = k;
            msg.compressed = false;
            msg.content = (!m.body.is_empty()).then(|| m.body.clone());
        }
        Some(_) => compress::set_bytes(&mut msg, m.body.clone(), false),
        None => match std::str::from_utf8(&m.body) {
            Ok(t) => compress::set_text(&mut msg, t, false),
            Err(_) => compress::set_bytes(&mut msg, m.body.clone(), false),
        },
    }
    // Marshalled straight from the broker's bytes: no map is built.
    let props = m
        .properties
        .iter()
        .filter(|(k, _)| !header(k))
        .map(|(k, v)| (k.as_ref(), v.as_ref()));
    if props.clone().next().is_some() {
        let mut out = BytesMut::new();
        // Strings only: this cannot fail past the codec's own bounds, and
        // a message that came in within them goes out within them.
        match properties::marshal_text_entries(props, &mut out) {
            Ok(()) => msg.marshalled_properties = Some(out.freeze()),
            Err(e) => {
                tracing::warn!(error = %e, id = m.id, "message properties dropped on the way to OpenWire")
            }
        }
    }
    msg.destination = Some(destination.clone());
    msg.persistent = m.persistent;
    msg.priority = m.priority as i8;
    msg.expiration = m.expires_ms as i64;
    msg.timestamp = m.timestamp_ms as i64;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::MemoryUsage;
    use crate::protocol::openwire::commands::{
        ConnectionId, ConnectionInfo, LocalTransactionId, SessionId, XaTransactionId,
    };

    fn session() -> Session {
        session_on(Rc::new(SessionConfig::for_tests(2)), 1)
    }

    /// A session on connection `conn` of shard 0, sharing `cfg` (the
    /// broker-wide temporary destinations) with others.
    fn session_on(cfg: Rc<SessionConfig>, conn: u64) -> Session {
        let mut s = Session::new(
            cfg,
            Rc::new(MessageIds::new(0, conn)),
            ConnRef { shard: 0, conn },
            1 << 20,
        );
        let mut out = Vec::new();
        s.handle(
            ConnectionInfo {
                command_id: 1,
                response_required: true,
                ..ConnectionInfo::default()
            }
            .into(),
            &mut out,
        );
        assert!(s.is_open());
        assert!(matches!(&out[..], [Action::Write(Command::Response(r))] if r.correlation_id == 1));
        s
    }

    fn consumer_id(n: i64) -> ConsumerId {
        ConsumerId {
            connection_id: Some("ID:c".into()),
            session_id: 1,
            value: n,
        }
    }

    fn text_to(dest: wire::Destination, persistent: bool, command_id: i32) -> Command {
        let mut m = wire::Message::new(MessageKind::Text);
        compress::set_text(&mut m, "hi", false);
        m.destination = Some(dest);
        m.persistent = persistent;
        m.command_id = command_id;
        m.response_required = persistent;
        m.into()
    }

    fn text_msg(dest: wire::Destination, persistent: bool, command_id: i32) -> Box<wire::Message> {
        match text_to(dest, persistent, command_id) {
            Command::Message(m) => m,
            _ => unreachable!("text_to makes a Message"),
        }
    }

    fn responses(out: &[Action]) -> Vec<i32> {
        out.iter()
            .filter_map(|a| match a {
                Action::Write(Command::Response(r)) => Some(r.correlation_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_persistent_send_is_answered_when_its_owner_is_fenced() {
        let mut s = session();
        let mut out = Vec::new();
        s.handle(text_to(wire::Destination::queue("q"), true, 7), &mut out);
        let token = match &out[..] {
            [Action::Route(a, Op::Send(m)), Action::Route(b, Op::Fence { token, .. })] => {
                assert_eq!(a, b);
                assert!(m.persistent);
                assert_eq!(&m.body[..], b"hi");
                *token
            }
            other => panic!("unexpected {other:?}"),
        };
        out.clear();
        s.fenced(token, &mut out);
        assert_eq!(responses(&out), vec![7]);
        // Non-persistent without response_required: fire and forget.
        out.clear();
        s.handle(text_to(wire::Destination::queue("q"), false, 8), &mut out);
        assert!(
            matches!(&out[..], [Action::Route(_, Op::Send(_))]),
            "{out:?}"
        );
    }

    /// Opens consumer 1 (sub 0) on queue q, prefetch 100; what it routed.
    fn consumer_on_q(s: &mut Session) -> Vec<Action> {
        let mut out = Vec::new();
        let info = ConsumerInfo {
            consumer_id: Some(consumer_id(1)),
            destination: Some(wire::Destination::queue("q")),
            prefetch_size: 100,
            ..ConsumerInfo::default()
        };
        s.handle(info.into(), &mut out);
        out
    }

    /// A consumer (sub 0) on queue q with messages 1..=4 dispatched (1
    /// a redelivery): their wire ids.
    fn consumer_with_four(s: &mut Session) -> Vec<wire::MessageId> {
        let out = consumer_on_q(s);
        assert!(
            matches!(&out[..], [Action::Route(_, Op::Subscribe(_))]),
            "{out:?}"
        );
        let usage = Arc::new(MemoryUsage::default());
        let deliveries = (1..=4)
            .map(|id| Delivery {
                msg: Arc::new(Message {
                    properties: vec![property(BODY_KIND_PROPERTY, "bytes")],
                    body: Bytes::from_static(b"text-like"),
                    timestamp_ms: 1,
                    ..Message::for_tests(id, Destination::queue("q"), &usage)
                }),
                redelivered: id == 1,
                redeliveries: u32::from(id == 1),
            })
            .collect();
        let mut dispatched = Vec::new();
        s.deliver(0, deliveries, &mut dispatched);
        let ids: Vec<wire::MessageId> = dispatched
            .iter()
            .map(|c| match c {
                Command::MessageDispatch(d) => {
                    let m = d.message.as_ref().unwrap();
                    assert_eq!(m.kind, MessageKind::Bytes, "sent as bytes, stays bytes");
                    assert_eq!(
                        d.redelivery_counter,
                        i32::from(m.message_id.as_ref().unwrap().broker_sequence_id == 1)
                    );
                    m.message_id.clone().unwrap()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        ids
    }

    fn ack_of(ids: &[wire::MessageId], kind: AckType, first: usize, last: usize) -> MessageAck {
        MessageAck {
            consumer_id: Some(consumer_id(1)),
            ack_type: kind as i8,
            first_message_id: Some(ids[first].clone()),
            last_message_id: Some(ids[last].clone()),
            ..MessageAck::default()
        }
    }

    #[test]
    fn acks_settle_ranges_and_single_messages() {
        let mut s = session();
        let mut out = Vec::new();
        let ids = consumer_with_four(&mut s);
        let ack = |kind: AckType, first: usize, last: usize| MessageAck {
            consumer_id: Some(consumer_id(1)),
            ack_type: kind as i8,
            first_message_id: Some(ids[first].clone()),
            last_message_id: Some(ids[last].clone()),
            ..MessageAck::default()
        };
        let acked = |out: &mut Vec<Action>| match std::mem::take(out).as_slice() {
            [Action::Route(_, Op::Ack { ids, .. })] => ids.clone(),
            [] => Vec::new(),
            other => panic!("unexpected {other:?}"),
        };
        out.clear();
        s.handle(ack(AckType::Individual, 2, 2).into(), &mut out);
        assert_eq!(acked(&mut out), vec![3]);
        s.handle(ack(AckType::Delivered, 0, 1).into(), &mut out);
        assert_eq!(
            acked(&mut out),
            Vec::<MessageId>::new(),
            "delivered consumes nothing"
        );
        s.handle(ack(AckType::Standard, 0, 3).into(), &mut out);
        assert_eq!(acked(&mut out), vec![1, 2, 4]);
        s.handle(ack(AckType::Standard, 0, 3).into(), &mut out);
        assert_eq!(acked(&mut out), Vec::<MessageId>::new(), "settled already");
    }

    fn local_tx(n: i64) -> TransactionId {
        TransactionId::Local(LocalTransactionId {
            value: n,
            connection_id: None,
        })
    }

    fn tx_info(t: &TransactionId, kind: TransactionType, command_id: i32) -> Command {
        TransactionInfo {
            command_id,
            response_required: kind != TransactionType::Begin,
            transaction_id: Some(t.clone()),
            transaction_type: kind as i8,
            ..TransactionInfo::default()
        }
        .into()
    }

    /// A destination name whose owner (of two shards) is `shard`.
    fn queue_on(shard: usize) -> String {
        (0..)
            .map(|k| format!("q{k}"))
            .find(|n| Destination::queue(n).owner(2) == shard)
            .unwrap()
    }

    #[test]
    fn a_commit_applies_sends_and_acks_across_shards_and_is_answered_once_applied() {
        let mut s = session();
        let ids = consumer_with_four(&mut s);
        let mut out = Vec::new();
        let t = local_tx(1);
        s.handle(tx_info(&t, TransactionType::Begin, 10), &mut out);
        for (k, shard) in [0usize, 1].into_iter().enumerate() {
            let mut m = match text_to(
                wire::Destination::queue(queue_on(shard)),
                true,
                11 + k as i32,
            ) {
                Command::Message(m) => m,
                _ => unreachable!(),
            };
            m.transaction_id = Some(t.clone());
            s.handle(Command::Message(m), &mut out);
        }
        let mut ack = ack_of(&ids, AckType::Standard, 0, 1);
        ack.transaction_id = Some(t.clone());
        s.handle(ack.into(), &mut out);
        // Held: a persistent send in a transaction is answered at once,
        // and nothing reaches a shard before the commit.
        assert_eq!(responses(&out), vec![11, 12]);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Route(..))),
            "{out:?}"
        );
        out.clear();
        s.handle(tx_info(&t, TransactionType::CommitOnePhase, 13), &mut out);
        let Some(Action::Route(
            0,
            Op::TxCoordinate {
                token,
                participants,
                ..
            },
        )) = out.first()
        else {
            panic!("the coordination goes first, to the connection's shard: {out:?}");
        };
        let token = *token;
        assert_eq!(participants.len(), 2);
        let mut sends = 0;
        let mut acked = Vec::new();
        for a in &out[1..] {
            match a {
                Action::Route(owner, Op::TxPrepare { part, alone, .. }) => {
                    assert!(!alone);
                    for m in &part.sends {
                        assert_eq!(m.destination.owner(2), *owner);
                        sends += 1;
                    }
                    for a in &part.acks {
                        assert!(!a.nack);
                        acked.extend(a.ids.iter().copied());
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((sends, acked), (2, vec![1, 2]));
        assert!(
            responses(&out).is_empty(),
            "answered once applied, not before"
        );
        out.clear();
        s.fenced(token, &mut out);
        assert_eq!(responses(&out), vec![13]);
        // Over: another commit of it is refused.
        out.clear();
        s.handle(tx_info(&t, TransactionType::CommitOnePhase, 14), &mut out);
        assert!(
            matches!(&out[..], [Action::Write(Command::ExceptionResponse(e))] if e.correlation_id == 14)
        );
        assert!(s.is_open());
    }

    #[test]
    fn a_rollback_drops_the_sends_and_leaves_the_acked_messages_unacknowledged() {
        let mut s = session();
        let ids = consumer_with_four(&mut s);
        let mut out = Vec::new();
        let t = local_tx(2);
        s.handle(tx_info(&t, TransactionType::Begin, 10), &mut out);
        let mut m = text_msg(wire::Destination::queue("q"), false, 11);
        m.transaction_id = Some(t.clone());
        s.handle(Command::Message(m), &mut out);
        let mut ack = ack_of(&ids, AckType::Standard, 0, 3);
        ack.transaction_id = Some(t.clone());
        s.handle(ack.into(), &mut out);
        s.handle(tx_info(&t, TransactionType::Rollback, 12), &mut out);
        assert_eq!(responses(&out), vec![12]);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Route(..))),
            "{out:?}"
        );
        // The client redelivers them itself and acknowledges them again.
        out.clear();
        s.handle(ack_of(&ids, AckType::Standard, 0, 3).into(), &mut out);
        assert!(
            matches!(&out[..], [Action::Route(_, Op::Ack { ids, .. })] if ids == &vec![1, 2, 3, 4]),
            "{out:?}"
        );
    }

    #[test]
    fn xa_and_unknown_transactions_are_refused_and_the_connection_lives() {
        let mut s = session();
        let mut out = Vec::new();
        let xa = TransactionId::Xa(XaTransactionId::default());
        s.handle(tx_info(&xa, TransactionType::Begin, 3), &mut out);
        match &out[..] {
            [Action::Write(Command::ConnectionError(e))] => {
                let msg = e.exception.as_ref().unwrap().message.as_deref().unwrap();
                assert!(msg.contains("XA transactions are not supported"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        out.clear();
        let mut m = text_msg(wire::Destination::queue("q"), true, 4);
        m.transaction_id = Some(local_tx(9));
        s.handle(Command::Message(m), &mut out);
        assert!(
            matches!(&out[..], [Action::Write(Command::ExceptionResponse(e))] if e.correlation_id == 4)
        );
        assert!(s.is_open());
    }

    #[test]
    fn unsupported_commands_get_an_exception_response_and_the_connection_lives() {
        let mut s = session();
        let mut out = Vec::new();
        let composite = ConsumerInfo {
            command_id: 3,
            response_required: true,
            consumer_id: Some(consumer_id(4)),
            destination: Some(wire::Destination::queue("a,b")),
            prefetch_size: 10,
            ..ConsumerInfo::default()
        };
        s.handle(composite.into(), &mut out);
        match &out[..] {
            [Action::Write(Command::ExceptionResponse(e))] => {
                assert_eq!(e.correlation_id, 3);
                let ex = e.exception.as_ref().unwrap();
                assert_eq!(ex.class_name, "javax.jms.JMSException");
                assert!(ex.message.as_deref().unwrap().contains("not supported"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.is_open());
    }

    /// A compressed body is checked once inflated, with the properties
    /// it will be stored with: what the frame limit let in must still fit
    /// the store (a database mode could never write a bigger row).
    #[test]
    fn a_message_too_large_once_inflated_is_refused() {
        let mut s = session();
        let mut out = Vec::new();
        let text = "x".repeat((1 << 20) - 100);
        let mut m = wire::Message::new(MessageKind::Text);
        compress::set_text(&mut m, &text, true);
        m.destination = Some(wire::Destination::queue("q"));
        m.persistent = true;
        m.command_id = 9;
        m.response_required = true;
        s.handle(m.into(), &mut out);
        match &out[..] {
            [Action::Write(Command::ExceptionResponse(e))] => {
                assert_eq!(e.correlation_id, 9);
                let ex = e.exception.as_ref().unwrap();
                assert!(
                    ex.message.as_deref().unwrap().contains("once inflated"),
                    "{ex:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.is_open());
        // The same text a little shorter goes through.
        out.clear();
        let mut m = wire::Message::new(MessageKind::Text);
        compress::set_text(&mut m, &text[..text.len() - 1024], true);
        m.destination = Some(wire::Destination::queue("q"));
        m.command_id = 10;
        s.handle(m.into(), &mut out);
        assert!(
            matches!(&out[..], [Action::Route(_, Op::Send(_))]),
            "{out:?}"
        );
    }

    #[test]
    fn commands_before_connection_info_close_the_connection() {
        let mut s = Session::new(
            session().cfg.clone(),
            Rc::new(MessageIds::new(0, 0)),
            ConnRef { shard: 0, conn: 2 },
            1 << 20,
        );
        let mut out = Vec::new();
        s.handle(text_to(wire::Destination::queue("q"), true, 4), &mut out);
        assert!(matches!(
            &out[..],
            [Action::Write(Command::ExceptionResponse(_)), Action::Close]
        ));
        assert!(s.is_closed());
    }

    #[test]
    fn other_advisory_consumers_are_accepted_and_get_nothing() {
        let mut s = session();
        let mut out = Vec::new();
        let info = ConsumerInfo {
            command_id: 5,
            response_required: true,
            consumer_id: Some(consumer_id(9)),
            destination: Some(wire::Destination::topic("ActiveMQ.Advisory.Connection")),
            prefetch_size: 1000,
            ..ConsumerInfo::default()
        };
        s.handle(info.into(), &mut out);
        assert_eq!(responses(&out), vec![5]);
        assert_eq!(out.len(), 1, "nothing routed: {out:?}");
    }

    /// Whether `cmd` was answered, directly or once its fences are passed.
    fn answered(s: &mut Session, cmd: &Command, out: Vec<Action>) -> bool {
        let id = cmd.command_id();
        let mut answers = 0;
        let mut tokens = Vec::new();
        for a in out {
            match a {
                Action::Write(Command::Response(r)) if r.correlation_id == id => answers += 1,
                Action::Write(Command::ExceptionResponse(r)) if r.correlation_id == id => {
                    answers += 1
                }
                // A keep-alive is answered by one of its own.
                Action::Write(Command::KeepAliveInfo(_))
                    if matches!(cmd, Command::KeepAliveInfo(_)) =>
                {
                    answers += 1
                }
                Action::Route(_, Op::Fence { token, .. }) => tokens.push(token),
                _ => {}
            }
        }
        let mut later = Vec::new();
        for t in tokens {
            s.fenced(t, &mut later);
        }
        answers += responses(&later).iter().filter(|c| **c == id).count();
        answers == 1
    }

    #[test]
    fn every_command_that_asks_for_an_answer_gets_exactly_one() {
        use crate::protocol::openwire::samples;
        for cmd in samples::commands() {
            if matches!(cmd, Command::WireFormatInfo(_)) {
                // The connection's: it owns the codec.
                continue;
            }
            let mut s = session();
            let mut out = Vec::new();
            s.handle(cmd.clone(), &mut out);
            if cmd.response_required() {
                assert!(answered(&mut s, &cmd, out), "{cmd:?}");
            }
            // Before ConnectionInfo, too: answered (and closed), no panic.
            let mut fresh = Session::new(
                s.cfg.clone(),
                Rc::new(MessageIds::new(0, 0)),
                ConnRef { shard: 0, conn: 3 },
                1 << 20,
            );
            let mut out = Vec::new();
            fresh.handle(cmd.clone(), &mut out);
            if cmd.response_required() {
                assert!(
                    answered(&mut fresh, &cmd, out),
                    "before ConnectionInfo: {cmd:?}"
                );
            }
        }
    }

    #[test]
    fn reply_to_round_trips_through_its_stomp_header() {
        for d in [
            wire::Destination::queue("a.b"),
            wire::Destination::topic("t"),
            wire::Destination {
                kind: DestinationKind::TempQueue,
                physical_name: "ID:x:1:1".into(),
            },
        ] {
            assert_eq!(reply_to_destination(&reply_to_header(&d)), Some(d));
        }
        assert_eq!(reply_to_destination("elsewhere"), None);
    }

    fn exception(out: &[Action]) -> (i32, String, String) {
        match out {
            [Action::Write(Command::ExceptionResponse(e))] => {
                let ex = e.exception.as_ref().unwrap();
                (
                    e.correlation_id,
                    ex.class_name.clone(),
                    ex.message.clone().unwrap_or_default(),
                )
            }
            other => panic!("expected one ExceptionResponse, got {other:?}"),
        }
    }

    #[test]
    fn a_transaction_with_a_refused_part_rolls_back_at_commit() {
        let mut s = session();
        let mut out = Vec::new();
        let t = local_tx(3);
        s.handle(tx_info(&t, TransactionType::Begin, 10), &mut out);
        let mut ok = text_msg(wire::Destination::queue("q"), false, 11);
        ok.transaction_id = Some(t.clone());
        s.handle(Command::Message(ok), &mut out);
        // A composite destination is refused (the client does not wait).
        let mut refused = text_msg(wire::Destination::queue("a,b"), false, 12);
        refused.transaction_id = Some(t.clone());
        s.handle(Command::Message(refused), &mut out);
        out.clear();
        s.handle(tx_info(&t, TransactionType::CommitOnePhase, 13), &mut out);
        let (id, class, msg) = exception(&out);
        assert_eq!(
            (id, class.as_str()),
            (13, "javax.jms.TransactionRolledBackException")
        );
        assert!(msg.contains("composite destination"), "{msg}");
        assert!(s.is_open());
    }

    #[test]
    fn a_commit_whose_ack_lost_its_consumer_or_range_rolls_back() {
        for closed in [true, false] {
            let mut s = session();
            let ids = consumer_with_four(&mut s);
            let mut out = Vec::new();
            let t = local_tx(4);
            s.handle(tx_info(&t, TransactionType::Begin, 10), &mut out);
            let mut ack = ack_of(&ids, AckType::Standard, 0, 1);
            ack.transaction_id = Some(t.clone());
            // Closed: the consumer gives its messages back before the
            // commit; not closed: a range whose first comes after its last.
            if !closed {
                ack.first_message_id = Some(ids[2].clone());
            }
            s.handle(ack.into(), &mut out);
            if closed {
                let remove = RemoveInfo {
                    object_id: Some(wire::DataStructure::ConsumerId(consumer_id(1))),
                    ..RemoveInfo::default()
                };
                s.handle(remove.into(), &mut out);
            }
            out.clear();
            s.handle(tx_info(&t, TransactionType::CommitOnePhase, 11), &mut out);
            let (id, class, _) = exception(&out);
            assert_eq!(
                (id, class.as_str()),
                (11, "javax.jms.TransactionRolledBackException")
            );
        }
    }

    /// A closing consumer's deliveries count as redelivered up to the last
    /// one its application got (RemoveInfo's lastDeliveredSequenceId), in
    /// dispatch order (not id order); the prefetched rest come back
    /// uncounted. A session's or connection's RemoveInfo names only the
    /// highest such id over its consumers: one that does not hold it
    /// counts its head, if anything was delivered at all. A broken
    /// connection, or a client that says it does not know, counts all.
    #[test]
    fn a_closing_consumer_counts_only_what_its_application_got() {
        // Dispatch order, not id order; one id issued on shard 128 (the
        // wire carries it negative).
        let high = (1u64 << 63) | 5;
        let order = [9, 3, high, 7];
        let seen_after = |object: Option<wire::DataStructure>, last: i64| -> Vec<bool> {
            let mut s = session();
            let mut out = consumer_on_q(&mut s);
            let usage = Arc::new(MemoryUsage::default());
            let deliveries = order
                .iter()
                .map(|&id| Delivery {
                    msg: Arc::new(Message::for_tests(id, Destination::queue("q"), &usage)),
                    redelivered: false,
                    redeliveries: 0,
                })
                .collect();
            s.deliver(0, deliveries, &mut Vec::new());
            out.clear();
            match object {
                None => s.teardown(&mut out),
                object_id => {
                    let remove = RemoveInfo {
                        object_id,
                        last_delivered_sequence_id: last,
                        ..RemoveInfo::default()
                    };
                    s.handle(remove.into(), &mut out);
                }
            }
            let seen = out
                .iter()
                .find_map(|a| match a {
                    Action::Route(_, Op::Unsubscribe { seen, .. }) => Some(seen),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no Unsubscribe in {out:?}"));
            order.iter().map(|&id| seen.covers(id)).collect()
        };
        let consumer = || Some(wire::DataStructure::ConsumerId(consumer_id(1)));
        let session = || {
            Some(wire::DataStructure::SessionId(SessionId {
                connection_id: Some("ID:c".into()),
                value: 1,
            }))
        };
        let connection = || {
            Some(wire::DataStructure::ConnectionId(ConnectionId {
                value: Some("ID:c".into()),
            }))
        };
        let (t, f) = (true, false);
        // The consumer's own RemoveInfo.
        assert_eq!(seen_after(consumer(), 3), [t, t, f, f]);
        assert_eq!(seen_after(consumer(), high as i64), [t, t, t, f]);
        assert_eq!(seen_after(consumer(), 7), [t; 4]);
        // None delivered (-1), or the last one already acknowledged.
        assert_eq!(seen_after(consumer(), -1), [f; 4]);
        assert_eq!(seen_after(consumer(), 99), [f; 4]);
        // A session's or connection's: the highest over its consumers.
        for whole in [session(), connection()] {
            assert_eq!(seen_after(whole.clone(), 3), [t, t, f, f]);
            assert_eq!(seen_after(whole.clone(), 99), [t, f, f, f]);
            assert_eq!(seen_after(whole.clone(), -1), [f; 4]);
            assert_eq!(seen_after(whole, 0), [f; 4]);
        }
        // LAST_DELIVERED_UNKNOWN, and a broken connection.
        assert_eq!(seen_after(consumer(), -2), [t; 4]);
        assert_eq!(seen_after(session(), -2), [t; 4]);
        assert_eq!(seen_after(None, 0), [t; 4]);
    }

    #[test]
    fn a_temporary_queue_lives_with_its_connection_and_is_announced() {
        let cfg = Rc::new(SessionConfig::for_tests(2));
        let mut mine = session_on(cfg.clone(), 1);
        let mut other = session_on(cfg.clone(), 2);
        let temp = wire::Destination {
            kind: DestinationKind::TempQueue,
            physical_name: "ID:c-1:1".into(),
        };
        let add = |op: i8, command_id: i32| -> Command {
            DestinationInfo {
                command_id,
                response_required: true,
                destination: Some(temp.clone()),
                operation_type: op,
                ..DestinationInfo::default()
            }
            .into()
        };
        let mut out = Vec::new();
        mine.handle(add(0, 5), &mut out);
        let announced = out.iter().any(|a| {
            matches!(a, Action::Route(_, Op::Send(m))
                if m.destination == Destination::Topic(ADVISORY_TOPIC.into()) && !m.persistent)
        });
        assert!(announced, "{out:?}");
        let q = Destination::temporary("ID:c-1:1", false);
        assert_eq!(cfg.temporary.owner(&q), Some(ConnRef { shard: 0, conn: 1 }));
        // Another connection's watcher hears of what lives already.
        out.clear();
        let watch = ConsumerInfo {
            consumer_id: Some(consumer_id(9)),
            destination: Some(wire::Destination {
                kind: DestinationKind::Topic,
                physical_name: "ActiveMQ.Advisory.TempQueue,ActiveMQ.Advisory.TempTopic".into(),
            }),
            prefetch_size: 1000,
            ..ConsumerInfo::default()
        };
        other.handle(watch.into(), &mut out);
        // Told once its subscription is in place on the topic's shard.
        let token = out
            .iter()
            .find_map(|a| match a {
                Action::Route(_, Op::Fence { token, .. }) => Some(*token),
                _ => None,
            })
            .expect("the watcher's subscription is fenced");
        assert!(
            !out.iter().any(|a| matches!(a, Action::Write(_))),
            "{out:?}"
        );
        out.clear();
        other.fenced(token, &mut out);
        let told = out.iter().any(|a| match a {
            Action::Write(Command::MessageDispatch(d)) => matches!(
                d.message.as_ref().and_then(|m| m.data_structure.as_ref()),
                Some(DataStructure::Command(c)) if matches!(&**c, Command::DestinationInfo(i)
                    if i.destination.as_ref() == Some(&temp) && i.operation_type == 0)
            ),
            _ => false,
        });
        assert!(told, "{out:?}");
        // It may send there, not consume from it; a persistent send is
        // kept in memory only.
        out.clear();
        let mut m = text_msg(temp.clone(), true, 6);
        m.destination = Some(temp.clone());
        other.handle(Command::Message(m), &mut out);
        assert!(
            matches!(out.first(), Some(Action::Route(_, Op::Send(m))) if m.destination == q && !m.persistent),
            "{out:?}"
        );
        out.clear();
        let steal = ConsumerInfo {
            command_id: 8,
            response_required: true,
            consumer_id: Some(consumer_id(10)),
            destination: Some(temp.clone()),
            prefetch_size: 10,
            ..ConsumerInfo::default()
        };
        other.handle(steal.into(), &mut out);
        assert!(exception(&out)
            .2
            .contains("only by the connection that made it"));
        // Its connection ends: gone, announced, and sends are refused.
        out.clear();
        mine.teardown(&mut out);
        assert!(out.iter().any(|a| matches!(a, Action::Route(_, Op::RemoveTemporary { destination }) if *destination == q)));
        assert_eq!(cfg.temporary.owner(&q), None);
        out.clear();
        let m = text_to(temp.clone(), true, 7);
        other.handle(m, &mut out);
        assert!(exception(&out).2.contains("does not exist"));
    }

    fn browser_on_q(n: i64) -> ConsumerInfo {
        ConsumerInfo {
            consumer_id: Some(consumer_id(n)),
            destination: Some(wire::Destination::queue("q")),
            prefetch_size: 500,
            browser: true,
            ..ConsumerInfo::default()
        }
    }

    #[test]
    fn a_browser_looks_then_hears_the_end_and_takes_nothing() {
        let mut s = session();
        let mut out = Vec::new();
        s.handle(browser_on_q(3).into(), &mut out);
        let token = match &out[..] {
            [Action::Route(a, Op::Browse { max, .. }), Action::Route(b, Op::Fence { token, .. })] =>
            {
                assert_eq!((a, *max), (b, BROWSE_MAX));
                *token
            }
            other => panic!("unexpected {other:?}"),
        };
        out.clear();
        s.fenced(token, &mut out);
        match &out[..] {
            [Action::Write(Command::MessageDispatch(d))] => assert!(d.message.is_none(), "the end"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.consumers.values().all(|c| c.unacked.is_empty()));
        out.clear();
        let remove = RemoveInfo {
            object_id: Some(wire::DataStructure::ConsumerId(consumer_id(3))),
            ..RemoveInfo::default()
        };
        s.handle(remove.into(), &mut out);
        assert!(out.is_empty(), "a browser never subscribed: {out:?}");
    }

    #[test]
    fn a_pull_that_gets_nothing_is_answered_with_an_empty_dispatch() {
        let mut s = session();
        let mut out = Vec::new();
        let info = ConsumerInfo {
            consumer_id: Some(consumer_id(5)),
            destination: Some(wire::Destination::queue("q")),
            prefetch_size: 0,
            ..ConsumerInfo::default()
        };
        s.handle(info.into(), &mut out);
        assert!(matches!(&out[..], [Action::Route(_, Op::Subscribe(sub))] if sub.prefetch == 0));
        for timeout in [-1i64, 250] {
            out.clear();
            let pull = wire::MessagePull {
                consumer_id: Some(consumer_id(5)),
                timeout,
                ..wire::MessagePull::default()
            };
            s.handle(pull.into(), &mut out);
            assert!(
                matches!(&out[0], Action::Route(_, Op::Pull { cancel: false, .. })),
                "{out:?}"
            );
            let token = match &out[1] {
                Action::Route(_, Op::Fence { token, .. }) if timeout < 0 => *token,
                Action::Timer { after, token } if after.as_millis() == 250 => *token,
                other => panic!("unexpected {other:?}"),
            };
            out.clear();
            if timeout < 0 {
                s.fenced(token, &mut out);
            } else {
                s.timer(token, &mut out);
            }
            assert!(
                matches!(&out[0], Action::Route(_, Op::Pull { cancel: true, .. })),
                "{out:?}"
            );
            assert!(
                matches!(&out[1], Action::Write(Command::MessageDispatch(d)) if d.message.is_none()),
                "{out:?}"
            );
        }
    }

    #[test]
    fn a_transaction_that_acks_browsed_messages_commits() {
        let mut s = session();
        let mut out = Vec::new();
        s.handle(browser_on_q(1).into(), &mut out);
        let usage = Arc::new(MemoryUsage::default());
        let browsed = Delivery {
            msg: Arc::new(Message {
                body: Bytes::from_static(b"look"),
                timestamp_ms: 1,
                ..Message::for_tests(7, Destination::queue("q"), &usage)
            }),
            redelivered: false,
            redeliveries: 0,
        };
        let mut dispatched = Vec::new();
        s.deliver(0, vec![browsed], &mut dispatched);
        let id = match &dispatched[..] {
            [Command::MessageDispatch(d)] => {
                d.message.as_ref().unwrap().message_id.clone().unwrap()
            }
            other => panic!("unexpected {other:?}"),
        };
        let t = local_tx(8);
        s.handle(tx_info(&t, TransactionType::Begin, 10), &mut out);
        let ack = MessageAck {
            consumer_id: Some(consumer_id(1)),
            ack_type: AckType::Standard as i8,
            first_message_id: Some(id.clone()),
            last_message_id: Some(id),
            transaction_id: Some(t.clone()),
            ..MessageAck::default()
        };
        s.handle(ack.into(), &mut out);
        out.clear();
        s.handle(tx_info(&t, TransactionType::CommitOnePhase, 11), &mut out);
        assert_eq!(responses(&out), vec![11], "{out:?}");
    }
}
