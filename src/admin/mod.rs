//! The admin/status HTTP endpoint. A small blocking server on its own
//! thread: it never touches the shards' data except by asking them.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::debug;

use crate::broker::message::MemoryUsage;
use crate::broker::shard::DestinationStats;
use crate::ha::RoleCell;
use crate::server::shard::Control;
use crate::store::journal::StoreUsage;

pub struct AdminState {
    pub role: Arc<RoleCell>,
    pub mode: String,
    pub started: Instant,
    /// Set once the shards run (never, while standby).
    pub controls: std::sync::OnceLock<Vec<flume::Sender<Control>>>,
    pub usage: Arc<MemoryUsage>,
    /// Journal segments holding data (file mode).
    pub store_usage: Arc<StoreUsage>,
}

#[derive(Serialize)]
struct Status<'a> {
    role: &'a str,
    version: &'a str,
    mode: &'a str,
    uptime_secs: u64,
    shards: usize,
    connections: usize,
    memory_used_bytes: usize,
    store_used_bytes: u64,
    /// In force: `store.limit_bytes`, capped at start to the file system.
    store_limit_bytes: u64,
    /// Persistent producers are paused for the store (limit or full disk).
    store_full: bool,
    /// The journal's file system is full (no segment can be made or is free).
    store_disk_full: bool,
    destinations: Vec<DestinationStats>,
}

pub fn serve(listener: TcpListener, state: Arc<AdminState>) {
    for stream in listener.incoming().flatten() {
        let state = state.clone();
        // Requests are rare and short; one thread each keeps a slow client
        // from holding up the next.
        let _ = std::thread::Builder::new()
            .name("brokk-admin-req".into())
            .spawn(move || {
                if let Err(e) = handle(stream, &state) {
                    debug!(error = %e, "admin request failed");
                }
            });
    }
}

fn handle(stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain headers; the endpoint takes no body.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, body) = match (method, path) {
        ("GET", "/status") => (200, status_json(state)),
        ("GET", _) => (404, r#"{"error":"not found; try GET /status"}"#.to_string()),
        _ => (405, r#"{"error":"method not allowed"}"#.to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn status_json(state: &AdminState) -> String {
    let mut connections = 0;
    let mut destinations = Vec::new();
    let controls: &[flume::Sender<Control>] =
        state.controls.get().map(Vec::as_slice).unwrap_or(&[]);
    for c in controls {
        let (tx, rx) = flume::bounded(1);
        if c.send(Control::Stats(tx)).is_ok() {
            if let Ok(s) = rx.recv_timeout(Duration::from_secs(2)) {
                connections += s.connections;
                destinations.extend(s.destinations);
            }
        }
    }
    destinations.sort_by(|a, b| a.destination.cmp(&b.destination));
    let status = Status {
        role: state.role.get().as_str(),
        version: env!("CARGO_PKG_VERSION"),
        mode: &state.mode,
        uptime_secs: state.started.elapsed().as_secs(),
        shards: controls.len(),
        connections,
        memory_used_bytes: state.usage.used(),
        store_used_bytes: state
            .store_usage
            .used_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        store_limit_bytes: state
            .store_usage
            .limit_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        store_full: state.store_usage.full(),
        store_disk_full: state.store_usage.disk_full(),
        destinations,
    };
    serde_json::to_string(&status).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}
