//! One client connection: a reader task that parses frames and drives the
//! session, and a writer task that batches everything queued for the client
//! into one socket write.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{spawn_local, timer::sleep};
use tracing::{debug, debug_span, Instrument};

use super::mailbox::Mailbox;
use super::read_size::{self, ReadSize};
use super::shard::{Outbound, ShardContext};
use crate::broker::message::now_ms;
use crate::broker::ops::{ConnRef, ShardMsg};
use crate::metrics::ConnectionInfo;
use crate::protocol::stomp::session::{Action, Session};
use crate::protocol::stomp::{parse, Command, Frame, Parsed};

/// Answers a connection over `limits.max_connections` with an ERROR frame.
pub async fn refuse(mut stream: TcpStream, max: usize) {
    let mut f = Frame::new(Command::Error).with("message", "maximum connections reached");
    f.body = bytes::Bytes::from(format!(
        "this broker accepts at most {max} connections (limits.max_connections)\n"
    ));
    let mut buf = BytesMut::new();
    f.encode(crate::protocol::stomp::Version::V1_0, &mut buf);
    let _ = stream.write_all(&buf).await;
    let _ = stream.close().await;
}

/// Who is at the other end, as far as the transport can tell.
struct Peer {
    addr: Option<SocketAddr>,
    /// `stomp` or `stomp+ssl`, as the console lists it.
    protocol: &'static str,
    /// The subject CN of a verified client certificate (mutual TLS).
    cert_login: Option<String>,
}

/// A connection on the plain STOMP listener.
pub async fn run_plain(ctx: Rc<ShardContext>, stream: TcpStream, addr: Option<SocketAddr>) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let peer = Peer {
        addr,
        protocol: "stomp",
        cert_login: None,
    };
    run(ctx, stream, fd, peer).await;
}

/// A connection on the TLS listener: the handshake first, within
/// `timeout`; a peer that fails it (plain STOMP, a certificate the CA did
/// not sign, none when one is required) or stalls is closed.
pub async fn run_tls(
    ctx: Rc<ShardContext>,
    stream: TcpStream,
    addr: Option<SocketAddr>,
    acceptor: futures_rustls::TlsAcceptor,
    timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let handshake =
        futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
            sleep(timeout).await;
            None
        });
    let stream = match handshake.await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            debug!(peer = ?addr, error = %e, "TLS handshake failed; connection closed");
            return;
        }
        None => {
            debug!(peer = ?addr, "no TLS handshake within tls.handshake_timeout_ms; connection closed");
            return;
        }
    };
    let cert_login = crate::security::tls::peer_login(stream.get_ref().1);
    let peer = Peer {
        addr,
        protocol: "stomp+ssl",
        cert_login,
    };
    run(ctx, stream, fd, peer).await;
}

/// How long a connection's writer may go on after its reader ended.
const WRITER_GRACE: Duration = Duration::from_secs(10);

async fn run<S>(ctx: Rc<ShardContext>, stream: S, fd: i32, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Registered {
        conn,
        outbound,
        info,
    } = Registered::new(&ctx, peer.addr, peer.protocol);
    let id = conn.conn;
    let span = debug_span!("conn", conn = id, peer = ?peer.addr);
    let session = Rc::new(RefCell::new(Session::new(
        ctx.session_cfg.clone(),
        ctx.ids.clone(),
        conn,
    )));
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = spawn_local(
        write_loop(
            ctx.clone(),
            session.clone(),
            outbound.clone(),
            writer,
            fd,
            info.clone(),
        )
        .instrument(span.clone()),
    );
    read_loop(&ctx, &session, &outbound, reader, &peer, &info)
        .instrument(span)
        .await;
    // Whatever ended the reader, the session's subscriptions end with it.
    let mut actions = Vec::new();
    session.borrow_mut().teardown(&mut actions);
    execute(&ctx, &outbound, actions);
    outbound.push(Outbound::Close);
    // A client that stopped reading and left its socket open would hold
    // the writer, and the connection, for ever. Past a grace period the
    // socket is shut: the write fails, and what it was writing goes back
    // to its queues (its auto-acknowledgements are dropped).
    let mut writer_task = writer_task;
    let done = futures_lite::future::or(
        async {
            (&mut writer_task).await;
            true
        },
        async {
            sleep(WRITER_GRACE).await;
            false
        },
    )
    .await;
    if !done {
        debug!("the client reads nothing; shutting its socket");
        // SAFETY: fd stays open until the connection's halves are dropped,
        // after the writer task ends.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
        writer_task.await;
    }
    unregister(&ctx, id);
}

/// A connection known to its shard: replies reach it through `outbound`,
/// the console lists it through `info`.
pub(super) struct Registered {
    pub conn: ConnRef,
    pub outbound: Mailbox<Outbound>,
    pub info: Rc<ConnectionInfo>,
}

impl Registered {
    pub fn new(ctx: &ShardContext, addr: Option<SocketAddr>, protocol: &'static str) -> Registered {
        let id = ctx.next_conn_id();
        let outbound: Mailbox<Outbound> = Mailbox::default();
        ctx.conns.borrow_mut().insert(id, outbound.clone());
        let client = addr.map(|a| a.to_string()).unwrap_or_default();
        let info = Rc::new(ConnectionInfo::new(client, protocol, now_ms()));
        ctx.conn_info.borrow_mut().insert(id, info.clone());
        Registered {
            conn: ConnRef {
                shard: ctx.id as u16,
                conn: id,
            },
            outbound,
            info,
        }
    }
}

pub(super) fn unregister(ctx: &ShardContext, id: u64) {
    ctx.conns.borrow_mut().remove(&id);
    ctx.conn_info.borrow_mut().remove(&id);
    debug!(conn = id, "closed");
}

/// While a SEND waits for memory, the reader goes on reading this many
/// bytes past it, so that ACKs the client wrote after that SEND are seen
/// and applied (they are what frees the memory), while TCP still pushes
/// back on a client that only produces.
const LOOKAHEAD: usize = read_size::MAX;

/// Frames read behind a SEND that waits for memory, that SEND first.
#[derive(Default)]
struct Held {
    frames: VecDeque<(Frame, usize)>,
    /// Wire bytes of the frames behind the first.
    behind: usize,
}

impl Held {
    fn push(&mut self, frame: Frame, size: usize) {
        if !self.frames.is_empty() {
            self.behind += size;
        }
        self.frames.push_back((frame, size));
    }

    fn pop(&mut self) -> Option<Frame> {
        let (frame, _) = self.frames.pop_front()?;
        if let Some((_, size)) = self.frames.front() {
            self.behind -= size;
        }
        Some(frame)
    }
}

enum Event {
    Read(std::io::Result<usize>),
    /// Memory was freed (or the broker is shutting down): held frames may go.
    Capacity,
    TimedOut,
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ShardContext,
    session: &RefCell<Session>,
    outbound: &Mailbox<Outbound>,
    mut reader: ReadHalf<S>,
    peer: &Peer,
    info: &ConnectionInfo,
) {
    let mut chunk = ReadSize::default();
    let mut buf = BytesMut::new();
    let mut read_timeout: Option<Duration> = None;
    // Counted from the accept, not per read: a peer that trickles bytes
    // cannot keep a slot longer than one that sends nothing.
    let connect_by = Instant::now() + ctx.shared.connect_timeout;
    let mut actions = Vec::new();
    let mut held = Held::default();
    loop {
        let timeout = if session.borrow().is_open() {
            read_timeout
        } else {
            Some(connect_by.saturating_duration_since(Instant::now()))
        };
        let event = next_event(ctx, &mut reader, &mut buf, chunk.get(), &held, timeout).await;
        match event {
            Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                // Flow control delays a SEND, it never drops one: what the
                // client sent in full before it left is still applied.
                while let Some((front, _)) = held.frames.front() {
                    wait_for_capacity(ctx, is_persistent(front)).await;
                    release_held(ctx, session, &mut held, &mut actions);
                    route(ctx, outbound, &mut actions, &mut read_timeout);
                    if session.borrow().is_closed() {
                        break;
                    }
                }
                return;
            }
            Event::Read(Ok(n)) => {
                ConnectionInfo::add(&info.bytes_in, n as u64);
                chunk.after(n);
            }
            Event::Capacity => {}
            Event::TimedOut => {
                if session.borrow().is_open() {
                    debug!("no heart-beat from the client; dropping it");
                } else {
                    debug!("no CONNECT in time; dropping the connection");
                    let message = format!(
                        "no CONNECT frame within limits.connect_timeout_ms ({} ms)",
                        ctx.shared.connect_timeout.as_millis()
                    );
                    session.borrow_mut().protocol_error(&message, &mut actions);
                    route(ctx, outbound, &mut actions, &mut read_timeout);
                }
                return;
            }
        }
        // Frames held behind a waiting SEND go first; then what this read brought.
        release_held(ctx, session, &mut held, &mut actions);
        while !session.borrow().is_closed() {
            let version = session.borrow().version();
            let before = buf.len();
            let frame = match parse(&mut buf, version, &ctx.shared.limits) {
                Ok(None) => break,
                Ok(Some(Parsed::Heartbeat)) => continue,
                Ok(Some(Parsed::Frame(frame))) => frame,
                Err(e) => {
                    session
                        .borrow_mut()
                        .protocol_error(&e.to_string(), &mut actions);
                    break;
                }
            };
            let size = before - buf.len();
            if frame.command == Command::Send {
                ConnectionInfo::add(&info.messages_in, 1);
            }
            if session.borrow().awaits_connect()
                && matches!(frame.command, Command::Connect | Command::Stomp)
            {
                let auth = ctx.shared.security.authenticate(
                    frame.header_str("login"),
                    frame.header_str("passcode"),
                    peer.cert_login.as_deref(),
                    peer.addr,
                );
                // The CONNECT deadline bounds the verification too: a
                // verifier queue full of others' logins holds no slot forever.
                let left = connect_by.saturating_duration_since(Instant::now());
                let deadline = async {
                    sleep(left).await;
                    Err(crate::security::AuthError::TimedOut)
                };
                match futures_lite::future::or(auth, deadline).await {
                    Ok(user) => session.borrow_mut().authenticated(user),
                    Err(e) => {
                        session
                            .borrow_mut()
                            .reject(&frame, &e.to_string(), &mut actions);
                        break;
                    }
                }
            }
            if !held.frames.is_empty() {
                if overtakes_held(&frame) {
                    session.borrow_mut().handle(frame, &mut actions);
                } else {
                    held.push(frame, size);
                }
            } else if must_wait(ctx, session, &frame) {
                if ctx.shared.send_fail_if_no_space {
                    // The operator asked for errors instead of waiting (ActiveMQ's sendFailIfNoSpace).
                    session.borrow_mut().reject(
                        &frame,
                        "broker is out of space (limits.memory_limit_bytes or store.limit_bytes reached, or the store's file system is full); message not accepted",
                        &mut actions,
                    );
                    break;
                }
                debug!(
                    memory_used = ctx.shared.usage.used(),
                    "limit reached; pausing producer"
                );
                // What came before this SEND goes now: the client's ACKs
                // among it free the memory the SEND waits for.
                route(ctx, outbound, &mut actions, &mut read_timeout);
                held.push(frame, size);
            } else {
                session.borrow_mut().handle(frame, &mut actions);
            }
        }
        // One routing pass per read: ops bound for the same shard leave together.
        route(ctx, outbound, &mut actions, &mut read_timeout);
        if session.borrow().is_closed() {
            return;
        }
    }
}

/// Waits for bytes from the client (appended to `buf`) or `timeout`; while
/// a SEND is held, for bytes or memory, or, with enough read past that
/// SEND, for memory alone.
async fn next_event<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ShardContext,
    reader: &mut ReadHalf<S>,
    buf: &mut BytesMut,
    chunk: usize,
    held: &Held,
    timeout: Option<Duration>,
) -> Event {
    let filled = buf.len();
    let waiting = held.frames.front().map(|(f, _)| is_persistent(f));
    let capacity = |persistent| async move {
        wait_for_capacity(ctx, persistent).await;
        Event::Capacity
    };
    if let Some(persistent) = waiting {
        if held.behind + filled >= LOOKAHEAD {
            return capacity(persistent).await;
        }
    }
    buf.resize(filled + chunk, 0);
    let read = async { Event::Read(reader.read(&mut buf[filled..]).await) };
    let event = match (waiting, timeout) {
        (Some(persistent), _) => futures_lite::future::or(read, capacity(persistent)).await,
        (None, None) => read.await,
        (None, Some(t)) => {
            futures_lite::future::or(read, async {
                sleep(t).await;
                Event::TimedOut
            })
            .await
        }
    };
    let n = match event {
        Event::Read(Ok(n)) => n,
        _ => 0,
    };
    buf.truncate(filled + n);
    event
}

/// Handles held frames in order, as far as memory allows.
fn release_held(
    ctx: &ShardContext,
    session: &RefCell<Session>,
    held: &mut Held,
    actions: &mut Vec<Action>,
) {
    while let Some((front, _)) = held.frames.front() {
        if must_wait(ctx, session, front) || session.borrow().is_closed() {
            return;
        }
        if let Some(frame) = held.pop() {
            session.borrow_mut().handle(frame, actions);
        }
    }
}

fn is_persistent(f: &Frame) -> bool {
    f.header("persistent") == Some(b"true")
}

/// A SEND that must wait for memory (or journal space) before it is applied.
/// Before CONNECT the session refuses it anyway, and at shutdown nothing
/// frees memory any more.
fn must_wait(ctx: &ShardContext, session: &RefCell<Session>, f: &Frame) -> bool {
    f.command == Command::Send
        && session.borrow().accepts_frames()
        && !ctx.shutdown.is_set()
        && over_limit(ctx, is_persistent(f))
}

/// An ACK or NACK may be applied ahead of held frames: it settles a
/// delivery made before it was written, which no held frame can create or
/// move (at most one could have made it an error, e.g. an UNSUBSCRIBE of
/// its subscription; applied early it succeeds instead), and without a
/// receipt it answers nothing whose order the client could see. Within a
/// transaction it frees nothing until COMMIT, so it keeps its place.
fn overtakes_held(f: &Frame) -> bool {
    matches!(f.command, Command::Ack | Command::Nack)
        && f.header("receipt").is_none()
        && f.header("transaction").is_none()
}

/// Routes `actions`, keeping the negotiated heart-beat timeout for later reads.
fn route(
    ctx: &ShardContext,
    outbound: &Mailbox<Outbound>,
    actions: &mut Vec<Action>,
    read_timeout: &mut Option<Duration>,
) {
    for a in actions.iter() {
        if let Action::Heartbeat {
            read_timeout_ms, ..
        } = a
        {
            *read_timeout = (*read_timeout_ms > 0).then(|| Duration::from_millis(*read_timeout_ms));
        }
    }
    execute(ctx, outbound, std::mem::take(actions));
}

/// Producer flow control: while held messages exceed the memory limit (or,
/// for persistent messages, the journal its disk budget or its file system
/// is full), a SEND waits. Nothing is dropped; TCP pushes back. ACKs are
/// never held: they free journal segments, which is how a full store gets
/// room again.
async fn wait_for_capacity(ctx: &ShardContext, persistent: bool) {
    while over_limit(ctx, persistent) && !ctx.shutdown.is_set() {
        sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn over_limit(ctx: &ShardContext, persistent: bool) -> bool {
    ctx.shared.usage.used() >= ctx.shared.memory_limit_bytes
        || (persistent && ctx.shared.journal.is_some() && ctx.shared.store_usage.full())
        || (persistent && ctx.shared.store_usage.spool_full())
}

fn execute(ctx: &ShardContext, outbound: &Mailbox<Outbound>, actions: Vec<Action>) {
    let mut routes = Vec::new();
    for a in actions {
        match a {
            Action::Write(f) => {
                outbound.push(Outbound::Frame(f));
            }
            Action::Route(shard, op) => routes.push((shard, ShardMsg::Op(op))),
            Action::Heartbeat { send_ms, .. } => {
                if send_ms > 0 {
                    outbound.push(Outbound::HeartbeatEvery(Duration::from_millis(send_ms)));
                }
            }
            Action::Close => {
                outbound.push(Outbound::Close);
            }
        }
    }
    if !routes.is_empty() {
        ctx.route_all(routes);
    }
}

async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Rc<ShardContext>,
    session: Rc<RefCell<Session>>,
    outbound: Mailbox<Outbound>,
    mut writer: WriteHalf<S>,
    fd: i32,
    info: Rc<ConnectionInfo>,
) {
    let mut heartbeat: Option<Duration> = None;
    let mut wbuf = BytesMut::new();
    let mut spare = Vec::new();
    let mut acks: Vec<(usize, ShardMsg)> = Vec::new();
    let mut written = Vec::new();
    let mut actions = Vec::new();
    'outer: loop {
        let items = next_batch(&outbound, std::mem::take(&mut spare), heartbeat).await;
        let mut close = items.is_empty() && heartbeat.is_none();
        if items.is_empty() && heartbeat.is_some() {
            wbuf.put_u8(b'\n');
        }
        let mut items = items;
        let mut receipts = false;
        {
            let mut s = session.borrow_mut();
            let version = s.version();
            for item in items.drain(..) {
                match item {
                    Outbound::Frame(f) => {
                        receipts |= f.command == Command::Receipt;
                        f.encode(version, &mut wbuf)
                    }
                    Outbound::Deliver(sub, deliveries) => {
                        let sent = s.deliver(sub, deliveries, &mut wbuf);
                        ConnectionInfo::add(&info.messages_out, sent as u64);
                    }
                    Outbound::Fenced(token) => s.fenced(token, &mut actions),
                    Outbound::Refused(reason) => s.refused(&reason, &mut actions),
                    Outbound::HeartbeatEvery(d) => heartbeat = Some(d),
                    Outbound::Close => close = true,
                    // Only the OpenWire listener queues these.
                    Outbound::OpenWire(_) | Outbound::Timer(_) => {}
                }
                for a in actions.drain(..) {
                    match a {
                        Action::Write(f) => {
                            receipts |= f.command == Command::Receipt;
                            f.encode(version, &mut wbuf)
                        }
                        Action::Close => close = true,
                        Action::Route(shard, op) => acks.push((shard, ShardMsg::Op(op))),
                        Action::Heartbeat { .. } => {}
                    }
                }
            }
        }
        spare = items;
        // Auto-acks return prefetch credit only once the bytes are written
        // (the session keeps them meanwhile: see `Session::close_sub`).
        if !write_batch(&ctx, &mut writer, &mut wbuf, &info, receipts, &mut acks).await {
            session.borrow_mut().write_failed();
            break 'outer;
        }
        session.borrow_mut().written(&mut written);
        if !written.is_empty() {
            ctx.route_all(
                written
                    .drain(..)
                    .map(|(shard, op)| (shard, ShardMsg::Op(op))),
            );
        }
        if close {
            break;
        }
    }
    finish_writer(&outbound, &mut writer, fd).await;
}

/// Everything queued for the writer, in `spare`'s allocation; empty when
/// the mailbox is closed or, with `idle` set, after that much silence
/// (time for a heart-beat).
pub(super) async fn next_batch(
    outbound: &Mailbox<Outbound>,
    spare: Vec<Outbound>,
    idle: Option<Duration>,
) -> Vec<Outbound> {
    match idle {
        None => outbound.take_all(spare).await,
        Some(every) => {
            futures_lite::future::or(outbound.take_all(spare), async {
                sleep(every).await;
                Vec::new()
            })
            .await
        }
    }
}

/// Writes one batch, then routes what waited for it to be written (acks
/// that return credit). `answers`: the batch answers requests (RECEIPTs,
/// Responses). False when the peer is gone.
pub(super) async fn write_batch<W: AsyncWrite + Unpin>(
    ctx: &ShardContext,
    writer: &mut W,
    wbuf: &mut BytesMut,
    info: &ConnectionInfo,
    answers: bool,
    after: &mut Vec<(usize, ShardMsg)>,
) -> bool {
    if answers {
        // The flusher released these under a fresh mastership check,
        // but a reply can wait a while between there and here (another
        // shard's hop, a pause): check again right before the send,
        // so that a fenced master answers nothing at all (`ha::fence`).
        crate::ha::fence::hold().await;
    }
    if !wbuf.is_empty() {
        ConnectionInfo::add(&info.bytes_out, wbuf.len() as u64);
        // The flush matters with TLS: rustls may keep the tail of the
        // records when the socket is full, and nothing else would push it
        // out (a RECEIPT would wait for the next write); on plain TCP it
        // does nothing.
        if writer.write_all(wbuf).await.is_err() || writer.flush().await.is_err() {
            return false;
        }
        wbuf.clear();
    }
    if !after.is_empty() {
        ctx.route_all(after.drain(..));
    }
    true
}

/// The writer's end: nothing more is queued, what was written is flushed,
/// and the reader wakes up wherever it is blocked.
pub(super) async fn finish_writer<W: AsyncWrite + Unpin>(
    outbound: &Mailbox<Outbound>,
    writer: &mut W,
    fd: i32,
) {
    outbound.close();
    let _ = writer.flush().await;
    // SAFETY: fd stays open until the connection's halves are dropped after this.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}
