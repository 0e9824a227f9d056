//! Starts the shards (one pinned glommio executor each), the admin endpoint
//! and the signal handler, and waits for a graceful shutdown.

pub mod admin_send;
mod connection;
mod db_shard;
pub mod latch;
mod listen;
pub mod mailbox;
mod openwire_connection;
mod read_size;
pub mod shard;
mod zk_mode;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::admin::{self, AdminSettings, AdminState};
use crate::broker::message::MemoryUsage;
use crate::broker::shard::BrokerSettings;
use crate::broker::Destination;
use crate::config::{Config, HaConfig, StoreMode};
use crate::ha::fence::{self, Monitor, Verdict};
use crate::ha::{epoch, FileLock, Role, RoleCell};
use crate::protocol::stomp::Limits;
use crate::side;
use crate::store::journal::{self, StoreUsage};
use crate::store::meta;
use shard::{Control, JournalSettings, Shared, TlsListener};

/// Binds a port-0 address to a concrete port first, so that every shard's
/// SO_REUSEPORT listener shares one port. The returned socket stays bound
/// (not listening) until the shards accept: dropped at once, the port would
/// be free for anyone's outgoing connection to take while a standby waits or
/// a master recovers, and the shards' bind would then fail.
fn resolve_port(addr: SocketAddr) -> Result<(SocketAddr, Option<socket2::Socket>)> {
    if addr.port() != 0 {
        return Ok((addr, None));
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
    Ok((local, Some(sock)))
}

/// Per-shard io_uring registered buffer memory. glommio's 10 MiB default
/// would count against RLIMIT_MEMLOCK (8 MiB here) and idle RSS.
const IO_MEMORY_BYTES: usize = 512 * 1024;

pub fn serve(mut config: Config) -> Result<()> {
    // glommio opens a shard's journal directory by a path it cannot resolve
    // when relative ("Bad file descriptor"), which broke the default
    // `./data`: every path the store uses is made absolute first.
    config.store.dir = std::path::absolute(&config.store.dir).with_context(|| {
        format!(
            "store.dir {} cannot be made absolute",
            config.store.dir.display()
        )
    })?;
    if let Some(d) = &config.store.spool_dir {
        config.store.spool_dir =
            Some(std::path::absolute(d).with_context(|| {
                format!("store.spool_dir {} cannot be made absolute", d.display())
            })?);
    }
    let (stomp, port_hold) = resolve_port(config.listeners.stomp)
        .with_context(|| format!("cannot resolve {}", config.listeners.stomp))?;
    let (openwire, openwire_port_hold) = resolve_port(config.listeners.openwire)
        .with_context(|| format!("cannot resolve {}", config.listeners.openwire))?;
    let (stomp_tls, tls_port_hold) = match config.listeners.stomp_tls {
        None => (None, None),
        Some(a) => {
            let (addr, hold) = resolve_port(a).with_context(|| format!("cannot resolve {a}"))?;
            (Some(addr), hold)
        }
    };
    // Built again from the files validated at load: the listeners serve
    // exactly what `check-config` checked.
    let tls = match &config.tls {
        Some(t) if stomp_tls.is_some() => Some(TlsListener {
            config: crate::security::tls::server_config(t)
                .map_err(|e| anyhow!("config key `{}`: {e}", e.key()))?,
            handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
        }),
        _ => None,
    };
    let security = Arc::new(crate::security::Security::from_config(&config)?);
    let admin_listener = std::net::TcpListener::bind(config.listeners.admin)
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.listeners.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let usage = Arc::new(MemoryUsage::default());
    let store_usage = Arc::new(StoreUsage::default());
    let role = Arc::new(RoleCell::new(Role::Standby));
    let state = Arc::new(AdminState::new(
        AdminSettings {
            mode: format!("{:?}", config.store.mode).to_lowercase(),
            memory_limit_bytes: config.limits.memory_limit_bytes,
            store_dir: (config.store.mode == StoreMode::File).then(|| config.store.dir.clone()),
            stomp,
            max_body_bytes: config.limits.max_frame_size,
            console: config.admin.clone(),
            security: security.clone(),
        },
        role.clone(),
        usage.clone(),
        store_usage.clone(),
    ));
    let admin_tls = match (config.listeners.admin_tls, &config.tls) {
        (Some(addr), Some(t)) => Some(admin::AdminTls {
            listener: std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for admin HTTPS on {addr}"))?,
            config: crate::security::tls::server_config(t)
                .map_err(|e| anyhow!("config key `{}`: {e}", e.key()))?,
            handshake_timeout: Duration::from_millis(t.handshake_timeout_ms),
        }),
        _ => None,
    };
    let admin_tls_addr = match &admin_tls {
        Some(t) => Some(t.listener.local_addr()?),
        None => None,
    };
    admin::start(admin_listener, admin_tls, state.clone())?;
    let controls_slot: Arc<std::sync::OnceLock<Vec<flume::Sender<Control>>>> =
        Arc::new(std::sync::OnceLock::new());
    spawn_signal_thread(role.clone(), controls_slot.clone())?;

    // Before the lock or lease wait: a standby keeps its shards' executors
    // ready, so that taking over does not start threads (see `shard::run`).
    let mut executors = Executors::spawn(config.shard_count())?;
    let file_mode = config.store.mode == StoreMode::File;
    let addrs = listen::ListenAddrs {
        stomp,
        stomp_tls,
        openwire,
    };
    // The client ports open as the takeover begins (see `listen`).
    let mut listeners = None;
    let mut file_shards = None;
    if file_mode {
        let dir = &config.store.dir;
        let lock = match FileLock::try_acquire(dir)? {
            Some(l) => l,
            None => {
                info!(role = "standby", lock = %dir.join("lock").display(), "another broker holds the lock; waiting as standby");
                println!("brokk standby stomp={stomp} admin={admin_addr}");
                FileLock::acquire(dir)?
            }
        };
        role.set(Role::Recovering);
        take_over(lock, dir, &config.ha, &role)?;
        info!(
            role = "recovering",
            "lock acquired and epoch raised; recovering the journal"
        );
        let n = meta::load_or_init(&config.store.dir, config.shard_count())?;
        listeners = Some(listen::open(addrs, n)?);
        file_shards = Some(n);
        // Test-only fault switch: the takeover stalls this long with its
        // ports open, so that a test can connect before the broker serves.
        // File mode only: the database and zk modes would lose their lease
        // or followers meanwhile.
        if let Some(ms) = std::env::var("BROKK_FAULT_TAKEOVER_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    // Only a master pages, and only a master may empty the spool directory
    // (a standby doing so would pull it from under the running master): in
    // file mode the lock is ours by now, the database modes make it once
    // the lease is theirs. Memory mode stores nothing, so pages nothing.
    let mut spool_dir = match config.store.mode {
        StoreMode::File => fresh_spool_dir(&config.store.spool_dir())?,
        _ => config.store.spool_dir(),
    };
    let mut max_frame_size = config.limits.max_frame_size;
    // The database and zk modes open them once the lease or election is won.
    let mut open_ports = || -> Result<()> {
        listeners = Some(listen::open(addrs, config.shard_count())?);
        Ok(())
    };
    let db = if config.store.is_db() {
        let (db, max_statement, dir) = db_take_over(
            &config,
            &role,
            (stomp, admin_addr),
            store_usage.clone(),
            &mut open_ports,
        )?;
        spool_dir = dir;
        // A persistent message travels in one INSERT: a frame the database
        // would refuse must be refused at the door, not retried forever;
        // and the writer's statements stay within the limit too.
        if let Some(limit) = max_statement {
            crate::store::sql::write::set_statement_limit(limit);
            let fits = limit.saturating_sub(DB_STATEMENT_OVERHEAD) as usize;
            if max_frame_size > fits {
                warn!(
                    max_frame_size,
                    max_allowed_packet = limit,
                    limit = fits,
                    "limits.max_frame_size is more than the database takes in one statement (max_allowed_packet); using the smaller limit"
                );
                max_frame_size = fits;
            }
            state.lower_max_message_bytes(fits);
        }
        Some(db)
    } else if config.store.mode == StoreMode::Zk {
        let (db, dir) = zk_mode::zk_take_over(
            &config,
            &role,
            (stomp, admin_addr),
            state.replication.clone(),
            &mut open_ports,
        )?;
        spool_dir = dir;
        Some(db)
    } else {
        None
    };
    let shards = match file_shards {
        Some(n) => {
            if n != config.shard_count() {
                warn!(
                    recorded = n,
                    configured = config.shard_count(),
                    "the data directory records another shard count; using it"
                );
            }
            n
        }
        None => config.shard_count(),
    };
    // Memory mode takes nothing over: its ports open now.
    let listeners = match listeners {
        Some(l) => l,
        None => listen::open(addrs, shards)?,
    };
    if listeners.len() != shards {
        return Err(anyhow!(
            "{} sets of client ports opened for {shards} shards",
            listeners.len()
        ));
    }
    store_usage.limit_bytes.store(
        if file_mode {
            capped_store_limit(&config, shards)
        } else {
            config.store.limit_bytes
        },
        std::sync::atomic::Ordering::Relaxed,
    );
    let shared_db = db.clone();
    let temporary = Arc::new(crate::broker::temporary::TempDestinations::default());
    let loaded_max_id = db.as_ref().map_or(0, db_shard::DbShared::max_id_counter);
    let shared = Shared {
        shards,
        settings: BrokerSettings {
            shards,
            max_redeliveries: config.broker.max_redeliveries,
            dead_letter_queue: Destination::queue(&config.broker.dead_letter_queue),
            temporary: temporary.clone(),
        },
        limits: Limits {
            max_frame_size,
            ..Limits::default()
        },
        max_connections: config.limits.max_connections,
        connect_timeout: Duration::from_millis(config.limits.connect_timeout_ms),
        memory_limit_bytes: config.limits.memory_limit_bytes,
        usage: usage.clone(),
        connections: Arc::new(AtomicUsize::new(0)),
        security,
        tls,
        default_prefetch: config.broker.default_prefetch,
        heartbeat_min_ms: config.broker.heartbeat_min_ms,
        journal: file_mode.then(|| JournalSettings {
            dir: config.store.dir.clone(),
            segment_size_bytes: config.store.segment_size_bytes,
            skip_corrupt: config.store.skip_corrupt,
        }),
        db,
        store_usage,
        send_fail_if_no_space: config.limits.send_fail_if_no_space,
        paging: shard::PagingSettings {
            spool_dir,
            page_at_bytes: page_at_bytes(&config),
        },
        recovered: Arc::new(std::sync::Barrier::new(shards)),
        recovered_max_id: Arc::new(std::sync::atomic::AtomicU64::new(loaded_max_id)),
        recovered_commits: Arc::default(),
        openwire_client_ids: Arc::default(),
        temporary,
        in_flight: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        drained: Arc::new(AtomicUsize::new(0)),
        fault_tx_crash: shard::TxCrash::from_env(),
        fault_panic_destination: std::env::var("BROKK_FAULT_PANIC_DESTINATION")
            .ok()
            .and_then(|d| Destination::parse(&d).ok()),
    };
    if executors.starts.len() != shards {
        // The data directory records another shard count than configured:
        // the executors started for the configured one go.
        executors.stop();
        executors = Executors::spawn(shards)?;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut controls = Vec::new();
    let Executors {
        starts,
        threads,
        mesh: _mesh,
    } = executors;
    for (id, (start, listeners)) in starts.into_iter().zip(listeners).enumerate() {
        let (ctl_tx, ctl_rx) = flume::unbounded();
        controls.push(ctl_tx);
        start
            .send(shard::ShardStart {
                shared: shared.clone(),
                listeners,
                control: ctl_rx,
                ready: ready_tx.clone(),
            })
            .map_err(|_| anyhow!("shard {id} ended before it was started"))?;
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow!(e)),
            Err(_) => return Err(anyhow!("a shard failed to start")),
        }
    }
    drop(port_hold);
    drop(tls_port_hold);
    drop(openwire_port_hold);
    if let Some(db) = &shared_db {
        db.forget_loaded();
    }
    let _ = state.controls.set(controls.clone());
    let _ = controls_slot.set(controls);
    role.set(Role::Master);
    // From the lock or lease won to serving: the broker's part of a failover.
    let takeover_ms = role
        .recovering_since()
        .map(|t| t.elapsed().as_secs_f64() * 1000.0);
    info!(role = "master", %stomp, %openwire, stomp_tls = ?stomp_tls, admin = %admin_addr, shards, mode = ?config.store.mode, takeover_ms, "serving");
    // A line for scripts and tests that start brokk on port 0.
    let mut tls_field = stomp_tls.map_or(String::new(), |a| format!(" stomp_tls={a}"));
    if let Some(a) = admin_tls_addr {
        tls_field.push_str(&format!(" admin_tls={a}"));
    }
    println!(
        "brokk listening stomp={stomp} openwire={openwire} admin={admin_addr} shards={shards}{tls_field}"
    );
    for t in threads {
        t.join()
            .map_err(|e| anyhow!("shard thread failed: {e:?}"))?;
    }
    if config.store.mode == StoreMode::Zk {
        crate::store::replicated::log_file::flush_before_exit(Duration::from_secs(2));
        let _ = side::block_on(crate::ha::zk::leave());
    }
    info!("stopped");
    Ok(())
}

/// The shards' executors, started ahead of the takeover (see `shard::run`):
/// each waits for its [`shard::ShardStart`].
struct Executors {
    starts: Vec<flume::Sender<shard::ShardStart>>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    /// Kept until the threads are joined, as before they were started
    /// early: the builder is shared with them.
    mesh: Option<MeshBuilder<shard::Batch, glommio::channels::channel_mesh::Full>>,
}

/// How long the executors may take to start and join their mesh. A thread
/// that cannot start (no such CPU, no io_uring) ends without a word from
/// glommio, and its peers would wait in the mesh for it: fail the start
/// instead, before any lock or lease is taken.
const EXECUTORS_START: Duration = Duration::from_secs(10);

/// The CPUs this process may run on (its affinity mask: `taskset`,
/// systemd's `CPUAffinity=`, a container's cpuset), in order; shards are
/// pinned among these, never to a CPU the operator kept for something else
/// (a database on the same machine) or one the cpuset refuses.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and
    // sched_getaffinity writes at most the size it is given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let cpus: Vec<usize> = if unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0 {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        cpus
    }
}

impl Executors {
    fn spawn(shards: usize) -> Result<Executors> {
        let cpus = allowed_cpus();
        let mesh = (shards > 1).then(|| MeshBuilder::full(shards, shard::MESH_CHANNEL_BATCHES));
        let mut starts = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        let (joined_tx, joined) = std::sync::mpsc::channel();
        for id in 0..shards {
            let (start, started) = flume::bounded(1);
            let mesh = mesh.clone();
            let joined = joined_tx.clone();
            let cpu = cpus[id % cpus.len()];
            tracing::debug!(shard = id, cpu, "shard pinned");
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("brokk-shard-{id}"))
                // Registered DMA buffers: journal writes use their own
                // aligned buffers, so a small pool is enough.
                .io_memory(IO_MEMORY_BYTES)
                .spawn(move || shard::run(id, mesh, joined, started))
                .map_err(|e| anyhow!("cannot start shard {id}: {e}"))?;
            starts.push(start);
            threads.push(handle);
        }
        drop(joined_tx);
        let deadline = Instant::now() + EXECUTORS_START;
        for _ in 0..shards {
            let left = deadline.saturating_duration_since(Instant::now());
            match joined.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow!(e)),
                Err(_) => {
                    return Err(anyhow!(
                        "the shard threads did not start within {} s (a CPU this process may not use, or io_uring unavailable?)",
                        EXECUTORS_START.as_secs()
                    ))
                }
            }
        }
        Ok(Executors {
            starts,
            threads,
            mesh,
        })
    }

    /// Ends executors never started: they see their start dropped.
    fn stop(&mut self) {
        self.starts.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.mesh = None;
    }
}

/// `store.limit_bytes`, or less if the file system cannot hold that much
/// journal (as ActiveMQ resets a store limit larger than its disk): the
/// journal's room is the free space plus its segment files already there,
/// less the spare segments of every shard (the next roll's and the reserve,
/// see `journal::RESERVE_SEGMENTS`), which are made ahead of need and not
/// counted as used. Producers are then paused at the limit, before the file
/// system fills, with room left for the records consumers cause.
fn capped_store_limit(config: &Config, shards: usize) -> u64 {
    let dir = &config.store.dir;
    let seg = config.store.segment_size_bytes;
    let configured = config.store.limit_bytes;
    let (room, journal) = match journal::room_on_disk(dir, seg) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot measure the store's file system; store.limit_bytes is used as configured");
            return configured;
        }
    };
    let spares = (1 + journal::RESERVE_SEGMENTS) as u64;
    let room_cap = room.saturating_sub(shards as u64 * spares * seg) / seg * seg;
    // Never below one segment per shard plus one: every shard always holds
    // an active segment, so a lower limit would hold producers back for
    // good, even with everything acknowledged. Past the real room, the
    // ENOSPC handling pauses producers instead.
    let floor = (shards as u64 + 1) * seg;
    let cap = room_cap.max(floor);
    if cap >= configured {
        return configured;
    }
    warn!(
        dir = %dir.display(),
        configured_limit_bytes = configured,
        limit_bytes = cap,
        journal_bytes = journal,
        available_bytes = room - journal,
        "store.limit_bytes is more than the file system can hold (free space plus the journal's files, less the spare segments of every shard); using the smaller limit"
    );
    if room_cap < floor {
        warn!(
            limit_bytes = cap,
            "the store's file system has almost no room for new journal segments: persistent producers pause whenever a segment cannot be made, until acknowledgements free one or space is freed"
        );
    }
    cap
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
                    None => {
                        // zk mode: the member node goes now, not a
                        // session timeout later (no-op in other modes).
                        crate::store::replicated::log_file::flush_before_exit(Duration::from_secs(
                            2,
                        ));
                        let _ = side::block_on(crate::ha::zk::leave());
                        std::process::exit(0)
                    }
                }
            }
        })?;
    Ok(())
}

/// Becomes the master of a database-mode store: connects (a wrong URL or
/// password is an error naming `store.url`), creates the tables if asked,
/// takes the lease (waiting as standby while another broker holds it),
/// keeps it on the side runtime (losing it ends the process, exit 3), reads
/// the tables back and starts the writer.
/// What an INSERT of one message needs beyond its frame: the statement,
/// the other columns, the encoding's header and properties' framing.
const DB_STATEMENT_OVERHEAD: u64 = 64 * 1024;

/// Returns the shared state and the database's statement size limit.
fn db_take_over(
    config: &Config,
    role: &Arc<RoleCell>,
    (stomp, admin): (SocketAddr, SocketAddr),
    usage: Arc<StoreUsage>,
    open_ports: &mut dyn FnMut() -> Result<()>,
) -> Result<(db_shard::DbShared, Option<u64>, std::path::PathBuf)> {
    use crate::ha::db_lease;
    use crate::store::sql::{self, writer};
    let url = config.store.url.clone().unwrap_or_default();
    let pool = config.store.pool_size;
    let db = {
        let url = url.clone();
        let idle = sql::conn::idle_transaction_limit(Duration::from_millis(config.ha.lease_ms));
        side::block_on(async move { sql::conn::connect(&url, pool, idle).await })??
    };
    let db = Arc::new(db);
    let overlap = {
        let db = db.clone();
        // At start, not on the failover's path; the least of a few.
        let round_trip = side::block_on(async move { sql::conn::round_trip(&db).await })?;
        let overlap = config.store.overlap.decide(
            config.store.pool_size,
            config.shard_count(),
            round_trip.unwrap_or_default(),
        );
        info!(
            round_trip_us = round_trip.map_or(0, |d| d.as_micros() as u64),
            overlap, "database round trip measured"
        );
        if !overlap && config.store.overlap.wanted(round_trip.unwrap_or_default()) {
            warn!(
                pool_size = config.store.pool_size,
                shards = config.shard_count(),
                "write transactions do not overlap: that needs store.pool_size {} or more",
                2 * config.shard_count() + 1
            );
        }
        overlap
    };
    if config.store.create_tables {
        let db = db.clone();
        let indexes = config.store.indexes;
        side::block_on(async move { sql::schema::create_tables(&db, indexes).await })?
            .context("cannot create the tables")?;
    } else {
        let db = db.clone();
        side::block_on(async move { sql::schema::check_tables(&db).await })??;
    }
    // Read now, not after the takeover's read of the tables: on MariaDB it
    // is a statement (and maybe a connection) on the failover's path.
    let max_statement = {
        let db = db.clone();
        side::block_on(async move { db.max_statement_bytes().await })?
            .context("cannot read the database's statement size limit")?
    };
    let token = sql::LeaseToken(epoch::owner_id());
    let lease_cfg = db_lease::LeaseConfig::new(&url, Duration::from_millis(config.ha.lease_ms));
    // Receipts and responses go out only while the lease is valid on our
    // side (`ha::fence`, opened by the take and by every renewal): a master
    // paused past its lease (SIGSTOP, a suspended host) and continued
    // answers nothing before its keeper finds the lease taken. Commits are
    // fenced by the database anyway; this covers what needs none.
    fence::arm();
    // A standby outlives database outages (a restart, a network cut): it
    // tries again until it holds the lease. Only the statements above
    // fail the start (a wrong URL or password, the tables, the limit).
    let lease = {
        let token = token.clone();
        let cfg = lease_cfg.clone();
        let db = db.clone();
        let connections = takeover_connections(config, overlap);
        side::block_on(async move {
            // While it waits, a PostgreSQL standby keeps the messages'
            // index swept, so that its takeover reads only live rows
            // (see `store::sql::sweep`); dropped once the lease is ours.
            let sweep = sql::sweep::while_standby(&db, connections);
            tokio::pin!(sweep);
            let mut said_standby = false;
            let mut warn_at = Instant::now();
            loop {
                let waiting = || {
                    if !std::mem::replace(&mut said_standby, true) {
                        info!(
                            role = "standby",
                            "another broker holds the lease; waiting as standby"
                        );
                        println!("brokk standby stomp={stomp} admin={admin}");
                    }
                };
                let acquired = tokio::select! {
                    biased;
                    acquired = db_lease::acquire(&cfg, &token, waiting) => acquired,
                    never = &mut sweep => match never {},
                };
                match acquired {
                    Ok(lease) => return lease,
                    Err(e) => {
                        if Instant::now() >= warn_at {
                            warn!(role = "standby", error = %e, "cannot take or wait for the lease; trying again");
                            warn_at = Instant::now() + Duration::from_secs(30);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })?
    };
    role.set(Role::Recovering);
    let span = ha_span(Role::Recovering, 0);
    let _in = span.enter();
    open_ports()?;
    info!(url = %sql::redact(&url), "lease taken; reading the tables");
    let mut lease = lease;
    let keeper_role = role.clone();
    side::handle()?.spawn(async move {
        let lost = db_lease::keep(&mut lease).await;
        // As in file mode: `_exit`, no exit handlers while the shards
        // still serve (and this thread's destructors never run).
        fenced(&keeper_role, 0, &format!("lost the master lease: {lost}"));
    });
    let spool_dir = fresh_spool_dir(&config.store.spool_dir())?;
    // Past the paging point, loaded bodies wait in a file, not in memory
    // (see `store::sql::spill`): a table larger than memory is taken over.
    let spill = sql::spill::Spill::create(spool_dir.join("takeover.spill"), page_at_bytes(config))
        .context("cannot make the takeover's spill file (store.spool_dir)")?;
    let read_started = Instant::now();
    let mut loaded = {
        let db = db.clone();
        let connections = writer_connections(config, overlap);
        side::block_on(async move {
            // The writer lanes' connections open while the tables are read;
            // a login that hangs must not hold the takeover up once the
            // tables are read (dropping a half-warmed connection is safe).
            let mut warm = tokio::spawn({
                let db = db.clone();
                async move { sql::write::warm(&db, connections).await }
            });
            let loaded = sql::load::load(&db, Some(spill)).await;
            if tokio::time::timeout(Duration::from_millis(100), &mut warm)
                .await
                .is_err()
            {
                warm.abort();
            }
            loaded
        })?
        .context("cannot read the tables")?
    };
    in_send_order(&mut loaded);
    info!(
        messages = loaded.messages.len(),
        subscriptions = loaded.subs.len(),
        spilled = loaded.spill.as_ref().map_or(0, |s| s.spilled_rows()),
        read_ms = read_started.elapsed().as_secs_f64() * 1000.0,
        "tables read"
    );
    let writer = writer::spawn(
        &side::handle()?,
        db.clone(),
        token,
        writer::WriterConfig {
            max_rows: config.store.batch_max_rows,
            linger: Duration::from_micros(config.store.linger_us),
            overlap,
        },
        usage,
        config.shard_count(),
    );
    Ok((
        db_shard::DbShared::new(writer, loaded, overlap),
        max_statement,
        spool_dir,
    ))
}

/// The writer's connections a takeover opens while it reads the tables:
/// one a lane, two when lanes overlap. One connection stays for the
/// reads: never wait on each other.
fn writer_connections(config: &Config, overlap: bool) -> usize {
    let per_lane = if overlap { 2 } else { 1 };
    (config.shard_count() * per_lane).min(config.store.pool_size.saturating_sub(1))
}

/// The connections a takeover uses at once: the reads' and the writer's.
fn takeover_connections(config: &Config, overlap: bool) -> usize {
    writer_connections(config, overlap) + 1
}

/// Puts the rows read at a takeover in send order. Ids carry the issuing
/// shard in their top bits, so ID order would put a producer's messages
/// issued on a lower shard (after it reconnected to another broker) before
/// its earlier ones. Counters start above every stored id at each takeover
/// (see `message_ids`), so by counter what came after a failover sorts
/// after what came before.
fn in_send_order(loaded: &mut crate::store::sql::Loaded) {
    loaded
        .messages
        .sort_by_key(|m| (crate::broker::message_ids::counter(m.id as u64), m.id));
}

/// Raises the epoch, waiting out a full file system (a copy-on-write one
/// has no room even for the small epoch file): exiting would only hand the
/// same full volume to the standby, and start again.
fn raise_epoch(dir: &std::path::Path, own_wait: u64) -> Result<epoch::Raised> {
    let owner = epoch::owner_id();
    let mut warn_at = Instant::now();
    // The predecessor as first found: a failed attempt may have left our
    // own record in place (renamed, then the directory fsync failed), and
    // its takeover wait is the predecessor's to choose, not ours.
    let first_previous = epoch::read(dir).ok().flatten();
    loop {
        match epoch::raise(dir, &owner, own_wait) {
            Ok(mut r) => {
                if r.previous.as_ref().is_some_and(|p| p.owner == owner) {
                    r.previous = first_previous;
                }
                return Ok(r);
            }
            Err(e) if is_no_space(&e) => {
                if Instant::now() >= warn_at {
                    warn!(dir = %dir.display(), error = format!("{e:#}"),
                        "no space to raise the epoch at takeover; waiting for space to be freed");
                    warn_at += shard::START_SPACE_WARN;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.context(format!("cannot raise the epoch in {}", dir.display()))),
        }
    }
}

/// Whether an error's cause is a full file system.
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| journal::is_no_space_kind(io.kind()))
    })
}

/// Makes this broker the master the store knows (file mode), before
/// anything reads the journal: raises the epoch, starts the keep-alive
/// thread, then waits until any previous master - one that lost the lock
/// without noticing, paused or cut off - can no longer write to the journal
/// or send a receipt: its last good check is older than its fencing
/// interval by then, and its writes in flight have had the margin to land.
fn take_over(
    lock: FileLock,
    dir: &std::path::Path,
    ha: &HaConfig,
    role: &Arc<RoleCell>,
) -> Result<()> {
    // Armed before the raise: from here on, journal writes and receipts
    // need a good check.
    fence::arm();
    let own_wait = ha.takeover_wait_ms();
    let raised = raise_epoch(dir, own_wait)?;
    fence::set_epoch(raised.ours.epoch);
    let span = ha_span(Role::Recovering, raised.ours.epoch);
    let _in = span.enter();
    let validity = Duration::from_millis(ha.lock_keepalive_ms);
    let monitor = Monitor::new(lock, dir.to_path_buf(), raised.ours.clone());
    let checked_at = fence::now_ns();
    match monitor.check() {
        Verdict::Master => fence::renew(checked_at, validity),
        Verdict::Lost(reason) => fenced(role, monitor.epoch(), &reason),
        Verdict::Unknown(e) => return Err(e.context("cannot verify the epoch just raised")),
    }
    // A predecessor configured with a longer interval gets its own wait.
    let previous_wait = raised.previous.as_ref().map_or(0, |p| p.takeover_wait_ms);
    if previous_wait > own_wait {
        warn!(
            previous_wait_ms = previous_wait,
            own_wait_ms = own_wait,
            "the previous master asked for a longer takeover wait; using it (brokers sharing a directory should share their [ha] settings)"
        );
    }
    let wait = Duration::from_millis(own_wait.max(previous_wait));
    spawn_lock_keepalive(monitor, role.clone(), validity, wait, checked_at)?;
    info!(
        previous = ?raised.previous.as_ref().map(|p| (p.epoch, &p.owner)),
        wait_ms = wait.as_millis() as u64,
        "epoch raised; waiting out the previous master's fencing interval before reading the journal"
    );
    std::thread::sleep(wait);
    Ok(())
}

/// Re-checks the lock and the epoch four times per fencing interval
/// (`validity`), and renews the shards' gate after each good check. If
/// another broker took either, this one is fenced: it stops at once,
/// without draining. A check that cannot be completed renews nothing (the
/// gate closes by itself); after `give_up` without a good check the broker
/// gives way as well, since it cannot show that it is master.
fn spawn_lock_keepalive(
    monitor: Monitor,
    role: Arc<RoleCell>,
    validity: Duration,
    give_up: Duration,
    mut last_good: u64,
) -> Result<()> {
    let every = validity / 4;
    // Test-only fault switch: the answer of every check arrives this much
    // later, as from a slow NFS server, so that tests can resume a paused
    // master whose verdict is not in yet (wherever the pause hit the loop).
    let fault_delay = std::env::var("BROKK_FAULT_CHECK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    std::thread::Builder::new()
        .name("brokk-lock".into())
        .spawn(move || {
            let mut shown = role.get();
            let mut span = ha_span(shown, monitor.epoch());
            loop {
                std::thread::sleep(every);
                if role.get() != shown {
                    shown = role.get();
                    span = ha_span(shown, monitor.epoch());
                }
                let _in = span.enter();
                let started = fence::now_ns();
                let verdict = monitor.check();
                if let Some(d) = fault_delay {
                    std::thread::sleep(d);
                }
                match verdict {
                    Verdict::Master => {
                        fence::renew(started, validity);
                        last_good = started;
                    }
                    Verdict::Lost(reason) => fenced(&role, monitor.epoch(), &reason),
                    Verdict::Unknown(e) => {
                        let unverified = Duration::from_nanos(started.saturating_sub(last_good));
                        if unverified > give_up {
                            fenced(
                                &role,
                                monitor.epoch(),
                                &format!(
                                    "no good mastership check for {} ms: {e:#}",
                                    unverified.as_millis()
                                ),
                            );
                        }
                        warn!(error = format!("{e:#}"), "cannot verify mastership; journal writes and receipts hold until a check succeeds");
                    }
                }
            }
        })
        .context("cannot start the lock keep-alive thread")?;
    Ok(())
}

/// The span of mastership events: which role, which epoch.
fn ha_span(role: Role, epoch: u64) -> tracing::Span {
    tracing::info_span!(parent: None, "ha", role = role.as_str(), epoch)
}

/// Another broker is (or may be) master: close the gate first, so that no
/// shard writes or releases anything more, then exit at once. `_exit`: no
/// exit handlers run while the shard threads still do.
fn fenced(role: &RoleCell, epoch: u64, reason: &str) -> ! {
    fence::revoke();
    role.set(Role::Fenced);
    let _in = ha_span(Role::Fenced, epoch).entered();
    error!(reason, "lost mastership; stopping now, without draining");
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(EXIT_FENCED) }
}

/// Exit code of a broker that lost mastership.
pub const EXIT_FENCED: i32 = 3;

/// Held bytes at which queues start paging (`limits.page_at_percent` of
/// `limits.memory_limit_bytes`).
fn page_at_bytes(config: &Config) -> usize {
    config.limits.memory_limit_bytes / 100 * usize::from(config.limits.page_at_percent)
}

/// Whether a spool entry (`<pid>-<nanos>`) belongs to a live process
/// other than this one.
fn owner_alive(name: &std::ffi::OsStr) -> bool {
    let Some(pid) = name
        .to_str()
        .and_then(|n| n.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
    else {
        return false;
    };
    if pid <= 0 || pid == std::process::id() as i32 {
        return false;
    }
    // Signal 0: only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's own spool directory under `base`, after removing what
/// earlier processes left there (worthless: their stores hold it; a live
/// process's is left alone). Its own
/// name, so that an old master that has not yet noticed it lost its lock
/// (a paused process) never writes into the files of the new one.
fn fresh_spool_dir(base: &std::path::Path) -> Result<std::path::PathBuf> {
    let what = || {
        format!(
            "cannot prepare the spool directory {} (store.spool_dir)",
            base.display()
        )
    };
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let p = e.path();
            // Another broker's on this machine (a standby started beside
            // its master on one spool directory): not ours to remove; it
            // may be taking over with it right now.
            if owner_alive(&e.file_name()) {
                continue;
            }
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = gone {
                warn!(path = %p.display(), error = %err, "cannot remove an old spool");
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(what)?;
    Ok(dir)
}

#[cfg(test)]
mod spool_owner_tests {
    use super::owner_alive;
    use std::ffi::OsStr;

    #[test]
    fn a_live_brokers_spool_is_left_and_a_dead_ones_goes() {
        // pid 1 always lives; this process's own is not "another's".
        assert!(owner_alive(OsStr::new("1-0000abcd")));
        let me = format!("{}-00000001", std::process::id());
        assert!(!owner_alive(OsStr::new(&me)));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!owner_alive(OsStr::new(&format!("{dead}-00000001"))));
        assert!(!owner_alive(OsStr::new("takeover.spill")));
        assert!(!owner_alive(OsStr::new("x-1")));
    }
}
