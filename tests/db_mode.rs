//! The database modes against real MariaDB and PostgreSQL servers (started
//! by `ops/services.sh`, which the test command runs first): a master/standby
//! pair on one database, SIGKILLs under load, a master cut off from the
//! database, a wrong password, and ActiveMQ's table layout. Each test makes
//! its own database and drops it afterwards.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{body, Broker, Client};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    MariaDb,
    Postgres,
}

/// A fresh database on one of the servers, dropped on drop.
struct TestDb {
    engine: Engine,
    name: String,
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    fn new(engine: Engine) -> TestDb {
        let name = format!(
            "brokk_t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let db = TestDb { engine, name };
        db.admin_sql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn mode(&self) -> &'static str {
        match self.engine {
            Engine::MariaDb => "mysql",
            Engine::Postgres => "postgres",
        }
    }

    fn url(&self) -> String {
        match self.engine {
            Engine::MariaDb => format!("mysql://brokk:brokk@127.0.0.1:3306/{}", self.name),
            Engine::Postgres => format!("postgres://brokk:brokk@127.0.0.1:5432/{}", self.name),
        }
    }

    /// A statement outside the test database (create, drop, kill).
    fn admin_sql(&self, sql: &str) -> String {
        self.run_sql(None, sql)
    }

    /// A query in the test database; its rows, tab-separated.
    fn sql(&self, sql: &str) -> String {
        self.run_sql(Some(&self.name), sql)
    }

    fn run_sql(&self, db: Option<&str>, sql: &str) -> String {
        let out = match self.engine {
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
                c.output()
            }
            Engine::Postgres => Command::new("psql")
                .env("PGPASSWORD", "brokk")
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
                .args(["-d", db.unwrap_or("brokk"), "-c", sql])
                .output(),
        }
        .unwrap_or_else(|e| panic!("cannot run the {:?} client: {e}", self.engine));
        assert!(
            out.status.success(),
            "{:?} refused {sql:?}: {} (is it running? ops/services.sh start mariadb postgres)",
            self.engine,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[store]\nmode = \"{}\"\nurl = \"{}\"\n[ha]\nlease_ms = 1500\n{extra}",
            self.mode(),
            self.url()
        )
    }

    /// Server-side ids of the connections `pid` holds to this database
    /// (matched by client port, from `ss`).
    fn sessions_of(&self, pid: i32) -> Vec<String> {
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
    fn kill_sessions_of(&self, pid: i32) -> usize {
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
fn client_ports(pid: i32) -> HashSet<u16> {
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

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// One broker of a pair: its own ports, the shared database.
struct Node {
    stomp: String,
    admin: String,
}

impl Node {
    fn new() -> Node {
        Node {
            stomp: free_addr(),
            admin: free_addr(),
        }
    }

    fn start(&self, db: &TestDb, dir: &std::path::Path) -> Broker {
        let args: Vec<String> = [
            "--stomp",
            &self.stomp,
            "--admin",
            &self.admin,
            "--shards",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Broker::spawn_any(Some(&db.config("")), &args, Some(dir))
    }

    fn addr(&self) -> SocketAddr {
        self.stomp.parse().unwrap()
    }
}

/// Persistent SENDs with receipts to `/queue/ha`, following the master
/// across failovers (the unreceipted one is sent again); what was
/// receipted is in `receipted`.
struct Producer {
    receipted: Arc<Mutex<Vec<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(brokers: [SocketAddr; 2]) -> Producer {
        let receipted: Arc<Mutex<Vec<u64>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let receipted = receipted.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut which = 0;
                while !stop.load(Ordering::Relaxed) {
                    if std::net::TcpStream::connect(brokers[which]).is_err() {
                        which = 1 - which;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let mut p = Client::connect(brokers[which], &[("accept-version", "1.2")]);
                    if !p.is_connected() {
                        which = 1 - which;
                        continue;
                    }
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
                                which = 1 - which;
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

    fn count(&self) -> usize {
        self.receipted.lock().unwrap().len()
    }

    /// Waits until `n` more receipts came; fails after 60 s.
    fn wait_more(&self, n: usize) {
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

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.receipted.lock().unwrap().clone()
    }
}

/// Everything on `/queue/ha`, acknowledged.
fn drain(b: &Broker) -> HashSet<u64> {
    let mut c = b.client();
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

fn assert_all_present(receipted: &[u64], got: &HashSet<u64>) {
    let lost: Vec<_> = receipted.iter().filter(|i| !got.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "{} receipted messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

fn is_standby(b: &Broker) -> bool {
    b.role_line.starts_with("brokk standby")
}

/// SIGKILL the master under persistent load, three times: the standby takes
/// over each time, the killed broker comes back as standby, and every
/// receipted message is there at the end.
fn kills_under_load(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let mut brokers = [Some(nodes[0].start(&db, dir.path())), None];
    assert!(!is_standby(brokers[0].as_ref().unwrap()));
    brokers[1] = Some(nodes[1].start(&db, dir.path()));
    assert!(is_standby(brokers[1].as_ref().unwrap()), "the second waits");
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    let mut master = 0;
    for _ in 0..3 {
        producer.wait_more(200);
        brokers[master].as_mut().unwrap().kill9();
        let standby = 1 - master;
        brokers[standby].as_mut().unwrap().wait_for_master();
        // The killed one returns, as standby.
        let back = nodes[master].start(&db, dir.path());
        assert!(is_standby(&back), "{}", back.role_line);
        brokers[master] = Some(back);
        master = standby;
        producer.wait_more(200);
    }
    let receipted = producer.finish();
    let got = drain(brokers[master].as_ref().unwrap());
    assert_all_present(&receipted, &got);
    // Nothing left behind: every drained message's row is gone.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = db.sql("SELECT COUNT(*) FROM ACTIVEMQ_MSGS");
        if rows.trim() == "0" {
            break;
        }
        assert!(Instant::now() < end, "rows left after draining: {rows}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The master loses its database connections (ended from the server side)
/// while the standby waits: the standby takes the lease, the old master
/// stops serving (exit 3), and nothing receipted is lost.
fn cut_off_master(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let mut a = nodes[0].start(&db, dir.path());
    let mut b = nodes[1].start(&db, dir.path());
    assert!(is_standby(&b));
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    producer.wait_more(200);
    assert!(db.kill_sessions_of(a.pid()) > 0, "the master has sessions");
    b.wait_for_master();
    let status = a.wait_exit(30);
    assert_eq!(status.code(), Some(3), "the old master stops, fenced");
    producer.wait_more(200);
    let receipted = producer.finish();
    assert_all_present(&receipted, &drain(&b));
}

/// ActiveMQ's JDBC tables, with its column names, made at first start.
fn activemq_tables(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let b = Node::new().start(&db, dir.path());
    assert!(!is_standby(&b));
    let cols = |table: &str| -> Vec<String> {
        let q = match engine {
            Engine::MariaDb => format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION",
                db.name
            ),
            Engine::Postgres => format!(
                "SELECT upper(column_name) FROM information_schema.columns WHERE table_catalog = '{}' AND table_name = lower('{table}') ORDER BY ordinal_position",
                db.name
            ),
        };
        db.sql(&q).lines().map(|s| s.to_uppercase()).collect()
    };
    assert_eq!(
        cols("ACTIVEMQ_MSGS"),
        [
            "ID",
            "CONTAINER",
            "MSGID_PROD",
            "MSGID_SEQ",
            "EXPIRATION",
            "MSG",
            "PRIORITY",
            "XID"
        ]
    );
    assert_eq!(
        cols("ACTIVEMQ_ACKS"),
        [
            "CONTAINER",
            "SUB_DEST",
            "CLIENT_ID",
            "SUB_NAME",
            "SELECTOR",
            "LAST_ACKED_ID",
            "PRIORITY",
            "XID"
        ]
    );
    assert_eq!(cols("ACTIVEMQ_LOCK"), ["ID", "TIME", "BROKER_NAME"]);
    // Operators' queries keep working: a message per row, by container.
    let mut c = b.client();
    c.send_sync("/queue/orders", "x", &[("persistent", "true")]);
    let rows = db.sql("SELECT CONTAINER, COUNT(*) FROM ACTIVEMQ_MSGS GROUP BY CONTAINER");
    assert_eq!(rows.trim(), "queue://orders\t1");
}

/// A wrong password at start: a clear error naming `store.url`, exit 2.
fn wrong_password(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let config = db.config("").replace("brokk:brokk@", "brokk:wrong@");
    let path = dir.path().join("brokk.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["serve", "--stomp", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--config")
        .arg(&path)
        .env("BROKK_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store.url"), "{err}");
    assert!(!err.contains("wrong"), "the password is not printed: {err}");
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod mariadb {
            $(#[test] fn $name() { super::$name(super::Engine::MariaDb) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::Engine::Postgres) })*
        }
    };
}

on_both!(
    kills_under_load,
    cut_off_master,
    activemq_tables,
    wrong_password
);
