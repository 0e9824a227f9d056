//! The database modes' test harness: a fresh database per test on the
//! servers `ops/services.sh` starts, broker pairs on it, a producer that
//! follows the master across failovers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{body, Broker, Client};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engine {
    MariaDb,
    Postgres,
}

/// A fresh database on one of the servers, dropped on drop.
pub struct TestDb {
    pub engine: Engine,
    pub name: String,
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    pub fn new(engine: Engine) -> TestDb {
        let name = format!(
            "brokk_t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let db = TestDb { engine, name };
        db.admin_sql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    pub fn mode(&self) -> &'static str {
        match self.engine {
            Engine::MariaDb => "mysql",
            Engine::Postgres => "postgres",
        }
    }

    pub fn url(&self) -> String {
        match self.engine {
            Engine::MariaDb => format!("mysql://brokk:brokk@127.0.0.1:3306/{}", self.name),
            Engine::Postgres => format!("postgres://brokk:brokk@127.0.0.1:5432/{}", self.name),
        }
    }

    /// The database server's TCP address.
    pub fn server_addr(&self) -> SocketAddr {
        match self.engine {
            Engine::MariaDb => "127.0.0.1:3306",
            Engine::Postgres => "127.0.0.1:5432",
        }
        .parse()
        .unwrap()
    }

    /// This database's URL through `addr` (a relay to the server): over
    /// TCP only (MySQL's driver would otherwise move to the server's unix
    /// socket on a loopback address).
    pub fn url_at(&self, addr: SocketAddr) -> String {
        match self.engine {
            Engine::MariaDb => format!(
                "mysql://brokk:brokk@{addr}/{}?prefer_socket=false",
                self.name
            ),
            Engine::Postgres => format!("postgres://brokk:brokk@{addr}/{}", self.name),
        }
    }

    /// A statement outside the test database (create, drop, kill).
    pub fn admin_sql(&self, sql: &str) -> String {
        self.run_sql(None, sql)
    }

    /// A query in the test database; its rows, tab-separated.
    pub fn sql(&self, sql: &str) -> String {
        self.run_sql(Some(&self.name), sql)
    }

    /// Polls `sql` until it answers `expected` (trimmed); fails the test
    /// once `deadline` passes, with `what` and the last answer.
    pub fn wait_for(&self, sql: &str, expected: &str, deadline: Instant, what: &str) {
        loop {
            let got = self.sql(sql);
            if got.trim() == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {sql} answered {:?}, not {expected}",
                got.trim()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The engine's command-line client, to run `sql` in database `db`.
    fn client(&self, db: Option<&str>, sql: &str) -> Command {
        match self.engine {
            Engine::MariaDb => {
                let mut c = Command::new("mariadb");
                c.args([
                    "-h127.0.0.1",
                    "-P3306",
                    "-ubrokk",
                    "-pbrokk",
                    "-N",
                    "-B",
                    "-e",
                    sql,
                ]);
                if let Some(d) = db {
                    c.arg(d);
                }
                c
            }
            Engine::Postgres => {
                let mut c = Command::new("psql");
                c.env("PGPASSWORD", "brokk")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        "5432",
                        "-U",
                        "brokk",
                        "-At",
                        "-F",
                        "\t",
                    ])
                    .args(["-d", db.unwrap_or("brokk"), "-c", sql]);
                c
            }
        }
    }

    pub fn run_sql(&self, db: Option<&str>, sql: &str) -> String {
        let out = self
            .client(db, sql)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the {:?} client: {e}", self.engine));
        assert!(
            out.status.success(),
            "{:?} refused {sql:?}: {} (is it running? ops/services.sh start mariadb postgres)",
            self.engine,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Another session locks the rows `rows` selects (`SELECT ID FROM
    /// ...`, FOR UPDATE added) and lets go after `hold`; returns once they
    /// are locked. A write that touches them waits until then.
    pub fn hold_rows_locked(&self, rows: &str, hold: Duration) -> RowLock {
        let lock = format!("{rows} FOR UPDATE");
        let secs = hold.as_secs_f64();
        // The sleep, seen running on its own, says the lock was taken (the
        // statements run in order, in one transaction).
        let (mut client, sleeping) = match self.engine {
            Engine::MariaDb => (
                self.client(
                    Some(&self.name),
                    // READ COMMITTED: record locks only; InnoDB's default
                    // would also lock the gap past the last row, holding
                    // up the broker's inserts too.
                    &format!(
                        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                         BEGIN; {lock}; SELECT SLEEP({secs}); COMMIT"
                    ),
                ),
                format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE INFO = 'SELECT SLEEP({secs})' AND DB = DATABASE()"
                ),
            ),
            Engine::Postgres => {
                let mut c = self.client(Some(&self.name), &lock);
                c.args(["-1", "-c", &format!("SELECT pg_sleep({secs})")]);
                (
                    c,
                    format!(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep({secs})' \
                         AND state = 'active' AND datname = current_database()"
                    ),
                )
            }
        };
        let child = client
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the {:?} client: {e}", self.engine));
        self.wait_for(
            &sleeping,
            "1",
            Instant::now() + Duration::from_secs(10),
            "the locking session sleeps",
        );
        RowLock { child }
    }

    /// Waits until a DELETE from `table` waits for a row lock (see
    /// `hold_rows_locked`): the broker's batch carrying it is in flight.
    pub fn wait_for_blocked_delete(&self, table: &str) {
        let sql = match self.engine {
            Engine::MariaDb => format!(
                "SELECT COUNT(*) > 0 FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE 'DELETE FROM {table}%' AND DB = DATABASE()"
            ),
            Engine::Postgres => format!(
                "SELECT (COUNT(*) > 0)::int FROM pg_stat_activity WHERE query LIKE 'DELETE FROM {table}%' \
                 AND wait_event_type = 'Lock' AND datname = current_database()"
            ),
        };
        self.wait_for(
            &sql,
            "1",
            Instant::now() + Duration::from_secs(10),
            "a DELETE waits for the locked rows",
        );
    }

    /// The default lease (3 s): failovers here come from the session lock,
    /// not the lease, and a short lease only risks a loaded test machine
    /// missing renewals.
    pub fn config(&self, extra: &str) -> String {
        self.config_at(&self.url(), extra)
    }

    /// [`TestDb::config`] with another URL for this database.
    pub fn config_at(&self, url: &str, extra: &str) -> String {
        format!(
            "[store]\nmode = \"{}\"\nurl = \"{url}\"\n{extra}",
            self.mode()
        )
    }

    /// Server-side ids of the connections `pid` holds to this database
    /// (matched by client port, from `ss`).
    pub fn sessions_of(&self, pid: i32) -> Vec<String> {
        let ports = client_ports(pid);
        let rows = match self.engine {
            Engine::MariaDb => self.admin_sql(&format!(
                "SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE DB = '{}'",
                self.name
            )),
            Engine::Postgres => self.admin_sql(&format!(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            )),
        };
        rows.lines()
            .filter_map(|l| {
                let (id, host) = l.split_once('\t')?;
                let port: u16 = host.rsplit(':').next()?.trim().parse().ok()?;
                ports.contains(&port).then(|| id.to_string())
            })
            .collect()
    }

    /// Ends `pid`'s connections from the server side, as a network cut or a
    /// DBA would.
    pub fn kill_sessions_of(&self, pid: i32) -> usize {
        let ids = self.sessions_of(pid);
        for id in &ids {
            let sql = match self.engine {
                Engine::MariaDb => format!("KILL {id}"),
                Engine::Postgres => format!("SELECT pg_terminate_backend({id})"),
            };
            // A session may be gone already.
            let _ = std::panic::catch_unwind(|| self.admin_sql(&sql));
        }
        ids.len()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = match self.engine {
            Engine::MariaDb => format!("DROP DATABASE IF EXISTS {}", self.name),
            Engine::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        };
        let _ = std::panic::catch_unwind(|| self.admin_sql(&sql));
    }
}

/// Local ports of `pid`'s TCP connections to a database port.
pub fn client_ports(pid: i32) -> HashSet<u16> {
    let out = Command::new("ss")
        .args(["-tnpH"])
        .output()
        .expect("ss runs");
    let needle = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(3)?;
            let peer = f.get(4)?;
            (peer.ends_with(":3306") || peer.ends_with(":5432"))
                .then(|| local.rsplit(':').next()?.parse().ok())
                .flatten()
        })
        .collect()
}

pub use super::free_addr;

/// `#[test]`s `mariadb::NAME` and `postgres::NAME` for each `fn NAME(Engine)`
/// of the calling test file.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),*) => {
        mod mariadb {
            $(#[test] fn $name() { super::$name($crate::common::db::Engine::MariaDb) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::common::db::Engine::Postgres) })*
        }
    };
}

/// One broker of a pair: its own ports, the shared database.
pub struct Node {
    pub stomp: String,
    pub admin: String,
    /// Fixed too: a JMS client's `failover:` URL names both brokers.
    pub openwire: String,
}

impl Node {
    pub fn new() -> Node {
        Node {
            stomp: free_addr(),
            admin: free_addr(),
            openwire: free_addr(),
        }
    }

    pub fn start(&self, db: &TestDb, dir: &std::path::Path) -> Broker {
        self.start_env(db, dir, "", &[])
    }

    /// [`Node::start`] with `url` for the database.
    pub fn start_at(&self, db: &TestDb, url: &str, dir: &std::path::Path) -> Broker {
        Broker::spawn_env(Some(&db.config_at(url, "")), &self.args(), Some(dir), &[])
    }

    /// [`Node::start`] with more configuration (TOML after the `[store]`
    /// lines) and extra environment variables (fault switches).
    pub fn start_env(
        &self,
        db: &TestDb,
        dir: &std::path::Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Broker {
        Broker::spawn_env(Some(&db.config(config)), &self.args(), Some(dir), env)
    }

    fn args(&self) -> Vec<String> {
        [
            "--stomp",
            &self.stomp,
            "--admin",
            &self.admin,
            "--openwire",
            &self.openwire,
            "--shards",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn addr(&self) -> SocketAddr {
        self.stomp.parse().unwrap()
    }
}

/// `b`, which is to be the only broker on its database: master at once, or
/// within 30 s when the database has not yet seen the last one's
/// connections close (its session lock is still held meanwhile).
pub fn as_master(mut b: Broker) -> Broker {
    if is_standby(&b) {
        b.wait_for_master_within(30);
    }
    b
}

/// Persistent SENDs with receipts to `/queue/ha`, following the master
/// across failovers (the unreceipted one is sent again); what was
/// receipted is in `receipted`.
pub struct Producer {
    pub receipted: Arc<Mutex<Vec<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    pub fn start(brokers: [SocketAddr; 2]) -> Producer {
        Producer::start_any(brokers.to_vec())
    }

    /// Follows whichever of `brokers` serves (zk mode has three).
    pub fn start_any(brokers: Vec<SocketAddr>) -> Producer {
        Producer::start_from(brokers, 0)
    }

    /// [`Producer::start_any`], numbering its messages from `first` (so
    /// that several producers' never meet).
    pub fn start_from(brokers: Vec<SocketAddr>, first: u64) -> Producer {
        let receipted: Arc<Mutex<Vec<u64>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let receipted = receipted.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = first;
                let mut which = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut p) = connect_serving(&brokers, &mut which) else {
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let id = n.to_string();
                        p.frame(
                            "SEND",
                            &[
                                ("destination", "/queue/ha"),
                                ("persistent", "true"),
                                ("receipt", &id),
                            ],
                            id.as_bytes(),
                        );
                        match p.recv_timeout(Duration::from_secs(5)) {
                            Some(f) if f.command.as_str() == "RECEIPT" => {
                                receipted.lock().unwrap().push(n);
                                n += 1;
                            }
                            _ => {
                                which = (which + 1) % brokers.len();
                                break;
                            }
                        }
                    }
                }
            })
        };
        Producer {
            receipted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.receipted.lock().unwrap().len()
    }

    /// Waits until `n` more receipts came; fails after 60 s.
    pub fn wait_more(&self, n: usize) {
        let target = self.count() + n;
        let end = Instant::now() + Duration::from_secs(60);
        while self.count() < target {
            assert!(
                Instant::now() < end,
                "no progress: {} receipts, wanted {target}",
                self.count()
            );
            assert!(
                !self.thread.as_ref().unwrap().is_finished(),
                "the producer died"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.receipted.lock().unwrap().clone()
    }
}

/// A STOMP session with `brokers[*which]`, or None (and `which` moves on
/// to the next) when it does not serve. A broker killed between accepting
/// and answering CONNECT is a failover like any other.
fn connect_serving(brokers: &[SocketAddr], which: &mut usize) -> Option<Client> {
    match Client::try_connect(brokers[*which], &[("accept-version", "1.2")]) {
        Some(c) if c.is_connected() => Some(c),
        other => {
            *which = (*which + 1) % brokers.len();
            if other.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        }
    }
}

/// Consumes `/queue/ha` as it fills, acknowledging each message, and
/// follows whichever of `brokers` serves; what it got is in `got` (a
/// message may come twice: one whose ACK a failover lost).
pub struct Consumer {
    pub got: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    pub fn start(brokers: [SocketAddr; 2]) -> Consumer {
        let got: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let got = got.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut which = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut c) = connect_serving(&brokers, &mut which) else {
                        continue;
                    };
                    // The broker may die at any point: every write may fail.
                    let subscribed = c.try_frame(
                        "SUBSCRIBE",
                        &[
                            ("id", "live"),
                            ("destination", "/queue/ha"),
                            ("ack", "client-individual"),
                            ("activemq.prefetchSize", "100"),
                        ],
                        b"",
                    );
                    while subscribed && !stop.load(Ordering::Relaxed) {
                        match c.recv_timeout(Duration::from_millis(500)) {
                            Some(m) if m.command.as_str() == "MESSAGE" => {
                                got.lock().unwrap().insert(body(&m).parse().unwrap());
                                let id = m.header_str("ack").unwrap_or_default().to_string();
                                if !c.try_frame("ACK", &[("id", &id)], b"") {
                                    which = 1 - which;
                                    break;
                                }
                            }
                            // Nothing for a while: quiet, or the broker
                            // is gone; look elsewhere.
                            _ => {
                                which = 1 - which;
                                break;
                            }
                        }
                    }
                }
            })
        };
        Consumer {
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> HashSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.got.lock().unwrap().clone()
    }
}

/// Everything on `/queue/ha`, acknowledged.
pub fn drain(b: &Broker) -> HashSet<u64> {
    drain_at(b.stomp)
}

/// [`drain`] from the broker serving STOMP at `stomp`.
pub fn drain_at(stomp: SocketAddr) -> HashSet<u64> {
    let mut c = Client::connect(stomp, &[("accept-version", "1.2")]);
    c.subscribe(
        "drain",
        "/queue/ha",
        "client-individual",
        &[("activemq.prefetchSize", "1000")],
    );
    let mut got = HashSet::new();
    while let Some(m) = c.recv_timeout(Duration::from_millis(1500)) {
        assert_eq!(m.command.as_str(), "MESSAGE");
        got.insert(body(&m).parse().unwrap());
        c.ack(&m);
    }
    got
}

pub fn assert_all_present(receipted: &[u64], got: &HashSet<u64>) {
    let lost: Vec<_> = receipted.iter().filter(|i| !got.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "{} receipted messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Waits (10 s at most) until no row is left in any of `tables`: the
/// writer commits in batches, so the last deletions may still be on their
/// way.
pub fn assert_tables_empty(db: &TestDb, tables: &[&str]) {
    let end = Instant::now() + Duration::from_secs(10);
    for table in tables {
        loop {
            let rows = db.sql(&format!("SELECT COUNT(*) FROM {table}"));
            if rows.trim() == "0" {
                break;
            }
            if Instant::now() >= end {
                let cols = match *table {
                    "ACTIVEMQ_MSGS" => "ID, CONTAINER, XID, LENGTH(MSG)",
                    _ => "*",
                };
                let left = db.sql(&format!("SELECT {cols} FROM {table} LIMIT 20"));
                panic!(
                    "{table}: {} rows left after everything was consumed ({cols}):\n{left}",
                    rows.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn is_standby(b: &Broker) -> bool {
    b.role_line.starts_with("brokk standby")
}

/// A session holding rows locked (see [`TestDb::hold_rows_locked`]).
pub struct RowLock {
    child: std::process::Child,
}

impl RowLock {
    /// Until the session committed and ended.
    pub fn wait(mut self) {
        let status = crate::common::wait_child(&mut self.child, 30, "the locking session");
        assert!(status.success(), "the locking session failed: {status}");
    }
}
