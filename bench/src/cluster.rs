//! Brokers that bench starts itself (`--mode` without `--brokers`): a single
//! broker for `memory`, a master/standby pair on one data directory for
//! `file`, a pair on one fresh database for `mysql` / `postgres`. Killed brokers can be restarted (they rejoin as standby). All are
//! stopped, and the data directory removed, when the cluster is dropped.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

type Since = Arc<Mutex<Option<Instant>>>;

struct Proc {
    child: Child,
    /// How to start it again after a kill.
    command: Vec<OsString>,
    stomp: String,
    /// Its OpenWire listener (`--protocol openwire`).
    openwire: String,
    /// When this broker printed that it serves as master.
    master_since: Since,
    killed: bool,
}

pub struct Cluster {
    procs: Vec<Proc>,
    dir: PathBuf,
    bin: PathBuf,
    /// A database bench made for this run (dropped with the cluster).
    made_db: Option<BenchDb>,
    /// `--tls`: the CA that signed the brokers' certificate.
    tls_ca: Option<PathBuf>,
}

/// A fresh database for a database-mode run, on the local server that
/// `ops/services.sh` starts.
struct BenchDb {
    mode: Mode,
    name: String,
}

impl BenchDb {
    fn make(mode: Mode) -> Result<BenchDb> {
        let service = if mode == Mode::Mysql {
            "mariadb"
        } else {
            "postgres"
        };
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
        let db = BenchDb {
            mode,
            name: format!("brokk_bench_{}", std::process::id()),
        };
        db.admin(&format!("DROP DATABASE IF EXISTS {}", db.name))?;
        db.admin(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    fn url(&self) -> String {
        match self.mode {
            Mode::Mysql => format!("mysql://brokk:brokk@127.0.0.1:3306/{}", self.name),
            _ => format!("postgres://brokk:brokk@127.0.0.1:5432/{}", self.name),
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
        let _ = self.admin(&format!("DROP DATABASE IF EXISTS {}{force}", self.name));
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

impl Cluster {
    /// `db_url`: for `mysql`/`postgres`, the database to use instead of a
    /// fresh one on the local server (started through `ops/services.sh`).
    /// `tls`: every broker also listens for STOMP over TLS (bench's own
    /// certificate), and `brokers()` names those listeners.
    pub fn start(
        mode: Mode,
        shards: Option<usize>,
        db_url: Option<String>,
        tls: bool,
    ) -> Result<Cluster> {
        let count = match mode {
            Mode::Memory => 1,
            Mode::File | Mode::Mysql | Mode::Postgres => 2,
            Mode::Zk => {
                bail!("--mode zk needs a store mode Brokk does not have yet; use memory, file, mysql or postgres, or --brokers")
            }
        };
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
        };
        let store = match mode {
            Mode::Mysql | Mode::Postgres => {
                let url = match db_url {
                    Some(u) => u,
                    None => {
                        let db = BenchDb::make(mode)?;
                        let url = db.url();
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
            _ => None,
        };
        let tls_files = if tls {
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
            if store.is_none() {
                command.push("--mode".into());
                command.push(if mode == Mode::File { "file" } else { "memory" }.into());
                command.push("--data".into());
                command.push(cluster.dir.join("data").into());
            }
            if let Some(s) = shards {
                command.push("--shards".into());
                command.push(s.to_string().into());
            }
            let (child, master_since, first) = cluster.spawn(&command)?;
            cluster.procs.push(Proc {
                child,
                command,
                stomp: client_addr,
                openwire,
                master_since,
                killed: false,
            });
            if i == 0 && !first.starts_with("brokk listening") {
                bail!("first broker did not become master: {first}");
            }
        }
        Ok(cluster)
    }

    /// Starts one broker; returns once it printed its first line (a master
    /// prints `brokk listening`, a standby `brokk standby`).
    fn spawn(&self, command: &[OsString]) -> Result<(Child, Since, String)> {
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
                    let _ = tx.send(line);
                }
            });
        }
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .context("broker did not start")?;
        Ok((child, master_since, first))
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

    /// SIGKILLs the broker that currently serves as master; returns when,
    /// and which (index into `brokers()`).
    pub fn kill_master(&mut self) -> Result<(Instant, usize)> {
        let Some((index, p)) = self
            .procs
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| !p.killed)
            .max_by_key(|(_, p)| *p.master_since.lock().unwrap_or_else(|e| e.into_inner()))
        else {
            bail!("no live broker to kill");
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGKILL);
        }
        let at = Instant::now();
        let _ = p.child.wait();
        p.killed = true;
        Ok((at, index))
    }

    /// Starts the killed brokers again; they rejoin as standbys.
    pub fn restart_killed(&mut self) -> Result<()> {
        for i in 0..self.procs.len() {
            if !self.procs[i].killed {
                continue;
            }
            let command = self.procs[i].command.clone();
            let (child, master_since, _) = self.spawn(&command)?;
            let p = &mut self.procs[i];
            p.child = child;
            p.master_since = master_since;
            p.killed = false;
        }
        Ok(())
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
