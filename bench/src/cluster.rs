//! Brokers that bench starts itself (`--mode` without `--brokers`): a single
//! broker for `memory`, a master/standby pair on one data directory for
//! `file`, a pair on one fresh database for `mysql` / `postgres`, three
//! brokers with their own data directories elected through the local
//! ZooKeeper ensemble for `zk`. Killed brokers can be restarted (they
//! rejoin as standby), and a broker that exits by itself (a `zk` master
//! that lost its quorum exits 3) is restarted as systemd's
//! `Restart=always` would. All are stopped, and the data directory
//! removed, when the cluster is dropped.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Memory,
    File,
    Mysql,
    Postgres,
    Zk,
}

/// `--sync` for `--mode zk`: when a persistent SEND is receipted (the
/// broker's `store.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// A quorum of brokers holds it in memory (the broker's default).
    #[value(name = "quorum_mem")]
    QuorumMem,
    /// A quorum of brokers wrote and fdatasynced it.
    #[value(name = "quorum_disk")]
    QuorumDisk,
    /// A quorum holds it in memory and the master fdatasynced it.
    #[value(name = "local_disk")]
    LocalDisk,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::QuorumMem => "quorum_mem",
            SyncMode::QuorumDisk => "quorum_disk",
            SyncMode::LocalDisk => "local_disk",
        }
    }
}

/// What the brokers bench starts look like.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub shards: Option<usize>,
    /// For `mysql`/`postgres`: the database to use instead of a fresh one
    /// on the local server (started through `ops/services.sh`).
    pub db_url: Option<String>,
    /// For `mysql`/`postgres` without `db_url`: the brokers reach the
    /// database through [`crate::relay`], this round trip late.
    pub db_rtt: Option<Duration>,
    /// Every broker also listens for STOMP over TLS (bench's own
    /// certificate), and `brokers()` names those listeners.
    pub tls: bool,
    /// `zk`: the brokers' `store.sync` (default quorum_mem, the broker's).
    pub sync: Option<SyncMode>,
}

/// The ensemble `ops/services.sh start zookeeper` runs.
const ZK_ADDRESS: &str = "127.0.0.1:21811,127.0.0.1:21812,127.0.0.1:21813";

/// Brokers in a `zk` cluster bench starts (the broker's default `ha.replicas`).
const ZK_BROKERS: usize = 3;

/// A broker that exited by itself is started again after this long
/// (`RestartSec=1` in ops/brokk-zk.service)...
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// ... unless it was restarted this often within this long (systemd's
/// default start limit: 5 starts in 10 s).
const RESTART_BURST: usize = 5;
const RESTART_INTERVAL: Duration = Duration::from_secs(10);

type Since = Arc<Mutex<Option<Instant>>>;

struct Proc {
    child: Child,
    /// How to start it again after a kill.
    command: Vec<OsString>,
    /// Where clients connect (the TLS listener with `--tls`).
    stomp: String,
    /// Its plain STOMP listener, which bench probes to find the master.
    plain_stomp: String,
    /// Its OpenWire listener (`--protocol openwire`).
    openwire: String,
    /// When this broker printed that it serves as master.
    master_since: Since,
    killed: bool,
    /// When bench saw it exit by itself (it restarts it a moment later).
    exited_at: Option<Instant>,
    /// When bench restarted it after it exited by itself (the last few).
    restarted: Vec<Instant>,
    /// It kept exiting: bench stopped restarting it.
    given_up: bool,
}

impl Proc {
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

pub struct Cluster {
    procs: Vec<Proc>,
    dir: PathBuf,
    bin: PathBuf,
    /// A database bench made for this run (dropped with the cluster).
    made_db: Option<BenchDb>,
    /// `--tls`: the CA that signed the brokers' certificate.
    tls_ca: Option<PathBuf>,
    /// Brokers restarted after exiting by themselves.
    restarts: u64,
    /// `kill_all` ran: restart nothing any more.
    stopping: bool,
}

/// A fresh database for a database-mode run, on the local server that
/// `ops/services.sh` starts.
pub(crate) struct BenchDb {
    mode: Mode,
    name: String,
}

/// `ops/services.sh start SERVICE` (idempotent: a running service is only
/// re-checked).
fn start_service(service: &str) -> Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/services.sh");
    let ok = Command::new(&script)
        .args(["start", service])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?
        .success();
    if !ok {
        bail!("{} start {service} failed", script.display());
    }
    Ok(())
}

impl BenchDb {
    pub(crate) fn make(mode: Mode) -> Result<BenchDb> {
        start_service(if mode == Mode::Mysql {
            "mariadb"
        } else {
            "postgres"
        })?;
        let db = BenchDb {
            mode,
            name: format!("brokk_bench_{}", std::process::id()),
        };
        db.admin(&format!("DROP DATABASE IF EXISTS {}", db.name))?;
        db.admin(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    pub(crate) fn url(&self) -> String {
        match self.mode {
            Mode::Mysql => format!("mysql://brokk:brokk@{}/{}", self.address(), self.name),
            _ => format!("postgres://brokk:brokk@{}/{}", self.address(), self.name),
        }
    }

    /// Where the local server listens (ops/services.sh).
    fn address(&self) -> &'static str {
        match self.mode {
            Mode::Mysql => "127.0.0.1:3306",
            _ => "127.0.0.1:5432",
        }
    }

    fn admin(&self, sql: &str) -> Result<()> {
        let out = match self.mode {
            Mode::Mysql => Command::new("mariadb")
                .args(["-h127.0.0.1", "-ubrokk", "-pbrokk", "-e", sql])
                .output(),
            _ => Command::new("psql")
                .env("PGPASSWORD", "brokk")
                .args(["-h", "127.0.0.1", "-U", "brokk", "-d", "brokk", "-c", sql])
                .output(),
        }
        .context("cannot run the database client")?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let force = if self.mode == Mode::Postgres {
            " WITH (FORCE)"
        } else {
            ""
        };
        // A run's database is gigabytes. FORCE fails when an autovacuum
        // worker is in it (another role's process, which bench's role may
        // not end); a plain DROP makes autovacuum give way, and the
        // brokers' sessions are gone by now. Said if it stays.
        let sql = format!("DROP DATABASE IF EXISTS {}{force}", self.name);
        let plain = format!("DROP DATABASE IF EXISTS {}", self.name);
        let mut result = self.admin(&sql);
        for _ in 0..5 {
            if result.is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            result = self.admin(&plain);
        }
        if let Err(e) = result {
            eprintln!("bench: cannot drop the run's database {}: {e:#}", self.name);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(brokk::ports::stable_loopback_port()?)
}

fn brokk_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BROKK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .context("bench has no directory")?
        .join("brokk");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release --workspace) or set BROKK_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// Whether the broker at `addr` serves STOMP (see
/// `brokk::protocol::stomp::probe`).
fn serving(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(brokk::protocol::stomp::probe::answers_connect)
}

/// The first line a broker prints (a master `brokk listening`, a standby
/// `brokk standby`), waiting up to `secs`.
fn first_line(lines: &Receiver<String>, secs: u64) -> Result<String> {
    lines
        .recv_timeout(Duration::from_secs(secs))
        .context("broker did not start")
}

impl Cluster {
    pub fn start(mode: Mode, opts: &Options) -> Result<Cluster> {
        let count = match mode {
            Mode::Memory => 1,
            Mode::File | Mode::Mysql | Mode::Postgres => 2,
            Mode::Zk => ZK_BROKERS,
        };
        if opts.sync.is_some() && mode != Mode::Zk {
            bail!("--sync is for --mode zk");
        }
        let bin = brokk_binary()?;
        let dir = std::env::temp_dir().join(format!("brokk-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Cluster {
            procs: Vec::new(),
            dir,
            bin,
            made_db: None,
            tls_ca: None,
            restarts: 0,
            stopping: false,
        };
        let store = match mode {
            Mode::Mysql | Mode::Postgres => {
                let url = match opts.db_url.clone() {
                    Some(u) => u,
                    None => {
                        let db = BenchDb::make(mode)?;
                        let url = match opts.db_rtt {
                            Some(rtt) => {
                                let port = crate::relay::start(db.address().parse()?, rtt / 2)?;
                                let url =
                                    db.url().replace(db.address(), &format!("127.0.0.1:{port}"));
                                // mysql_async would otherwise move to the
                                // server's Unix socket, around the relay.
                                match mode {
                                    Mode::Mysql => format!("{url}?prefer_socket=false"),
                                    _ => url,
                                }
                            }
                            None => db.url(),
                        };
                        cluster.made_db = Some(db);
                        url
                    }
                };
                let kind = if mode == Mode::Mysql {
                    "mysql"
                } else {
                    "postgres"
                };
                Some(format!("[store]\nmode = \"{kind}\"\nurl = \"{url}\"\n"))
            }
            Mode::Zk => {
                start_service("zookeeper")?;
                None
            }
            _ => None,
        };
        // Unique per run, so that no earlier run's epoch or members count.
        let zk_path = format!(
            "/brokk/bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        );
        let tls_files = if opts.tls {
            let (ca, cert, key) = crate::tls::broker_files(&cluster.dir)?;
            cluster.tls_ca = Some(ca);
            Some(format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ))
        } else {
            None
        };
        let mut first_lines = Vec::new();
        for i in 0..count {
            let stomp = format!("127.0.0.1:{}", free_port()?);
            let admin = format!("127.0.0.1:{}", free_port()?);
            // A port of its own, not 61616 (a real ActiveMQ may share the
            // machine), and fixed, not 0: a standby does not listen, yet
            // the failover list must name where it will once it takes over.
            let openwire = format!("127.0.0.1:{}", free_port()?);
            let mut command: Vec<OsString> = [
                "serve",
                "--stomp",
                &stomp,
                "--openwire",
                &openwire,
                "--admin",
                &admin,
            ]
            .iter()
            .map(OsString::from)
            .collect();
            let mut client_addr = stomp.clone();
            let mut config = store.clone().unwrap_or_default();
            if mode == Mode::Zk {
                let data = cluster.dir.join(format!("b{i}"));
                std::fs::create_dir_all(&data)?;
                let sync = opts.sync.unwrap_or(SyncMode::QuorumMem).name();
                config = format!(
                    "[store]\nmode = \"zk\"\ndir = {:?}\nsync = \"{sync}\"\n\
                     [ha]\nzk_address = \"{ZK_ADDRESS}\"\nzk_path = \"{zk_path}\"\n\
                     hostname = \"127.0.0.1\"\nreplication_bind = \"127.0.0.1:{}\"\n\
                     zk_session_timeout_ms = 2000\nreplica_timeout_ms = 1000\n",
                    data.display().to_string(),
                    free_port()?
                );
            }
            if let Some(files) = &tls_files {
                client_addr = format!("127.0.0.1:{}", free_port()?);
                config = format!("[listeners]\nstomp_tls = \"{client_addr}\"\n{files}{config}");
            }
            if !config.is_empty() {
                let path = cluster.dir.join(format!("brokk-{i}.toml"));
                std::fs::write(&path, config)?;
                command.push("--config".into());
                command.push(path.into());
            }
            if matches!(mode, Mode::Memory | Mode::File) {
                command.push("--mode".into());
                command.push(if mode == Mode::File { "file" } else { "memory" }.into());
                command.push("--data".into());
                command.push(cluster.dir.join("data").into());
            }
            if let Some(s) = opts.shards {
                command.push("--shards".into());
                command.push(s.to_string().into());
            }
            let (child, master_since, lines) = cluster.spawn(&command)?;
            cluster.procs.push(Proc {
                child,
                command,
                stomp: client_addr,
                plain_stomp: stomp,
                openwire,
                master_since,
                killed: false,
                exited_at: None,
                restarted: Vec::new(),
                given_up: false,
            });
            if mode == Mode::Zk {
                // All three start together: none serves before a quorum
                // of them registered in ZooKeeper.
                first_lines.push(lines);
                continue;
            }
            let first = first_line(&lines, 60)?;
            if i == 0 && !first.starts_with("brokk listening") {
                bail!("first broker did not become master: {first}");
            }
        }
        if mode == Mode::Zk {
            cluster.wait_zk_started(&first_lines)?;
        }
        Ok(cluster)
    }

    /// Waits until each `zk` broker printed its role (one master, the
    /// others following it) and the master answers a STOMP CONNECT.
    fn wait_zk_started(&mut self, lines: &[Receiver<String>]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = vec![false; lines.len()];
        while !said.iter().all(|&s| s) {
            for (i, rx) in lines.iter().enumerate() {
                if !said[i] && rx.try_recv().is_ok() {
                    said[i] = true;
                }
                if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                    bail!(
                        "zk broker {} exited at start ({status}); is ZooKeeper on {ZK_ADDRESS}?",
                        self.procs[i].stomp
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("the zk brokers did not all start within 60 s (one master, two standbys)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.master(Duration::from_secs(30))
            .context("no zk broker serves")?;
        Ok(())
    }

    /// Starts one broker; its stdout lines arrive on the receiver (a
    /// master prints `brokk listening`, a standby `brokk standby`).
    fn spawn(&self, command: &[OsString]) -> Result<(Child, Since, Receiver<String>)> {
        let mut child = Command::new(&self.bin)
            .args(command)
            .env(
                "BROKK_LOG",
                std::env::var("BROKK_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let master_since: Since = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let master_since = master_since.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("brokk listening") {
                        *master_since.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now());
                    }
                    // Read on when nobody listens: a full pipe would stop the broker.
                    let _ = tx.send(line);
                }
            });
        }
        Ok((child, master_since, rx))
    }

    /// `--tls`: the CA file the brokers' certificate chains to.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls_ca.clone()
    }

    /// The client addresses, in failover order, for `protocol`.
    pub fn brokers(&self, protocol: crate::Protocol) -> Vec<String> {
        self.procs
            .iter()
            .map(|p| match protocol {
                crate::Protocol::Stomp => p.stomp.clone(),
                crate::Protocol::Openwire => p.openwire.clone(),
            })
            .collect()
    }

    /// The broker that serves as master now (index into `brokers()`): of
    /// the live ones that announced mastership, newest first, the first
    /// that answers a STOMP CONNECT; waits up to `wait` for one.
    fn master(&mut self, wait: Duration) -> Result<usize> {
        let deadline = Instant::now() + wait;
        loop {
            let mut candidates: Vec<(Instant, usize)> = Vec::new();
            for (i, p) in self.procs.iter_mut().enumerate() {
                if p.killed || p.exited() {
                    continue;
                }
                if let Some(t) = *p.master_since.lock().unwrap_or_else(|e| e.into_inner()) {
                    candidates.push((t, i));
                }
            }
            candidates.sort_by_key(|&(t, _)| std::cmp::Reverse(t));
            if let Some(&(_, i)) = candidates
                .iter()
                .find(|(_, i)| serving(&self.procs[*i].plain_stomp))
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no broker answers a STOMP CONNECT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the broker that currently serves as master; returns when,
    /// and which (index into `brokers()`).
    pub fn kill_master(&mut self) -> Result<(Instant, usize)> {
        let index = self.master(Duration::from_secs(30))?;
        let p = &mut self.procs[index];
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGKILL);
        }
        let at = Instant::now();
        let _ = p.child.wait();
        p.killed = true;
        Ok((at, index))
    }

    /// Starts the killed brokers again; returns once each printed its
    /// first line (they rejoin as standbys).
    pub fn restart_killed(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            if !self.procs[i].killed {
                continue;
            }
            let command = self.procs[i].command.clone();
            let (child, master_since, lines) = self.spawn(&command)?;
            let p = &mut self.procs[i];
            p.child = child;
            p.master_since = master_since;
            p.killed = false;
            p.exited_at = None;
            let first = first_line(&lines, 60)?;
            if !first.starts_with("brokk standby") {
                eprintln!("bench: the restarted broker {} says: {first}", p.stomp);
            }
        }
        Ok(())
    }

    /// Restarts, without waiting for them to print anything, the brokers
    /// that exited by themselves (not killed by bench), as the systemd
    /// units' `Restart=always` would: a `zk` master that lost its quorum
    /// exits 3 and comes back as a standby. Called every 100 ms or so.
    pub fn restart_exited(&mut self) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if p.killed || p.given_up {
                continue;
            }
            let status = match p.child.try_wait() {
                Ok(Some(status)) => status,
                _ => continue,
            };
            let exited_at = *p.exited_at.get_or_insert_with(|| {
                eprintln!(
                    "bench: broker {} exited by itself ({status}); restarting it in {} s",
                    p.stomp,
                    RESTART_DELAY.as_secs_f64()
                );
                now
            });
            if now < exited_at + RESTART_DELAY {
                continue;
            }
            p.restarted.retain(|t| now < *t + RESTART_INTERVAL);
            if p.restarted.len() >= RESTART_BURST {
                eprintln!(
                    "bench: broker {} exited {RESTART_BURST} times within {} s; not restarting it again",
                    p.stomp,
                    RESTART_INTERVAL.as_secs()
                );
                p.given_up = true;
                continue;
            }
            let command = p.command.clone();
            match self.spawn(&command) {
                Ok((child, master_since, _)) => {
                    let p = &mut self.procs[i];
                    p.child = child;
                    p.master_since = master_since;
                    p.exited_at = None;
                    p.restarted.push(now);
                    self.restarts += 1;
                }
                Err(e) => {
                    eprintln!("bench: cannot restart it: {e:#}");
                    self.procs[i].given_up = true;
                }
            }
        }
    }

    /// How many brokers exited by themselves and were restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// When a live broker became master after `since`, if one did.
    pub fn new_master_since(&self, since: Instant) -> Option<Instant> {
        self.procs
            .iter()
            .filter(|p| !p.killed)
            .filter_map(|p| *p.master_since.lock().unwrap_or_else(|e| e.into_inner()))
            .find(|t| *t > since)
    }

    /// Stops every broker now (Ctrl-C); the data directory goes on drop.
    pub fn kill_all(&mut self) {
        self.stopping = true;
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
        // After the brokers: their connections must be gone first.
        self.made_db.take();
    }
}
