//! A blocking OpenWire connection for load generation, built on Brokk's own
//! codec: the handshake (WireFormatInfo both ways, BrokerInfo), a connection
//! and one session, then commands encoded into one write buffer and flushed
//! together, and commands decoded from one read buffer.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use brokk::protocol::openwire::commands::{
    ConnectionId, ConnectionInfo, DataStructure, Destination, RemoveInfo, SessionId, SessionInfo,
    ShutdownInfo,
};
use brokk::protocol::openwire::primitives::Throwable;
use brokk::protocol::openwire::{Codec, Command, WireFormat, WireFormatOptions};
use bytes::BytesMut;

/// The frame bound bench accepts (the broker's default maxFrameSize).
const MAX_FRAME: u64 = 104_857_600;

/// Makes every connection id of this process distinct (the broker keys
/// client ids broker-wide, and a reconnect must not collide with the
/// connection it replaces while that one is torn down).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

pub struct Conn {
    stream: TcpStream,
    codec: Codec,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    next_command_id: i32,
    pub connection_id: String,
}

impl Conn {
    /// Connects to the first broker in `brokers` that accepts, starting at
    /// `start`, and opens a connection and session 1 on it.
    pub fn connect(
        brokers: &[String],
        start: usize,
        login: Option<(&str, &str)>,
    ) -> Result<(Conn, usize)> {
        crate::stomp::first_that_accepts(brokers, start, |b| Conn::connect_one(b, login))
    }

    fn connect_one(broker: &str, login: Option<(&str, &str)>) -> Result<Conn> {
        let addr: SocketAddr = broker
            .to_socket_addrs()
            .with_context(|| format!("bad broker address {broker}"))?
            .next()
            .ok_or_else(|| anyhow!("{broker} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        // A broker that accepts but never answers (a standby's port taken
        // over by something else) must not hang the handshake.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let mut c = Conn {
            stream,
            codec: Codec::new(WireFormat::initial(MAX_FRAME)),
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(256 * 1024),
            next_command_id: 1,
            connection_id: format!("ID:bench-{}-{epoch}-{n}:1", std::process::id()),
        };
        c.handshake()?;
        let id = c.next_id();
        c.send(
            &ConnectionInfo {
                command_id: id,
                response_required: true,
                connection_id: Some(c.connection()),
                client_id: Some(c.connection_id.clone()),
                user_name: login.map(|l| l.0.to_string()),
                password: login.map(|l| l.1.to_string()),
                ..ConnectionInfo::default()
            }
            .into(),
        )?;
        let id2 = c.next_id();
        c.send(
            &SessionInfo {
                command_id: id2,
                response_required: true,
                session_id: Some(c.session()),
            }
            .into(),
        )?;
        c.flush()?;
        c.await_response(id2, Duration::from_secs(10))
            .with_context(|| format!("{broker} refused the connection or session"))?;
        c.stream.set_read_timeout(None)?;
        Ok(c)
    }

    /// The broker writes its WireFormatInfo at once, in the initial format;
    /// ours goes back in that format, then both switch to the negotiated one
    /// and the broker sends BrokerInfo.
    fn handshake(&mut self) -> Result<()> {
        let theirs = match self.read_command()? {
            Command::WireFormatInfo(w) => w,
            other => bail!("expected WireFormatInfo first, got {}", name(&other)),
        };
        // No inactivity monitor: bench's consumers can sit silent for longer
        // than ActiveMQ's 30 s default while producers are slow to start, and
        // a keep-alive exchange would only add noise to the figures.
        let ours = WireFormatOptions {
            max_inactivity_duration_ms: 0,
            max_inactivity_duration_initial_delay_ms: 0,
            provider_name: Some("brokk-bench".into()),
            ..WireFormatOptions::default()
        };
        self.send(&ours.to_info().context("our WireFormatInfo")?.into())?;
        self.flush()?;
        self.codec
            .renegotiate(&ours, &theirs)
            .context("wire format negotiation")?;
        match self.read_command()? {
            Command::BrokerInfo(_) => Ok(()),
            other => bail!("expected BrokerInfo, got {}", name(&other)),
        }
    }

    pub fn connection(&self) -> ConnectionId {
        ConnectionId {
            value: Some(self.connection_id.clone()),
        }
    }

    pub fn session(&self) -> SessionId {
        SessionId {
            connection_id: Some(self.connection_id.clone()),
            value: 1,
        }
    }

    pub fn next_id(&mut self) -> i32 {
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1).max(1);
        id
    }

    /// Encodes `cmd` behind whatever is already buffered; `flush` writes it all.
    pub fn send(&mut self, cmd: &Command) -> Result<()> {
        self.codec
            .encode(cmd, &mut self.wbuf)
            .with_context(|| format!("cannot encode {}", name(cmd)))
    }

    pub fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        Ok(self.stream.set_read_timeout(t)?)
    }

    /// Waits for the Response to command `id`, refusing on an
    /// ExceptionResponse or ConnectionError; other commands are dropped
    /// (only used before any consumer exists, or when closing).
    pub fn await_response(&mut self, id: i32, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no Response to command {id} within {within:?}");
            }
            self.set_read_timeout(Some(left))?;
            match self.read_command()? {
                Command::Response(r) if r.correlation_id == id => return Ok(()),
                Command::ExceptionResponse(e) if e.correlation_id == id => {
                    bail!("refused: {}", throwable(e.exception.as_ref()))
                }
                Command::ConnectionError(e) => {
                    bail!("connection error: {}", throwable(e.exception.as_ref()))
                }
                _ => {}
            }
        }
    }

    /// Closes politely: RemoveInfo of the connection (answered once the
    /// broker has released it), then ShutdownInfo. Best effort.
    pub fn close(mut self) {
        let id = self.next_id();
        let remove = RemoveInfo {
            command_id: id,
            response_required: true,
            object_id: Some(DataStructure::ConnectionId(self.connection())),
            last_delivered_sequence_id: -1,
        };
        if self.send(&remove.into()).is_err() || self.flush().is_err() {
            return;
        }
        if self.await_response(id, Duration::from_secs(5)).is_ok() {
            let shutdown = ShutdownInfo {
                command_id: self.next_id(),
                response_required: false,
            };
            let _ = self.send(&shutdown.into());
            let _ = self.flush();
        }
    }

    /// Next command, blocking for more bytes as needed.
    pub fn read_command(&mut self) -> Result<Command> {
        loop {
            if let Some(c) = self.try_command()? {
                return Ok(c);
            }
            self.fill()?;
        }
    }

    /// A command already buffered, if any.
    pub fn try_command(&mut self) -> Result<Option<Command>> {
        Ok(self.codec.decode(&mut self.rbuf)?)
    }

    fn fill(&mut self) -> Result<()> {
        crate::stomp::read_more(&mut self.stream, &mut self.rbuf)
    }
}

/// bench names destinations as STOMP does (`/queue/X`, `/topic/X`); OpenWire
/// names the kind apart. The broker maps them back the same way, so STOMP
/// and OpenWire runs use the same queues.
pub fn destination(name: &str) -> Destination {
    if let Some(t) = name.strip_prefix("/topic/") {
        Destination::topic(t)
    } else {
        Destination::queue(name.strip_prefix("/queue/").unwrap_or(name))
    }
}

pub fn throwable(t: Option<&Throwable>) -> String {
    match t {
        Some(t) => format!(
            "{}: {}",
            t.class_name,
            t.message.as_deref().unwrap_or_default()
        ),
        None => "(no exception given)".into(),
    }
}

/// A command's kind, for error messages.
pub fn name(c: &Command) -> String {
    let dbg = format!("{c:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}
