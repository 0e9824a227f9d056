//! One STOMP connection's state machine: frames in, broker operations and
//! reply frames out. No I/O here; `server::connection` drives it.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{finish_body, put_header, Command, Frame, Version};
use crate::broker::destination::sub_name_problem;
use crate::broker::message::{now_ms, MemoryUsage, Property, MESSAGE_ID_PREFIX};
use crate::broker::message_ids::MessageIds;
use crate::broker::ops::{commit_ops, ConnRef, DurableName, Op, Seen, SubscribeOp, TxAck, TxPart};
use crate::broker::queue::{ConsumerKey, Delivery};
use crate::broker::selector::{Selector, MAX_DURABLE_SELECTOR_BYTES};
use crate::broker::{Destination, Message, MessageId, SharedMessage};
use crate::idmap::IdMap;
use crate::metrics::LatencyHistogram;
use crate::security::{Decisions, Right, Security, UserInfo};

/// zk mode: the epoch this master serves and its node (replication
/// address), sent in CONNECTED as `brokk-epoch` and `brokk-node`, so that
/// clients (and the tests' checker) can tell which master receipted what.
static CLUSTER_IDENTITY: std::sync::OnceLock<(Bytes, Bytes)> = std::sync::OnceLock::new();

/// Sets what [`CLUSTER_IDENTITY`] says; once per process (a master never
/// serves a second epoch).
pub fn set_cluster_identity(epoch: u64, node: &str) {
    let _ = CLUSTER_IDENTITY.set((
        Bytes::from(epoch.to_string()),
        Bytes::from(node.to_string()),
    ));
}

/// Settings every session on a shard shares.
#[derive(Debug)]
pub struct SessionConfig {
    pub shards: usize,
    /// Users, rights and known destinations, shared by every shard.
    pub security: Arc<Security>,
    pub default_prefetch: u32,
    pub heartbeat_min_ms: u64,
    pub usage: Arc<MemoryUsage>,
    /// The shard's receipt latencies (request read to RECEIPT queued),
    /// for the admin side's histogram.
    pub receipt_latency: Rc<LatencyHistogram>,
    /// The live temporary destinations, broker-wide (OpenWire's).
    pub temporary: Arc<crate::broker::temporary::TempDestinations>,
}

#[cfg(test)]
impl SessionConfig {
    /// An open broker (no users) with `shards` shards.
    pub fn for_tests(shards: usize) -> SessionConfig {
        SessionConfig {
            shards,
            security: Arc::new(Security::from_config(&crate::config::Config::default()).unwrap()),
            default_prefetch: 10,
            heartbeat_min_ms: 1000,
            usage: Arc::new(MemoryUsage::default()),
            receipt_latency: Rc::default(),
            temporary: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

/// What the connection must do on the session's behalf.
#[derive(Debug)]
pub enum Action {
    /// Write this frame to the client.
    Write(Frame),
    /// Apply this operation on the shard that owns its destination.
    Route(usize, Op),
    /// Heart-beats agreed on CONNECT: send every `send_ms`, drop the peer
    /// after `read_timeout_ms` of silence (0 = off).
    Heartbeat { send_ms: u64, read_timeout_ms: u64 },
    /// Close after the frames already queued are written.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Open,
    Closed,
}

#[derive(Debug)]
struct Sub {
    id: Bytes,
    destination: Destination,
    destination_header: Bytes,
    mode: AckMode,
    /// Delivered, not yet acknowledged, in delivery order.
    unacked: VecDeque<MessageId>,
    /// The client unsubscribed while an open transaction acknowledges
    /// some of its deliveries: it gets nothing more, and closes at the
    /// owner once no open transaction names it (see
    /// [`Session::unsubscribed_done`]).
    unsubscribed: Option<Unsubscribed>,
    /// Its durable subscription's name, if it is one.
    durable: Option<String>,
}

/// An UNSUBSCRIBE waiting for the transactions that acknowledge on it.
#[derive(Debug, Clone, Copy)]
struct Unsubscribed {
    destroy_durable: bool,
}

#[derive(Debug)]
enum TxOp {
    Send(SharedMessage),
    Ack { id: MessageId, sub: u64, nack: bool },
}

/// The subscriptions of this connection that hold one message
/// unacknowledged, oldest delivery first. Nearly always one: only a topic
/// subscribed more than once on a connection hands it the same message
/// twice, so the common case costs no allocation.
#[derive(Debug)]
enum Holders {
    One(u64),
    Many(Vec<u64>),
}

impl Holders {
    fn push(&mut self, sub: u64) {
        match self {
            Holders::One(first) => *self = Holders::Many(vec![*first, sub]),
            Holders::Many(subs) => subs.push(sub),
        }
    }

    fn oldest(&self) -> u64 {
        match self {
            Holders::One(sub) => *sub,
            Holders::Many(subs) => subs[0],
        }
    }

    fn contains(&self, sub: u64) -> bool {
        match self {
            Holders::One(s) => *s == sub,
            Holders::Many(subs) => subs.contains(&sub),
        }
    }

    /// Drops `sub`; true when no holder is left.
    fn remove(&mut self, sub: u64) -> bool {
        match self {
            Holders::One(s) => *s == sub,
            Holders::Many(subs) => {
                subs.retain(|s| *s != sub);
                subs.is_empty()
            }
        }
    }
}

#[derive(Debug)]
struct PendingReceipt {
    /// Shards yet to answer, plus transactions yet to be applied.
    remaining: usize,
    /// None: a COMMIT without a receipt, tracked only so that later
    /// receipts wait for it.
    receipt: Option<Bytes>,
    close: bool,
    since: Instant,
}

pub struct Session {
    cfg: Rc<SessionConfig>,
    ids: Rc<MessageIds>,
    conn: ConnRef,
    phase: Phase,
    version: Version,
    client_id: Option<String>,
    subs: HashMap<u64, Sub>,
    sub_by_id: HashMap<Bytes, u64>,
    next_sub: u64,
    /// Per message id, the subscriptions it awaits an ACK on. One message
    /// can be out on several subscriptions of this connection at once, so
    /// an ACK names a delivery (message and subscription), not a message.
    unacked: IdMap<Holders>,
    transactions: HashMap<Bytes, Vec<TxOp>>,
    receipts: HashMap<u64, PendingReceipt>,
    /// COMMITs whose coordinator has not answered yet (by token), each with
    /// the receipts that wait for it: a RECEIPT says that everything sent
    /// before it is applied, committed transactions included.
    open_commits: HashMap<u64, Vec<u64>>,
    next_token: u64,
    /// Who authenticated (set by the connection before CONNECT is
    /// handled); None on an open broker.
    user: Option<Arc<UserInfo>>,
    decisions: Decisions,
    /// DISCONNECT came (with a receipt, still to be answered): frames
    /// after it are ignored.
    disconnecting: bool,
    /// The auto-acknowledgements of the deliveries the writer is writing
    /// (see [`Session::deliver`]): routed once the bytes are written
    /// ([`Session::written`]), or set aside if the write fails (the
    /// messages go back, counted as redelivered, when the connection's
    /// subscriptions close). A
    /// subscription the client closes takes its own at once (see
    /// [`Session::close_sub`]).
    in_write: Vec<(usize, Op)>,
    /// Those of a write that failed: not consumed (their consumer's close
    /// puts them back), but part of them may have reached the client, so
    /// they go back counted as redelivered (a message that kills its
    /// client mid-read still reaches the dead-letter queue).
    write_failed: Vec<(usize, Op)>,
}

/// A protocol error: becomes an ERROR frame and closes the connection.
struct Refusal {
    message: String,
}

fn refuse<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        message: message.into(),
    })
}

impl Session {
    pub fn new(cfg: Rc<SessionConfig>, ids: Rc<MessageIds>, conn: ConnRef) -> Session {
        Session {
            cfg,
            ids,
            conn,
            phase: Phase::AwaitConnect,
            version: Version::V1_0,
            client_id: None,
            subs: HashMap::new(),
            sub_by_id: HashMap::new(),
            next_sub: 0,
            unacked: IdMap::default(),
            transactions: HashMap::new(),
            receipts: HashMap::new(),
            open_commits: HashMap::new(),
            next_token: 0,
            user: None,
            decisions: Decisions::default(),
            disconnecting: false,
            in_write: Vec::new(),
            write_failed: Vec::new(),
        }
    }

    /// The user the connection authenticated, before CONNECT is handled.
    pub fn authenticated(&mut self, user: Option<Arc<UserInfo>>) {
        self.user = user;
    }

    /// Still waiting for CONNECT.
    pub fn awaits_connect(&self) -> bool {
        self.phase == Phase::AwaitConnect
    }

    /// Refuses `right` on `dest` unless the user holds it.
    fn authorize(&mut self, dest: &Destination, right: Right) -> Result<(), Refusal> {
        self.decisions
            .authorize(&self.cfg.security, self.user.as_deref(), dest, right)
            .or_else(refuse)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// CONNECT has been accepted and the connection is not closed.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Open, and no DISCONNECT yet: the client's frames still count.
    pub fn accepts_frames(&self) -> bool {
        self.is_open() && !self.disconnecting
    }

    /// Handles one frame from the client.
    pub fn handle(&mut self, frame: Frame, out: &mut Vec<Action>) {
        // After DISCONNECT nothing more is the client's (STOMP 1.2): a
        // SUBSCRIBE now would make a closed subscription active again.
        if self.phase == Phase::Closed || self.disconnecting {
            return;
        }
        let receipt = frame.header_bytes("receipt");
        let result = match (&self.phase, frame.command) {
            (Phase::AwaitConnect, Command::Connect | Command::Stomp) => self.connect(&frame, out),
            (Phase::AwaitConnect, c) => {
                refuse(format!("expected CONNECT or STOMP, got {}", c.as_str()))
            }
            (Phase::Open, Command::Connect | Command::Stomp) => refuse("already connected"),
            (Phase::Open, Command::Send) => self.send(frame, out),
            (Phase::Open, Command::Subscribe) => self.subscribe(&frame, out),
            (Phase::Open, Command::Unsubscribe) => self.unsubscribe(&frame, out),
            (Phase::Open, Command::Ack) => self.ack(&frame, false, out),
            (Phase::Open, Command::Nack) => self.ack(&frame, true, out),
            (Phase::Open, Command::Begin) => self.begin(&frame),
            (Phase::Open, Command::Commit) => match self.commit(&frame, receipt.clone(), out) {
                // The receipt is the coordinator's to answer.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            (Phase::Open, Command::Abort) => self.abort(&frame, out),
            (Phase::Open, Command::Disconnect) => {
                match receipt {
                    Some(r) => {
                        // Every subscription closes now, ahead of the
                        // receipt's fences on the same paths: once the
                        // RECEIPT is out, each owner has closed them (a
                        // durable subscriber that comes straight back is
                        // not refused as still active elsewhere) and put
                        // back what they had not acknowledged.
                        self.close_all_subs(true, out);
                        let all: Vec<usize> = (0..self.cfg.shards).collect();
                        self.fence(all, r, true, out);
                        self.disconnecting = true;
                    }
                    None => {
                        // A client that waits for no receipt may close at
                        // once: what is being written is left to the write
                        // (put back if it fails), as when a peer goes away.
                        self.close_all_subs(false, out);
                        self.phase = Phase::Closed;
                        out.push(Action::Close);
                    }
                }
                return;
            }
            (Phase::Open, c) => refuse(format!("{} is a server frame", c.as_str())),
            (Phase::Closed, _) => return,
        };
        match result {
            Ok(shards) => {
                if let Some(r) = receipt {
                    self.fence(shards, r, false, out);
                }
            }
            Err(Refusal { message }) => self.error(&message, receipt, out),
        }
    }

    /// Reports a fault that is no frame's (bytes that do not parse, no
    /// CONNECT in time): ERROR, then the connection closes.
    pub fn protocol_error(&mut self, message: &str, out: &mut Vec<Action>) {
        self.error(message, None, out);
    }

    /// Refuses a well-formed frame (e.g. no space left): ERROR with the
    /// frame's receipt id, then close.
    pub fn reject(&mut self, frame: &Frame, message: &str, out: &mut Vec<Action>) {
        self.error(message, frame.header_bytes("receipt"), out);
    }

    fn error(&mut self, message: &str, receipt: Option<Bytes>, out: &mut Vec<Action>) {
        let mut f = Frame::new(Command::Error)
            .with("message", Bytes::from(message.to_string()))
            .with("content-type", "text/plain");
        if let Some(r) = receipt {
            f = f.with("receipt-id", r);
        }
        f.body = Bytes::from(format!("{message}\n"));
        out.push(Action::Write(f));
        out.push(Action::Close);
        self.phase = Phase::Closed;
    }

    /// Answers `receipt` once every shard in `shards` has applied what this
    /// connection sent it before, and every transaction it committed before
    /// is applied. Nothing to wait for: answered at once.
    fn fence(
        &mut self,
        mut shards: Vec<usize>,
        receipt: Bytes,
        close: bool,
        out: &mut Vec<Action>,
    ) {
        shards.sort_unstable();
        shards.dedup();
        let token = self.next_token;
        self.next_token += 1;
        let remaining = shards.len() + self.wait_for_commits(token);
        if remaining == 0 {
            self.answer(Some(receipt), close, out);
            return;
        }
        self.receipts.insert(
            token,
            PendingReceipt {
                remaining,
                receipt: Some(receipt),
                close,
                since: Instant::now(),
            },
        );
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

    /// Makes receipt `token` wait for every open COMMIT; returns how many.
    fn wait_for_commits(&mut self, token: u64) -> usize {
        for waiting in self.open_commits.values_mut() {
            waiting.push(token);
        }
        self.open_commits.len()
    }

    fn answer(&mut self, receipt: Option<Bytes>, close: bool, out: &mut Vec<Action>) {
        if let Some(r) = receipt {
            out.push(Action::Write(
                Frame::new(Command::Receipt).with("receipt-id", r),
            ));
        }
        if close {
            self.phase = Phase::Closed;
            out.push(Action::Close);
        }
    }

    /// A shard has applied everything up to fence `token`, or the
    /// transaction committed as `token` is applied on every shard.
    pub fn fenced(&mut self, token: u64, out: &mut Vec<Action>) {
        let waiting = self.open_commits.remove(&token);
        // The COMMIT's own receipt first: those waiting for it came later.
        self.count_down(token, out);
        for w in waiting.into_iter().flatten() {
            self.count_down(w, out);
        }
    }

    fn count_down(&mut self, token: u64, out: &mut Vec<Action>) {
        let Some(p) = self.receipts.get_mut(&token) else {
            return;
        };
        p.remaining -= 1;
        if p.remaining > 0 {
            return;
        }
        if let Some(p) = self.receipts.remove(&token) {
            if p.receipt.is_some() {
                let us = p.since.elapsed().as_micros();
                self.cfg.receipt_latency.record_us(us as u64);
            }
            self.answer(p.receipt, p.close, out);
        }
    }

    /// A broker refusal (e.g. a durable subscription in use elsewhere).
    pub fn refused(&mut self, reason: &str, out: &mut Vec<Action>) {
        self.error(reason, None, out);
    }

    fn connect(&mut self, f: &Frame, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let version = match f.header_str("accept-version") {
            None => Version::V1_0,
            Some(list) => {
                let mut best = None;
                for v in list.split(',').map(str::trim) {
                    let v = match v {
                        "1.0" => Version::V1_0,
                        "1.1" => Version::V1_1,
                        "1.2" => Version::V1_2,
                        _ => continue,
                    };
                    best = best.max(Some(v));
                }
                match best {
                    Some(v) => v,
                    None => {
                        let mut e = Frame::new(Command::Error)
                            .with("version", "1.0,1.1,1.2")
                            .with("message", "Supported protocol versions are 1.0 1.1 1.2")
                            .with("content-type", "text/plain");
                        e.body =
                            Bytes::from_static(b"Supported protocol versions are 1.0 1.1 1.2\n");
                        out.push(Action::Write(e));
                        out.push(Action::Close);
                        self.phase = Phase::Closed;
                        return Ok(vec![]);
                    }
                }
            }
        };
        let (cx, cy) = match f.header_str("heart-beat") {
            None => (0, 0),
            Some(hb) => parse_heartbeat(hb)
                .ok_or(())
                .or_else(|_| refuse(format!("invalid heart-beat header '{hb}'")))?,
        };
        let min = self.cfg.heartbeat_min_ms;
        let send_ms = if cy > 0 { cy.max(min) } else { 0 };
        let recv_ms = if cx > 0 { cx.max(min) } else { 0 };
        let client_id = f.header_str("client-id").filter(|c| !c.is_empty());
        if let Some(problem) = client_id.and_then(sub_name_problem) {
            return refuse(format!("client-id {problem}"));
        }
        self.version = version;
        self.client_id = client_id.map(str::to_string);
        self.phase = Phase::Open;
        let mut reply = Frame::new(Command::Connected)
            .with("version", version.as_str())
            .with("server", concat!("Brokk/", env!("CARGO_PKG_VERSION")))
            .with(
                "session",
                Bytes::from(format!("brokk-{}-{}", self.conn.shard, self.conn.conn)),
            )
            .with("heart-beat", Bytes::from(format!("{send_ms},{recv_ms}")));
        if let Some((epoch, node)) = CLUSTER_IDENTITY.get() {
            reply = reply
                .with("brokk-epoch", epoch.clone())
                .with("brokk-node", node.clone());
        }
        if let Some(r) = f.header_bytes("receipt") {
            // Not required by the spec, but some 1.0 clients wait for it.
            reply = reply.with("receipt-id", r);
        }
        out.push(Action::Write(reply));
        out.push(Action::Heartbeat {
            send_ms,
            // Twice the agreed interval: one late beat is not a dead peer.
            read_timeout_ms: recv_ms * 2,
        });
        Ok(vec![])
    }

    fn send(&mut self, f: Frame, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let raw = match f.header_str("destination") {
            None => return refuse("SEND requires a destination header"),
            Some(d) => d,
        };
        // A reply to a JMS client's temporary queue (its `reply-to`): any
        // connection may send to one (see `broker::temporary`); its
        // messages are never stored. One whose requester has gone is
        // dropped by its shard, not refused: an ERROR would close this
        // connection, and a responder must not lose its session over a
        // requester that gave up.
        let temporary = Destination::parse_temporary(raw).is_some();
        let dest = match Destination::parse_temporary(raw) {
            Some(t) => t.or_else(|e| refuse(e.to_string()))?,
            None => Destination::parse(raw).or_else(|e| refuse(e.to_string()))?,
        };
        if !temporary {
            self.authorize(&dest, Right::Write)?;
        }
        let priority = match f.header_str("priority") {
            None => 4,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 9 => p,
                _ => return refuse(format!("invalid priority '{p}': expected 0-9")),
            },
        };
        let expires_ms = match f.header_str("expires") {
            None => 0,
            Some(e) => e.trim().parse::<u64>().or_else(|_| {
                refuse(format!(
                    "invalid expires '{e}': expected ms since the epoch"
                ))
            })?,
        };
        let persistent = f.header("persistent") == Some(b"true") && !temporary;
        let tx = f.header("transaction").map(Bytes::copy_from_slice);
        if let Some(t) = &tx {
            if !self.transactions.contains_key(t) {
                return refuse(format!(
                    "unknown transaction '{}'",
                    String::from_utf8_lossy(t)
                ));
            }
        }
        // ActiveMQ's rule for what a JMS consumer gets: a BytesMessage if
        // the sender gave a content-length, else a TextMessage;
        // `amq-msg-type: text|bytes` says so outright.
        let as_bytes = match f.header("amq-msg-type") {
            Some(b"text") => false,
            Some(b"bytes") => true,
            _ => f.header("content-length").is_some(),
        };
        let mut properties: Vec<Property> = f
            .headers
            .into_iter()
            .filter(|(k, _)| {
                // The kind is the broker's to say: a STOMP sender cannot
                // vouch for ActiveMQ's marshalled map, stream or object.
                !is_routing_header(k) && k.as_ref() != BODY_KIND
            })
            .collect();
        if as_bytes {
            properties.push(bytes_kind());
        }
        let footprint = Message::footprint(&properties, &f.body);
        let msg = Arc::new(Message {
            id: self.ids.next(),
            destination: dest,
            properties,
            body: f.body,
            priority,
            expires_ms,
            persistent,
            timestamp_ms: now_ms(),
            charge: self.cfg.usage.charge(footprint),
        });
        match tx {
            Some(t) => {
                if let Some(ops) = self.transactions.get_mut(&t) {
                    ops.push(TxOp::Send(msg));
                }
                Ok(vec![])
            }
            None if !self.open_commits.is_empty() => {
                // Behind a COMMIT still on its way, a plain SEND could
                // overtake the committed messages; as a transaction of its
                // own it is applied after them (a participant applies a
                // connection's transactions in order), and its receipt, like
                // any, waits for the open commits.
                let owner = msg.destination.owner(self.cfg.shards);
                let part = TxPart {
                    sends: vec![msg],
                    acks: Vec::new(),
                };
                self.start_commit(vec![(owner, part)], None, out);
                Ok(vec![])
            }
            None => {
                let owner = msg.destination.owner(self.cfg.shards);
                out.push(Action::Route(owner, Op::Send(msg)));
                Ok(vec![owner])
            }
        }
    }

    fn subscribe(&mut self, f: &Frame, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let Some(raw_dest) = f.header_str("destination") else {
            return refuse("SUBSCRIBE requires a destination header");
        };
        let destination = Destination::parse(raw_dest).or_else(|e| refuse(e.to_string()))?;
        self.authorize(&destination, Right::Read)?;
        let id = match f.header("id") {
            Some(id) => Bytes::copy_from_slice(id),
            None if self.version == Version::V1_0 => Bytes::copy_from_slice(raw_dest.as_bytes()),
            None => return refuse("SUBSCRIBE requires an id header"),
        };
        if self.sub_by_id.contains_key(&id) {
            return refuse(format!(
                "subscription id '{}' is already in use",
                String::from_utf8_lossy(&id)
            ));
        }
        let mode = match f.header_str("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            m => {
                return refuse(format!(
                    "invalid ack mode '{m}': expected auto, client or client-individual"
                ))
            }
        };
        let prefetch = match f.header_str("activemq.prefetchSize") {
            None => self.cfg.default_prefetch,
            Some(p) => match p.trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return refuse(format!(
                        "invalid activemq.prefetchSize '{p}': expected a number >= 1"
                    ))
                }
            },
        };
        if let Some(problem) = durable_name(f).and_then(sub_name_problem) {
            return refuse(format!("the durable subscription name {problem}"));
        }
        let durable = match durable_name(f) {
            Some(name) if destination.is_topic() => match &self.client_id {
                Some(client_id) => Some(DurableName {
                    client_id: client_id.clone(),
                    name: name.to_string(),
                }),
                None => {
                    return refuse("a durable subscription needs a client-id header on CONNECT")
                }
            },
            _ => None,
        };
        let selector = selector(f, durable.is_some())?;
        if let Some(d) = &durable {
            // The same durable subscription, unsubscribed here while a
            // transaction acknowledges on it, is still open at its owner,
            // which would refuse this one: it closes now, as it did before
            // transactions held it (what the open transaction acknowledges
            // on it is then redelivered instead).
            let waiting: Vec<(u64, Unsubscribed)> = self
                .unsubscribed()
                .filter(|(_, s, _)| s.durable.as_deref() == Some(d.name.as_str()))
                .map(|(sub, _, u)| (sub, u))
                .collect();
            self.close_subs(waiting, out);
        }
        let is_topic = destination.is_topic();
        let sub = self.next_sub;
        self.next_sub += 1;
        let owner = destination.owner(self.cfg.shards);
        self.sub_by_id.insert(id.clone(), sub);
        self.subs.insert(
            sub,
            Sub {
                id,
                destination_header: Bytes::from(destination.to_string()),
                destination: destination.clone(),
                mode,
                unacked: VecDeque::new(),
                unsubscribed: None,
                durable: durable.as_ref().map(|d| d.name.clone()),
            },
        );
        out.push(Action::Route(
            owner,
            Op::Subscribe(SubscribeOp {
                destination,
                consumer: self.consumer(sub),
                prefetch,
                durable,
                selector,
                // ActiveMQ's STOMP header for a JMS exclusive consumer.
                exclusive: f.header("activemq.exclusive") == Some(b"true") && !is_topic,
                no_local: None,
            }),
        ));
        Ok(vec![owner])
    }

    fn consumer(&self, sub: u64) -> ConsumerKey {
        self.conn.consumer(sub)
    }

    fn unsubscribe(&mut self, f: &Frame, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let id = match f.header("id").or_else(|| {
            (self.version == Version::V1_0)
                .then(|| f.header("destination"))
                .flatten()
        }) {
            Some(id) => id,
            None => return refuse("UNSUBSCRIBE requires an id header"),
        };
        let Some(sub) = self.sub_by_id.remove(id) else {
            return refuse(format!(
                "no subscription with id '{}'",
                String::from_utf8_lossy(id)
            ));
        };
        let destroy = durable_name(f).is_some();
        if self.acked_in_open_transaction(sub) {
            // Its acknowledgements count at COMMIT (as ActiveMQ defers a
            // consumer's close in a transaction): closed at the owner now,
            // it would put back, for redelivery, messages this client has
            // acknowledged. It only stops getting messages until then.
            let consumer = self.consumer(sub);
            let s = self.subs.get_mut(&sub).expect("sub_by_id names a sub");
            s.unsubscribed = Some(Unsubscribed {
                destroy_durable: destroy,
            });
            let owner = s.destination.owner(self.cfg.shards);
            out.push(Action::Route(owner, no_more(&s.destination, consumer)));
            return Ok(vec![owner]);
        }
        Ok(vec![self.close_sub(sub, destroy, true, out)])
    }

    /// Whether an open transaction acknowledges a delivery of `sub`.
    fn acked_in_open_transaction(&self, sub: u64) -> bool {
        self.transactions
            .values()
            .flatten()
            .any(|op| matches!(op, TxOp::Ack { sub: s, .. } if *s == sub))
    }

    /// The subscriptions the client unsubscribed that no open transaction
    /// acknowledges on any more: to be closed at their owners.
    fn unsubscribed_done(&self) -> Vec<(u64, Unsubscribed)> {
        self.unsubscribed()
            .filter(|&(sub, _, _)| !self.acked_in_open_transaction(sub))
            .map(|(sub, _, u)| (sub, u))
            .collect()
    }

    /// The subscriptions whose UNSUBSCRIBE waits for a transaction.
    fn unsubscribed(&self) -> impl Iterator<Item = (u64, &Sub, Unsubscribed)> {
        self.subs
            .iter()
            .filter_map(|(&sub, s)| s.unsubscribed.map(|u| (sub, s, u)))
    }

    /// Closes `subs` at their owners; returns the owners told.
    fn close_subs(&mut self, subs: Vec<(u64, Unsubscribed)>, out: &mut Vec<Action>) -> Vec<usize> {
        subs.into_iter()
            .map(|(sub, u)| self.close_sub(sub, u.destroy_durable, true, out))
            .collect()
    }

    /// Closes subscription `sub`. With `client_reads` (the client closes
    /// it, or says goodbye, and reads on), the auto-acknowledgements of
    /// its deliveries being written go first: an `ack:auto` delivery
    /// counts as consumed once sent (STOMP 1.2), and put back in its
    /// queue instead it would reach another consumer while this client
    /// reads it too. Without (the connection ended), they are left to
    /// the write: if it fails, the Unsubscribe puts them back.
    fn close_sub(
        &mut self,
        sub: u64,
        destroy_durable: bool,
        client_reads: bool,
        out: &mut Vec<Action>,
    ) -> usize {
        let Some(s) = self.subs.remove(&sub) else {
            return 0;
        };
        for id in &s.unacked {
            self.release(*id, sub);
        }
        let owner = s.destination.owner(self.cfg.shards);
        let consumer = self.consumer(sub);
        if client_reads {
            let mut acks = self
                .in_write
                .extract_if(
                    ..,
                    |(_, op)| matches!(op, Op::Ack { consumer: c, .. } if *c == consumer),
                )
                .peekable();
            if acks.peek().is_some() {
                // First: the acknowledgements must not refill its window
                // (deliveries the session would drop unwritten, to be put
                // back as redelivered).
                out.push(Action::Route(owner, no_more(&s.destination, consumer)));
                out.extend(acks.map(|(shard, op)| Action::Route(shard, op)));
            }
        }
        // What was encoded for the client may have reached it: awaiting its
        // ACK, or an auto-acknowledgement still waiting for the write. The
        // rest of what the owner sent it never left this side.
        let being_written = self
            .in_write
            .iter()
            .chain(&self.write_failed)
            .flat_map(|(_, op)| match op {
                Op::Ack {
                    consumer: c, ids, ..
                } if *c == consumer => ids.as_slice(),
                _ => &[],
            });
        let seen = Seen::only(s.unacked.iter().chain(being_written).copied());
        out.push(Action::Route(
            owner,
            Op::Unsubscribe {
                destination: s.destination,
                consumer,
                destroy_durable,
                seen,
            },
        ));
        owner
    }

    /// The connection is gone: every subscription closes, and what it had
    /// not acknowledged goes back to its queue for redelivery. After an
    /// ERROR (the session closed itself) the client may still read what
    /// is being written; otherwise it may be gone.
    pub fn teardown(&mut self, out: &mut Vec<Action>) {
        let client_reads = self.phase == Phase::Closed;
        self.phase = Phase::Closed;
        self.close_all_subs(client_reads, out);
    }

    /// Closes every subscription (a durable one stays, inactive, unless
    /// the client unsubscribed it for good while a transaction held it).
    fn close_all_subs(&mut self, client_reads: bool, out: &mut Vec<Action>) {
        let subs: Vec<(u64, bool)> = self
            .subs
            .iter()
            .map(|(&sub, s)| (sub, s.unsubscribed.is_some_and(|u| u.destroy_durable)))
            .collect();
        for (sub, destroy) in subs {
            self.close_sub(sub, destroy, client_reads, out);
        }
        self.sub_by_id.clear();
    }

    fn ack(&mut self, f: &Frame, nack: bool, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let (id, sub) = self.delivery_named_by(f, nack)?;
        if let Some(t) = f.header("transaction") {
            return match self.transactions.get_mut(t) {
                Some(ops) => {
                    ops.push(TxOp::Ack { id, sub, nack });
                    Ok(vec![])
                }
                None => refuse(format!(
                    "unknown transaction '{}'",
                    String::from_utf8_lossy(t)
                )),
            };
        }
        self.apply_ack(id, sub, nack, out).map(|s| vec![s])
    }

    /// The delivery an ACK/NACK names. 1.2 names it with the MESSAGE's
    /// `ack` value, which carries the subscription. 1.0/1.1 name a message
    /// (`message-id`) and, if the client sends it, a `subscription`; without
    /// one, the oldest unacknowledged delivery of that message on this
    /// connection is meant, so a client that ACKs every MESSAGE it gets
    /// ACKs each delivery once however many subscriptions it has.
    fn delivery_named_by(&self, f: &Frame, nack: bool) -> Result<(MessageId, u64), Refusal> {
        let what = if nack { "NACK" } else { "ACK" };
        let raw = match f.header_str("id").or_else(|| f.header_str("message-id")) {
            Some(r) => r,
            None if self.version == Version::V1_2 => {
                return refuse(format!("{what} requires an id header"))
            }
            None => return refuse(format!("{what} requires a message-id header")),
        };
        let unknown = || refuse(format!("{what} of unknown message id '{raw}'"));
        let Some((id, named_sub)) = parse_ack_id(raw) else {
            return unknown();
        };
        let Some(holders) = self.unacked.get(&id) else {
            return unknown();
        };
        let sub = match (named_sub, f.header("subscription")) {
            (Some(sub), _) => sub,
            (None, Some(client_sub)) => match self.sub_by_id.get(client_sub) {
                Some(&sub) => sub,
                None => {
                    return refuse(format!(
                        "{what} for unknown subscription '{}'",
                        String::from_utf8_lossy(client_sub)
                    ))
                }
            },
            (None, None) => holders.oldest(),
        };
        if !holders.contains(sub) {
            return unknown();
        }
        Ok((id, sub))
    }

    /// Forgets that `sub` awaits an ACK for message `id`.
    fn release(&mut self, id: MessageId, sub: u64) {
        if let Some(h) = self.unacked.get_mut(&id) {
            if h.remove(sub) {
                self.unacked.remove(&id);
            }
        }
    }

    fn is_unacked(&self, id: MessageId, sub: u64) -> bool {
        self.unacked.get(&id).is_some_and(|h| h.contains(sub))
    }

    fn apply_ack(
        &mut self,
        id: MessageId,
        sub: u64,
        nack: bool,
        out: &mut Vec<Action>,
    ) -> Result<usize, Refusal> {
        let (owner, a) = self.take_ack(id, sub, nack)?;
        let op = if a.nack {
            Op::Nack {
                destination: a.destination,
                consumer: a.consumer,
                ids: a.ids,
            }
        } else {
            Op::Ack {
                destination: a.destination,
                consumer: a.consumer,
                ids: a.ids,
            }
        };
        out.push(Action::Route(owner, op));
        Ok(owner)
    }

    /// Settles an ACK/NACK on this side (the deliveries it covers are no
    /// longer awaited) and returns what its destination's owner must do.
    fn take_ack(&mut self, id: MessageId, sub: u64, nack: bool) -> Result<(usize, TxAck), Refusal> {
        let Some(s) = self.subs.get_mut(&sub) else {
            return refuse("ACK for a closed subscription");
        };
        let ids: Vec<MessageId> = match s.mode {
            AckMode::Client => {
                // Cumulative: this message and every one delivered before it
                // on the same subscription.
                let upto = s.unacked.iter().position(|m| *m == id).map_or(0, |p| p + 1);
                s.unacked.drain(..upto).collect()
            }
            _ => {
                if let Some(p) = s.unacked.iter().position(|m| *m == id) {
                    s.unacked.remove(p);
                }
                vec![id]
            }
        };
        let destination = s.destination.clone();
        for m in &ids {
            self.release(*m, sub);
        }
        let owner = destination.owner(self.cfg.shards);
        let consumer = self.consumer(sub);
        Ok((
            owner,
            TxAck {
                destination,
                consumer,
                ids,
                nack,
            },
        ))
    }

    fn begin(&mut self, f: &Frame) -> Result<Vec<usize>, Refusal> {
        let Some(t) = f.header("transaction") else {
            return refuse("BEGIN requires a transaction header");
        };
        if self.transactions.contains_key(t) {
            return refuse(format!(
                "transaction '{}' is already open",
                String::from_utf8_lossy(t)
            ));
        }
        self.transactions
            .insert(Bytes::copy_from_slice(t), Vec::new());
        Ok(vec![])
    }

    /// Commits a transaction atomically across shards: its SENDs and ACKs
    /// go, grouped by owner shard, to each participant as one part, and
    /// this connection's shard coordinates a two-phase commit (see
    /// `server::shard`), answering `receipt` once every part is applied.
    fn commit(
        &mut self,
        f: &Frame,
        receipt: Option<Bytes>,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let Some(t) = f.header("transaction") else {
            return refuse("COMMIT requires a transaction header");
        };
        let Some(ops) = self.transactions.remove(t) else {
            return refuse(format!(
                "unknown transaction '{}'",
                String::from_utf8_lossy(t)
            ));
        };
        let mut parts: Vec<(usize, TxPart)> = Vec::new();
        for op in ops {
            match op {
                TxOp::Send(msg) => {
                    let owner = msg.destination.owner(self.cfg.shards);
                    TxPart::of(&mut parts, owner).sends.push(msg);
                }
                TxOp::Ack { id, sub, nack } => {
                    // Already covered by an earlier cumulative ACK in the same transaction.
                    if self.is_unacked(id, sub) {
                        let (owner, ack) = self.take_ack(id, sub, nack)?;
                        TxPart::of(&mut parts, owner).acks.push(ack);
                    }
                }
            }
        }
        let closing = self.unsubscribed_done();
        if closing.is_empty() && !parts.is_empty() {
            self.start_commit(parts, receipt, out);
            return Ok(());
        }
        if !parts.is_empty() {
            self.start_commit(parts, None, out);
        }
        // After the parts: each owner reserves what the COMMIT acknowledges
        // before the Unsubscribe puts the rest back. The receipt, a fence
        // behind the COMMIT, comes once those owners have closed them too.
        let owners = self.close_subs(closing, out);
        if let Some(r) = receipt {
            self.fence(owners, r, false, out);
        }
        Ok(())
    }

    /// Routes a transaction's parts to their shards and its coordination to
    /// this connection's shard; `receipt` is answered once it is applied.
    fn start_commit(
        &mut self,
        parts: Vec<(usize, TxPart)>,
        receipt: Option<Bytes>,
        out: &mut Vec<Action>,
    ) {
        // The coordinator's id issuer, unique for the life of the data
        // directory: recovery matches prepared records to decisions by it.
        let tx = self.ids.next();
        let token = self.next_token;
        self.next_token += 1;
        if receipt.is_some() {
            let remaining = 1 + self.wait_for_commits(token);
            self.receipts.insert(
                token,
                PendingReceipt {
                    remaining,
                    receipt,
                    close: false,
                    since: Instant::now(),
                },
            );
        }
        self.open_commits.insert(token, Vec::new());
        for (shard, op) in commit_ops(tx, self.conn, token, parts) {
            out.push(Action::Route(shard, op));
        }
    }

    fn abort(&mut self, f: &Frame, out: &mut Vec<Action>) -> Result<Vec<usize>, Refusal> {
        let Some(t) = f.header("transaction") else {
            return refuse("ABORT requires a transaction header");
        };
        // Sends are dropped; acknowledged messages stay unacknowledged (a
        // subscription closed meanwhile puts them back now).
        match self.transactions.remove(t) {
            Some(_) => {
                let closing = self.unsubscribed_done();
                Ok(self.close_subs(closing, out))
            }
            None => refuse(format!(
                "unknown transaction '{}'",
                String::from_utf8_lossy(t)
            )),
        }
    }

    /// Encodes deliveries for subscription `sub` into `buf` and returns how
    /// many went into it (none when the subscription is gone: those are
    /// not sent, and the connection's counters must not say they were). In
    /// auto-ack mode their acknowledgement, which is also what returns
    /// prefetch credit, waits for the write (see [`Session::written`]).
    pub fn deliver(&mut self, sub: u64, deliveries: Vec<Delivery>, buf: &mut BytesMut) -> usize {
        let Some(s) = self.subs.get_mut(&sub).filter(|s| s.unsubscribed.is_none()) else {
            // Unsubscribed meanwhile: the owner takes these back when the
            // Unsubscribe reaches it (they are in flight to this consumer).
            return 0;
        };
        let escape = self.version.escaping_for(Command::Message);
        let mut auto = Vec::new();
        let encoded = deliveries.len();
        for d in deliveries {
            let m = &d.msg;
            buf.reserve(256 + m.body.len());
            buf.put_slice(b"MESSAGE\n");
            put_header(buf, b"subscription", &s.id, escape);
            let _ = writeln!(buf, "message-id:{MESSAGE_ID_PREFIX}{}", m.id);
            put_header(buf, b"destination", &s.destination_header, escape);
            if self.version == Version::V1_2 {
                let _ = writeln!(buf, "ack:{MESSAGE_ID_PREFIX}{}-{sub}", m.id);
            }
            if d.redelivered {
                buf.put_slice(b"redelivered:true\n");
            }
            let _ = write!(
                buf,
                "priority:{}\ntimestamp:{}\n",
                m.priority, m.timestamp_ms
            );
            if m.expires_ms != 0 {
                let _ = writeln!(buf, "expires:{}", m.expires_ms);
            }
            if m.persistent {
                buf.put_slice(b"persistent:true\n");
            }
            for (k, v) in &m.properties {
                // Which JMS kind it is for OpenWire consumers; every STOMP
                // body is bytes with a content-length.
                if k.as_ref() == BODY_KIND && v.as_ref() == b"bytes" {
                    continue;
                }
                put_header(buf, k, v, escape);
            }
            finish_body(&m.body, buf);
            match s.mode {
                AckMode::Auto => auto.push(m.id),
                _ => {
                    s.unacked.push_back(m.id);
                    self.unacked
                        .entry(m.id)
                        .and_modify(|h| h.push(sub))
                        .or_insert(Holders::One(sub));
                }
            }
        }
        if auto.is_empty() {
            return encoded;
        }
        let owner = s.destination.owner(self.cfg.shards);
        self.in_write.push((
            owner,
            Op::Ack {
                destination: s.destination.clone(),
                consumer: self.conn.consumer(sub),
                ids: auto,
            },
        ));
        encoded
    }

    /// What was encoded is written: its auto-acknowledgements go now, to
    /// the shard each names.
    pub fn written(&mut self, out: &mut Vec<(usize, Op)>) {
        out.append(&mut self.in_write);
    }

    /// The write failed: its deliveries were not received whole. They are
    /// not acknowledged, and still count as seen when they go back.
    pub fn write_failed(&mut self) {
        self.write_failed.append(&mut self.in_write);
    }
}

fn durable_name(f: &Frame) -> Option<&str> {
    f.header_str("activemq.subscriptionName")
        .or_else(|| f.header_str("durable-subscription-name"))
        .filter(|n| !n.is_empty())
}

/// SUBSCRIBE's `selector` header, parsed; an empty one is none (JMS).
fn selector(f: &Frame, durable: bool) -> Result<Option<Selector>, Refusal> {
    let Some(text) = f.header_str("selector").filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    if durable && text.len() > MAX_DURABLE_SELECTOR_BYTES {
        return refuse(format!(
            "a durable subscription's selector is longer than {MAX_DURABLE_SELECTOR_BYTES} bytes"
        ));
    }
    match Selector::parse(text) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            let shown: String = text.chars().take(200).collect();
            refuse(format!("{e} (selector: {shown})"))
        }
    }
}

/// `brokk-body`: the JMS message kind a body is, when not text (see
/// `protocol::openwire::session`).
const BODY_KIND: &[u8] = b"brokk-body";

fn bytes_kind() -> Property {
    (Bytes::from_static(BODY_KIND), Bytes::from_static(b"bytes"))
}

/// Headers the broker consumes or sets itself; everything else travels with
/// the message as an application property.
fn is_routing_header(k: &[u8]) -> bool {
    matches!(
        k,
        b"amq-msg-type"
            // The broker's: set by the OpenWire listener from the
            // producer's own message id, never taken from a client.
            | b"brokk-origin"
            | b"destination"
            | b"receipt"
            | b"transaction"
            | b"content-length"
            | b"priority"
            | b"expires"
            | b"persistent"
            | b"message-id"
            | b"subscription"
            | b"ack"
            | b"redelivered"
            | b"timestamp"
    )
}

/// A prefetch of 0: the owner delivers nothing more to `consumer`.
fn no_more(destination: &Destination, consumer: ConsumerKey) -> Op {
    Op::Prefetch {
        destination: destination.clone(),
        consumer,
        prefetch: 0,
    }
}

fn parse_heartbeat(hb: &str) -> Option<(u64, u64)> {
    let (a, b) = hb.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Reads an ACK/NACK id: a 1.2 `ack` value (`ID:brokk-<message>-<sub>`,
/// naming the delivery), or a message id (`ID:brokk-<message>`), which
/// 1.0/1.1 clients send and some 1.2 clients send in place of `ack`.
fn parse_ack_id(raw: &str) -> Option<(MessageId, Option<u64>)> {
    let rest = raw.strip_prefix(MESSAGE_ID_PREFIX)?;
    match rest.split_once('-') {
        Some((id, sub)) => Some((id.parse().ok()?, Some(sub.parse().ok()?))),
        None => Some((rest.parse().ok()?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_name_a_delivery_or_a_message() {
        assert_eq!(parse_ack_id("ID:brokk-42-7"), Some((42, Some(7))));
        assert_eq!(parse_ack_id("ID:brokk-42"), Some((42, None)));
        for bad in [
            "42",
            "ID:brokk-",
            "ID:brokk-x",
            "ID:brokk-42-",
            "ID:brokk-42-x",
            "ID:other-42",
        ] {
            assert_eq!(parse_ack_id(bad), None, "{bad}");
        }
    }

    fn session(shards: usize) -> Session {
        let mut s = Session::new(
            Rc::new(SessionConfig::for_tests(shards)),
            Rc::new(MessageIds::new(0, 0)),
            ConnRef { shard: 0, conn: 1 },
        );
        let mut out = Vec::new();
        s.handle(Frame::new(Command::Connect), &mut out);
        assert!(s.is_open());
        s
    }

    fn receipts(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Write(f) if f.command == Command::Receipt => {
                    f.header_str("receipt-id").map(str::to_string)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn disconnect_closes_the_subscriptions_ahead_of_its_receipt_and_ends_the_frames() {
        let mut s = Session::new(
            Rc::new(SessionConfig::for_tests(2)),
            Rc::new(MessageIds::new(0, 0)),
            ConnRef { shard: 0, conn: 1 },
        );
        let mut out = Vec::new();
        s.handle(
            Frame::new(Command::Connect).with("client-id", "c"),
            &mut out,
        );
        assert!(s.is_open());
        let subscribe = || {
            Frame::new(Command::Subscribe)
                .with("id", "d")
                .with("destination", "/topic/t")
                .with("activemq.subscriptionName", "n")
        };
        s.handle(subscribe(), &mut out);
        out.clear();
        s.handle(
            Frame::new(Command::Disconnect).with("receipt", "bye"),
            &mut out,
        );
        let ops: Vec<&str> = out
            .iter()
            .map(|a| match a {
                Action::Route(
                    _,
                    Op::Unsubscribe {
                        destroy_durable, ..
                    },
                ) => {
                    assert!(!destroy_durable, "a durable subscription stays");
                    "unsubscribe"
                }
                Action::Route(_, Op::Fence { .. }) => "fence",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ops, ["unsubscribe", "fence", "fence"]);
        // Nothing after DISCONNECT counts: not a subscription made again.
        out.clear();
        s.handle(subscribe(), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    fn deliveries(ids: &[u64]) -> Vec<Delivery> {
        let usage = Arc::new(MemoryUsage::default());
        ids.iter()
            .map(|&id| Delivery {
                msg: Arc::new(Message::for_tests(id, Destination::queue("q"), &usage)),
                redelivered: false,
                redeliveries: 0,
            })
            .collect()
    }

    fn acked(out: &[Action]) -> Vec<u64> {
        acked_ops(out.iter().filter_map(|a| match a {
            Action::Route(_, op) => Some(op),
            _ => None,
        }))
    }

    fn acked_ops<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Vec<u64> {
        ops.into_iter()
            .filter_map(|op| match op {
                Op::Ack { ids, .. } => Some(ids.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Subscribes `s` as `a` to `/queue/q` in mode `ack`.
    fn subscribed(s: &mut Session, ack: &'static str) -> u64 {
        let mut out = Vec::new();
        s.handle(
            Frame::new(Command::Subscribe)
                .with("id", "a")
                .with("destination", "/queue/q")
                .with("ack", ack),
            &mut out,
        );
        sub_of(&out)
    }

    /// The sub number the session gave the last SUBSCRIBE in `out`.
    fn sub_of(out: &[Action]) -> u64 {
        out.iter()
            .find_map(|a| match a {
                Action::Route(_, Op::Subscribe(op)) => Some(op.consumer.sub),
                _ => None,
            })
            .expect("a Subscribe")
    }

    #[test]
    fn auto_acks_wait_for_the_write_unless_the_client_closes_the_subscription() {
        let mut s = session(2);
        let mut out = Vec::new();
        let subscribe = |id: &'static str| {
            Frame::new(Command::Subscribe)
                .with("id", id)
                .with("destination", "/queue/q")
                .with("ack", "auto")
        };
        s.handle(subscribe("a"), &mut out);
        let a = sub_of(&out);
        s.handle(subscribe("b"), &mut out);
        let b = sub_of(&out[1..]);
        out.clear();
        let mut buf = BytesMut::new();
        assert_eq!(s.deliver(a, deliveries(&[1, 2]), &mut buf), 2);
        s.deliver(b, deliveries(&[3]), &mut buf);
        assert!(!buf.is_empty());
        // Being written: nothing is acknowledged yet.
        s.handle(
            Frame::new(Command::Unsubscribe)
                .with("id", "a")
                .with("receipt", "gone"),
            &mut out,
        );
        let ops: Vec<&str> = out
            .iter()
            .map(|a| match a {
                Action::Route(_, Op::Prefetch { prefetch: 0, .. }) => "prefetch 0",
                Action::Route(_, Op::Ack { .. }) => "ack",
                Action::Route(_, Op::Unsubscribe { .. }) => "unsubscribe",
                Action::Route(_, Op::Fence { .. }) => "fence",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // Its own deliveries being written count as consumed, first.
        assert_eq!(ops, ["prefetch 0", "ack", "unsubscribe", "fence"]);
        assert_eq!(acked(&out), [1, 2]);
        out.clear();
        // A's deliveries queued behind are not written, nor counted as
        // sent (the connection's messages_out goes by this).
        let mut later = BytesMut::new();
        assert_eq!(s.deliver(a, deliveries(&[4]), &mut later), 0);
        assert!(later.is_empty());
        // The rest waits for the write.
        let mut written = Vec::new();
        s.written(&mut written);
        assert_eq!(acked_ops(written.iter().map(|(_, op)| op)), [3]);
        written.clear();
        s.written(&mut written);
        assert!(written.is_empty(), "{written:?}");
        // A failed write acknowledges nothing, and the connection's end
        // puts back what was being written.
        s.deliver(b, deliveries(&[5]), &mut buf);
        s.write_failed();
        s.written(&mut written);
        assert!(written.is_empty(), "{written:?}");
        s.teardown(&mut out);
        assert!(acked(&out).is_empty(), "{out:?}");
        assert!(
            matches!(&out[..], [Action::Route(_, Op::Unsubscribe { .. })]),
            "{out:?}"
        );
    }

    /// The ops routed, by kind, in order.
    fn kinds(out: &[Action]) -> Vec<&'static str> {
        out.iter()
            .map(|a| match a {
                Action::Route(_, Op::Prefetch { prefetch: 0, .. }) => "prefetch 0",
                Action::Route(_, Op::Unsubscribe { .. }) => "unsubscribe",
                Action::Route(_, Op::TxPrepare { .. }) => "prepare",
                Action::Route(_, Op::TxCoordinate { .. }) => "coordinate",
                Action::Route(_, Op::Fence { .. }) => "fence",
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_unsubscribe_waits_for_the_transactions_that_acknowledge_on_it() {
        for end in [Command::Commit, Command::Abort] {
            let mut s = session(1);
            let mut out = Vec::new();
            let a = subscribed(&mut s, "client-individual");
            let mut buf = BytesMut::new();
            s.deliver(a, deliveries(&[1, 2]), &mut buf);
            s.handle(
                Frame::new(Command::Begin).with("transaction", "t"),
                &mut out,
            );
            s.handle(
                Frame::new(Command::Ack)
                    .with("id", format!("{MESSAGE_ID_PREFIX}1-{a}"))
                    .with("transaction", "t"),
                &mut out,
            );
            s.handle(
                Frame::new(Command::Unsubscribe)
                    .with("id", "a")
                    .with("receipt", "u"),
                &mut out,
            );
            // It gets nothing more, but is not closed at its owner: that
            // would put back the message the transaction acknowledges.
            assert_eq!(kinds(&out), ["prefetch 0", "fence"], "{end:?}");
            out.clear();
            let mut later = BytesMut::new();
            s.deliver(a, deliveries(&[3]), &mut later);
            assert!(later.is_empty(), "nothing written after UNSUBSCRIBE");
            s.handle(
                Frame::new(end)
                    .with("transaction", "t")
                    .with("receipt", "e"),
                &mut out,
            );
            let expect: &[&str] = match end {
                // The owner reserves what the COMMIT acknowledges first;
                // the receipt waits for the close too.
                Command::Commit => &["coordinate", "prepare", "unsubscribe", "fence"],
                _ => &["unsubscribe", "fence"],
            };
            assert_eq!(kinds(&out), expect, "{end:?}");
            out.clear();
            s.teardown(&mut out);
            assert!(out.is_empty(), "closed once: {out:?}");
        }
    }

    /// The `seen` of the Unsubscribe in `out`.
    fn seen_of(out: &[Action]) -> Seen {
        out.iter()
            .find_map(|a| match a {
                Action::Route(_, Op::Unsubscribe { seen, .. }) => Some(seen.clone()),
                _ => None,
            })
            .expect("an Unsubscribe")
    }

    #[test]
    fn a_closing_consumer_names_what_its_client_may_have_seen() {
        // Awaiting an ACK: seen.
        let mut s = session(1);
        let a = subscribed(&mut s, "client-individual");
        let mut buf = BytesMut::new();
        s.deliver(a, deliveries(&[1, 2]), &mut buf);
        let mut out = Vec::new();
        s.handle(Frame::new(Command::Unsubscribe).with("id", "a"), &mut out);
        assert_eq!(seen_of(&out), Seen::only([1, 2]));
        // In a write that failed, or being written when the peer went:
        // maybe seen (part of it may have arrived). What comes after the
        // close is dropped unwritten: not seen.
        let mut s = session(1);
        let a = subscribed(&mut s, "auto");
        s.deliver(a, deliveries(&[3]), &mut buf);
        s.write_failed();
        s.deliver(a, deliveries(&[5]), &mut buf);
        out.clear();
        s.teardown(&mut out);
        assert!(acked(&out).is_empty(), "nothing consumed: {out:?}");
        assert_eq!(seen_of(&out), Seen::only([3, 5]));
        let mut later = BytesMut::new();
        s.deliver(a, deliveries(&[4]), &mut later);
        assert!(later.is_empty());
    }

    #[test]
    fn a_connection_that_ends_leaves_its_writes_unacknowledged_but_an_error_does_not() {
        let mut s = session(1);
        let mut out = Vec::new();
        let a = subscribed(&mut s, "auto");
        let mut ended = session(1);
        assert_eq!(subscribed(&mut ended, "auto"), a);
        let mut buf = BytesMut::new();
        s.deliver(a, deliveries(&[1]), &mut buf);
        ended.deliver(a, deliveries(&[1]), &mut buf);
        // The peer went away: the write decides.
        out.clear();
        ended.teardown(&mut out);
        assert!(acked(&out).is_empty(), "{out:?}");
        // The session closed the connection itself (an ERROR): the client
        // reads what is being written.
        out.clear();
        s.protocol_error("bad frame", &mut out);
        out.clear();
        s.teardown(&mut out);
        assert_eq!(acked(&out), [1]);
    }

    #[test]
    fn a_commit_goes_as_one_part_per_shard_and_later_receipts_wait_for_it() {
        let mut s = session(2);
        let (qa, qb) = ["a", "b", "c", "d"]
            .iter()
            .map(|n| Destination::queue(n))
            .fold((None, None), |(a, b), d| match d.owner(2) {
                0 => (a.or(Some(d)), b),
                _ => (a, b.or(Some(d))),
            });
        let (qa, qb) = (qa.unwrap().to_string(), qb.unwrap().to_string());
        let mut out = Vec::new();
        s.handle(
            Frame::new(Command::Begin).with("transaction", "t"),
            &mut out,
        );
        for q in [&qa, &qb, &qa] {
            let send = Frame::new(Command::Send)
                .with("destination", Bytes::from(q.clone()))
                .with("transaction", "t");
            s.handle(send, &mut out);
        }
        assert!(out.is_empty(), "nothing routed before COMMIT: {out:?}");
        s.handle(
            Frame::new(Command::Commit)
                .with("transaction", "t")
                .with("receipt", "c"),
            &mut out,
        );
        let mut commit_token = None;
        let mut parts = Vec::new();
        for a in out.drain(..) {
            match a {
                Action::Route(
                    0,
                    Op::TxCoordinate {
                        token,
                        participants,
                        ..
                    },
                ) => {
                    assert_eq!(participants, vec![0, 1]);
                    commit_token = Some(token);
                }
                Action::Route(shard, Op::TxPrepare { part, alone, .. }) => {
                    assert!(!alone);
                    parts.push((shard, part.sends.len()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(parts, vec![(0, 2), (1, 1)], "one part per shard");
        // A plain SEND with a receipt behind the open COMMIT: a transaction
        // of its own, and its receipt waits for the COMMIT.
        s.handle(
            Frame::new(Command::Send)
                .with("destination", Bytes::from(qb.clone()))
                .with("receipt", "s"),
            &mut out,
        );
        let mut send_token = None;
        for a in out.drain(..) {
            match a {
                Action::Route(0, Op::TxCoordinate { token, .. }) => send_token = Some(token),
                Action::Route(1, Op::TxPrepare { alone, .. }) => assert!(alone),
                other => panic!("unexpected {other:?}"),
            }
        }
        let (commit_token, send_token) = (commit_token.unwrap(), send_token.unwrap());
        s.fenced(send_token, &mut out);
        assert!(receipts(&out).is_empty(), "the COMMIT is not applied yet");
        s.fenced(commit_token, &mut out);
        assert_eq!(receipts(&out), vec!["c", "s"], "in order");
        out.clear();
        // Nothing open any more: a plain SEND goes straight to its owner.
        s.handle(
            Frame::new(Command::Send).with("destination", Bytes::from(qa.clone())),
            &mut out,
        );
        assert!(
            matches!(out[..], [Action::Route(0, Op::Send(_))]),
            "{out:?}"
        );
    }

    #[test]
    fn holders_keep_delivery_order() {
        let mut h = Holders::One(3);
        h.push(1);
        assert_eq!(h.oldest(), 3);
        assert!(h.contains(1) && h.contains(3) && !h.contains(2));
        assert!(!h.remove(3));
        assert_eq!(h.oldest(), 1);
        assert!(h.remove(1));
        assert!(Holders::One(5).remove(5));
    }
}
