//! Test harness: runs the real `brokk` binary on ephemeral ports and talks
//! STOMP to it over real sockets with a small blocking client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod blackhole;
pub mod db;
pub mod java;
pub mod tls;
pub mod tx;

use brokk::protocol::stomp::{parse, Frame, Limits, Parsed, Version};
use bytes::BytesMut;

/// A loopback address for a broker that keeps its port across restarts
/// (see [`brokk::ports::stable_loopback_port`]).
pub fn free_addr() -> String {
    let port = brokk::ports::stable_loopback_port().expect("a free loopback port");
    format!("127.0.0.1:{port}")
}

/// Arguments for a broker on the data directory `dir/data`, then `extra`:
/// a broker started again with them finds what the last one stored.
pub fn data_args(dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--data".to_string(), dir.join("data").display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub struct Broker {
    pub child: Child,
    pub stomp: SocketAddr,
    /// The OpenWire listener (ActiveMQ's JMS clients).
    pub openwire: SocketAddr,
    pub admin: SocketAddr,
    /// The STOMP-over-TLS listener, when `listeners.stomp_tls` is set.
    pub stomp_tls: Option<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
    pub role_line: String,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        Broker::start_with_config(None, extra)
    }

    /// Starts brokk with `config` (TOML text) written to a temp file, in
    /// file mode on a fresh data directory unless `extra` says otherwise.
    pub fn start_with_config(config: Option<&str>, extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.contains(&"--data") {
            args.push("--data".into());
            args.push(dir.path().join("data").display().to_string());
        }
        let mut b = Broker::spawn(config, &args, Some(dir.path()));
        b._dir = Some(dir);
        b
    }

    /// The data directory [`Broker::start_with_config`] made, if it did.
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("data"))
    }

    /// Starts brokk and waits for it to serve (first stdout line).
    pub fn spawn(
        config: Option<&str>,
        args: &[String],
        config_dir: Option<&std::path::Path>,
    ) -> Broker {
        let mut b = Broker::spawn_any(config, args, config_dir);
        assert!(
            b.role_line.starts_with("brokk listening"),
            "expected a master, got {:?}",
            b.role_line
        );
        b.parse_ports();
        b
    }

    /// Starts brokk, returning once it printed its first line (a master's
    /// `brokk listening ...` or a standby's `brokk standby ...`).
    pub fn spawn_any(
        config: Option<&str>,
        args: &[String],
        config_dir: Option<&std::path::Path>,
    ) -> Broker {
        Broker::spawn_env(config, args, config_dir, &[])
    }

    /// [`Broker::spawn_any`] with extra environment variables (the test-only
    /// fault switches).
    pub fn spawn_env(
        config: Option<&str>,
        args: &[String],
        config_dir: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokk"));
        cmd.envs(env.iter().copied());
        Broker::spawn_command(cmd, config, args, config_dir)
    }

    /// Starts brokk under `wrapper` (a command that runs the program and
    /// arguments given after its own, e.g. `taskset -c 1`) and waits for it
    /// to serve.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[String]) -> Broker {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_brokk"));
        let b = Broker::spawn_command(cmd, None, args, None);
        assert!(
            b.role_line.starts_with("brokk listening"),
            "expected a master, got {:?}",
            b.role_line
        );
        b
    }

    /// Runs `cmd` (brokk, or a wrapper around it) with `serve` and the
    /// test's listen addresses, returning once it printed its first line.
    fn spawn_command(
        mut cmd: Command,
        config: Option<&str>,
        args: &[String],
        config_dir: Option<&std::path::Path>,
    ) -> Broker {
        if std::env::var_os("BROKK_LOG").is_none() {
            cmd.env("BROKK_LOG", "warn");
        }
        cmd.arg("serve");
        if !args.iter().any(|a| a == "--stomp") {
            cmd.args(["--stomp", "127.0.0.1:0"]);
        }
        // Never ActiveMQ's fixed 61616: tests run side by side.
        if !args.iter().any(|a| a == "--openwire") {
            cmd.args(["--openwire", "127.0.0.1:0"]);
        }
        if !args.iter().any(|a| a == "--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        if let Some(c) = config {
            let dir = config_dir.expect("a directory for the config file");
            let p = dir.join(format!("brokk-{}.toml", std::process::id()));
            std::fs::write(&p, c).unwrap();
            cmd.arg("--config").arg(p);
        }
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("brokk binary runs");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut b = Broker {
            child,
            stomp: "0.0.0.0:0".parse().unwrap(),
            openwire: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            stomp_tls: None,
            _dir: None,
            role_line: line,
            stdout: Some(reader),
        };
        b.parse_ports();
        b
    }

    fn parse_ports(&mut self) {
        let field = |k: &str| -> Option<SocketAddr> {
            self.role_line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|a| a.parse().ok())
        };
        if let (Some(s), Some(a)) = (field("stomp="), field("admin=")) {
            self.stomp = s;
            self.admin = a;
        }
        self.stomp_tls = field("stomp_tls=");
        if let Some(o) = field("openwire=") {
            self.openwire = o;
        }
    }

    /// For a standby: blocks until it prints that it became master.
    pub fn wait_for_master(&mut self) {
        let reader = self.stdout.as_mut().expect("stdout");
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("brokk listening"),
            "standby did not take over: {line:?}"
        );
        self.role_line = line;
        self.parse_ports();
    }

    /// [`Broker::wait_for_master`] with a deadline: a standby still waiting
    /// after `secs` is killed, and the test fails.
    pub fn wait_for_master_within(&mut self, secs: u64) {
        let pid = self.pid();
        let (done, cancelled) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let late = matches!(
                cancelled.recv_timeout(Duration::from_secs(secs)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            if late {
                // SAFETY: kill(2) has no memory-safety preconditions; `pid`
                // is our child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            late
        });
        let reader = self.stdout.as_mut().expect("stdout");
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = done.send(());
        let late = watchdog.join().unwrap();
        assert!(
            !late && line.starts_with("brokk listening"),
            "standby did not take over within {secs} s: {line:?}"
        );
        self.role_line = line;
        self.parse_ports();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    pub fn client(&self) -> Client {
        Client::connect(self.stomp, &[("accept-version", "1.2")])
    }

    pub fn status(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap()
    }

    /// The status entry of one destination (pending, consumers, ...).
    pub fn destination(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["destination"] == name)
            .cloned()
    }

    /// Polls the status endpoint until `f` holds (fails after 10 s).
    pub fn wait_until(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if f(&s) {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; status: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself; fails after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "brokk (pid {}) still running after {secs} s",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
    pub version: Version,
    pub connected: Option<Frame>,
    /// MESSAGE frames that arrived while waiting for a RECEIPT.
    held: std::collections::VecDeque<Frame>,
}

impl Client {
    /// Connects and sends CONNECT with `headers`; the reply is in `connected`.
    pub fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Client {
        Client::try_connect(addr, headers).expect("reply to CONNECT")
    }

    /// [`Client::connect`], or `None` when the connection is refused or
    /// closed (or silent for 10 s) before the reply: for clients that
    /// fail over while a test kills brokers.
    pub fn try_connect(addr: SocketAddr, headers: &[(&str, &str)]) -> Option<Client> {
        let mut c = Client::try_raw(addr)?;
        let mut f = String::from("CONNECT\nhost:localhost\n");
        for (k, v) in headers {
            f.push_str(&format!("{k}:{v}\n"));
        }
        f.push_str("\n\0");
        c.stream.write_all(f.as_bytes()).ok()?;
        let reply = c.recv()?;
        if reply.command == brokk::protocol::stomp::Command::Connected {
            c.version = match reply.header_str("version") {
                Some("1.1") => Version::V1_1,
                Some("1.2") => Version::V1_2,
                _ => Version::V1_0,
            };
        }
        c.connected = Some(reply);
        Some(c)
    }

    pub fn raw(addr: SocketAddr) -> Client {
        Client::try_raw(addr).expect("connect")
    }

    fn try_raw(addr: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect(addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Some(Client {
            stream,
            buf: BytesMut::new(),
            version: Version::V1_0,
            connected: None,
            held: Default::default(),
        })
    }

    pub fn is_connected(&self) -> bool {
        matches!(&self.connected, Some(f) if f.command == brokk::protocol::stomp::Command::Connected)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a frame given as `COMMAND`, headers and body.
    pub fn frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.write(&frame_bytes(command, headers, body));
    }

    /// [`Client::frame`] to a broker that may be gone: false if it is.
    pub fn try_frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.stream
            .write_all(&frame_bytes(command, headers, body))
            .is_ok()
    }

    pub fn send(&mut self, dest: &str, body: &str) {
        self.frame("SEND", &[("destination", dest)], body.as_bytes());
    }

    /// SEND and wait for its RECEIPT.
    pub fn send_sync(&mut self, dest: &str, body: &str, headers: &[(&str, &str)]) {
        let mut h = vec![("destination", dest), ("receipt", "r-send")];
        h.extend_from_slice(headers);
        self.frame("SEND", &h, body.as_bytes());
        self.expect_receipt("r-send");
    }

    pub fn subscribe(&mut self, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
        let receipt = format!("sub-{id}");
        let mut h = vec![
            ("id", id),
            ("destination", dest),
            ("ack", ack),
            ("receipt", receipt.as_str()),
        ];
        h.extend_from_slice(extra);
        self.frame("SUBSCRIBE", &h, b"");
        self.expect_receipt(&receipt);
    }

    pub fn expect_receipt(&mut self, id: &str) {
        let f = self.recv_skipping_messages().expect("RECEIPT");
        assert_eq!(f.command.as_str(), "RECEIPT", "expected RECEIPT, got {f:?}");
        assert_eq!(f.header_str("receipt-id"), Some(id));
    }

    fn recv_skipping_messages(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_frame(Duration::from_secs(10))?;
            if f.command.as_str() != "MESSAGE" {
                return Some(f);
            }
            self.held.push_back(f);
        }
    }

    /// Next frame, skipping heart-beats; None on EOF.
    pub fn recv(&mut self) -> Option<Frame> {
        self.recv_timeout(Duration::from_secs(10))
    }

    pub fn recv_timeout(&mut self, t: Duration) -> Option<Frame> {
        if let Some(f) = self.held.pop_front() {
            return Some(f);
        }
        self.read_frame(t)
    }

    fn read_frame(&mut self, t: Duration) -> Option<Frame> {
        self.stream.set_read_timeout(Some(t)).unwrap();
        loop {
            match parse(&mut self.buf, self.version, &Limits::default()) {
                Ok(Some(Parsed::Frame(f))) => return Some(f),
                Ok(Some(Parsed::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed frame: {e}"),
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends `command` with a receipt and returns the MESSAGE frames that
    /// arrived before the RECEIPT (and any held from earlier). The broker
    /// answers only once the owning shard has applied the frame, and the
    /// deliveries that frame (or anything before it) caused travel ahead of
    /// the answer: a positive fence for "nothing else was delivered".
    pub fn messages_before_receipt(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        receipt: &str,
    ) -> Vec<Frame> {
        let mut h = headers.to_vec();
        h.push(("receipt", receipt));
        self.frame(command, &h, b"");
        self.expect_receipt(receipt);
        self.held.drain(..).collect()
    }

    pub fn expect_message(&mut self) -> Frame {
        let f = self.recv().expect("a MESSAGE");
        assert_eq!(f.command.as_str(), "MESSAGE", "expected MESSAGE, got {f:?}");
        f
    }

    pub fn expect_error(&mut self) -> Frame {
        let f = self.recv().expect("an ERROR");
        assert_eq!(f.command.as_str(), "ERROR", "expected ERROR, got {f:?}");
        f
    }

    /// Waits for the broker to close the connection: end of stream or a
    /// reset. Heart-beats are skipped; a frame, or 10 s of silence, fails
    /// the test (silence is not a close).
    pub fn expect_closed_by_peer(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match parse(&mut self.buf, self.version, &Limits::default()) {
                Ok(Some(Parsed::Heartbeat)) => continue,
                Ok(Some(Parsed::Frame(f))) => {
                    panic!("expected the broker to close the connection, got {f:?}")
                }
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed frame: {e}"),
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the broker did not close the connection within 10 s"
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the broker did not close the connection within 10 s")
                }
                Err(e) => panic!("reading while waiting for a close: {e}"),
            }
        }
    }

    pub fn ack(&mut self, msg: &Frame) {
        let id = msg.header_str("ack").unwrap().to_string();
        self.frame("ACK", &[("id", &id)], b"");
    }

    pub fn disconnect(mut self) {
        self.frame("DISCONNECT", &[("receipt", "bye")], b"");
        self.expect_receipt("bye");
    }
}

/// A frame given as `COMMAND`, headers and body, on the wire.
pub fn frame_bytes(command: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut f = format!("{command}\n");
    for (k, v) in headers {
        f.push_str(&format!("{k}:{v}\n"));
    }
    f.push_str(&format!("content-length:{}\n\n", body.len()));
    let mut bytes = f.into_bytes();
    bytes.extend_from_slice(body);
    bytes.push(0);
    bytes
}

/// Waits for a child process to exit by itself; kills it and fails after
/// `secs`, saying `what` was expected.
pub fn wait_child(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn body(f: &Frame) -> String {
    String::from_utf8(f.body.to_vec()).unwrap()
}

/// Whether a broker serves STOMP at `addr`.
#[allow(dead_code)]
pub fn stomp_serving(addr: SocketAddr) -> bool {
    brokk::protocol::stomp::probe::answers_connect(addr)
}

/// A small deterministic generator (xorshift) for kill moments and the
/// like: seeded from `BROKK_TEST_SEED` when set (to replay a failure), else
/// from the clock; the seed is printed either way.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("BROKK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("BROKK_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sends `sig` to a broker; for SIGSTOP, returns once it has stopped.
pub fn signal(b: &Broker, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(b.pid(), sig) }, 0);
    if sig == libc::SIGSTOP {
        // kill(2) returns before the process has stopped: until it has, its
        // keep-alive thread can still notice what the test does next.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if proc_stat(b.pid()).is_some_and(|p| p.state == 'T') {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "pid {} did not stop",
                b.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What `/proc/PID/stat` says of a process: its name, state and parent.
pub struct ProcStat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
}

/// None once the process is gone (or reaped).
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold anything, ") " included.
    let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
    let mut f = rest.split_whitespace();
    Some(ProcStat {
        comm: comm.to_string(),
        state: f.next()?.chars().next()?,
        ppid: f.next()?.parse().ok()?,
    })
}
