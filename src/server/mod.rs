//! Starts the shards (one pinned glommio executor each), the admin endpoint
//! and the signal handler, and waits for a graceful shutdown.

pub mod connection;
pub mod latch;
pub mod mailbox;
pub mod shard;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::info;

use crate::admin::{self, AdminState};
use crate::broker::message::MemoryUsage;
use crate::broker::shard::BrokerSettings;
use crate::broker::Destination;
use crate::config::Config;
use crate::protocol::stomp::Limits;
use shard::{Control, Shared};

/// Binds a port-0 address to a concrete port first, so that every shard's
/// SO_REUSEPORT listener shares one port.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| anyhow!("no socket address"))?;
    Ok(local)
}

/// Per-shard io_uring registered buffer memory. glommio's 10 MiB default
/// would count against RLIMIT_MEMLOCK (8 MiB here) and idle RSS.
const IO_MEMORY_BYTES: usize = 512 * 1024;

pub fn serve(config: Config) -> Result<()> {
    let shards = config.shard_count();
    let started = Instant::now();
    let stomp = resolve_port(config.listeners.stomp)
        .with_context(|| format!("cannot resolve {}", config.listeners.stomp))?;
    let admin_listener = std::net::TcpListener::bind(config.listeners.admin)
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.listeners.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let usage = Arc::new(MemoryUsage::default());
    let shared = Shared {
        shards,
        settings: BrokerSettings {
            shards,
            max_redeliveries: config.broker.max_redeliveries,
            dead_letter_queue: Destination::queue(&config.broker.dead_letter_queue),
        },
        limits: Limits {
            max_frame_size: config.limits.max_frame_size,
            ..Limits::default()
        },
        max_connections: config.limits.max_connections,
        memory_limit_bytes: config.limits.memory_limit_bytes,
        usage: usage.clone(),
        connections: Arc::new(AtomicUsize::new(0)),
        users: config
            .users
            .iter()
            .map(|u| (u.login.clone(), u.passcode.clone()))
            .collect(),
        default_prefetch: config.broker.default_prefetch,
        heartbeat_min_ms: config.broker.heartbeat_min_ms,
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mesh = (shards > 1).then(|| MeshBuilder::full(shards, shard::MESH_CHANNEL_BATCHES));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut controls = Vec::new();
    let mut threads = Vec::new();
    for id in 0..shards {
        let (ctl_tx, ctl_rx) = flume::unbounded();
        controls.push(ctl_tx);
        let shared = shared.clone();
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("brokk-shard-{id}"))
            // Registered DMA buffers: nothing in memory mode reads files.
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || shard::run(id, shared, stomp, mesh, ctl_rx, ready))
            .map_err(|e| anyhow!("cannot start shard {id}: {e}"))?;
        threads.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow!(e)),
            Err(_) => return Err(anyhow!("a shard failed to start")),
        }
    }
    info!(role = "master", %stomp, admin = %admin_addr, shards, mode = ?config.store.mode, "serving");
    // A line for scripts and tests that start brokk on port 0.
    println!("brokk listening stomp={stomp} admin={admin_addr} shards={shards}");
    let state = Arc::new(AdminState {
        role: "master",
        mode: format!("{:?}", config.store.mode).to_lowercase(),
        started,
        shards,
        controls: controls.clone(),
        usage,
    });
    std::thread::Builder::new()
        .name("brokk-admin".into())
        .spawn(move || admin::serve(admin_listener, state))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let controls_for_signal = controls.clone();
    std::thread::Builder::new()
        .name("brokk-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(signal = sig, "shutting down");
                for c in &controls_for_signal {
                    let _ = c.send(Control::Shutdown);
                }
            }
        })?;
    for t in threads {
        t.join()
            .map_err(|e| anyhow!("shard thread failed: {e:?}"))?;
    }
    info!("stopped");
    Ok(())
}
