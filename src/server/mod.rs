//! Starts the shards (one pinned glommio executor each), the admin endpoint
//! and the signal handler, and waits for a graceful shutdown.

pub mod connection;
pub mod latch;
pub mod mailbox;
pub mod shard;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::broker::message::MemoryUsage;
use crate::broker::shard::BrokerSettings;
use crate::broker::Destination;
use crate::config::{Config, StoreMode};
use crate::ha::{FileLock, Role, RoleCell};
use crate::protocol::stomp::Limits;
use crate::store::journal::StoreUsage;
use crate::store::meta;
use shard::{Control, JournalSettings, Shared};

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
    let started = Instant::now();
    let stomp = resolve_port(config.listeners.stomp)
        .with_context(|| format!("cannot resolve {}", config.listeners.stomp))?;
    let admin_listener = std::net::TcpListener::bind(config.listeners.admin)
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.listeners.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let usage = Arc::new(MemoryUsage::default());
    let store_usage = Arc::new(StoreUsage::default());
    let role = Arc::new(RoleCell::new(Role::Standby));
    let state = Arc::new(AdminState {
        role: role.clone(),
        mode: format!("{:?}", config.store.mode).to_lowercase(),
        started,
        controls: std::sync::OnceLock::new(),
        usage: usage.clone(),
        store_usage: store_usage.clone(),
    });
    {
        let state = state.clone();
        std::thread::Builder::new()
            .name("brokk-admin".into())
            .spawn(move || admin::serve(admin_listener, state))?;
    }
    let controls_slot: Arc<std::sync::OnceLock<Vec<flume::Sender<Control>>>> =
        Arc::new(std::sync::OnceLock::new());
    spawn_signal_thread(role.clone(), controls_slot.clone())?;

    let file_mode = config.store.mode == StoreMode::File;
    let mut lock = None;
    if file_mode {
        let dir = &config.store.dir;
        lock = Some(match FileLock::try_acquire(dir)? {
            Some(l) => l,
            None => {
                info!(role = "standby", lock = %dir.join("lock").display(), "another broker holds the lock; waiting as standby");
                println!("brokk standby stomp={stomp} admin={admin_addr}");
                FileLock::acquire(dir)?
            }
        });
        role.set(Role::Recovering);
        info!(role = "recovering", "lock acquired; recovering the journal");
    }
    let shards = if file_mode {
        let n = meta::load_or_init(&config.store.dir, config.shard_count())?;
        if n != config.shard_count() {
            warn!(
                recorded = n,
                configured = config.shard_count(),
                "the data directory records another shard count; using it"
            );
        }
        n
    } else {
        config.shard_count()
    };
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
        connect_timeout: Duration::from_millis(config.limits.connect_timeout_ms),
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
        journal: file_mode.then(|| JournalSettings {
            dir: config.store.dir.clone(),
            segment_size_bytes: config.store.segment_size_bytes,
            skip_corrupt: config.store.skip_corrupt,
        }),
        store_usage,
        store_limit_bytes: config.store.limit_bytes,
        send_fail_if_no_space: config.limits.send_fail_if_no_space,
        recovered: Arc::new(std::sync::Barrier::new(shards)),
        recovered_max_id: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        in_flight: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        drained: Arc::new(AtomicUsize::new(0)),
        fault_panic_destination: std::env::var("BROKK_FAULT_PANIC_DESTINATION")
            .ok()
            .and_then(|d| Destination::parse(&d).ok()),
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
            // Registered DMA buffers: journal writes use their own aligned
            // buffers, so a small pool is enough.
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
    let _ = state.controls.set(controls.clone());
    let _ = controls_slot.set(controls);
    role.set(Role::Master);
    info!(role = "master", %stomp, admin = %admin_addr, shards, mode = ?config.store.mode, "serving");
    // A line for scripts and tests that start brokk on port 0.
    println!("brokk listening stomp={stomp} admin={admin_addr} shards={shards}");
    if let Some(lock) = lock {
        spawn_lock_keepalive(lock, Duration::from_millis(config.ha.lock_keepalive_ms))?;
    }
    for t in threads {
        t.join()
            .map_err(|e| anyhow!("shard thread failed: {e:?}"))?;
    }
    info!("stopped");
    Ok(())
}

/// SIGTERM/SIGINT: a master shuts its shards down gracefully; a standby
/// (nothing to drain) exits at once.
fn spawn_signal_thread(
    role: Arc<RoleCell>,
    controls: Arc<std::sync::OnceLock<Vec<flume::Sender<Control>>>>,
) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::Builder::new()
        .name("brokk-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(signal = sig, role = role.get().as_str(), "shutting down");
                match controls.get() {
                    Some(cs) => {
                        for c in cs {
                            let _ = c.send(Control::Shutdown);
                        }
                    }
                    None => std::process::exit(0),
                }
            }
        })?;
    Ok(())
}

/// Re-checks the lock; if it is gone the broker is fenced: it stops serving
/// at once, without draining, since another broker may already be master.
fn spawn_lock_keepalive(lock: FileLock, every: Duration) -> Result<()> {
    std::thread::Builder::new().name("brokk-lock".into()).spawn(move || loop {
        std::thread::sleep(every);
        if !lock.still_held() {
            error!(role = "fenced", lock = %lock.path().display(), "lost the master lock; stopping now");
            std::process::exit(EXIT_FENCED);
        }
    })?;
    Ok(())
}

/// Exit code of a broker that lost mastership.
pub const EXIT_FENCED: i32 = 3;
