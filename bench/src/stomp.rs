//! A blocking STOMP connection for load generation: batched writes, one
//! read buffer, Brokk's zero-copy frame parser.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use brokk::protocol::stomp::{parse, Frame, Limits, Parsed, Version};
use bytes::BytesMut;

use crate::producer::{Failure, Link, Sent};
use crate::{destination_name, Shared};

/// The socket, plain or TLS (`--tls`).
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Longest wait for the answer to CONNECT.
const CONNECTED_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    pub wbuf: Vec<u8>,
    limits: Limits,
}

impl Conn {
    /// Connects to the first broker in `brokers` that accepts, starting at
    /// `start`. `vhost`: the CONNECT frame's `host` header (default: the
    /// broker's address).
    pub fn connect(
        brokers: &[String],
        start: usize,
        login: Option<(&str, &str)>,
        vhost: Option<&str>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<(Conn, usize)> {
        first_that_accepts(brokers, start, |b| Conn::connect_one(b, login, vhost, tls))
    }

    fn connect_one(
        broker: &str,
        login: Option<(&str, &str)>,
        vhost: Option<&str>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Conn> {
        let addr: SocketAddr = broker
            .to_socket_addrs()
            .with_context(|| format!("bad broker address {broker}"))?
            .next()
            .ok_or_else(|| anyhow!("{broker} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(config) => {
                let conn =
                    rustls::ClientConnection::new(config.clone(), crate::tls::server_name())?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
            }
        };
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: Vec::with_capacity(256 * 1024),
            limits: Limits::default(),
        };
        let host = vhost.unwrap_or(broker);
        let mut connect = format!("CONNECT\naccept-version:1.2,1.1\nhost:{host}\n");
        if let Some((l, p)) = login {
            connect.push_str(&format!("login:{l}\npasscode:{p}\n"));
        }
        connect.push_str("\n\0");
        c.stream.write_all(connect.as_bytes())?;
        // A killed broker's listening socket may still accept for a moment
        // and never answer: do not wait on it for ever.
        c.set_read_timeout(Some(CONNECTED_TIMEOUT))?;
        let f = c.read_frame()?;
        c.set_read_timeout(None)?;
        if f.command.as_str() != "CONNECTED" {
            bail!("{broker} refused CONNECT: {:?}", f.header_str("message"));
        }
        Ok(c)
    }

    pub fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        Ok(self.stream.tcp().set_read_timeout(t)?)
    }

    /// Next frame, blocking for more bytes as needed.
    pub fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill()?;
        }
    }

    /// A frame already buffered, if any.
    pub fn try_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match parse(&mut self.rbuf, Version::V1_2, &self.limits)? {
                Some(Parsed::Heartbeat) => continue,
                Some(Parsed::Frame(f)) => return Ok(Some(f)),
                None => return Ok(None),
            }
        }
    }

    pub fn fill(&mut self) -> Result<()> {
        read_more(&mut self.stream, &mut self.rbuf)
    }
}

/// Tries the failover list from `start` on; the first that accepts, and its index.
pub fn first_that_accepts<C>(
    brokers: &[String],
    start: usize,
    mut connect: impl FnMut(&str) -> Result<C>,
) -> Result<(C, usize)> {
    let mut last = None;
    for i in 0..brokers.len() {
        let idx = (start + i) % brokers.len();
        match connect(&brokers[idx]) {
            Ok(c) => return Ok((c, idx)),
            Err(e) => last = Some(e.context(format!("connect to {}", brokers[idx]))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no brokers given")))
}

/// Appends what one read gives to `rbuf`; a closed connection is an error.
/// The read goes into this thread's scratch buffer, zeroed once, and only
/// the bytes it brought are copied: reading into `rbuf` straight needs its
/// spare room zeroed before every read (`resize`), which cost 64-256 KiB
/// of `memset` a read, bench's largest cost under load on the cores it
/// shares with the brokers it measures.
pub fn read_more(stream: &mut impl Read, rbuf: &mut BytesMut) -> Result<()> {
    thread_local! {
        // 64 KiB: a burst of frames still lands in one read.
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let n = stream.read(scratch)?;
        if n == 0 {
            bail!("connection closed by broker");
        }
        rbuf.extend_from_slice(&scratch[..n]);
        Ok(())
    })
}

/// A STOMP producer: every SEND asks a RECEIPT named by its sequence, so a
/// RECEIPT answers it and everything sent before it.
pub struct Producer {
    conn: Conn,
    body: Vec<u8>,
}

impl Link for Producer {
    fn open(s: &Shared, start: usize) -> Result<(Self, usize)> {
        let a = &s.args;
        let login = a.login.as_deref().map(|l| (l, a.passcode.as_str()));
        let (conn, idx) =
            Conn::connect(&s.brokers, start, login, a.vhost.as_deref(), s.tls.as_ref())?;
        let body = vec![b'x'; a.size];
        Ok((Producer { conn, body }, idx))
    }

    fn push(&mut self, s: &Shared, p: usize, seq: u64, ts: u64) -> Result<i32> {
        let a = &s.args;
        let w = &mut self.conn.wbuf;
        write!(
            w,
            "SEND\ndestination:{}\nreceipt:{seq}\nbench-p:{p}\nbench-seq:{seq}\nbench-ts:{ts}\npersistent:{}\ncontent-length:{}\n\n",
            destination_name(&a.destination, a.destinations, seq), a.persistent, self.body.len()
        )?;
        w.extend_from_slice(&self.body);
        w.push(0);
        Ok(0)
    }

    fn flush(&mut self) -> Result<()> {
        self.conn.flush()
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.conn.set_read_timeout(t)
    }

    fn answer(
        &mut self,
        in_flight: &VecDeque<Sent>,
        block: bool,
    ) -> Result<Option<usize>, Failure> {
        let f = if block {
            self.conn.read_frame().map_err(Failure::Broken)?
        } else {
            match self.conn.try_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Failure::Broken(e)),
            }
        };
        if f.command.as_str() == "ERROR" {
            return Err(Failure::Fatal(anyhow!(
                "broker error: {:?}",
                f.header_str("message")
            )));
        }
        let receipt = f
            .header_str("receipt-id")
            .and_then(|r| r.parse::<u64>().ok());
        Ok(Some(receipt.map_or(0, |id| {
            in_flight.iter().take_while(|m| m.seq <= id).count()
        })))
    }
}
