//! `bench`: a STOMP and OpenWire load generator. Producers send sequenced,
//! timestamped messages with a window of outstanding receipts; consumers
//! check that every message arrives exactly once. Prints throughput, HDR
//! latency percentiles, losses and duplicates, then one JSON line.

mod accounting;
mod audit;
mod cluster;
mod compare;
mod db_floor;
mod drain;
mod openwire;
mod openwire_load;
mod producer;
mod relay;
mod report;
mod sink;
mod stomp;
mod tls;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use hdrhistogram::Histogram;

use audit::Audit;
use stomp::Conn;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "STOMP and OpenWire load generator: throughput, latency percentiles, loss audit",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The wire protocol: stomp, or openwire (ActiveMQ's binary protocol,
    /// spoken through Brokk's own codec: persistent sends ask a Response,
    /// non-persistent ones are acknowledged by ProducerAcks, consumers send
    /// cumulative Standard acks). With --mode, bench connects to the
    /// brokers' OpenWire listeners.
    #[arg(long, value_enum, default_value_t = Protocol::Stomp)]
    protocol: Protocol,
    /// Failover list of brokers (any STOMP broker, or any OpenWire broker
    /// with --protocol openwire); on a broken connection the next one is
    /// tried. Default 127.0.0.1:61613 (OpenWire: 127.0.0.1:61616) unless
    /// --mode starts brokers.
    #[arg(long, value_delimiter = ',')]
    brokers: Option<Vec<String>>,
    /// Start Brokk itself in this mode (memory: one broker; file: a
    /// master/standby pair on one data directory; mysql/postgres: a pair on
    /// one fresh database; zk: three brokers elected through the local
    /// ZooKeeper ensemble, each with its own data directory) when --brokers
    /// is not given.
    #[arg(long, value_enum)]
    mode: Option<cluster::Mode>,
    /// Shards for the brokers bench starts.
    #[arg(long)]
    shards: Option<usize>,
    /// With --mode zk: when a persistent message is receipted (the
    /// brokers' store.sync; default quorum_mem, theirs).
    #[arg(long, value_enum)]
    sync: Option<cluster::SyncMode>,
    /// With --mode mysql|postgres: use this database instead of a fresh one
    /// on the local server (started through ops/services.sh).
    #[arg(long)]
    db_url: Option<String>,
    /// With --mode mysql|postgres and no --db-url: the brokers reach the
    /// database through a relay that holds bytes back half of this in
    /// each direction, as if it ran on another host.
    #[arg(long)]
    db_rtt_us: Option<u64>,
    /// SIGKILL the current master once this many messages are receipted
    /// (needs --mode file, mysql, postgres or zk without --brokers); reports
    /// the failover gap.
    #[arg(long)]
    kill_master_after: Option<u64>,
    /// SIGKILL the current master this many seconds into the run.
    #[arg(long, conflicts_with = "kill_master_after")]
    kill_master_at: Option<f64>,
    /// Kill the master this many times, the same interval apart (the killed
    /// broker is restarted and rejoins as standby).
    #[arg(long, default_value_t = 1)]
    kills: u32,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer connections (0: produce only; no end-to-end figures).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Messages in total, split evenly across producers.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Produce for this many seconds instead of a message count.
    #[arg(long, conflicts_with = "messages")]
    duration: Option<f64>,
    /// Spread messages over this many queues (DEST.0, DEST.1, ...); consumers
    /// subscribe to all of them.
    #[arg(long, default_value_t = 1)]
    destinations: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value = "/queue/bench")]
    destination: String,
    /// Send persistent messages (STOMP: `persistent:true`; OpenWire:
    /// JMSDeliveryMode PERSISTENT, each send answered by a Response).
    #[arg(long)]
    persistent: bool,
    /// Outstanding receipts allowed per producer (OpenWire: Responses to
    /// persistent sends, ProducerAcks to non-persistent ones).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Open loop: send this many messages per second in total, on a fixed
    /// schedule; latency counts from the scheduled send time, so a stall is
    /// not hidden (no coordinated omission). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Consumer prefetch (STOMP: `activemq.prefetchSize`; OpenWire:
    /// ConsumerInfo's prefetch size).
    #[arg(long, default_value_t = 1000)]
    prefetch: u32,
    /// Give up waiting for consumers after this many seconds without progress.
    #[arg(long, default_value_t = 10)]
    idle_timeout: u64,
    /// Reconnect as ActiveMQ's failover transport does by default: the
    /// pause after a failed attempt starts at 10 ms and doubles each time
    /// (useExponentialBackOff, up to 30 s). Without it every pause is 10 ms.
    #[arg(long)]
    reconnect_backoff: bool,
    /// Write summary.json and HDR percentile files (.hgrm) here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Connect over TLS (STOMP+SSL). With --mode, bench starts the brokers
    /// with a TLS listener and a certificate of its own, and trusts it.
    #[arg(long)]
    tls: bool,
    /// With --tls: the CA certificate (PEM) that signed the brokers' certificates.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls: accept any server certificate (benchmarks only).
    #[arg(long)]
    tls_insecure: bool,
    #[arg(long)]
    login: Option<String>,
    #[arg(long, default_value = "")]
    passcode: String,
    /// The STOMP CONNECT `host` header (the virtual host; RabbitMQ's STOMP
    /// plugin wants `/`). Default: the broker's address as given.
    #[arg(long, value_name = "HOST")]
    vhost: Option<String>,
    /// Consumers only: drain what the destination already holds (sent by an
    /// earlier run, e.g. with --consumers 0) and report the drain rate;
    /// stops after --idle-timeout seconds without a message.
    #[arg(long)]
    drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Stomp,
    Openwire,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Sub {
    /// A trivial STOMP sink (answers receipts, delivers nothing): bench's own ceiling.
    Sink {
        #[arg(long, default_value = "127.0.0.1:61699")]
        listen: String,
    },
    /// Run the same load against each mode and write one comparison
    /// (compare.json, compare.html); e.g.
    /// `bench compare --modes memory,file --out /tmp/cmp -- --producers 64 --persistent`.
    Compare {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "memory,file,mysql,postgres,zk"
        )]
        modes: Vec<String>,
        #[arg(long, default_value = "bench-compare")]
        out: std::path::PathBuf,
        /// Load options passed to every run (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        load: Vec<String>,
    },
    /// The database alone under a database-mode master's writes at a fixed
    /// rate (no broker, no clients): the least a receipt could take through
    /// it on this machine; e.g. `bench db-floor --mode mysql --rate 24400`.
    DbFloor(db_floor::FloorArgs),
}

struct Shared {
    args: Args,
    /// `--tls`: the client side of every connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    brokers: Vec<String>,
    receipted_total: AtomicU64,
    /// Per broker: time (ns since start) of the last receipt it gave.
    last_receipt_ns: Vec<AtomicU64>,
    /// Per broker: first receipt since the last kill (0 = none yet).
    first_since_kill: Vec<AtomicU64>,
    /// Everything is done: the progress line stops.
    finished: AtomicBool,
    /// (seconds, receipted, consumed) every 250 ms.
    timeline: Mutex<Vec<(f64, u64, u64)>>,
    start: Instant,
    audit: Audit,
    producers_done: AtomicBool,
    /// `--kill-master-at` kills not yet over: `--duration` does not end the
    /// run before them (a slow failover on a busy machine would otherwise
    /// leave the kills asked for undone).
    kills_pending: AtomicBool,
    consumed: AtomicU64,
    send_receipt: Mutex<Histogram<u64>>,
    /// A coarse copy for the progress line, merged from producers now and then.
    send_receipt_live: Mutex<Histogram<u64>>,
    end_to_end: Mutex<Histogram<u64>>,
    /// Per producer: messages sent, and how many of the first were receipted.
    sent: Vec<AtomicU64>,
    receipted_upto: Vec<AtomicU64>,
    reconnects: AtomicU64,
    last_consumed_ns: AtomicU64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Pause between connection attempts through the failover list: ActiveMQ's
/// failover transport starts at 10 ms (initialReconnectDelay). A longer
/// pause would be counted in the failover gap and hide the broker's part.
const RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// ActiveMQ's maxReconnectDelay.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// The pauses of one client between failed connection attempts: 10 ms
/// each, or, with `--reconnect-backoff`, doubling from 10 ms.
struct Reconnect {
    backoff: bool,
    next: Duration,
}

impl Reconnect {
    fn new(backoff: bool) -> Reconnect {
        Reconnect {
            backoff,
            next: RECONNECT_DELAY,
        }
    }

    /// Sleeps after a failed attempt.
    fn pause(&mut self) {
        std::thread::sleep(self.next);
        if self.backoff {
            self.next = (self.next * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// A connection was made: the next failure starts over.
    fn connected(&mut self) {
        self.next = RECONNECT_DELAY;
    }
}

fn per_producer(messages: u64, producers: usize) -> Vec<u64> {
    let base = messages / producers as u64;
    let extra = messages % producers as u64;
    (0..producers as u64)
        .map(|p| base + u64::from(p < extra))
        .collect()
}

fn main() {
    let args = Args::parse();
    let result = match &args.command {
        Some(Sub::Sink { listen }) => sink::run(&listen.clone()),
        Some(Sub::Compare { modes, out, load }) => compare::run(modes, out, load),
        Some(Sub::DbFloor(floor)) => db_floor::run(floor),
        None => run(args),
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if args.protocol == Protocol::Openwire && (args.tls || args.drain) {
        bail!("--protocol openwire does not support --tls (Brokk has no OpenWire TLS listener yet) or --drain");
    }
    if args.drain {
        if args.mode.is_some() || args.tls {
            bail!("--drain needs --brokers (the broker holding the backlog) and no --tls");
        }
        let brokers = args
            .brokers
            .clone()
            .unwrap_or_else(|| vec!["127.0.0.1:61613".to_string()]);
        return drain::run(&args, brokers);
    }
    if args.producers == 0 || args.window == 0 {
        bail!("--producers and --window must be at least 1");
    }
    if args.db_rtt_us.is_some()
        && (!matches!(
            args.mode,
            Some(cluster::Mode::Mysql | cluster::Mode::Postgres)
        ) || args.brokers.is_some()
            || args.db_url.is_some())
    {
        bail!("--db-rtt-us needs --mode mysql or postgres, without --brokers or --db-url");
    }
    if args.sync.is_some() && (args.mode != Some(cluster::Mode::Zk) || args.brokers.is_some()) {
        bail!("--sync needs --mode zk and no --brokers");
    }
    let cluster = match (&args.brokers, args.mode) {
        (None, Some(mode)) => Some(Arc::new(Mutex::new(cluster::Cluster::start(
            mode,
            &cluster::Options {
                shards: args.shards,
                db_url: args.db_url.clone(),
                db_rtt: args.db_rtt_us.map(Duration::from_micros),
                tls: args.tls,
                sync: args.sync,
            },
        )?))),
        _ => None,
    };
    // Declared after the cluster, so dropped (stopped) before it.
    let _supervisor = cluster.as_ref().map(Supervisor::start);
    let trigger = match (args.kill_master_after, args.kill_master_at) {
        (Some(n), _) => Some(KillTrigger::Receipts(n.max(1))),
        (None, Some(t)) if t.is_finite() && t > 0.0 => Some(KillTrigger::Seconds(t)),
        (None, Some(t)) => bail!("--kill-master-at must be a number of seconds above 0, not {t}"),
        (None, None) => None,
    };
    if trigger.is_some()
        && (!matches!(
            args.mode,
            Some(
                cluster::Mode::File
                    | cluster::Mode::Mysql
                    | cluster::Mode::Postgres
                    | cluster::Mode::Zk
            )
        ) || args.brokers.is_some())
    {
        bail!("--kill-master-after/--kill-master-at need --mode file, mysql, postgres or zk and no --brokers (bench must start the brokers to kill their master)");
    }
    let brokers = match (&args.brokers, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .brokers(args.protocol),
        (None, None) if args.protocol == Protocol::Openwire => {
            vec!["127.0.0.1:61616".to_string()]
        }
        (None, None) => vec!["127.0.0.1:61613".to_string()],
    };
    let tls = match (args.tls, &cluster) {
        (false, _) => None,
        (true, Some(c)) if args.tls_ca.is_none() && !args.tls_insecure => {
            let ca = c.lock().unwrap_or_else(|e| e.into_inner()).tls_ca();
            Some(tls::client_config(ca.as_deref(), false)?)
        }
        (true, _) => Some(tls::client_config(
            args.tls_ca.as_deref(),
            args.tls_insecure,
        )?),
    };
    if args.destinations == 0 || args.kills == 0 {
        bail!("--destinations and --kills must be at least 1");
    }
    let counts: Vec<u64> = match args.duration {
        Some(_) => vec![u64::MAX; args.producers],
        None => per_producer(args.messages, args.producers),
    };
    let shared = Arc::new(Shared {
        tls,
        receipted_total: AtomicU64::new(0),
        last_receipt_ns: brokers.iter().map(|_| AtomicU64::new(0)).collect(),
        first_since_kill: brokers.iter().map(|_| AtomicU64::new(0)).collect(),
        finished: AtomicBool::new(false),
        timeline: Mutex::new(Vec::new()),
        brokers,
        audit: Audit::new(&counts),
        sent: counts.iter().map(|_| AtomicU64::new(0)).collect(),
        receipted_upto: counts.iter().map(|_| AtomicU64::new(0)).collect(),
        args: args.clone(),
        start: Instant::now(),
        producers_done: AtomicBool::new(false),
        kills_pending: AtomicBool::new(
            cluster.is_some() && matches!(trigger, Some(KillTrigger::Seconds(_))),
        ),
        consumed: AtomicU64::new(0),
        send_receipt: Mutex::new(histogram()),
        send_receipt_live: Mutex::new(histogram()),
        end_to_end: Mutex::new(histogram()),
        reconnects: AtomicU64::new(0),
        last_consumed_ns: AtomicU64::new(0),
    });
    let ready = Arc::new(std::sync::Barrier::new(args.consumers + 1));
    let consumers: Vec<_> = (0..args.consumers)
        .map(|i| {
            let s = shared.clone();
            let r = ready.clone();
            match args.protocol {
                Protocol::Stomp => std::thread::spawn(move || consumer(i, s, r)),
                Protocol::Openwire => std::thread::spawn(move || openwire_load::consumer(i, s, r)),
            }
        })
        .collect();
    ready.wait();
    let t0 = Instant::now();
    let killer = match (trigger, &cluster) {
        (Some(t), Some(c)) => {
            let (s, c, kills) = (shared.clone(), c.clone(), args.kills);
            Some(std::thread::spawn(move || {
                kill_masters(t, kills, &s, &c, t0)
            }))
        }
        _ => None,
    };
    if let Some(c) = &cluster {
        stop_on_ctrl_c(Arc::downgrade(c))?;
    }
    let progress = {
        let s = shared.clone();
        std::thread::spawn(move || show_progress(&s, t0))
    };
    let producers: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(p, &n)| {
            let s = shared.clone();
            match args.protocol {
                Protocol::Stomp => {
                    std::thread::spawn(move || producer::run::<stomp::Producer>(p, n, s))
                }
                Protocol::Openwire => {
                    std::thread::spawn(move || producer::run::<openwire_load::Producer>(p, n, s))
                }
            }
        })
        .collect();
    for p in producers {
        match p.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("bench: producer failed: {e:#}"),
            Err(_) => eprintln!("bench: producer panicked"),
        }
    }
    let produce_secs = t0.elapsed().as_secs_f64();
    shared.producers_done.store(true, Ordering::SeqCst);
    let failover = killer.and_then(|k| k.join().ok()).unwrap_or_default();
    for c in consumers {
        if let Ok(Err(e)) = c.join() {
            eprintln!("bench: consumer failed: {e:#}");
        }
    }
    shared.finished.store(true, Ordering::SeqCst);
    let _ = progress.join();
    let consumed_at = shared.last_consumed_ns.load(Ordering::SeqCst);
    let total_secs = if args.consumers > 0 && consumed_at > 0 {
        (Duration::from_nanos(consumed_at).as_secs_f64() - (t0 - shared.start).as_secs_f64())
            .max(produce_secs)
    } else {
        produce_secs
    };
    let restarts = cluster
        .as_ref()
        .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).restarts());
    report(&shared, produce_secs, total_secs, failover, restarts)
}

/// Restarts the brokers bench started when they exit by themselves (a zk
/// master that lost its quorum exits 3), as systemd's `Restart=always`
/// does; stops when dropped.
struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn start(cluster: &Arc<Mutex<cluster::Cluster>>) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(cluster);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    let Some(c) = weak.upgrade() else { return };
                    c.lock().unwrap_or_else(|e| e.into_inner()).restart_exited();
                }
            })
        };
        Supervisor {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one master kill looked like from the clients' side.
#[derive(Debug, Clone)]
struct Failover {
    /// Last receipt from the old master to the first from the new one.
    gap_ms: Option<f64>,
    /// From SIGKILL to the standby announcing it serves.
    new_master_ms: Option<f64>,
    /// The old master's last receipt came this long before the SIGKILL
    /// (a commit under way when it died stretches the gap from the front).
    quiet_before_kill_ms: Option<f64>,
    /// The new master's first receipt came this long after it announced
    /// it serves (reconnects, the resent window, its first commit).
    first_receipt_after_serving_ms: Option<f64>,
    killed: String,
    /// When the SIGKILL was sent, seconds into the run (the time base of
    /// the throughput-over-time samples).
    at_s: f64,
}

/// Ctrl-C: stop the brokers bench started (and remove their data), then exit.
fn stop_on_ctrl_c(cluster: std::sync::Weak<Mutex<cluster::Cluster>>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("bench: interrupted; stopping the brokers it started");
            // Weak: once the run is over the cluster is gone and nothing is left to stop.
            if let Some(c) = cluster.upgrade() {
                c.lock().unwrap_or_else(|e| e.into_inner()).kill_all();
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Samples progress every 250 ms for the report's throughput-over-time
/// plot and, when stderr is a terminal, shows a live line: elapsed,
/// receipts, rate over the last second, consumed, p99 so far.
fn show_progress(s: &Shared, t0: Instant) {
    use std::io::IsTerminal;
    let live = std::io::stderr().is_terminal();
    let mut last = (0.0f64, 0u64);
    let mut shown = Instant::now();
    while !s.finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        let t = t0.elapsed().as_secs_f64();
        let receipted = s.receipted_total.load(Ordering::Relaxed);
        let consumed = s.consumed.load(Ordering::Relaxed);
        if let Ok(mut tl) = s.timeline.lock() {
            tl.push((t, receipted, consumed));
        }
        if live && shown.elapsed() >= Duration::from_secs(1) {
            let p99 = s
                .send_receipt_live
                .lock()
                .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
                .unwrap_or(0.0);
            let rate = (receipted - last.1) as f64 / (t - last.0).max(1e-9);
            eprint!("\r  {t:>6.1} s  receipted {receipted:>10}  {rate:>9.0} msg/s  consumed {consumed:>10}  p99 so far {p99:>8.3} ms ");
            last = (t, receipted);
            shown = Instant::now();
        }
    }
    if live {
        eprintln!();
    }
}

/// When to kill the master: after every N receipts, or every T seconds.
#[derive(Debug, Clone, Copy)]
enum KillTrigger {
    Receipts(u64),
    Seconds(f64),
}

/// Kills the master `kills` times at the trigger's multiples, measuring each
/// failover, and restarts the killed broker so it rejoins as standby.
fn kill_masters(
    trigger: KillTrigger,
    kills: u32,
    s: &Shared,
    cluster: &Mutex<cluster::Cluster>,
    t0: Instant,
) -> Vec<Failover> {
    /// However the kills end, the run may then end.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _done = Done(&s.kills_pending);
    let mut out = Vec::new();
    for k in 1..=kills {
        loop {
            if s.producers_done.load(Ordering::Relaxed) {
                return out;
            }
            let due = match trigger {
                KillTrigger::Receipts(n) => {
                    s.receipted_total.load(Ordering::Relaxed) >= n * u64::from(k)
                }
                KillTrigger::Seconds(t) => t0.elapsed().as_secs_f64() >= t * f64::from(k),
            };
            if due {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let killed = cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill_master();
        let Ok((killed_at, old)) = killed else {
            return out;
        };
        // Receipts counted from here on mark the new master's first.
        for f in &s.first_since_kill {
            f.store(0, Ordering::SeqCst);
        }
        eprintln!("bench: kill {k}: SIGKILL to the master {}", s.brokers[old]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut new_master = None;
        while Instant::now() < deadline {
            if let Some(t) = cluster
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .new_master_since(killed_at)
            {
                new_master = Some((t - killed_at).as_secs_f64() * 1000.0);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let last_old = s.last_receipt_ns[old].load(Ordering::SeqCst);
        let first_new = loop {
            let f = (0..s.brokers.len())
                .filter(|&i| i != old)
                .map(|i| s.first_since_kill[i].load(Ordering::SeqCst))
                .filter(|&v| v != 0)
                .min();
            if let Some(f) = f {
                break Some(f);
            }
            if Instant::now() > deadline || s.producers_done.load(Ordering::Relaxed) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let killed_ns = killed_at.saturating_duration_since(s.start).as_nanos() as u64;
        out.push(Failover {
            gap_ms: first_new.map(|f| f.saturating_sub(last_old) as f64 / 1e6),
            new_master_ms: new_master,
            quiet_before_kill_ms: (last_old != 0)
                .then(|| killed_ns.saturating_sub(last_old) as f64 / 1e6),
            first_receipt_after_serving_ms: first_new
                .zip(new_master)
                .map(|(f, m)| (f as f64 - killed_ns as f64) / 1e6 - m),
            killed: s.brokers[old].clone(),
            at_s: killed_at.saturating_duration_since(t0).as_secs_f64(),
        });
        if let Err(e) = cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart_killed()
        {
            eprintln!("bench: cannot restart the killed broker: {e:#}");
        }
    }
    out
}

/// When each message of one producer is due in open-loop mode.
struct Schedule {
    start_ns: u64,
    interval_ns: f64,
}

impl Schedule {
    fn new(total_rate: f64, producers: usize, p: usize, now_ns: u64) -> Schedule {
        let interval_ns = 1e9 * producers as f64 / total_rate.max(1e-9);
        // Producers start out of phase so the load is smooth, not bursty.
        let offset = (interval_ns * p as f64 / producers as f64) as u64;
        Schedule {
            start_ns: now_ns + offset,
            interval_ns,
        }
    }

    fn due(&self, seq: u64) -> u64 {
        self.start_ns + (seq as f64 * self.interval_ns) as u64
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    })
}

/// Cumulative ACKs for every subscription with unacknowledged messages.
fn write_acks(wbuf: &mut Vec<u8>, last: &mut std::collections::BTreeMap<String, String>) {
    for (sub, ack) in std::mem::take(last) {
        let _ = write!(
            wbuf,
            "ACK\nid:{ack}\nmessage-id:{ack}\nsubscription:{sub}\n\n\0"
        );
    }
}

/// The queue a message goes to: the base name, or one of `count` numbered ones.
fn destination_name(base: &str, count: usize, seq: u64) -> std::borrow::Cow<'_, str> {
    if count <= 1 {
        std::borrow::Cow::Borrowed(base)
    } else {
        std::borrow::Cow::Owned(format!("{base}.{}", seq % count as u64))
    }
}

fn header_u64(f: &brokk::protocol::stomp::Frame, name: &str) -> Option<u64> {
    f.header_str(name)?.parse().ok()
}

fn consumer(i: usize, s: Arc<Shared>, ready: Arc<std::sync::Barrier>) -> Result<()> {
    let a = &s.args;
    let login = a.login.as_deref().map(|l| (l, a.passcode.as_str()));
    let mut hist = histogram();
    let mut broker = i;
    let mut signalled = false;
    let mut last_progress = Instant::now();
    let mut pace = Reconnect::new(a.reconnect_backoff);
    'reconnect: loop {
        let (mut conn, idx) = match Conn::connect(
            &s.brokers,
            broker,
            login,
            a.vhost.as_deref(),
            s.tls.as_ref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                if !signalled {
                    ready.wait();
                    return Err(e);
                }
                if last_progress.elapsed() > Duration::from_secs(a.idle_timeout) {
                    break;
                }
                pace.pause();
                continue;
            }
        };
        pace.connected();
        broker = idx;
        for k in 0..a.destinations {
            // Only the last SUBSCRIBE asks for a receipt: then all are in place.
            let receipt = if k + 1 == a.destinations {
                "receipt:sub\n"
            } else {
                ""
            };
            let _ = write!(
                conn.wbuf,
                "SUBSCRIBE\nid:bench-{i}-{k}\ndestination:{}\nack:client\nactivemq.prefetchSize:{}\n{receipt}\n\0",
                destination_name(&a.destination, a.destinations, k as u64),
                a.prefetch
            );
        }
        if conn.flush().is_err() {
            continue;
        }
        conn.set_read_timeout(Some(Duration::from_millis(200)))?;
        let ack_every = (a.prefetch / 2).max(1) as u64;
        let mut unacked = 0u64;
        // Per subscription, the newest message not yet acknowledged
        // (client mode: one ACK covers it and everything before it).
        let mut last_ack: std::collections::BTreeMap<String, String> = Default::default();
        loop {
            let f = match conn.read_frame() {
                Ok(f) => f,
                Err(e) => {
                    if !is_timeout(&e) {
                        broker += 1;
                        continue 'reconnect;
                    }
                    if accounting::consumers_may_stop(&s, last_progress) {
                        // Acknowledge what we hold so that leaving does not
                        // hand it to the other consumers as redeliveries.
                        write_acks(&mut conn.wbuf, &mut last_ack);
                        conn.wbuf
                            .extend_from_slice(b"DISCONNECT\nreceipt:bye\n\n\0");
                        if conn.flush().is_ok() {
                            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                            while let Ok(f) = conn.read_frame() {
                                if f.command.as_str() == "RECEIPT"
                                    && f.header_str("receipt-id") == Some("bye")
                                {
                                    break;
                                }
                            }
                        }
                        break 'reconnect;
                    }
                    continue;
                }
            };
            match f.command.as_str() {
                "RECEIPT" if !signalled => {
                    signalled = true;
                    ready.wait();
                }
                "MESSAGE" => {
                    if let (Some(p), Some(seq), Some(ts)) = (
                        header_u64(&f, "bench-p"),
                        header_u64(&f, "bench-seq"),
                        header_u64(&f, "bench-ts"),
                    ) {
                        if accounting::delivered(&s, &mut hist, p, seq, ts) {
                            last_progress = Instant::now();
                        }
                    }
                    unacked += 1;
                    if let (Some(sub), Some(ack)) = (
                        f.header_str("subscription"),
                        f.header_str("ack").or(f.header_str("message-id")),
                    ) {
                        last_ack.insert(sub.to_string(), ack.to_string());
                    }
                    if unacked >= ack_every {
                        write_acks(&mut conn.wbuf, &mut last_ack);
                        if conn.flush().is_err() {
                            continue 'reconnect;
                        }
                        unacked = 0;
                    }
                }
                "ERROR" => bail!("broker error: {:?}", f.header_str("message")),
                _ => {}
            }
        }
    }
    if !signalled {
        ready.wait();
    }
    accounting::finish_consumer(&s, &hist)
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn report(
    s: &Shared,
    produce_secs: f64,
    total_secs: f64,
    failover: Vec<Failover>,
    restarts: Option<u64>,
) -> Result<()> {
    let a = &s.args;
    let sent: Vec<u64> = s.sent.iter().map(|x| x.load(Ordering::SeqCst)).collect();
    let receipted: Vec<u64> = s
        .receipted_upto
        .iter()
        .map(|x| x.load(Ordering::SeqCst))
        .collect();
    let receipted_count: u64 = receipted.iter().sum();
    let send = s.send_receipt.lock().unwrap_or_else(|e| e.into_inner());
    let e2e = s.end_to_end.lock().unwrap_or_else(|e| e.into_inner());
    let tally = if a.consumers > 0 {
        Some(s.audit.tally(&sent, &receipted))
    } else {
        None
    };
    let rate = receipted_count as f64 / produce_secs;
    let consumed = s.consumed.load(Ordering::Relaxed);
    println!(
        "bench: {} producers, {} consumers, {} x {} B to {} on {} (persistent: {}, window {})",
        a.producers,
        a.consumers,
        a.messages,
        a.size,
        a.destination,
        s.brokers.join(","),
        a.persistent,
        a.window
    );
    println!(
        "  sent+receipted   {receipted_count:>10} in {produce_secs:.2} s = {rate:>10.0} msg/s"
    );
    if a.consumers > 0 {
        println!(
            "  consumed         {consumed:>10} in {total_secs:.2} s = {:>10.0} msg/s",
            consumed as f64 / total_secs
        );
    }
    println!("  latency (ms)          p50      p90      p99    p99.9      max");
    for (name, h) in [("send->receipt", &*send), ("end-to-end", &*e2e)] {
        if h.is_empty() {
            continue;
        }
        let q = |x| h.value_at_quantile(x) as f64 / 1000.0;
        println!(
            "  {name:<16} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0
        );
    }
    if let Some(t) = &tally {
        println!(
            "  lost (receipted) {:>10}   duplicates {:>10}   unconfirmed missing {:>6}",
            t.lost_receipted, t.duplicates, t.unconfirmed_missing
        );
        if !t.lost_ids.is_empty() {
            println!("  lost ids: {}", t.lost_ids.join(" "));
        }
    }
    for (k, f) in failover.iter().enumerate() {
        let ms = |v: Option<f64>| v.map_or("?".to_string(), |m| format!("{m:.1}"));
        println!(
            "  kill {}: failover gap {} ms (last receipt from the old master -> first from the new); new master after {} ms (old master's last receipt {} ms before the kill; new master's first {} ms after it served)",
            k + 1,
            ms(f.gap_ms),
            ms(f.new_master_ms),
            ms(f.quiet_before_kill_ms),
            ms(f.first_receipt_after_serving_ms)
        );
    }
    let json = serde_json::json!({
        "brokers": s.brokers,
        "mode": a.mode.map(|m| format!("{m:?}").to_lowercase()),
        "protocol": format!("{:?}", a.protocol).to_lowercase(),
        "shards": a.shards,
        "sync": match (a.mode, a.brokers.is_some()) {
            (Some(cluster::Mode::Zk), false) => Some(a.sync.unwrap_or(cluster::SyncMode::QuorumMem).name()),
            _ => None,
        },
        "failover": failover.iter().map(|f| serde_json::json!({"killed": f.killed, "at_s": f.at_s, "gap_ms": f.gap_ms, "new_master_ms": f.new_master_ms, "quiet_before_kill_ms": f.quiet_before_kill_ms, "first_receipt_after_serving_ms": f.first_receipt_after_serving_ms})).collect::<Vec<_>>(),
        "broker_restarts": restarts,
        "duration": a.duration,
        "destinations": a.destinations,
        "producers": a.producers,
        "consumers": a.consumers,
        "messages": a.messages,
        "size": a.size,
        "persistent": a.persistent,
        "window": a.window,
        "rate": a.rate,
        "receipted": receipted_count,
        "consumed": consumed,
        "produce_secs": produce_secs,
        "throughput_msgs_per_sec": rate,
        "consume_throughput_msgs_per_sec": if a.consumers > 0 { consumed as f64 / total_secs } else { 0.0 },
        "send_to_receipt": percentiles(&send),
        "end_to_end": percentiles(&e2e),
        "lost_receipted": tally.as_ref().map(|t| t.lost_receipted),
        "duplicates": tally.as_ref().map(|t| t.duplicates),
        "unconfirmed_missing": tally.as_ref().map(|t| t.unconfirmed_missing),
        "lost_ids": tally.as_ref().map(|t| t.lost_ids.clone()),
        "reconnects": s.reconnects.load(Ordering::Relaxed),
    });
    println!("{json}");
    if let Some(dir) = &a.out {
        let timeline = s.timeline.lock().map(|t| t.clone()).unwrap_or_default();
        report::write(dir, &json, &send, &e2e, &timeline)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_evenly_across_producers() {
        assert_eq!(per_producer(10, 3), vec![4, 3, 3]);
        assert_eq!(per_producer(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn open_loop_schedule_spaces_sends_evenly() {
        let sc = Schedule::new(1000.0, 2, 0, 0);
        assert_eq!(sc.due(0), 0);
        assert_eq!(sc.due(1), 2_000_000);
        let sc1 = Schedule::new(1000.0, 2, 1, 0);
        assert_eq!(sc1.due(0), 1_000_000);
    }

    #[test]
    fn percentiles_read_from_the_histogram() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = percentiles(&h);
        assert_eq!(p["count"], 1000);
        assert!((p["p50_ms"].as_f64().unwrap() - 500.0).abs() < 1.0);
        assert!((p["p99_ms"].as_f64().unwrap() - 990.0).abs() < 1.0);
        assert!((p["max_ms"].as_f64().unwrap() - 1000.0).abs() < 1.0);
    }
}
