//! Brokers that bench starts itself (`--mode` without `--brokers`): a single
//! broker for `memory`, a master/standby pair on one data directory for
//! `file`. Killed brokers can be restarted (they rejoin as standby). All are
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
    /// When this broker printed that it serves as master.
    master_since: Since,
    killed: bool,
}

pub struct Cluster {
    procs: Vec<Proc>,
    dir: PathBuf,
    bin: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
    pub fn start(mode: Mode, shards: Option<usize>) -> Result<Cluster> {
        let count = match mode {
            Mode::Memory => 1,
            Mode::File => 2,
            Mode::Mysql | Mode::Postgres | Mode::Zk => {
                bail!("--mode {mode:?} needs a store mode Brokk does not have yet; use memory or file, or --brokers")
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
        };
        for i in 0..count {
            let stomp = format!("127.0.0.1:{}", free_port()?);
            let admin = format!("127.0.0.1:{}", free_port()?);
            let mut command: Vec<OsString> =
                ["serve", "--stomp", &stomp, "--admin", &admin, "--mode"]
                    .iter()
                    .map(OsString::from)
                    .collect();
            command.push(if mode == Mode::File { "file" } else { "memory" }.into());
            command.push("--data".into());
            command.push(cluster.dir.join("data").into());
            if let Some(s) = shards {
                command.push("--shards".into());
                command.push(s.to_string().into());
            }
            let (child, master_since, first) = cluster.spawn(&command)?;
            cluster.procs.push(Proc {
                child,
                command,
                stomp,
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

    pub fn brokers(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.stomp.clone()).collect()
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
    }
}
