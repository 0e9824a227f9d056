//! One shard: a pinned glommio executor with its own listener, its own
//! destinations, and channels to every other shard. Everything here is
//! single-threaded; other shards are reached only by messages.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;
use glommio::{spawn_local, timer::sleep};
use tracing::{info, info_span, warn, Instrument};

use super::admin_send::{AdminSend, SendRefusal};
use super::connection;
use super::latch::Latch;
use super::listen::ShardListeners;
use super::mailbox::Mailbox;
use crate::broker::message::MemoryUsage;
use crate::broker::message_ids::MessageIds;
use crate::broker::ops::{ConnRef, Op, Reply, ShardMsg};
use crate::broker::paging::Pager;
use crate::broker::queue::Delivery;
use crate::broker::restore::{Restored, Restorer, TxOutcome};
use crate::broker::shard::{
    AdminRefusal, BrokerSettings, BrowsedMessage, DestinationStats, ShardBroker, SubscriberStats,
    TxApplied,
};
use crate::broker::Destination;
use crate::idmap::{IdMap, IdSet};
use crate::metrics::{ConnectionInfo, ConnectionStats, LatencySnapshot};
use crate::protocol::stomp::session::SessionConfig;
use crate::protocol::stomp::Limits;
use crate::store::journal::{self, Journal, JournalConfig, StoreUsage};
use crate::store::memory::MemoryStore;
use crate::store::spool::Spool;
use crate::store::sql::shard_store::DbShardStore;
use crate::store::{Durable, RecordRef, Store};

/// A batch of messages for one peer shard.
pub type Batch = Vec<ShardMsg>;

/// Bound on batches queued between two shards; a full channel makes the
/// sending shard's forwarder wait, not drop.
pub const MESH_CHANNEL_BATCHES: usize = 1024;

/// What a connection's writer receives.
pub enum Outbound {
    Frame(crate::protocol::stomp::Frame),
    /// A command for an OpenWire connection (never queued for a STOMP one).
    OpenWire(Box<crate::protocol::openwire::Command>),
    /// A timer an OpenWire session set went off (see its `Action::Timer`).
    Timer(u64),
    Deliver(u64, Vec<Delivery>),
    Fenced(u64),
    Refused(String),
    /// Send a heart-beat after this much write silence.
    HeartbeatEvery(Duration),
    Close,
}

/// Requests from outside the shard threads (admin endpoint, signals).
pub enum Control {
    Stats(flume::Sender<ShardStats>),
    /// An operator's action on a destination this shard owns.
    Admin(AdminOp, flume::Sender<AdminAnswer>),
    /// An operator's messages, sent from this shard like a producer's.
    Send(AdminSend, flume::Sender<Result<usize, SendRefusal>>),
    Shutdown,
}

/// One shard's figures, gathered in one pass.
#[derive(Debug, Clone)]
pub struct ShardStats {
    pub connections: Vec<ConnectionStats>,
    pub destinations: Vec<DestinationStats>,
    pub subscribers: Vec<SubscriberStats>,
    pub receipt_latency: LatencySnapshot,
}

#[derive(Debug, Clone)]
pub enum AdminOp {
    Browse(Destination, usize),
    Purge(Destination),
    Delete(Destination),
    /// An offline durable subscription of a topic.
    DeleteSubscription(Destination, crate::broker::ops::DurableName),
}

#[derive(Debug, Clone)]
pub enum AdminAnswer {
    Browsed(Vec<BrowsedMessage>),
    /// Purged or deleted: how many waiting messages went.
    Removed(u64),
    /// Removed from the queue, but the store did not confirm the removal
    /// in time: after a crash the messages may be back.
    NotConfirmed(u64),
    Refused(AdminRefusal),
}

#[derive(Debug, Clone)]
pub struct PagingSettings {
    pub spool_dir: std::path::PathBuf,
    pub page_at_bytes: usize,
}

/// Everything shared by the shards, created before they start.
#[derive(Clone)]
pub struct Shared {
    pub shards: usize,
    pub settings: BrokerSettings,
    pub limits: Limits,
    pub max_connections: usize,
    /// How long a connection may take to complete CONNECT.
    pub connect_timeout: Duration,
    pub memory_limit_bytes: usize,
    pub usage: Arc<MemoryUsage>,
    pub connections: Arc<AtomicUsize>,
    /// Users, rights, the connection rate limit.
    pub security: Arc<crate::security::Security>,
    /// The TLS listener's settings, when `listeners.stomp_tls` is set.
    pub tls: Option<TlsListener>,
    pub default_prefetch: u32,
    pub heartbeat_min_ms: u64,
    /// Journal settings (file mode).
    pub journal: Option<JournalSettings>,
    /// The database writer and what the tables held at takeover (database
    /// modes). Neither this nor `journal`: memory mode.
    pub db: Option<super::db_shard::DbShared>,
    /// Journal space and limit (file mode), for producer flow control.
    pub store_usage: Arc<StoreUsage>,
    /// At a limit, refuse SENDs with an ERROR instead of pausing the producer.
    pub send_fail_if_no_space: bool,
    /// Queues larger than memory: where each shard spools paged messages
    /// (`<dir>/shard-N`), and the held bytes at which queues start paging.
    pub paging: PagingSettings,
    /// Every shard passes it twice before accepting: once its journal is
    /// read (its transaction decisions published), and once the
    /// transactions recovery applied are durable everywhere.
    pub recovered: Arc<std::sync::Barrier>,
    /// The transactions whose decision (TxCommit) any shard's journal
    /// holds, published before the first pass of `recovered`: a
    /// participant's prepared records are in effect if their decision is
    /// in any journal.
    pub recovered_commits: Arc<std::sync::Mutex<IdSet>>,
    /// JMS client ids of the open OpenWire connections, broker-wide: a
    /// second connection with one in use is refused, as ActiveMQ does.
    /// Touched once per connect and close, never per message.
    pub openwire_client_ids: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Live temporary destinations (see `broker::temporary`).
    pub temporary: Arc<crate::broker::temporary::TempDestinations>,
    /// The highest message id counter any shard recovered, published before
    /// `recovered` is passed: every shard's new ids start above it.
    pub recovered_max_id: Arc<std::sync::atomic::AtomicU64>,
    /// Work that can still produce journal records on some shard: messages
    /// queued for or crossing to another shard and not yet applied there,
    /// and replies waiting for a flush. A clean shutdown waits for it to
    /// reach zero (see [`quiesce`]). Counted per routing pass, not per message.
    pub in_flight: Arc<std::sync::atomic::AtomicI64>,
    /// Shards whose connections are closed, during a clean shutdown.
    pub drained: Arc<AtomicUsize>,
    /// Test-only fault switch (`BROKK_FAULT_PANIC_DESTINATION`): the owner
    /// of this destination panics when a SEND to it is applied.
    pub fault_panic_destination: Option<crate::broker::Destination>,
    /// Test-only fault switch (`BROKK_FAULT_TX_CRASH`): the process kills
    /// itself (SIGKILL) at a chosen step of a two-phase commit.
    pub fault_tx_crash: Option<TxCrash>,
}

#[derive(Clone)]
pub struct TlsListener {
    pub config: Arc<rustls::ServerConfig>,
    /// A handshake not done this long after the accept is dropped.
    pub handshake_timeout: Duration,
}

/// Where `BROKK_FAULT_TX_CRASH` kills the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCrash {
    /// `prepared`: every participant's prepared records are durable; the
    /// coordinator has not journaled the decision.
    Prepared,
    /// `decided`: the decision is durable; a participant other than the
    /// coordinator has not applied its part.
    Decided,
}

impl TxCrash {
    pub fn from_env() -> Option<TxCrash> {
        match std::env::var("BROKK_FAULT_TX_CRASH").ok()?.as_str() {
            "prepared" => Some(TxCrash::Prepared),
            "decided" => Some(TxCrash::Decided),
            _ => None,
        }
    }
}

/// Dies the way a crash does: no flush, no unwinding.
fn crash_here(step: &str) -> ! {
    tracing::error!(step, "fault switch: killing the process");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[derive(Clone)]
pub struct JournalSettings {
    pub dir: std::path::PathBuf,
    pub segment_size_bytes: u64,
    pub skip_corrupt: bool,
}

pub struct ShardContext {
    pub id: usize,
    pub shared: Shared,
    pub broker: RefCell<ShardBroker>,
    /// Per peer shard: messages waiting to cross. Index `id` is unused.
    outboxes: Vec<Mailbox<ShardMsg>>,
    pub conns: RefCell<HashMap<u64, Mailbox<Outbound>>>,
    /// Per open connection: who it is and its counters (console).
    pub conn_info: RefCell<HashMap<u64, Rc<ConnectionInfo>>>,
    pub session_cfg: Rc<SessionConfig>,
    pub ids: Rc<MessageIds>,
    pub shutdown: Latch,
    next_conn: Cell<u64>,
    journal: Option<Rc<RefCell<Journal>>>,
    /// The store whose durable point receipts wait for (file and database
    /// modes).
    durable: Option<Rc<RefCell<dyn Durable>>>,
    /// Fence replies waiting for the journal to reach a sequence number.
    deferred: RefCell<VecDeque<(u64, (usize, ShardMsg))>>,
    pub(super) flush_wakeup: Mailbox<()>,
    /// Connections whose acknowledgements the store took without a
    /// sequence number since the last promotion (see
    /// `Store::unreceipted_ack`): a receipt one of them asks for promotes
    /// them first, so that it covers its ACKs.
    unreceipted_acks: RefCell<std::collections::HashSet<ConnRef>>,
    /// Transactions this shard coordinates (those committed on its
    /// connections), until every participant has applied them.
    coordinating: RefCell<IdMap<Coordinating>>,
}

/// Most connections remembered as having acknowledged without a receipt
/// (see `ShardContext::unreceipted_acks`).
const MAX_UNRECEIPTED_ACKERS: usize = 4096;

/// A transaction on its way through two-phase commit: every participant
/// journals its part as prepared records (TxPrepared), then this shard
/// journals the decision (TxCommit) and, once it is durable, has every
/// participant apply its part (TxApplied) and journal that it did (TxDone).
/// With one participant there is nothing to coordinate: it journals its
/// records and its TxDone together and applies at once (TxDone only).
struct Coordinating {
    conn: ConnRef,
    token: u64,
    participants: Vec<usize>,
    prepared: usize,
    applied: usize,
    done: usize,
}

impl ShardContext {
    pub fn next_conn_id(&self) -> u64 {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }

    /// Delivers addressed messages: local ones are applied at once, in
    /// order (their outputs join the end of the work list); remote ones are
    /// queued for their shard's forwarder, which sends them as one batch.
    pub fn route_all(&self, work: impl IntoIterator<Item = (usize, ShardMsg)>) {
        let mut work: VecDeque<(usize, ShardMsg)> = work.into_iter().collect();
        let mut produced = Vec::new();
        // Messages for other shards and deferred replies, counted once per
        // pass (one shared atomic per batch, not per message), before this
        // pass yields, so before any peer can apply them.
        let mut crossing = 0;
        while let Some((target, msg)) = work.pop_front() {
            if target != self.id {
                crossing += i64::from(self.outboxes[target].push(msg));
                continue;
            }
            if let (Some(boom), ShardMsg::Op(Op::Send(m))) =
                (&self.shared.fault_panic_destination, &msg)
            {
                assert!(
                    m.destination != *boom,
                    "fault switch: panic on a SEND to {boom}"
                );
            }
            match msg {
                ShardMsg::Op(Op::Fence { conn, token }) => {
                    // A receipt means durable: hold it until the journal
                    // has flushed everything appended before it, this
                    // connection's acknowledgements included.
                    self.promote_unreceipted_of(conn);
                    let reply = (
                        conn.shard as usize,
                        ShardMsg::Reply(Reply::Fenced { conn, token }),
                    );
                    crossing += i64::from(self.when_durable(reply, &mut work));
                }
                ShardMsg::Op(Op::DeadLetter { msg, retire }) => {
                    // Applied as the broker's own copy (never taken for a
                    // producer's resend: it keeps its origin); its
                    // retirement waits for durability here.
                    self.broker
                        .borrow_mut()
                        .apply(Op::DeadLetter { msg, retire: None }, &mut produced);
                    work.extend(produced.drain(..));
                    if let Some(r) = retire {
                        // The origin retires its copy only after ours is durable.
                        let reply = (r.shard, ShardMsg::Reply(Reply::Retire(r)));
                        crossing += i64::from(self.when_durable(reply, &mut work));
                    }
                }
                ShardMsg::Op(Op::TxCoordinate {
                    tx,
                    conn,
                    token,
                    participants,
                }) => {
                    // The COMMIT's receipt waits for the decision written
                    // here: it covers the connection's earlier ACKs here.
                    self.promote_unreceipted_of(conn);
                    self.coordinating.borrow_mut().insert(
                        tx,
                        Coordinating {
                            conn,
                            token,
                            participants,
                            prepared: 0,
                            applied: 0,
                            done: 0,
                        },
                    );
                }
                ShardMsg::Op(Op::TxPrepare {
                    tx,
                    conn,
                    coordinator,
                    part,
                    alone,
                }) => {
                    // The COMMIT's receipt waits for this part: it covers
                    // the connection's earlier acknowledgements here too.
                    self.promote_unreceipted_of(conn);
                    // Alone, it is applied at once (unless behind an
                    // earlier transaction of its connection): its records
                    // and its TxDone in one flush decide it.
                    let applied = self.broker.borrow_mut().tx_prepare(
                        tx,
                        conn,
                        coordinator,
                        part,
                        alone,
                        &mut produced,
                    );
                    work.extend(produced.drain(..));
                    if !alone {
                        let prepared = (coordinator, ShardMsg::Reply(Reply::TxPrepared { tx }));
                        crossing += i64::from(self.when_durable(prepared, &mut work));
                    }
                    crossing += self.tx_answer(applied, &mut work);
                }
                ShardMsg::Op(Op::TxApply { tx, coordinator }) => {
                    if coordinator != self.id
                        && self.shared.fault_tx_crash == Some(TxCrash::Decided)
                    {
                        crash_here("decided");
                    }
                    let applied = self.broker.borrow_mut().tx_decided(tx, &mut produced);
                    work.extend(produced.drain(..));
                    crossing += self.tx_answer(applied, &mut work);
                }
                ShardMsg::Op(op) => {
                    let acker = match &op {
                        Op::Ack { consumer, .. } => Some(consumer.conn_ref()),
                        _ => None,
                    };
                    self.broker.borrow_mut().apply(op, &mut produced);
                    if let Some(conn) = acker {
                        self.note_unreceipted_acker(conn);
                    }
                    work.extend(produced.drain(..));
                }
                ShardMsg::Reply(Reply::Retire(r)) => self.broker.borrow_mut().retire_one(&r),
                ShardMsg::Reply(Reply::TxPrepared { tx }) => {
                    crossing += self.tx_prepared(tx, &mut work);
                }
                ShardMsg::Reply(Reply::TxApplied { tx }) => self.tx_answered(tx, true, false),
                ShardMsg::Reply(Reply::TxDone { tx }) => {
                    let alone = self
                        .coordinating
                        .borrow()
                        .get(&tx)
                        .is_some_and(|c| c.participants.len() == 1);
                    if !alone {
                        self.broker.borrow_mut().tx_forget(tx);
                    }
                    self.tx_answered(tx, alone, true);
                }
                ShardMsg::Reply(reply) => self.reply(reply),
            }
        }
        if crossing > 0 {
            self.shared.in_flight.fetch_add(crossing, Ordering::SeqCst);
        }
        if let Some(j) = &self.durable {
            let j = j.borrow();
            if j.has_pending() {
                self.flush_wakeup.push(());
            }
            // Nothing waits unsequenced: no acker has anything to promote
            // (those a batch in flight carries have its number). Forgotten
            // here, closed connections do not fill the set to its bound.
            if !j.has_unreceipted() && !self.unreceipted_acks.borrow().is_empty() {
                self.unreceipted_acks.borrow_mut().clear();
            }
        }
    }

    /// After `conn`'s ACK: if the store holds retirements without a
    /// sequence number (this one's, maybe), a later answer to `conn` must
    /// promote them (see `promote_unreceipted_of`).
    fn note_unreceipted_acker(&self, conn: ConnRef) {
        if !self
            .durable
            .as_ref()
            .is_some_and(|d| d.borrow().has_unreceipted())
        {
            return;
        }
        let mut from = self.unreceipted_acks.borrow_mut();
        from.insert(conn);
        // Closed connections are never removed: past a bound, everything
        // is promoted and they go.
        let full = from.len() > MAX_UNRECEIPTED_ACKERS;
        drop(from);
        if full {
            self.promote_unreceipted();
        }
    }

    /// Before an answer to `conn` that waits for durability: if it
    /// acknowledged without a receipt here, the store's retirements still
    /// waiting get a sequence number, so that the answer covers them (see
    /// `Store::unreceipted_ack`).
    fn promote_unreceipted_of(&self, conn: ConnRef) {
        let acked = self.unreceipted_acks.borrow_mut().remove(&conn);
        if acked {
            // Its own only: another connection's acknowledgements keep
            // holding no receipt back (a JMS client that sends and
            // consumes on one connection asks for a response per
            // persistent SEND).
            if let Some(d) = &self.durable {
                d.borrow_mut().promote_unreceipted(Some(conn.key()));
            }
        }
    }

    /// Every retirement waiting without a sequence number gets one; no
    /// connection is left to remember.
    fn promote_unreceipted(&self) {
        if let Some(d) = &self.durable {
            d.borrow_mut().promote_unreceipted(None);
        }
        self.unreceipted_acks.borrow_mut().clear();
    }

    /// Sends `reply` once the journal has flushed everything appended so
    /// far (at once without a journal, or when nothing is pending).
    /// Returns whether the reply was deferred (counted in `in_flight` by
    /// the caller, once per routing pass).
    #[must_use = "a deferred reply must be counted in in_flight"]
    fn when_durable(
        &self,
        reply: (usize, ShardMsg),
        work: &mut VecDeque<(usize, ShardMsg)>,
    ) -> bool {
        match &self.durable {
            // Behind replies still held (see `flusher`): wait in line, so
            // that receipts keep their order.
            Some(j)
                if j.borrow().appended() > j.borrow().durable()
                    || !self.deferred.borrow().is_empty() =>
            {
                let upto = j.borrow().appended();
                self.deferred.borrow_mut().push_back((upto, reply));
                true
            }
            _ => {
                work.push_back(reply);
                false
            }
        }
    }

    /// Answers the coordinators of the parts this shard applied: applied at
    /// once (the decision is durable, so that is enough for the receipt),
    /// and TxDone once durable (until then the decision record is needed).
    /// A part alone in its transaction answers only TxDone: that record is
    /// its decision. Returns how many answers were deferred (see
    /// `when_durable`).
    fn tx_answer(&self, applied: Vec<TxApplied>, work: &mut VecDeque<(usize, ShardMsg)>) -> i64 {
        let mut deferred = 0;
        for a in applied {
            if !a.alone {
                work.push_back((
                    a.coordinator,
                    ShardMsg::Reply(Reply::TxApplied { tx: a.tx }),
                ));
            }
            let done = (a.coordinator, ShardMsg::Reply(Reply::TxDone { tx: a.tx }));
            deferred += i64::from(self.when_durable(done, work));
        }
        deferred
    }

    /// A participant's part of `tx` is durable as prepared records; once
    /// all are, the decision is journaled and, when durable, sent out.
    /// Returns how many messages were deferred (see `when_durable`).
    fn tx_prepared(&self, tx: u64, work: &mut VecDeque<(usize, ShardMsg)>) -> i64 {
        let participants = {
            let mut coordinating = self.coordinating.borrow_mut();
            let Some(c) = coordinating.get_mut(&tx) else {
                return 0;
            };
            c.prepared += 1;
            if c.prepared < c.participants.len() {
                return 0;
            }
            c.participants.clone()
        };
        if self.shared.fault_tx_crash == Some(TxCrash::Prepared) {
            crash_here("prepared");
        }
        self.broker.borrow_mut().tx_decide(tx, participants.len());
        let mut deferred = 0;
        for p in participants {
            let apply = (
                p,
                ShardMsg::Op(Op::TxApply {
                    tx,
                    coordinator: self.id,
                }),
            );
            deferred += i64::from(self.when_durable(apply, work));
        }
        deferred
    }

    /// A participant applied its part of `tx` and/or made its TxDone
    /// durable. Once all have applied, the connection gets its RECEIPT
    /// (applied, and durable by the decision); once all are done, the
    /// transaction is forgotten.
    fn tx_answered(&self, tx: u64, applied: bool, done: bool) {
        let mut coordinating = self.coordinating.borrow_mut();
        let Some(c) = coordinating.get_mut(&tx) else {
            return;
        };
        let n = c.participants.len();
        c.applied += usize::from(applied);
        c.done += usize::from(done);
        let receipt = applied && c.applied == n;
        let (conn, token) = (c.conn, c.token);
        if c.applied == n && c.done == n {
            coordinating.remove(&tx);
        }
        drop(coordinating);
        if receipt {
            self.reply(Reply::Fenced { conn, token });
        }
    }

    fn reply(&self, reply: Reply) {
        let conns = self.conns.borrow();
        let (conn, item) = match reply {
            Reply::Deliver {
                consumer,
                deliveries,
            } => (consumer.conn, Outbound::Deliver(consumer.sub, deliveries)),
            Reply::Fenced { conn, token } => (conn.conn, Outbound::Fenced(token)),
            Reply::Refused { conn, reason } => (conn.conn, Outbound::Refused(reason)),
            // Handled in route_all; never addressed to a connection.
            Reply::Retire(_)
            | Reply::TxPrepared { .. }
            | Reply::TxApplied { .. }
            | Reply::TxDone { .. } => return,
        };
        // A connection that is gone already released its subscriptions; the
        // owner took its deliveries back.
        if let Some(mb) = conns.get(&conn) {
            mb.push(item);
        }
    }
}

/// What a listener speaks.
enum Protocol {
    Stomp(Option<TlsListener>),
    OpenWire,
}

/// What a shard executor started ahead of the takeover is given once its
/// broker becomes master (see [`run`]).
pub struct ShardStart {
    pub shared: Shared,
    /// Its listeners, open since the takeover began (see `server::listen`).
    pub listeners: ShardListeners,
    pub control: flume::Receiver<Control>,
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// A shard's executor: started when the process starts, so that a standby
/// has its threads, io_uring rings and the shard mesh ready before it
/// takes over (on a busy machine starting them took up to 100 ms of a
/// failover). It reports on `joined` once the mesh is joined, then waits
/// for `start`, sent once the broker is master (lock, lease or election
/// won; in the database and zk modes the store read too), and then
/// recovers and serves. It ends without serving when `start` is dropped
/// (another shard count, or the process ends).
pub async fn run(
    id: usize,
    mesh: Option<MeshBuilder<Batch, Full>>,
    joined: std::sync::mpsc::Sender<Result<(), String>>,
    start: flume::Receiver<ShardStart>,
) {
    // Join the mesh first, on an idle machine: glommio busy-polls while a
    // shared channel waits for its peer, and a shard that finished its own
    // recovery would spin a core away from one still recovering.
    // A failed join fails the process's start (see `Executors::spawn`),
    // so a shard that could not join is never started.
    let mesh = match mesh {
        None => None,
        Some(mesh) => match mesh.join().await {
            Ok(joined) => Some(joined),
            Err(e) => {
                let _ = joined.send(Err(format!(
                    "shard {id}: the shard mesh could not be joined: {e}"
                )));
                return;
            }
        },
    };
    let _ = joined.send(Ok(()));
    drop(joined);
    let Ok(ShardStart {
        shared,
        listeners,
        control,
        ready,
    }) = start.recv_async().await
    else {
        return;
    };
    serve(id, shared, listeners, mesh, control, ready).await
}

/// Recovers one shard and serves until shutdown. `ready` gets the outcome
/// of recovering.
async fn serve(
    id: usize,
    shared: Shared,
    listeners: ShardListeners,
    mesh: Option<(Senders<Batch>, Receivers<Batch>)>,
    control: flume::Receiver<Control>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let span = info_span!("shard", role = "master", shard = id);
    async move {
        let usage = shared.usage.clone();
        // Reads ahead of paged messages (the journal's, the spool's) wake
        // the shard through this; one pending wake-up covers every read
        // done meanwhile (see `read_ahead_waker`).
        let (wake, woken) = flume::bounded(1);
        let read_ahead_done: crate::store::read_ahead::Notify = std::sync::Arc::new(move || {
            let _ = wake.try_send(());
        });
        // Paging needs a durable store: only stored messages are paged.
        let pager = if shared.journal.is_some() || shared.db.is_some() {
            let dir = shared.paging.spool_dir.join(format!("shard-{id}"));
            match Spool::open(&dir, usage.clone(), shared.store_usage.clone()) {
                Ok(mut spool) => {
                    spool.wake_on_read_ahead(read_ahead_done.clone());
                    Some(Pager::new(
                        spool,
                        usage.clone(),
                        shared.paging.page_at_bytes,
                    ))
                }
                Err(e) => {
                    let _ =
                        ready.send(Err(format!("cannot open the spool (store.spool_dir): {e}")));
                    return;
                }
            }
        } else {
            None
        };
        let mut db_store: Option<Rc<RefCell<DbShardStore>>> = None;
        let (store, journal, read): (Rc<RefCell<dyn Store>>, _, _) =
            match (&shared.journal, &shared.db) {
                (None, None) => (Rc::new(RefCell::new(MemoryStore)), None, None),
                (None, Some(db)) => {
                    let s = Rc::new(RefCell::new(DbShardStore::new()));
                    db_store = Some(s.clone());
                    let restorer = super::db_shard::restorer(
                        id,
                        shared.shards,
                        db,
                        usage.clone(),
                        pager,
                        &mut s.borrow_mut(),
                    );
                    (s, None, Some((restorer, IdSet::default())))
                }
                (Some(js), _) => {
                    match open_journal(id, js, shared.store_usage.clone(), usage.clone(), pager)
                        .await
                    {
                        Ok((j, restorer, copy_out)) => {
                            (j.clone(), Some(j), Some((restorer, copy_out)))
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    }
                }
            };
        // Accept only once every shard's state is back: no client sees a
        // half-recovered broker. Blocking waits, on purpose: nothing else
        // runs on this shard yet, and the thread sleeps instead of polling.
        if let Some((restorer, _)) = &read {
            shared
                .recovered_max_id
                .fetch_max(restorer.max_id_counter(), Ordering::SeqCst);
            shared
                .recovered_commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(restorer.commits().iter().copied());
        }
        shared.recovered.wait();
        let (mut restored, tx) = match read {
            None => (Restored::default(), TxOutcome::default()),
            Some((restorer, copy_out)) => {
                let committed = shared
                    .recovered_commits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                restorer.finish(&copy_out, &committed)
            }
        };
        if let Some(j) = &journal {
            if let Err(e) = settle_transactions(j, &tx).await {
                let _ = ready.send(Err(e));
                return;
            }
        }
        if let (Some(s), Some(db)) = (&db_store, &shared.db) {
            super::db_shard::hold_restored(&mut s.borrow_mut(), &restored, &tx);
            super::db_shard::settle_transactions(id, s, db, &tx).await;
        }
        // Every shard's TxDone for what recovery applied is durable now, so
        // no decision record is needed any more: only past this point may a
        // coordinator's segment be reused (serving appends; appends roll).
        shared.recovered.wait();
        if let Some(j) = &journal {
            let mut j = j.borrow_mut();
            for tx in &tx.commits {
                j.release(*tx);
            }
        }
        if let (Some(s), Some(db)) = (&db_store, &shared.db) {
            super::db_shard::forget_decisions(id, s, db, &tx.commits).await;
        }
        let recovered_max = shared.recovered_max_id.load(Ordering::SeqCst);
        tracing::debug!(shard = id, recovered_max, "message ids start above this");
        let ids = Rc::new(MessageIds::new(id, recovered_max));
        let pager = restored.pager.take();
        let mut broker = ShardBroker::new(
            id,
            shared.settings.clone(),
            usage,
            store,
            ids.clone(),
            pager,
        );
        let install_started = std::time::Instant::now();
        let restored = broker.install(restored);
        if journal.is_some() {
            info!(
                restored,
                restore_ms = install_started.elapsed().as_millis() as u64,
                "journal replayed"
            );
        }
        if shared.security.authorizer.is_some() {
            // What recovery restored exists: using it needs no admin right.
            for d in broker.stats() {
                if let Ok(dest) = crate::broker::Destination::parse(&d.destination) {
                    shared.security.known.insert(dest);
                }
            }
        }
        // Accepting from the sockets opened as the takeover began: the
        // connections queued meanwhile are served now (see
        // `server::listen`).
        let ShardListeners {
            stomp,
            openwire,
            stomp_tls,
        } = listeners;
        let own = |l: std::net::TcpListener| {
            // SAFETY: the descriptor is a bound, listening socket that
            // `into_raw_fd` hands over, so nothing else closes it.
            unsafe { TcpListener::from_raw_fd(l.into_raw_fd()) }
        };
        let listener = own(stomp);
        let openwire_listener = own(openwire);
        let tls_listener = match (stomp_tls, &shared.tls) {
            (Some(l), Some(tls)) => Some((own(l), tls.clone())),
            _ => None,
        };
        let outboxes: Vec<Mailbox<ShardMsg>> =
            (0..shared.shards).map(|_| Mailbox::default()).collect();
        let session_cfg = Rc::new(SessionConfig {
            shards: shared.shards,
            security: shared.security.clone(),
            default_prefetch: shared.default_prefetch,
            heartbeat_min_ms: shared.heartbeat_min_ms,
            usage: shared.usage.clone(),
            receipt_latency: Rc::default(),
            temporary: shared.temporary.clone(),
        });
        let ctx = Rc::new(ShardContext {
            id,
            broker: RefCell::new(broker),
            shared,
            durable: match (&journal, &db_store) {
                (Some(j), _) => Some(j.clone() as Rc<RefCell<dyn Durable>>),
                (None, Some(s)) => Some(s.clone() as Rc<RefCell<dyn Durable>>),
                (None, None) => None,
            },
            journal,
            deferred: RefCell::new(VecDeque::new()),
            flush_wakeup: Mailbox::default(),
            unreceipted_acks: RefCell::default(),
            coordinating: RefCell::new(IdMap::default()),
            outboxes,
            conns: RefCell::new(HashMap::new()),
            conn_info: RefCell::new(HashMap::new()),
            session_cfg,
            ids,
            shutdown: Latch::default(),
            next_conn: Cell::new(0),
        });
        if let Some((senders, mut receivers)) = mesh {
            let senders = Rc::new(senders);
            for peer in (0..ctx.shared.shards).filter(|p| *p != id) {
                let outbox = ctx.outboxes[peer].clone();
                let senders = senders.clone();
                spawn_local(async move {
                    loop {
                        let batch = outbox.take_all(Vec::new()).await;
                        if batch.is_empty() || senders.send_to(peer, batch).await.is_err() {
                            break;
                        }
                    }
                })
                .detach();
            }
            for (peer, rx) in receivers.streams() {
                let ctx = ctx.clone();
                spawn_local(async move {
                    while let Some(batch) = rx.recv().await {
                        let n = batch.len() as i64;
                        ctx.route_all(batch.into_iter().map(|m| (id, m)));
                        ctx.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
                    }
                    tracing::debug!(peer, "mesh channel closed");
                })
                .detach();
            }
        }
        spawn_local(read_ahead_waker(ctx.clone(), woken)).detach();
        let flusher = match (&ctx.journal, &db_store, &ctx.shared.db) {
            (Some(j), _, _) => {
                j.borrow_mut().wake_on_read_ahead(read_ahead_done);
                spawn_local(make_spare(ctx.clone())).detach();
                Some(spawn_local(flusher(ctx.clone())))
            }
            (None, Some(s), Some(db)) => Some(spawn_local(super::db_shard::flusher(
                ctx.clone(),
                s.clone(),
                db.lane(id).clone(),
                db.overlap,
            ))),
            _ => None,
        };
        spawn_local(expiry_sweeper(ctx.clone())).detach();
        spawn_local(control_loop(ctx.clone(), control)).detach();
        let _ = ready.send(Ok(()));
        let tls_accepting = tls_listener
            .map(|(l, tls)| spawn_local(accept_loop(ctx.clone(), l, Protocol::Stomp(Some(tls)))));
        let openwire_accepting = spawn_local(accept_loop(
            ctx.clone(),
            openwire_listener,
            Protocol::OpenWire,
        ));
        accept_loop(ctx.clone(), listener, Protocol::Stomp(None)).await;
        if let Some(t) = tls_accepting {
            t.await;
        }
        openwire_accepting.await;
        info!("stopped accepting; closing connections");
        drain(&ctx).await;
        quiesce(&ctx).await;
        // Nothing can append any more: the last flush, awaited, so that
        // acknowledgements and redelivery counts of the final moments are
        // on disk before the process exits.
        ctx.flush_wakeup.push(());
        ctx.flush_wakeup.close();
        if let Some(f) = flusher {
            f.await;
        }
        for o in &ctx.outboxes {
            o.close();
        }
    }
    .instrument(span)
    .await
}

/// Accepts until shutdown; with TLS, every connection does its TLS
/// handshake first (in its own task, under a deadline).
async fn accept_loop(ctx: Rc<ShardContext>, listener: TcpListener, protocol: Protocol) {
    let (tls, openwire) = match protocol {
        Protocol::Stomp(tls) => (tls, false),
        Protocol::OpenWire => (None, true),
    };
    let acceptor = tls
        .as_ref()
        .map(|t| futures_rustls::TlsAcceptor::from(t.config.clone()));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                warn!(error = %e, "accept failed");
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if let Some(peer) = peer {
            if !ctx.shared.security.rate.admit(peer.ip()) {
                warn!(%peer, "over limits.connections_per_ip_per_sec; connection closed");
                drop(stream);
                continue;
            }
        }
        let open = ctx.shared.connections.fetch_add(1, Ordering::Relaxed);
        if open >= ctx.shared.max_connections {
            ctx.shared.connections.fetch_sub(1, Ordering::Relaxed);
            // A TLS or OpenWire client could not read the plain ERROR
            // frame: it is closed.
            if acceptor.is_none() && !openwire {
                spawn_local(connection::refuse(stream, ctx.shared.max_connections)).detach();
            }
            continue;
        }
        let ctx = ctx.clone();
        let tls = tls.as_ref().map(|t| t.handshake_timeout);
        let acceptor = acceptor.clone();
        spawn_local(async move {
            match (acceptor, tls) {
                (Some(acceptor), Some(timeout)) => {
                    connection::run_tls(ctx.clone(), stream, peer, acceptor, timeout).await
                }
                _ if openwire => super::openwire_connection::run(ctx.clone(), stream, peer).await,
                _ => connection::run_plain(ctx.clone(), stream, peer).await,
            }
            ctx.shared.connections.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

/// Waits for open connections to finish what they have queued and close.
async fn drain(ctx: &ShardContext) {
    for _ in 0..500 {
        if ctx.conns.borrow().is_empty() {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
    warn!(
        open = ctx.conns.borrow().len(),
        "connections still open at shutdown"
    );
}

/// Clean shutdown, after this shard's connections are closed: waits until
/// every shard has closed its own and no work that could still append a
/// record anywhere is left (operations crossing shards, dead-letter copies
/// waiting to be durable, their retirements on the way back). Connections
/// are gone and the expiry sweep has stopped, so nothing new can start;
/// everything in flight was counted before it could be applied.
async fn quiesce(ctx: &ShardContext) {
    ctx.shared.drained.fetch_add(1, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ctx.shared.drained.load(Ordering::SeqCst) < ctx.shared.shards
        || ctx.shared.in_flight.load(Ordering::SeqCst) > 0
    {
        if std::time::Instant::now() > deadline {
            warn!(
                in_flight = ctx.shared.in_flight.load(Ordering::SeqCst),
                "shutdown: work still crossing shards after 10 s; stopping anyway"
            );
            return;
        }
        sleep(Duration::from_millis(1)).await;
    }
}

async fn control_loop(ctx: Rc<ShardContext>, control: flume::Receiver<Control>) {
    while let Ok(c) = control.recv_async().await {
        match c {
            Control::Stats(reply) => {
                let broker = ctx.broker.borrow();
                let _ = reply.send(ShardStats {
                    connections: ctx
                        .conn_info
                        .borrow()
                        .iter()
                        .map(|(id, c)| c.snapshot(ctx.id, *id))
                        .collect(),
                    destinations: broker.stats(),
                    subscribers: broker.subscribers(),
                    receipt_latency: ctx.session_cfg.receipt_latency.snapshot(),
                });
            }
            Control::Admin(op, reply) => {
                let answer = {
                    let mut broker = ctx.broker.borrow_mut();
                    let done = match &op {
                        AdminOp::Browse(d, n) => broker.browse(d, *n).map(AdminAnswer::Browsed),
                        AdminOp::Purge(d) => broker.purge(d).map(AdminAnswer::Removed),
                        AdminOp::Delete(d) => broker.delete(d).map(AdminAnswer::Removed),
                        AdminOp::DeleteSubscription(t, d) => {
                            broker.delete_subscription(t, d).map(AdminAnswer::Removed)
                        }
                    };
                    done.unwrap_or_else(AdminAnswer::Refused)
                };
                if matches!(answer, AdminAnswer::Removed(_)) {
                    info!(
                        role = "master",
                        shard = ctx.id,
                        ?op,
                        ?answer,
                        "admin action"
                    );
                }
                // "Purged" means gone for good: the removals are records,
                // answered once durable like a receipt.
                let ctx = ctx.clone();
                spawn_local(async move {
                    let answer = match answer {
                        AdminAnswer::Removed(n) if !wait_durable(&ctx).await => {
                            AdminAnswer::NotConfirmed(n)
                        }
                        a => a,
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            Control::Send(req, reply) => {
                let ctx = ctx.clone();
                spawn_local(async move {
                    let _ = reply.send(super::admin_send::send(ctx, req).await);
                })
                .detach();
            }
            Control::Shutdown => {
                ctx.shutdown.set();
                // Writers flush what is queued, then close; readers follow.
                for mb in ctx.conns.borrow().values() {
                    mb.push(Outbound::Close);
                }
            }
        }
    }
}

/// How long an operator's purge or delete waits for its records to be
/// durable before it is answered "not confirmed".
pub const ADMIN_DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// Waits until everything appended to this shard's store so far is
/// durable (at once without a durable store), then passes the fencing gate
/// as a RECEIPT does (a master that may have lost mastership claims
/// nothing). False if that did not happen within `ADMIN_DURABLE_WITHIN`:
/// a store that cannot write holds producers back and is reported
/// elsewhere; the operator hears that the removal is not confirmed.
async fn wait_durable(ctx: &ShardContext) -> bool {
    let Some(j) = ctx.durable.clone() else {
        return true;
    };
    // What consumers acknowledged without a receipt is covered too: a
    // queue removed must not come back with consumed messages.
    ctx.promote_unreceipted();
    let upto = j.borrow().appended();
    if j.borrow().has_pending() {
        ctx.flush_wakeup.push(());
    }
    let deadline = std::time::Instant::now() + ADMIN_DURABLE_WITHIN;
    // Rare requests: a short poll costs nothing and needs no waiter list.
    while j.borrow().durable() < upto {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(1)).await;
    }
    crate::ha::fence::hold().await;
    true
}

/// Queues that stopped paging in until their next records were read ahead
/// (see `store::read_ahead`) dispatch again when a reader (the journal's or
/// the spool's) says a read is done.
async fn read_ahead_waker(ctx: Rc<ShardContext>, woken: flume::Receiver<()>) {
    let mut out = Vec::new();
    while woken.recv_async().await.is_ok() {
        ctx.broker.borrow_mut().page_in_waiting(&mut out);
        if !out.is_empty() {
            ctx.route_all(out.drain(..));
        }
    }
}

/// Expired messages leave their queues even when nobody consumes them.
async fn expiry_sweeper(ctx: Rc<ShardContext>) {
    let mut out = Vec::new();
    loop {
        sleep(Duration::from_secs(1)).await;
        if ctx.shutdown.is_set() {
            // A clean shutdown waits for quiet (see `quiesce`).
            return;
        }
        {
            let mut b = ctx.broker.borrow_mut();
            b.sweep_expired(&mut out);
            b.flush_spool();
            // A queue waiting for a read ahead that was given up on (see
            // `store::read_ahead`) hears it from here.
            b.page_in_waiting(&mut out);
        }
        if !out.is_empty() {
            ctx.route_all(out.drain(..));
        }
    }
}

/// Opens (recovering) this shard's journal, rebuilding its queues as the
/// segments are read. The store's `meta` file is opened with O_DIRECT
/// first: glommio probes io-poll support on the first DMA open per device
/// by reading offset 0, and an empty first file fools the probe.
async fn open_journal(
    id: usize,
    js: &JournalSettings,
    store_usage: Arc<StoreUsage>,
    memory: Arc<MemoryUsage>,
    pager: Option<Pager>,
) -> Result<(Rc<RefCell<Journal>>, Restorer, IdSet), String> {
    let meta = js.dir.join("meta");
    match glommio::io::DmaFile::open(&meta).await {
        Ok(f) => {
            let _ = f.close().await;
        }
        Err(e) => return Err(format!("cannot open {}: {e}", meta.display())),
    }
    let dir = js.dir.join(format!("shard-{id}"));
    let mut restorer = Restorer::new(memory, pager);
    let recovered = journal::recovery::recover(
        &dir,
        js.segment_size_bytes,
        js.skip_corrupt,
        |records, at| restorer.feed_at(records, at),
    )
    .map_err(|e| e.to_string())?;
    let new_dir = recovered.layout.segments.is_empty();
    let cfg = JournalConfig {
        dir,
        segment_size_bytes: js.segment_size_bytes,
    };
    let j = Rc::new(RefCell::new(Journal::from_recovery(
        cfg,
        store_usage,
        recovered.layout,
    )));
    // Paged messages are read back from their journal records.
    restorer.read_store(j.clone());
    // Make the first segment now, not on the first persistent SEND. A new
    // data directory also gets its spare before serving (a fast producer
    // would fill the first segment before a paced spare is ready); a
    // recovered journal has room in its active segment, so its spare is
    // made in the background once serving (see `run`), off the failover path.
    flush_at_start(&j).await?;
    // A durable seal before anything is overwritten: it records which
    // segments recovery found free (so the next segment can reuse one
    // instead of making a file on the failover path), and where the
    // journal was durable. Then a fresh segment: see
    // `Journal::start_fresh_segment`.
    journal::write_seal(&j, true)
        .await
        .map_err(|e| e.to_string())?;
    journal::start_fresh(&j).await.map_err(|e| e.to_string())?;
    flush_at_start(&j).await?;
    if new_dir {
        journal::ensure_spare(&j, journal::Pace::Now)
            .await
            .map_err(|e| e.to_string())?;
    }
    // The restorer finishes once every shard's transaction decisions are
    // known (see `run`).
    Ok((j, restorer, recovered.copy_out))
}

/// A flush before serving. No space for it (a full copy-on-write file
/// system allocates even on overwrite) is waited out, with a warning, not
/// an exit: a standby on the same file system would fail the same way, and
/// only space freed outside the broker helps (no client is accepted yet,
/// so no consumer can free any).
async fn flush_at_start(j: &RefCell<Journal>) -> Result<(), String> {
    let mut warn_at = std::time::Instant::now();
    loop {
        match journal::flush(j).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_no_space() => {
                // Repeated: a start can wait here for hours.
                if std::time::Instant::now() >= warn_at {
                    warn!(error = %e, "no space to write the journal at start; waiting for space to be freed");
                    warn_at += START_SPACE_WARN;
                }
                glommio::timer::sleep(START_SPACE_RETRY).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// How often a start blocked by a full file system tries again.
const START_SPACE_RETRY: Duration = Duration::from_millis(500);
/// How often it says so.
pub const START_SPACE_WARN: Duration = Duration::from_secs(30);

/// The journal's side of the transactions recovery decided: a TxDone for
/// each one applied here without one (made durable before the decision
/// records may go, see `run`), and the holders that applied prepared ACKs
/// and dropped prepared SENDs let go of (after the TxDones, so that a
/// segment they free is reused only once those are durable).
async fn settle_transactions(j: &RefCell<Journal>, tx: &TxOutcome) -> Result<(), String> {
    {
        let mut j = j.borrow_mut();
        // The selectors' ACKs before the TxDones: after them, a crash
        // between would leave their holders held for good (the next
        // recovery finds the transaction done and settles nothing).
        for (topic, sub, id) in &tx.passed_over {
            j.append(
                &RecordRef::Ack {
                    destination: topic,
                    sub: Some(sub),
                    id: *id,
                },
                0,
            );
        }
        for t in &tx.undone {
            j.append(&RecordRef::TxDone { tx: *t }, 0);
        }
        let passed = tx.passed_over.iter().map(|(_, _, id)| id);
        for id in tx.applied_acks.iter().chain(passed) {
            j.release(*id);
        }
        for id in &tx.dropped_sends {
            j.forget(*id);
        }
    }
    if !tx.undone.is_empty() || !tx.applied_acks.is_empty() || !tx.dropped_sends.is_empty() {
        info!(
            applied = tx.undone.len(),
            dropped_sends = tx.dropped_sends.len(),
            "transactions settled by recovery"
        );
    }
    flush_at_start(j).await
}

/// Group commit, pipelined in two stages: each round writes everything
/// appended since the last one, then fdatasyncs it and releases the
/// receipts that were waiting for it. The next round's write runs while
/// the previous round's fdatasync is in flight (at most one sync at a time,
/// so rounds become durable in order): a message that arrives during a
/// sync waits for that sync's end, not for it and a write after it.
/// Both stages pass the fencing gate (`ha::fence`): `write_pending` before
/// each write it submits, the sync task before it releases replies.
async fn flusher(ctx: Rc<ShardContext>) {
    let Some(journal) = ctx.journal.clone() else {
        return;
    };
    let mut spare = Vec::new();
    let mut syncing: Option<glommio::task::JoinHandle<()>> = None;
    loop {
        // Wait for appends; while a sync is in flight, also for its end
        // (if nothing new came meanwhile, the journal is idle and gets a
        // seal); while waiting for space, also for the next look.
        let poll = journal.borrow().waiting_for_space();
        let wake = {
            let appended = async {
                let woken = ctx.flush_wakeup.take_all(spare).await;
                if woken.is_empty() {
                    Wake::Closed
                } else {
                    Wake::Appended(woken)
                }
            };
            let synced = async {
                match syncing.as_mut() {
                    Some(s) => {
                        s.await;
                        Wake::Synced
                    }
                    None => futures_lite::future::pending().await,
                }
            };
            let look = async {
                if poll {
                    sleep(SPACE_POLL).await;
                    Wake::Poll
                } else {
                    futures_lite::future::pending().await
                }
            };
            futures_lite::future::or(appended, futures_lite::future::or(synced, look)).await
        };
        spare = Vec::new();
        // Closed (clean shutdown): write what is left, wait for the last
        // sync, seal, and stop.
        let closing = match wake {
            Wake::Appended(woken) => {
                spare = woken;
                false
            }
            Wake::Closed => true,
            Wake::Synced => {
                syncing = None;
                if !journal.borrow().has_pending() {
                    // At a full disk the seal is made durable when that
                    // declares a freed segment free (see `claimed`).
                    let fsync = journal.borrow().wants_durable_seal();
                    journal::write_seal(&journal, fsync)
                        .await
                        .unwrap_or_else(|e| journal_failed(e));
                    continue;
                }
                if !journal.borrow().waiting_for_space() {
                    continue;
                }
                // Records left waiting for space: the sync may have made a
                // freed segment reusable for them (once a durable seal
                // says it is free).
                claim_for_space(&journal).await;
                false
            }
            Wake::Poll if journal.borrow().has_pending() => {
                // Records waiting for space: try them again (a failed
                // write at most once a second, a new file only when
                // `statvfs` shows room).
                if syncing.is_none() {
                    claim_for_space(&journal).await;
                }
                false
            }
            Wake::Poll => {
                if syncing.is_none() {
                    let seal = {
                        let j = journal.borrow();
                        !j.has_pending() && j.wants_durable_seal()
                    };
                    if seal {
                        journal::write_seal(&journal, true)
                            .await
                            .unwrap_or_else(|e| journal_failed(e));
                    }
                }
                // Space may have been freed outside the broker: try a
                // spare again (at most once a second, after `statvfs`).
                spawn_local(make_spare(ctx.clone())).detach();
                continue;
            }
        };
        while journal.borrow().has_pending() {
            let written = journal::write_pending(&journal)
                .await
                .unwrap_or_else(|e| journal_failed(e));
            let blocked = written.blocked;
            if written.is_empty() {
                // Nothing could be written: look again later.
                break;
            }
            if let Some(previous) = syncing.take() {
                previous.await;
            }
            let ctx = ctx.clone();
            let journal = journal.clone();
            syncing = Some(
                spawn_local(async move {
                    journal::sync(&journal, written)
                        .await
                        .unwrap_or_else(|e| journal_failed(e));
                    // Durable is not enough: a receipt also needs a recent
                    // good mastership check, taken after the sync ended
                    // (see `ha::fence`). Otherwise hold until the keep-alive
                    // thread renews it or ends the process.
                    crate::ha::fence::hold().await;
                    // Read first: the borrow must not live across the
                    // routing, which appends (dead-letter retirements).
                    let durable = journal.borrow().durable();
                    release_durable(&ctx, durable);
                })
                .detach(),
            );
            if blocked {
                // No space for the rest now: look again later.
                break;
            }
        }
        if closing {
            if let Some(last) = syncing.take() {
                last.await;
            }
            if journal.borrow().has_pending() {
                // Their receipts were never given: producers send again,
                // and unwritten acknowledgements mean redeliveries, not loss.
                warn!("shutdown with journal records unwritten: no space for them");
            }
            journal::write_seal(&journal, true)
                .await
                .unwrap_or_else(|e| journal_failed(e));
            return;
        }
        spawn_local(make_spare(ctx.clone())).detach();
    }
}

/// At a full disk, with no sync in flight: a durable seal when that lets a
/// freed segment be reused (see `Journal::wants_durable_seal`).
async fn claim_for_space(journal: &RefCell<Journal>) {
    if journal.borrow().wants_durable_seal() {
        journal::write_seal(journal, true)
            .await
            .unwrap_or_else(|e| journal_failed(e));
    }
}

/// How often a flusher whose shard is disk-full looks again by itself,
/// without an append to wake it (space freed outside the broker). Cheap:
/// a new file is tried at most once a second and only when `statvfs` shows
/// room (see `Journal::may_make_file`).
const SPACE_POLL: Duration = Duration::from_millis(100);

/// What woke the flusher.
enum Wake {
    /// Records were appended (the wake-ups, to be reused).
    Appended(Vec<()>),
    /// The wake-up mailbox closed: clean shutdown.
    Closed,
    /// The sync in flight finished.
    Synced,
    /// Waiting for space: time to look again.
    Poll,
}

/// Without a working journal no receipt may be given: stop serving at
/// once; a standby takes over.
fn journal_failed(e: journal::JournalError) -> ! {
    tracing::error!(error = %e, "journal write failed; stopping");
    std::process::exit(1);
}

/// Sends the replies that were waiting for the journal to reach `durable`.
pub(super) fn release_durable(ctx: &ShardContext, durable: u64) {
    let mut ready = Vec::new();
    {
        let mut d = ctx.deferred.borrow_mut();
        while d.front().is_some_and(|(seq, _)| *seq <= durable) {
            if let Some((_, r)) = d.pop_front() {
                ready.push(r);
            }
        }
    }
    if !ready.is_empty() {
        let n = ready.len() as i64;
        ctx.route_all(ready);
        ctx.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Makes a spare segment beside live traffic if none is ready.
async fn make_spare(ctx: Rc<ShardContext>) {
    let Some(journal) = ctx.journal.clone() else {
        return;
    };
    let waiting = journal.borrow().waiting_for_space();
    if let Err(e) = journal::ensure_spare(&journal, journal::Pace::Background).await {
        tracing::error!(error = %e, "cannot make a journal segment; stopping");
        std::process::exit(1);
    }
    // Into waiting: the flusher starts polling for space. Out of it with
    // records put back (their wake-ups are spent): the flusher writes them
    // now rather than at the next append.
    let (now_waiting, pending) = {
        let j = journal.borrow();
        (j.waiting_for_space(), j.has_pending())
    };
    if (!waiting && now_waiting) || (waiting && !now_waiting && pending) {
        ctx.flush_wakeup.push(());
    }
}
