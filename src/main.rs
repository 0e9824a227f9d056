//! `brokk`: the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use brokk::admin::client::{AdminClient, ClientError};
use brokk::config::{Config, Overrides, StoreMode};

/// Messages are allocated on the shard that read them and freed on the
/// shard that saw them acknowledged: glibc's allocator serialises those
/// cross-thread frees on its arena locks (measured: 12% of samples under
/// OpenWire load); mimalloc frees them without a lock.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process. mimalloc asks for them on
/// its arenas (MADV_HUGEPAGE), and where the kernel's THP `defrag` is
/// `madvise` (Debian's default) a fault there compacts memory first, in
/// the shard's thread: receipts at 20 000 msg/s had a p99 2-5 times the
/// system allocator's. Without them mimalloc keeps its throughput and
/// loses that tail (bench/RESULTS.md, session 18). The kernel checks the
/// flag at each fault, so arenas reserved before `main` are covered too;
/// it is what `MIMALLOC_ALLOW_THP=0` does.
fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "brokk: cannot turn transparent huge pages off ({}); latency may suffer",
            std::io::Error::last_os_error()
        );
    }
}

#[derive(Parser)]
#[command(
    name = "brokk",
    version,
    about = "A thread-per-core STOMP message broker (ActiveMQ-compatible HA)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve(ServeArgs),
    /// Check a configuration file and print the effective settings.
    CheckConfig(ServeArgs),
    /// Read a password on stdin (one line) and print its argon2id PHC
    /// string, for `[[users]] passcode_hash`.
    HashPassword,
    /// Print a running broker's status (GET /status on its admin port).
    Status {
        /// Admin address of the broker.
        #[arg(long, default_value = "127.0.0.1:8161")]
        admin: SocketAddr,
    },
    /// One line per destination: size, consumers, enqueued, dequeued (like `activemq dstat`).
    Dstat(AdminArgs),
    /// Print the first waiting messages of a queue (like `activemq browse`).
    Browse {
        #[command(flatten)]
        admin: AdminArgs,
        /// Queue name (`orders` or `/queue/orders`).
        queue: String,
        /// Most messages to print.
        #[arg(long, default_value_t = 20)]
        max: usize,
    },
    /// Remove every waiting message of a queue (like `activemq purge`).
    Purge {
        #[command(flatten)]
        admin: AdminArgs,
        /// Queue name (`orders` or `/queue/orders`).
        queue: String,
    },
    /// Send messages through the broker's admin API; returns once they are durable.
    Send {
        #[command(flatten)]
        admin: AdminArgs,
        /// Destination, `/queue/NAME` or `/topic/NAME`.
        destination: String,
        /// Message body.
        body: String,
        /// How many copies.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Send non-persistent messages.
        #[arg(long)]
        non_persistent: bool,
        /// A header `name:value` (repeatable).
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
    },
}

/// How the admin commands reach a broker.
#[derive(clap::Args)]
struct AdminArgs {
    /// The broker's admin address.
    #[arg(long, default_value = "http://127.0.0.1:8161", env = "BROKK_ADMIN")]
    admin: String,
    /// A [[users]] login with a console role.
    #[arg(long, env = "BROKK_ADMIN_USER")]
    user: Option<String>,
    /// Its passcode (better given through BROKK_ADMIN_PASSWORD).
    #[arg(long, env = "BROKK_ADMIN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl AdminArgs {
    fn client(&self) -> AdminClient {
        AdminClient::new(&self.admin, self.user.as_deref(), self.password.as_deref())
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see README: Configuration). Without it, defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// STOMP listen address, overrides `listeners.stomp` (default 0.0.0.0:61613).
    #[arg(long, value_name = "HOST:PORT")]
    stomp: Option<SocketAddr>,
    /// OpenWire listen address, overrides `listeners.openwire` (default 0.0.0.0:61616).
    #[arg(long, value_name = "HOST:PORT")]
    openwire: Option<SocketAddr>,
    /// Admin/status HTTP address, overrides `listeners.admin` (default 0.0.0.0:8161).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<SocketAddr>,
    /// Data directory, overrides `store.dir` (default ./data).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Store/HA mode, overrides `store.mode`: memory, file, db or zk.
    #[arg(long, value_name = "MODE")]
    mode: Option<StoreMode>,
    /// Number of shards (pinned executor threads), overrides `shards` (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
}

impl ServeArgs {
    fn load(&self) -> Result<Config, brokk::config::ConfigError> {
        let overrides = Overrides {
            stomp: self.stomp,
            openwire: self.openwire,
            admin: self.admin,
            data: self.data.clone(),
            mode: self.mode,
            shards: self.shards,
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// Exit code for configuration errors, as for command-line usage errors.
const EXIT_CONFIG: u8 = 2;

/// mysql_async keeps up to 128 spent statement buffers of up to 4 MiB
/// each for reuse (measured here: ~170 MiB held after a 1 GiB backlog of
/// 32 KiB messages went through it), memory that `limits.memory_limit_bytes`
/// cannot see. Brokk's statements are at most about 1 MiB (see
/// `store::sql::write::MSG_CHUNK_BYTES`) and a lane runs one at a time, so a
/// few buffers of that size are all reuse needs. Set before any thread
/// starts; the operator's own values win.
fn bound_mysql_buffer_pool() {
    for (key, value) in [
        ("MYSQL_ASYNC_BUFFER_POOL_CAP", "16"),
        ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "2097152"),
    ] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
}

fn main() -> ExitCode {
    without_huge_pages();
    bound_mysql_buffer_pool();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROKK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Cmd::Serve(args) => {
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("brokk: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            exit_on_panic();
            // Before the broker opens its lock or a socket (ha::keeper).
            if let Err(e) = brokk::ha::keeper::start() {
                tracing::warn!(error = %e, "no address-space keeper: a killed broker lets go of its lock only after its memory is freed");
            }
            match brokk::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if is_bad_store_url(&e) => {
                    // The database could not be reached or refused the
                    // login at start: a setting to fix, like a config error.
                    eprintln!("brokk: config key `store.url`: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) if is_missing_tables(&e) => {
                    eprintln!("brokk: config key `store.create_tables`: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) if is_bad_zk_address(&e) => {
                    // The ensemble could not be reached at start.
                    eprintln!("brokk: config key `ha.zk_address`: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) => {
                    eprintln!("brokk: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::CheckConfig(args) => match args.load() {
            Ok(c) => {
                println!("{c:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::Dstat(a) => admin_answer(a.client().dstat()),
        Cmd::Browse { admin, queue, max } => {
            admin_answer(admin.client().browse(&queue, max).map(|v| pretty(&v)))
        }
        Cmd::Purge { admin, queue } => {
            admin_answer(admin.client().purge(&queue).map(|v| pretty(&v)))
        }
        Cmd::Send {
            admin,
            destination,
            body,
            count,
            non_persistent,
            headers,
        } => {
            let mut hs = serde_json::Map::new();
            for h in &headers {
                let Some((k, v)) = h.split_once(':') else {
                    eprintln!("brokk: --header {h:?}: expected NAME:VALUE");
                    return ExitCode::from(EXIT_CONFIG);
                };
                hs.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let req = serde_json::json!({
                "destination": destination,
                "body": body,
                "count": count,
                "persistent": !non_persistent,
                "headers": hs,
            });
            admin_answer(admin.client().send(req).map(|v| pretty(&v)))
        }
        Cmd::HashPassword => match hash_password() {
            Ok(phc) => {
                println!("{phc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Status { admin } => match status(admin) {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("brokk: cannot read status from {admin}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Prints an admin command's answer; a refusal's message goes to stderr.
fn admin_answer(r: Result<String, ClientError>) -> ExitCode {
    match r {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("brokk: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether serving failed because the database named by `store.url` could
/// not be connected to at start.
fn is_bad_store_url(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<brokk::store::sql::SqlError>(),
            Some(brokk::store::sql::SqlError::Connect { .. })
        )
    })
}

fn is_missing_tables(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<brokk::store::sql::SqlError>(),
            Some(brokk::store::sql::SqlError::Missing(_))
        )
    })
}

fn is_bad_zk_address(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<brokk::ha::zk::ZkError>(),
            Some(brokk::ha::zk::ZkError::Connect { .. })
        )
    })
}

/// Exit code of a broker that panicked.
const EXIT_PANIC: i32 = 101;

/// A panic on any thread ends the process at once. A shard whose thread
/// died would otherwise leave a master that holds the lock (so no standby
/// takes over) and answers nothing for the destinations it owned.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "panic; the broker stops now (a standby takes over)");
        // _exit: no atexit handlers or destructors from a broken state;
        // the lock goes with the process.
        // SAFETY: _exit has no preconditions and never returns.
        unsafe { libc::_exit(EXIT_PANIC) }
    }));
}

/// One line from stdin, without its line ending: the password is what
/// was typed (or piped), surrounding spaces included.
fn hash_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        anyhow::bail!("no password on stdin (e.g. `echo -n secret | brokk hash-password`)");
    }
    Ok(brokk::security::hash_password(password)?)
}

fn status(admin: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(resp))
}
