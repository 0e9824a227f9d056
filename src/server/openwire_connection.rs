//! One OpenWire client connection: a reader task that decodes commands and
//! drives the session, and a writer task that encodes everything queued
//! for the client into one socket write. The connection owns the codec
//! (the wire format and both marshalling caches): the reader decodes, the
//! writer encodes, each with its own cache.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{spawn_local, timer::sleep};
use tracing::{debug, debug_span, Instrument};

use super::connection::{
    finish_writer, next_batch, over_limit, unregister, write_batch, Registered,
};
use super::mailbox::Mailbox;
use super::read_size::ReadSize;
use super::shard::{Outbound, ShardContext};
use crate::broker::ops::ShardMsg;
use crate::metrics::ConnectionInfo;
use crate::protocol::openwire::commands::{
    BrokerId, BrokerInfo, DataStructure, KeepAliveInfo, RemoveInfo,
};
use crate::protocol::openwire::session::{Action, Session};
use crate::protocol::openwire::{Codec, Command, WireFormat, WireFormatOptions};

/// A connection on the OpenWire listener.
pub async fn run(ctx: Rc<ShardContext>, stream: TcpStream, addr: Option<SocketAddr>) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let Registered {
        conn,
        outbound,
        info,
    } = Registered::new(&ctx, addr, "openwire");
    let id = conn.conn;
    let span = debug_span!("openwire", conn = id, peer = ?addr);
    let max_frame_size = ctx.shared.limits.max_frame_size;
    let session = Rc::new(RefCell::new(Session::new(
        ctx.session_cfg.clone(),
        ctx.ids.clone(),
        conn,
        max_frame_size,
    )));
    let ours = WireFormatOptions {
        max_frame_size: max_frame_size as i64,
        ..WireFormatOptions::default()
    };
    // Both directions start in the initial format; each switches when
    // the handshake is done on its side.
    let codec = Rc::new(RefCell::new(Codec::new(WireFormat::initial(
        max_frame_size as u64,
    ))));
    // Written before anything else, in the initial format: the client
    // switches to the negotiated one once it has read this, and the
    // reader switches this side when the client's arrives.
    let mut stream = stream;
    let mut hello = BytesMut::new();
    let encoded = ours
        .to_info()
        .and_then(|wfi| codec.borrow_mut().encode(&wfi.into(), &mut hello));
    let written = match encoded {
        Ok(()) => stream.write_all(&hello).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = written {
        debug!(error = %e, "cannot send the broker's WireFormatInfo; connection closed");
        unregister(&ctx, id);
        return;
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = spawn_local(
        write_loop(
            ctx.clone(),
            session.clone(),
            codec.clone(),
            outbound.clone(),
            writer,
            fd,
            info.clone(),
        )
        .instrument(span.clone()),
    );
    let client_id = ClientId {
        registry: ctx.shared.openwire_client_ids.clone(),
        held: RefCell::new(None),
    };
    let conn_io = Io {
        ctx: &ctx,
        session: &session,
        codec: &codec,
        outbound: &outbound,
        ours: &ours,
        addr,
        info: &info,
        client_id: &client_id,
    };
    conn_io.read_loop(reader).instrument(span).await;
    // Whatever ended the reader, the session's consumers end with it.
    let mut actions = Vec::new();
    session.borrow_mut().teardown(&mut actions);
    execute(&ctx, &outbound, actions);
    outbound.push(Outbound::Close);
    writer_task.await;
    unregister(&ctx, id);
}

/// What the reader works with.
struct Io<'a> {
    ctx: &'a ShardContext,
    session: &'a RefCell<Session>,
    codec: &'a RefCell<Codec>,
    outbound: &'a Mailbox<Outbound>,
    ours: &'a WireFormatOptions,
    addr: Option<SocketAddr>,
    info: &'a ConnectionInfo,
    client_id: &'a ClientId,
}

/// The JMS client id this connection holds in `openwire_client_ids`,
/// given back when the connection ends.
struct ClientId {
    registry: Arc<Mutex<HashSet<String>>>,
    held: RefCell<Option<String>>,
}

impl ClientId {
    /// False when another connection holds `id`.
    fn claim(&self, id: &str) -> bool {
        let mut ids = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.insert(id.to_string()) {
            return false;
        }
        *self.held.borrow_mut() = Some(id.to_string());
        true
    }

    fn release(&self) {
        if let Some(id) = self.held.borrow_mut().take() {
            let mut ids = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            ids.remove(&id);
        }
    }
}

impl Drop for ClientId {
    fn drop(&mut self) {
        self.release();
    }
}

enum Event {
    Read(std::io::Result<usize>),
    TimedOut,
}

impl Io<'_> {
    async fn read_loop(&self, mut reader: ReadHalf<TcpStream>) {
        let ctx = self.ctx;
        let mut chunk = ReadSize::default();
        let mut buf = BytesMut::new();
        // Counted from the accept: the handshake and ConnectionInfo must
        // come within limits.connect_timeout_ms.
        let connect_by = Instant::now() + ctx.shared.connect_timeout;
        // After the handshake: the negotiated max inactivity, doubled so
        // that one late KeepAliveInfo is not a dead peer.
        let mut read_timeout: Option<Duration> = None;
        let mut actions = Vec::new();
        loop {
            let timeout = if self.session.borrow().is_open() {
                read_timeout
            } else {
                Some(connect_by.saturating_duration_since(Instant::now()))
            };
            let filled = buf.len();
            buf.resize(filled + chunk.get(), 0);
            let read = async { Event::Read(reader.read(&mut buf[filled..]).await) };
            let event = match timeout {
                None => read.await,
                Some(t) => {
                    futures_lite::future::or(read, async {
                        sleep(t).await;
                        Event::TimedOut
                    })
                    .await
                }
            };
            let n = match event {
                Event::Read(Ok(0)) | Event::Read(Err(_)) => return,
                Event::Read(Ok(n)) => n,
                Event::TimedOut => {
                    let message = if self.session.borrow().is_open() {
                        "no command within twice the negotiated max inactivity duration"
                    } else {
                        "no WireFormatInfo and ConnectionInfo within limits.connect_timeout_ms"
                    };
                    debug!("{message}; dropping the connection");
                    self.session
                        .borrow_mut()
                        .protocol_error(message, &mut actions);
                    execute(ctx, self.outbound, std::mem::take(&mut actions));
                    return;
                }
            };
            buf.truncate(filled + n);
            ConnectionInfo::add(&self.info.bytes_in, n as u64);
            chunk.after(n);
            while !self.session.borrow().is_closed() {
                let decoded = self.codec.borrow_mut().decode(&mut buf);
                let cmd = match decoded {
                    Ok(None) => break,
                    Ok(Some(cmd)) => cmd,
                    Err(e) => {
                        // The stream position is lost: answer and close.
                        self.session
                            .borrow_mut()
                            .protocol_error(&format!("cannot decode a command: {e}"), &mut actions);
                        break;
                    }
                };
                match cmd {
                    Command::WireFormatInfo(theirs) => {
                        let negotiated = self.codec.borrow_mut().renegotiate(self.ours, &theirs);
                        match negotiated {
                            Ok(format) => {
                                read_timeout = (format.max_inactivity_duration_ms > 0).then(|| {
                                    Duration::from_millis(2 * format.max_inactivity_duration_ms)
                                });
                                self.outbound
                                    .push(Outbound::OpenWire(Box::new(broker_info(ctx))));
                                if format.max_inactivity_duration_ms > 0 {
                                    // Half the peer's patience: a quiet broker
                                    // is never taken for a dead one.
                                    self.outbound.push(Outbound::HeartbeatEvery(
                                        Duration::from_millis(
                                            format.max_inactivity_duration_ms / 2,
                                        ),
                                    ));
                                }
                            }
                            Err(e) => {
                                self.session.borrow_mut().protocol_error(
                                    &format!("wire format negotiation failed: {e}"),
                                    &mut actions,
                                );
                            }
                        }
                        continue;
                    }
                    Command::ConnectionInfo(ref c)
                        if self.session.borrow().awaits_connection_info() =>
                    {
                        if let Err(message) = self.authenticate(c, connect_by).await {
                            self.session.borrow_mut().reject_credentials(
                                cmd.command_id(),
                                &message,
                                &mut actions,
                            );
                            break;
                        }
                        if let Some(id) = c.client_id.as_deref().filter(|id| !id.is_empty()) {
                            if !self.client_id.claim(id) {
                                self.session.borrow_mut().reject_client_id(
                                    cmd.command_id(),
                                    id,
                                    &mut actions,
                                );
                                break;
                            }
                        }
                    }
                    // The client's close: its id is free before the close
                    // is answered, so the application can reconnect with
                    // it at once (as ActiveMQ frees it).
                    Command::RemoveInfo(RemoveInfo {
                        object_id: Some(DataStructure::ConnectionId(_)),
                        ..
                    })
                    | Command::ShutdownInfo(_) => self.client_id.release(),
                    Command::Message(ref m) => {
                        ConnectionInfo::add(&self.info.messages_in, 1);
                        if over_limit(ctx, m.persistent) && !ctx.shutdown.is_set() {
                            // What came before this message goes now (its
                            // acks free memory); then the reader waits, and
                            // TCP pushes back on the producer.
                            execute(ctx, self.outbound, std::mem::take(&mut actions));
                            debug!(
                                memory_used = ctx.shared.usage.used(),
                                "limit reached; pausing producer"
                            );
                            while over_limit(ctx, m.persistent) && !ctx.shutdown.is_set() {
                                sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                    _ => {}
                }
                self.session.borrow_mut().handle(cmd, &mut actions);
            }
            // One routing pass per read: ops bound for the same shard leave together.
            execute(ctx, self.outbound, std::mem::take(&mut actions));
            if self.session.borrow().is_closed() {
                return;
            }
        }
    }

    /// Checks ConnectionInfo's credentials against the configured users,
    /// as STOMP's CONNECT is checked, within the connect deadline.
    async fn authenticate(
        &self,
        c: &crate::protocol::openwire::commands::ConnectionInfo,
        connect_by: Instant,
    ) -> Result<(), String> {
        let auth = self.ctx.shared.security.authenticate(
            c.user_name.as_deref(),
            c.password.as_deref(),
            None,
            self.addr,
        );
        let left = connect_by.saturating_duration_since(Instant::now());
        let deadline = async {
            sleep(left).await;
            Err(crate::security::AuthError::TimedOut)
        };
        match futures_lite::future::or(auth, deadline).await {
            Ok(user) => {
                self.session.borrow_mut().authenticated(user);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

fn broker_info(ctx: &ShardContext) -> Command {
    BrokerInfo {
        broker_id: Some(BrokerId {
            value: Some(format!("ID:brokk-{}", std::process::id())),
        }),
        broker_name: Some("brokk".into()),
        // Shard-local: a client learns nothing it could misuse.
        broker_url: Some(format!("brokk-shard-{}", ctx.id)),
        ..BrokerInfo::default()
    }
    .into()
}

fn execute(ctx: &ShardContext, outbound: &Mailbox<Outbound>, actions: Vec<Action>) {
    let mut routes = Vec::new();
    for a in actions {
        match a {
            Action::Write(c) => {
                outbound.push(Outbound::OpenWire(Box::new(c)));
            }
            Action::Route(shard, op) => routes.push((shard, ShardMsg::Op(op))),
            Action::Close => {
                outbound.push(Outbound::Close);
            }
            Action::Timer { after, token } => set_timer(outbound, after, token),
        }
    }
    if !routes.is_empty() {
        ctx.route_all(routes);
    }
}

/// Queues `Outbound::Timer(token)` for the session after `after`.
fn set_timer(outbound: &Mailbox<Outbound>, after: Duration, token: u64) {
    let mailbox = outbound.clone();
    spawn_local(async move {
        sleep(after).await;
        mailbox.push(Outbound::Timer(token));
    })
    .detach();
}

async fn write_loop(
    ctx: Rc<ShardContext>,
    session: Rc<RefCell<Session>>,
    codec: Rc<RefCell<Codec>>,
    outbound: Mailbox<Outbound>,
    mut writer: WriteHalf<TcpStream>,
    fd: i32,
    info: Rc<ConnectionInfo>,
) {
    let mut keepalive: Option<Duration> = None;
    let mut wbuf = BytesMut::new();
    let mut spare = Vec::new();
    let mut actions = Vec::new();
    let mut commands: Vec<Command> = Vec::new();
    let mut routes: Vec<(usize, ShardMsg)> = Vec::new();
    loop {
        let items = next_batch(&outbound, std::mem::take(&mut spare), keepalive).await;
        let mut close = items.is_empty() && keepalive.is_none();
        if items.is_empty() && keepalive.is_some() {
            commands.push(KeepAliveInfo::default().into());
        }
        let mut items = items;
        let mut responses = false;
        {
            let mut s = session.borrow_mut();
            for item in items.drain(..) {
                match item {
                    Outbound::OpenWire(c) => commands.push(*c),
                    Outbound::Deliver(sub, deliveries) => {
                        let sent = s.deliver(sub, deliveries, &mut commands);
                        ConnectionInfo::add(&info.messages_out, sent as u64);
                    }
                    Outbound::Fenced(token) => s.fenced(token, &mut actions),
                    Outbound::Timer(token) => s.timer(token, &mut actions),
                    Outbound::Refused(reason) => s.refused(&reason, &mut actions),
                    Outbound::HeartbeatEvery(d) => keepalive = Some(d),
                    Outbound::Close => close = true,
                    // Only the STOMP listener queues frames.
                    Outbound::Frame(_) => {}
                }
                for a in actions.drain(..) {
                    match a {
                        Action::Write(c) => {
                            responses |= matches!(c, Command::Response(_));
                            commands.push(c);
                        }
                        Action::Close => close = true,
                        Action::Route(shard, op) => routes.push((shard, ShardMsg::Op(op))),
                        Action::Timer { after, token } => set_timer(&outbound, after, token),
                    }
                }
            }
        }
        spare = items;
        {
            let mut codec = codec.borrow_mut();
            for c in commands.drain(..) {
                if let Err(e) = codec.encode(&c, &mut wbuf) {
                    // Nothing was appended; the client misses this one
                    // command, which the log names.
                    tracing::warn!(error = %e, command = c.type_code(), "cannot encode an OpenWire command");
                }
            }
        }
        if !write_batch(&ctx, &mut writer, &mut wbuf, &info, responses, &mut routes).await {
            break;
        }
        if close {
            break;
        }
    }
    finish_writer(&outbound, &mut writer, fd).await;
}
