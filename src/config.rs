//! One TOML file -> typed, validated configuration. Unknown keys and bad
//! values are errors that name the key; `brokk` exits with code 2 on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// Messages in memory only; lost on restart.
    Memory,
    /// Direct-I/O journal in a shared directory, file-lock master/standby.
    File,
    /// MySQL/MariaDB: ActiveMQ's JDBC tables, lease-row master/standby.
    Mysql,
    /// PostgreSQL: the same tables and lease.
    Postgres,
    /// ZooKeeper election, replicated log.
    Zk,
}

impl std::str::FromStr for StoreMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StoreMode::Memory),
            "file" => Ok(StoreMode::File),
            "mysql" => Ok(StoreMode::Mysql),
            "postgres" => Ok(StoreMode::Postgres),
            "zk" => Ok(StoreMode::Zk),
            _ => Err(format!(
                "unknown mode '{s}' (expected memory, file, mysql, postgres or zk)"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Executor threads, each pinned to a core; default: one per core.
    pub shards: Option<usize>,
    pub listeners: Listeners,
    pub limits: Limits,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub ha: HaConfig,
    /// Certificate and key of the TLS listeners (`listeners.stomp_tls`).
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    pub users: Vec<User>,
    pub admin: AdminConfig,
    /// Per-destination rights (ActiveMQ's authorizationPlugin); none: every
    /// authenticated user may do everything.
    pub authorization: Vec<AuthorizationEntry>,
}

/// The web console and JSON API on the admin port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Users in any of these groups may act in the console (purge, delete,
    /// send).
    pub admin_groups: Vec<String>,
    /// Users in any of these groups may look.
    pub read_groups: Vec<String>,
    /// The other brokers of this group, as their admin base URLs
    /// (`http://host2:8162`), for the Cluster page.
    pub peers: Vec<String>,
    /// How long a console login lasts.
    pub session_ttl_secs: u64,
    /// Most messages one browse returns.
    pub browse_max: usize,
    /// Most messages one Send may make.
    pub send_max_count: usize,
    /// Most bytes (bodies and headers, all copies) one Send may make: the
    /// copies are built at once, before flow control could pause them.
    pub send_max_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admin_groups: vec!["admins".into()],
            read_groups: vec!["monitors".into()],
            peers: Vec::new(),
            session_ttl_secs: 8 * 3600,
            browse_max: 500,
            send_max_count: 10_000,
            send_max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// The fencing interval (file mode): the master re-checks its lock and
    /// the store's epoch four times per interval, and writes to the journal
    /// or sends a RECEIPT only while its last good check is younger than
    /// this. It bounds how long a master that lost mastership without
    /// noticing (paused, NFS lease expired) can still act.
    pub lock_keepalive_ms: u64,
    /// How long a broker that won the lock waits, after raising the epoch,
    /// before it reads the journal: the previous master's fencing interval
    /// plus a margin for its journal writes still in flight. Must exceed
    /// `lock_keepalive_ms`; default twice it. Adds to every failover.
    pub takeover_wait_ms: Option<u64>,
    /// Database modes: the master's lease in `ACTIVEMQ_LOCK`, renewed four
    /// times per lease. A master that cannot renew stops serving when it
    /// runs out; a hung master (alive, not renewing) loses to a standby
    /// after it. A killed master is noticed at once (its session lock).
    pub lease_ms: u64,
    /// zk mode: the ZooKeeper ensemble, `host:port,host:port,...`.
    pub zk_address: Option<String>,
    /// zk mode: where the brokers of one cluster meet in ZooKeeper
    /// (default `/brokk/<cluster_name>`, as ActiveMQ's
    /// `/activemq/leveldb-stores`).
    pub zk_path: Option<String>,
    /// zk mode: names the cluster (the default `zk_path`).
    pub cluster_name: String,
    /// zk mode: the ZooKeeper session timeout. A master whose session
    /// expires steps down; a dead master's own session ends after it (a
    /// killed master is noticed sooner, by its replication link).
    pub zk_session_timeout_ms: u64,
    /// zk mode: brokers in the cluster; a message is receipted once
    /// `replicas / 2 + 1` of them hold it, and a master is elected only
    /// among that many.
    pub replicas: usize,
    /// zk mode: where this broker listens for the replication link (a
    /// master's standbys connect to it).
    pub replication_bind: SocketAddr,
    /// zk mode: the host name or address the other brokers reach this one
    /// by (advertised through ZooKeeper with the replication port).
    pub hostname: Option<String>,
    /// zk mode: a replication link silent this long is dead (heartbeats
    /// every quarter of it): a standby starts an election, a master
    /// without a quorum of standbys steps down.
    pub replica_timeout_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            zk_address: None,
            zk_path: None,
            cluster_name: "default".into(),
            // ActiveMQ's replicated LevelDB default.
            zk_session_timeout_ms: 2000,
            replicas: 3,
            replication_bind: "0.0.0.0:61619".parse().expect("literal"),
            hostname: None,
            replica_timeout_ms: 1000,
            // Small, because a successor waits twice this before it reads
            // the journal: measured under load, the failover gap grew by
            // ~100-120 ms at 50 and ~180 ms at 100 (bench/RESULTS.md). A check
            // is a stat and a small file read, 80 per second at 50 ms.
            lock_keepalive_ms: 50,
            takeover_wait_ms: None,
            lease_ms: 3000,
        }
    }
}

impl HaConfig {
    /// The takeover wait in force (see `takeover_wait_ms`).
    pub fn takeover_wait_ms(&self) -> u64 {
        self.takeover_wait_ms.unwrap_or(2 * self.lock_keepalive_ms)
    }

    /// zk mode: the cluster's ZooKeeper path.
    pub fn zk_path(&self) -> String {
        self.zk_path
            .clone()
            .unwrap_or_else(|| format!("/brokk/{}", self.cluster_name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub stomp: SocketAddr,
    /// OpenWire, ActiveMQ's own JMS clients (ActiveMQ's default port, 61616).
    pub openwire: SocketAddr,
    pub admin: SocketAddr,
    /// STOMP over TLS (ActiveMQ's `stomp+ssl`, conventionally 61612); needs `[tls]`.
    pub stomp_tls: Option<SocketAddr>,
    /// The admin port (console, API, metrics) over TLS; needs `[tls]`.
    pub admin_tls: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_frame_size: usize,
    /// A connection that has not completed CONNECT this long after it was
    /// accepted is closed, so sockets that never speak STOMP cannot hold
    /// every `max_connections` slot (ActiveMQ's `connectAttemptTimeout`).
    pub connect_timeout_ms: u64,
    /// Bytes of messages held in memory before producers are paused.
    pub memory_limit_bytes: usize,
    /// With a durable store, queues page persistent messages out to the
    /// spool once held bytes reach this share of `memory_limit_bytes`
    /// (each queue keeps a small window in memory).
    pub page_at_percent: u8,
    /// At the memory or store limit, answer SENDs with an ERROR instead of
    /// pausing the producer (ActiveMQ's `sendFailIfNoSpace`).
    pub send_fail_if_no_space: bool,
    /// New connections accepted per second from one source address, over
    /// all listeners and shards; more are closed at once. 0: no limit.
    pub connections_per_ip_per_sec: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub max_redeliveries: u32,
    pub default_prefetch: u32,
    pub dead_letter_queue: String,
    /// Longest heart-beat interval the broker offers to send, and the
    /// shortest it accepts to receive.
    pub heartbeat_min_ms: u64,
}

/// zk mode: when a persistent SEND is receipted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// A quorum of brokers holds it in memory (ActiveMQ's default): it
    /// survives any one broker's crash, not a quorum crashing before their
    /// asynchronous flush.
    QuorumMem,
    /// A quorum of brokers wrote and fdatasynced it.
    QuorumDisk,
    /// A quorum holds it in memory and the master fdatasynced it.
    LocalDisk,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub mode: StoreMode,
    pub dir: PathBuf,
    /// Size of each preallocated journal segment (file mode).
    pub segment_size_bytes: u64,
    /// Journal disk budget; at the limit persistent producers are paused.
    pub limit_bytes: u64,
    /// Skip corrupt records in the middle of the journal instead of refusing to start.
    pub skip_corrupt: bool,
    /// Database modes: `mysql://user:pass@host:3306/db` or
    /// `postgres://user:pass@host:5432/db`.
    pub url: Option<String>,
    /// Database modes: connections for the writer and recovery.
    pub pool_size: usize,
    /// Database modes: create the tables at start when absent.
    pub create_tables: bool,
    /// Database modes: the secondary indexes a created `ACTIVEMQ_MSGS` gets.
    pub indexes: crate::store::sql::schema::Indexes,
    /// Database modes: most rows in one write transaction.
    pub batch_max_rows: usize,
    /// Database modes: how long a batch may wait for more rows when the
    /// writer is idle (microseconds; 0 = write at once). Under load batches
    /// form by themselves while the previous transaction commits.
    pub linger_us: u64,
    /// Database modes: whether a transaction begins while the one before
    /// it commits: `auto` (when the database's round trip, measured at
    /// start, is 200 us or more: on another host), `always`, `never`.
    /// Needs `pool_size` above twice the shards.
    pub overlap: crate::store::sql::writer::Overlap,
    /// zk mode: when a persistent message counts as stored (see
    /// [`SyncMode`]).
    pub sync: SyncMode,
    /// Where paged-out message bodies wait (default `<dir>/spool`). A
    /// scratch area, emptied at start and never synced: put it on fast
    /// local disk, not on the shared file system.
    pub spool_dir: Option<PathBuf>,
}

impl StoreConfig {
    /// Where paged-out message bodies wait.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("spool"))
    }

    /// Whether this is one of the database modes.
    pub fn is_db(&self) -> bool {
        matches!(self.mode, StoreMode::Mysql | StoreMode::Postgres)
    }
}

/// `[tls]`: PEM files for the TLS listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that sign client certificates: set, clients present
    /// one (mutual TLS) and its subject CN is their login.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients without a certificate (true),
    /// or let them log in with a passcode instead (false).
    #[serde(default = "default_true")]
    pub require_client_cert: bool,
    /// A TLS handshake not finished this long after the accept is dropped,
    /// so a peer that speaks no TLS (or stalls) cannot hold a slot.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept `[[users]] passcode` (plain text in the file). Off: only
    /// `passcode_hash` (argon2id, `brokk hash-password`) is accepted.
    pub allow_plaintext_passwords: bool,
    /// ActiveMQ's rule: the first SEND or SUBSCRIBE to a destination the
    /// broker does not know needs the `admin` right on it. Off (default):
    /// `read`/`write` suffice. Brokk keeps no record of empty destinations,
    /// so with it on, after a restart or failover a destination that held
    /// no messages must be made again by a user with `admin`.
    pub create_requires_admin: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub login: String,
    /// Plain text; refused unless `auth.allow_plaintext_passwords`.
    pub passcode: Option<String>,
    /// An argon2id PHC string, as `brokk hash-password` prints it.
    pub passcode_hash: Option<String>,
    /// Groups named by `[[authorization]]` entries and by the console's
    /// roles (`admin.admin_groups`, `admin.read_groups`).
    #[serde(default)]
    pub groups: Vec<String>,
}

// Secrets stay out of `check-config` output and logs.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "<redacted>"))
            .field("passcode_hash", &self.passcode_hash)
            .field("groups", &self.groups)
            .finish()
    }
}

/// `[[authorization]]`: which groups may read (SUBSCRIBE), write (SEND)
/// and create (admin) the destinations `destination` matches
/// (`/queue/orders.>`: ActiveMQ wildcards).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationEntry {
    pub destination: String,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            stomp: ([0, 0, 0, 0], 61613).into(),
            openwire: ([0, 0, 0, 0], 61616).into(),
            admin: ([0, 0, 0, 0], 8161).into(),
            stomp_tls: None,
            admin_tls: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_frame_size: 104_857_600,
            connect_timeout_ms: 30_000,
            memory_limit_bytes: 256 * 1024 * 1024,
            page_at_percent: 70,
            send_fail_if_no_space: false,
            connections_per_ip_per_sec: 0,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_redeliveries: 6,
            default_prefetch: 1000,
            dead_letter_queue: "ActiveMQ.DLQ".into(),
            heartbeat_min_ms: 1000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mode: StoreMode::File,
            dir: PathBuf::from("./data"),
            // KahaDB's journalMaxFileLength too. Against 64 MiB, measured
            // here: failover gap ~105 vs ~130 ms (less live data at a kill,
            // read in parallel), same throughput and receipt latency.
            segment_size_bytes: 32 * 1024 * 1024,
            limit_bytes: 8 * 1024 * 1024 * 1024,
            skip_corrupt: false,
            url: None,
            pool_size: 8,
            create_tables: true,
            indexes: crate::store::sql::schema::Indexes::Minimal,
            batch_max_rows: 4096,
            linger_us: 0,
            overlap: crate::store::sql::writer::Overlap::Auto,
            sync: SyncMode::QuorumMem,
            spool_dir: None,
        }
    }
}

/// What operators override most often on the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub stomp: Option<SocketAddr>,
    pub openwire: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub mode: Option<StoreMode>,
    pub shards: Option<usize>,
}

/// A message id carries its issuing shard in the top byte (see
/// `broker::message_ids`), and OpenWire (`brokerSequenceId`,
/// `lastDeliveredSequenceId`) and the database modes (`ACTIVEMQ_MSGS.ID`)
/// hold ids as signed 64-bit numbers: a shard from 128 up would issue
/// negative ids, which OpenWire clients use as "none" (-1) and which the
/// close of a session or connection then counted as nothing delivered.
pub const MAX_SHARDS: usize = 128;

impl Config {
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message,
                })?
            }
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(a) = o.stomp {
            self.listeners.stomp = a;
        }
        if let Some(a) = o.openwire {
            self.listeners.openwire = a;
        }
        if let Some(a) = o.admin {
            self.listeners.admin = a;
        }
        if let Some(d) = &o.data {
            self.store.dir = d.clone();
        }
        if let Some(m) = o.mode {
            self.store.mode = m;
        }
        if let Some(s) = o.shards {
            self.shards = Some(s);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = self.shards {
            if s == 0 || s > MAX_SHARDS {
                return Err(invalid(
                    "shards",
                    format!("must be between 1 and {MAX_SHARDS}, got {s}"),
                ));
            }
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_frame_size < 1024 {
            return Err(invalid(
                "limits.max_frame_size",
                "must be at least 1024 bytes",
            ));
        }
        if self.limits.connect_timeout_ms == 0 {
            return Err(invalid("limits.connect_timeout_ms", "must be at least 1"));
        }
        if self.limits.memory_limit_bytes < 1024 * 1024 {
            return Err(invalid(
                "limits.memory_limit_bytes",
                "must be at least 1 MiB",
            ));
        }
        if !(1..=100).contains(&self.limits.page_at_percent) {
            return Err(invalid("limits.page_at_percent", "must be 1 to 100"));
        }
        if self.broker.default_prefetch == 0 {
            return Err(invalid("broker.default_prefetch", "must be at least 1"));
        }
        if crate::broker::Destination::parse(&format!("/queue/{}", self.broker.dead_letter_queue))
            .is_err()
        {
            return Err(invalid(
                "broker.dead_letter_queue",
                "is not a valid queue name",
            ));
        }
        if self.broker.heartbeat_min_ms == 0 {
            return Err(invalid("broker.heartbeat_min_ms", "must be at least 1"));
        }
        self.validate_security()?;
        for peer in &self.admin.peers {
            let ok = peer
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if !ok {
                return Err(invalid(
                    "admin.peers",
                    format!("'{peer}' is not an http://host:port admin address"),
                ));
            }
        }
        if self.admin.session_ttl_secs == 0 {
            return Err(invalid("admin.session_ttl_secs", "must be at least 1"));
        }
        if self.admin.browse_max == 0
            || self.admin.send_max_count == 0
            || self.admin.send_max_bytes == 0
        {
            return Err(invalid(
                "admin.browse_max",
                "admin.browse_max, admin.send_max_count and admin.send_max_bytes must be at least 1",
            ));
        }
        let seg = self.store.segment_size_bytes;
        if seg < 1024 * 1024 || !seg.is_multiple_of(4096) {
            return Err(invalid(
                "store.segment_size_bytes",
                "must be at least 1 MiB and a multiple of 4096",
            ));
        }
        if self.store.limit_bytes < 2 * seg {
            return Err(invalid(
                "store.limit_bytes",
                "must hold at least two segments (2 x store.segment_size_bytes)",
            ));
        }
        if self.ha.lock_keepalive_ms < 10 {
            // Checked four times per interval; below this the checks would
            // be most of what the keep-alive thread does.
            return Err(invalid("ha.lock_keepalive_ms", "must be at least 10"));
        }
        if self.ha.takeover_wait_ms() <= self.ha.lock_keepalive_ms {
            return Err(invalid(
                "ha.takeover_wait_ms",
                format!(
                    "must be more than ha.lock_keepalive_ms ({} ms): the excess is the margin for the previous master's writes in flight",
                    self.ha.lock_keepalive_ms
                ),
            ));
        }
        if self.store.is_db() {
            let url = self.store.url.as_deref().unwrap_or_default();
            if url.is_empty() {
                return Err(invalid(
                    "store.url",
                    "is required for store.mode mysql and postgres (e.g. mysql://user:pass@127.0.0.1:3306/brokk)",
                ));
            }
            let dialect =
                crate::store::sql::Dialect::of_url(url).map_err(|e| invalid("store.url", e))?;
            let wanted = match self.store.mode {
                StoreMode::Postgres => crate::store::sql::Dialect::Postgres,
                _ => crate::store::sql::Dialect::MySql,
            };
            if dialect != wanted {
                return Err(invalid(
                    "store.url",
                    format!(
                        "names a {dialect:?} database but store.mode is {:?}",
                        self.store.mode
                    ),
                ));
            }
            if self.store.pool_size == 0 {
                return Err(invalid("store.pool_size", "must be at least 1"));
            }
            if self.store.batch_max_rows == 0 {
                return Err(invalid("store.batch_max_rows", "must be at least 1"));
            }
            if self.ha.lease_ms < 200 {
                return Err(invalid("ha.lease_ms", "must be at least 200"));
            }
            // Ten of them go to the database as a timeout in ms (see
            // `store::sql::conn::idle_transaction_limit`).
            if self.ha.lease_ms > 3_600_000 {
                return Err(invalid("ha.lease_ms", "must be at most 3600000 (an hour)"));
            }
        }
        if matches!(self.store.mode, StoreMode::Zk) {
            self.validate_zk()?;
        }
        Ok(())
    }

    /// zk mode's keys.
    fn validate_zk(&self) -> Result<(), ConfigError> {
        let ha = &self.ha;
        match ha.zk_address.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "ha.zk_address",
                    "is required with store.mode = \"zk\" (the ZooKeeper ensemble, host:port,...)",
                ))
            }
            Some(a) if a.split(',').any(|h| h.trim().rsplit_once(':').is_none()) => {
                return Err(invalid(
                    "ha.zk_address",
                    format!("'{a}' is not host:port,host:port,..."),
                ))
            }
            Some(_) => {}
        }
        let path = ha.zk_path();
        if !path.starts_with('/') || path.ends_with('/') || path.contains("//") {
            return Err(invalid(
                "ha.zk_path",
                format!("'{path}' must start with / and not end with /"),
            ));
        }
        if ha.hostname.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "ha.hostname",
                "is required with store.mode = \"zk\" (the address the other brokers reach this one by)",
            ));
        }
        if ha.replicas == 0 || ha.replicas > 9 {
            return Err(invalid("ha.replicas", "must be 1 to 9"));
        }
        if ha.zk_session_timeout_ms < 1000 {
            return Err(invalid(
                "ha.zk_session_timeout_ms",
                "must be at least 1000 (ZooKeeper's smallest session timeout at tickTime 500)",
            ));
        }
        if ha.replica_timeout_ms < 40 || ha.replica_timeout_ms >= ha.zk_session_timeout_ms {
            return Err(invalid(
                "ha.replica_timeout_ms",
                "must be at least 40 and less than ha.zk_session_timeout_ms",
            ));
        }
        Ok(())
    }

    /// TLS files, users and authorization entries: each problem names its
    /// key. The TLS files are read and checked here (certificate, key, that
    /// they match), so a broker never starts with a listener it cannot serve.
    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.listeners.admin_tls.is_some() && self.tls.is_none() {
            return Err(invalid(
                "listeners.admin_tls",
                "needs a [tls] section with cert_file and key_file",
            ));
        }
        match (&self.listeners.stomp_tls, &self.tls) {
            (Some(_), None) => {
                return Err(invalid(
                    "listeners.stomp_tls",
                    "needs a [tls] section with cert_file and key_file",
                ))
            }
            (_, Some(tls)) => {
                crate::security::tls::server_config(tls)
                    .map_err(|e| invalid(e.key(), e.to_string()))?;
                if tls.handshake_timeout_ms == 0 {
                    return Err(invalid("tls.handshake_timeout_ms", "must be at least 1"));
                }
            }
            (None, None) => {}
        }
        crate::security::users::Users::from_config(&self.users, &self.auth)
            .map_err(|e| invalid(e.key(), e.to_string()))?;
        if !self.authorization.is_empty() && self.users.is_empty() {
            return Err(invalid(
                "authorization",
                "[[authorization]] entries need [[users]]: without users every client is anonymous and the broker would be open",
            ));
        }
        crate::security::authz::Authorizer::from_config(&self.authorization)
            .map_err(|e| invalid("authorization.destination", e.to_string()))?;
        Ok(())
    }

    /// The shard count in force: configured, or one per online core.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_SHARDS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_activemq_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listeners.stomp.port(), 61613);
        assert_eq!(c.listeners.openwire.port(), 61616);
        assert_eq!(c.listeners.admin.port(), 8161);
        assert_eq!(c.limits.max_frame_size, 104_857_600);
        assert_eq!(c.limits.connect_timeout_ms, 30_000);
        assert_eq!(c.broker.max_redeliveries, 6);
        assert_eq!(c.broker.default_prefetch, 1000);
        assert_eq!(c.store.mode, StoreMode::File);
        assert_eq!(c.store.dir, PathBuf::from("./data"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[limits]\nmax_conections = 5\n").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let mut c = Config::parse("shards = 0").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`shards`"), "{e}");
        // Ids stay positive as signed 64-bit numbers (see MAX_SHARDS).
        c.shards = Some(129);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`shards`") && e.contains("128"), "{e}");
        c.shards = Some(128);
        c.validate().unwrap();
        c.shards = Some(2);
        c.limits.max_connections = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_connections"), "{e}");
    }

    #[test]
    fn takeover_wait_defaults_to_twice_the_fencing_interval_and_must_exceed_it() {
        let c = Config::parse("[ha]\nlock_keepalive_ms = 250\n").unwrap();
        assert_eq!(c.ha.takeover_wait_ms(), 500);
        c.validate().unwrap();
        let c = Config::parse("[ha]\nlock_keepalive_ms = 250\ntakeover_wait_ms = 250\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("ha.takeover_wait_ms"), "{e}");
        let c = Config::parse("[ha]\nlock_keepalive_ms = 5\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("ha.lock_keepalive_ms"), "{e}");
    }

    #[test]
    fn a_database_lease_is_bounded_both_ways() {
        let db = "[store]\nmode = \"postgres\"\nurl = \"postgres://u:p@h/d\"\n[ha]\n";
        for (ms, ok) in [
            (199, false),
            (200, true),
            (3_600_000, true),
            (3_600_001, false),
        ] {
            let c = Config::parse(&format!("{db}lease_ms = {ms}\n")).unwrap();
            match c.validate() {
                Ok(()) => assert!(ok, "{ms} accepted"),
                Err(e) => {
                    assert!(!ok, "{ms} refused: {e}");
                    assert!(e.to_string().contains("ha.lease_ms"), "{e}");
                }
            }
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut c = Config::parse("[listeners]\nstomp = \"127.0.0.1:1\"").unwrap();
        c.apply(&Overrides {
            stomp: Some("127.0.0.1:2".parse().unwrap()),
            shards: Some(3),
            ..Overrides::default()
        });
        assert_eq!(c.listeners.stomp.port(), 2);
        assert_eq!(c.shard_count(), 3);
    }
}
