//! The database master lease (`ha::db_lease`) against the real MariaDB and
//! PostgreSQL of `ops/services.sh` (each test in a database of its own,
//! dropped afterwards). Every broker is a thread with its own current-thread
//! tokio runtime, so "crashing" one closes its sockets as a killed process
//! would. Every wait has a deadline; none asserts a latency.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use brokk::ha::db_lease::{acquire, keep, LeaseConfig, Lost};
use brokk::store::sql::write::fence_query;
use brokk::store::sql::{Dialect, LeaseToken, SqlError};
use mysql_async::prelude::Queryable;

const MY_BASE: &str = "mysql://brokk:brokk@127.0.0.1:3306/brokk";
const PG_BASE: &str = "postgres://brokk:brokk@127.0.0.1:5432/brokk";
/// Generous: takeover after a dead holder is ~1 ms, but the machine is
/// shared.
const DEADLINE: Duration = Duration::from_secs(5);

fn rt() -> tokio::runtime::Runtime {
    // RUST_LOG=brokk=debug shows the lease's own story.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("cannot reach {what}: {e} - run `ops/services.sh start mariadb postgres`")
}

async fn my_conn(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(url).expect("mysql url");
    let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
    match mysql_async::Conn::new(opts).await {
        Ok(c) => c,
        Err(e) => unreachable("MariaDB at 127.0.0.1:3306", e),
    }
}

async fn pg_conn(url: &str) -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => unreachable("PostgreSQL at 127.0.0.1:5432", e),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh database with the `ACTIVEMQ_LOCK` table and its row.
struct TestDb {
    dialect: Dialect,
    name: String,
}

impl TestDb {
    fn new(dialect: Dialect, tag: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "brokk_lease_{}_{}_{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let db = TestDb { dialect, name };
        // The fence table without its row: taking the lease makes it.
        let create = "CREATE TABLE IF NOT EXISTS ACTIVEMQ_LOCK \
                      (ID BIGINT NOT NULL PRIMARY KEY, TIME BIGINT, BROKER_NAME VARCHAR(250)); \
                      CREATE TABLE IF NOT EXISTS BROKK_FENCE \
                      (ID BIGINT NOT NULL PRIMARY KEY, HOLDER VARCHAR(250))";
        rt().block_on(async {
            match dialect {
                Dialect::MySql => {
                    let mut admin = my_conn(MY_BASE).await;
                    admin
                        .query_drop(format!("CREATE DATABASE {}", db.name))
                        .await
                        .expect("create database");
                    let mut c = my_conn(&db.url()).await;
                    c.query_drop(create).await.expect("create table");
                    c.query_drop(
                        "INSERT IGNORE INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL)",
                    )
                    .await
                    .expect("insert row");
                    let _ = c.disconnect().await;
                    let _ = admin.disconnect().await;
                }
                Dialect::Postgres => {
                    let admin = pg_conn(PG_BASE).await;
                    admin
                        .batch_execute(&format!("CREATE DATABASE {}", db.name))
                        .await
                        .expect("create database");
                    let c = pg_conn(&db.url()).await;
                    c.batch_execute(create).await.expect("create table");
                    c.batch_execute(
                        "INSERT INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL) \
                         ON CONFLICT (ID) DO NOTHING",
                    )
                    .await
                    .expect("insert row");
                }
            }
        });
        db
    }

    fn url(&self) -> String {
        match self.dialect {
            Dialect::MySql => format!("mysql://brokk:brokk@127.0.0.1:3306/{}", self.name),
            Dialect::Postgres => format!("postgres://brokk:brokk@127.0.0.1:5432/{}", self.name),
        }
    }

    /// A connection of the test's own (a third party: operator, or a hung
    /// master's writer).
    async fn admin(&self) -> Admin {
        admin_at(self.dialect, &self.url()).await
    }

    /// Who the row names.
    fn holder(&self) -> Option<String> {
        rt().block_on(async { self.admin().await.holder().await })
    }

    /// Whom the fence row names (rewritten with the lease row when taken).
    fn fence_holder(&self) -> Option<String> {
        rt().block_on(async { self.admin().await.fence_holder().await })
    }

    /// Kills connections by server id, as an operator would; returns when
    /// the first kill was sent.
    fn kill(&self, ids: &[u64]) -> Instant {
        rt().block_on(async {
            let mut admin = self.admin().await;
            let sent = Instant::now();
            for id in ids {
                match &mut admin {
                    Admin::My(c) => c
                        .query_drop(format!("KILL CONNECTION {id}"))
                        .await
                        .expect("kill"),
                    Admin::Pg(c) => {
                        c.execute("SELECT pg_terminate_backend($1)", &[&(*id as i32)])
                            .await
                            .expect("pg_terminate_backend");
                    }
                }
            }
            sent
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dialect = self.dialect;
        // A thread of its own: a panicking test may be inside a runtime.
        let r = thread::spawn(move || {
            rt().block_on(async {
                match dialect {
                    Dialect::MySql => {
                        let mut admin = my_conn(MY_BASE).await;
                        // Hung connections in a transaction would block DROP.
                        let ids: Vec<u64> = admin
                            .query(format!(
                                "SELECT ID FROM information_schema.PROCESSLIST \
                                 WHERE DB = '{name}' AND ID <> CONNECTION_ID()"
                            ))
                            .await
                            .unwrap_or_default();
                        for id in ids {
                            let _ = admin.query_drop(format!("KILL CONNECTION {id}")).await;
                        }
                        let _ = admin
                            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                            .await;
                        let _ = admin.disconnect().await;
                    }
                    Dialect::Postgres => {
                        let admin = pg_conn(PG_BASE).await;
                        let _ = admin
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                }
            })
        })
        .join();
        if r.is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

async fn admin_at(dialect: Dialect, url: &str) -> Admin {
    match dialect {
        Dialect::MySql => Admin::My(my_conn(url).await),
        Dialect::Postgres => Admin::Pg(pg_conn(url).await),
    }
}

enum Admin {
    My(mysql_async::Conn),
    Pg(tokio_postgres::Client),
}

impl Admin {
    async fn fence_holder(&mut self) -> Option<String> {
        const SQL: &str = "SELECT HOLDER FROM BROKK_FENCE WHERE ID = 1";
        match self {
            Admin::My(c) => {
                let r: Option<Option<String>> = c.query_first(SQL).await.expect("read fence");
                r.flatten()
            }
            Admin::Pg(c) => c.query_one(SQL, &[]).await.expect("read fence").get(0),
        }
    }

    async fn holder(&mut self) -> Option<String> {
        match self {
            Admin::My(c) => {
                let r: Option<Option<String>> = c
                    .query_first("SELECT BROKER_NAME FROM ACTIVEMQ_LOCK WHERE ID = 1")
                    .await
                    .expect("read row");
                r.flatten()
            }
            Admin::Pg(c) => c
                .query_one("SELECT BROKER_NAME FROM ACTIVEMQ_LOCK WHERE ID = 1", &[])
                .await
                .expect("read row")
                .get(0),
        }
    }

    /// Opens a transaction that begins as every write transaction does
    /// (its lease check, with the locks it takes), and leaves it open.
    async fn lock_fence_shared(&mut self) {
        match self {
            Admin::My(c) => {
                c.query_drop("START TRANSACTION").await.expect("begin");
                c.query_drop(fence_query(Dialect::MySql))
                    .await
                    .expect("the writer's lease check");
            }
            Admin::Pg(c) => {
                c.batch_execute(&format!("BEGIN; {}", fence_query(Dialect::Postgres)))
                    .await
                    .expect("the writer's lease check");
            }
        }
    }

    /// Whether the open transaction commits (false once its session was
    /// killed).
    async fn commit(&mut self) -> bool {
        match self {
            Admin::My(c) => c.query_drop("COMMIT").await.is_ok(),
            Admin::Pg(c) => c.batch_execute("COMMIT").await.is_ok(),
        }
    }
}

/// A write transaction of a master, held open on a thread of its own: it
/// began as every write transaction does (see `lock_fence_shared`).
struct OpenWrite {
    finish: tokio::sync::oneshot::Sender<()>,
    committed: mpsc::Receiver<bool>,
    thread: thread::JoinHandle<()>,
}

impl OpenWrite {
    /// Returns once the transaction holds its locks.
    fn start(d: Dialect, url: String) -> OpenWrite {
        Self::start_on(d, url, None)
    }

    /// [`OpenWrite::start`] on a connection of the broker's own MySQL
    /// pool, set up as a broker with lease `lease` sets it up.
    fn start_in_pool(url: String, lease: Duration) -> OpenWrite {
        Self::start_on(Dialect::MySql, url, Some(lease))
    }

    fn start_on(d: Dialect, url: String, pool: Option<Duration>) -> OpenWrite {
        let (locked_tx, locked) = mpsc::channel();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (committed_tx, committed) = mpsc::channel();
        let thread = on_thread(move || async move {
            // Kept to the end: the pool's connection lives in it.
            let mut _db = None;
            let mut w = match pool {
                None => admin_at(d, &url).await,
                Some(lease) => {
                    let idle = brokk::store::sql::conn::idle_transaction_limit(lease);
                    let db = brokk::store::sql::conn::connect(&url, 1, idle)
                        .await
                        .expect("the broker's pool");
                    let conn = match &db {
                        brokk::store::sql::conn::Db::MySql(p) => {
                            p.get_conn().await.expect("a pool connection")
                        }
                        brokk::store::sql::conn::Db::Postgres(_) => unreachable!("MySQL only"),
                    };
                    _db = Some(db);
                    Admin::My(conn)
                }
            };
            w.lock_fence_shared().await;
            let _ = locked_tx.send(());
            let _ = finished.await;
            let _ = committed_tx.send(w.commit().await);
        });
        locked
            .recv_timeout(DEADLINE)
            .expect("the write transaction holds the fence row");
        OpenWrite {
            finish,
            committed,
            thread,
        }
    }

    /// Commits it: whether that worked.
    fn commit(self) -> bool {
        let _ = self.finish.send(());
        let committed = self
            .committed
            .recv_timeout(DEADLINE)
            .expect("the writer reports");
        self.thread.join().expect("writer thread");
        committed
    }
}

/// What a broker thread reports.
#[derive(Debug)]
enum Ev {
    Waiting,
    /// Won, at, with its connections' server ids.
    Acquired(Instant, Vec<u64>),
    Lost(Lost, Instant),
    Released(Instant),
    Crashed(Instant),
    /// Renewal result: Err((fenced?, message)).
    Renewed(Result<(), (bool, String)>),
    Failed(String),
    SessionLock(bool),
}

enum Cmd {
    /// Release cleanly.
    Release,
    /// Drop the lease without release and end the runtime (killed process).
    Crash,
    /// Renew once, report.
    Renew,
    /// Report whether we hold the session lock.
    HasSessionLock,
}

/// A broker: a thread with its own runtime that acquires, then (if
/// `renews`) keeps the lease, and obeys commands.
struct Broker {
    events: mpsc::Receiver<Ev>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<thread::JoinHandle<()>>,
}

fn on_thread<F, Fut>(f: F) -> thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    thread::spawn(move || rt().block_on(f()))
}

impl Broker {
    fn start(cfg: &LeaseConfig, token: &str, renews: bool) -> Broker {
        let (ev, events) = mpsc::channel();
        let (cmds, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = cfg.clone();
        let token = LeaseToken(token.to_string());
        let thread = on_thread(move || async move {
            let waiting = ev.clone();
            let mut lease = match acquire(&cfg, &token, move || {
                let _ = waiting.send(Ev::Waiting);
            })
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    let _ = ev.send(Ev::Failed(e.to_string()));
                    return;
                }
            };
            let _ = ev.send(Ev::Acquired(Instant::now(), lease.backend_ids()));
            loop {
                let cmd = if renews {
                    tokio::select! {
                        lost = keep(&mut lease) => {
                            let _ = ev.send(Ev::Lost(lost, Instant::now()));
                            return;
                        }
                        cmd = cmd_rx.recv() => cmd,
                    }
                } else {
                    cmd_rx.recv().await
                };
                match cmd {
                    None | Some(Cmd::Crash) => {
                        let _ = ev.send(Ev::Crashed(Instant::now()));
                        return;
                    }
                    Some(Cmd::Release) => {
                        let t = Instant::now();
                        lease.release().await;
                        let _ = ev.send(Ev::Released(t));
                        return;
                    }
                    Some(Cmd::Renew) => {
                        let r = lease.renew().await.map_err(|e| {
                            let fenced = matches!(e, SqlError::Fenced(_));
                            (fenced, e.to_string())
                        });
                        let _ = ev.send(Ev::Renewed(r));
                    }
                    Some(Cmd::HasSessionLock) => {
                        let _ = ev.send(Ev::SessionLock(lease.has_session_lock()));
                    }
                }
            }
        });
        Broker {
            events,
            cmds,
            thread: Some(thread),
        }
    }

    fn next(&self, within: Duration, what: &str) -> Ev {
        match self.events.recv_timeout(within) {
            Ok(Ev::Failed(e)) => panic!("{what}: the broker failed: {e}"),
            Ok(ev) => ev,
            Err(e) => panic!("{what}: nothing within {within:?} ({e})"),
        }
    }

    fn acquired(&self, within: Duration, what: &str) -> (Instant, Vec<u64>) {
        match self.next(within, what) {
            Ev::Acquired(t, ids) => (t, ids),
            other => panic!("{what}: expected Acquired, got {other:?}"),
        }
    }

    fn waiting(&self, what: &str) {
        match self.next(DEADLINE, what) {
            Ev::Waiting => {}
            other => panic!("{what}: expected Waiting, got {other:?}"),
        }
    }

    fn send(&self, cmd: Cmd) {
        self.cmds.send(cmd).expect("broker thread gone");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Crash);
        // A broker still waiting for the lease obeys no command: after a
        // failed expectation, joining it would turn the failure into a hang.
        if std::thread::panicking() {
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cfg(db: &TestDb, lease_ms: u64, renew_ms: u64) -> LeaseConfig {
    LeaseConfig {
        url: db.url(),
        lease: Duration::from_millis(lease_ms),
        renew_every: Duration::from_millis(renew_ms),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (a) the first broker wins at once; a second waits while the first
/// renews (past a whole lease); (f) a clean release lets it in at once.
/// The lease is twelve renewals long: under CI load (every test of this
/// file at once on two cores) a 1 s lease saw a renewal late by more than
/// its lease, and then the waiter rightly took over.
fn wait_then_release(d: Dialect) {
    let db = TestDb::new(d, "release");
    let cfg = cfg(&db, 3000, 250);
    let a = Broker::start(&cfg, "broker-a", true);
    a.acquired(DEADLINE, "first acquire");
    assert_eq!(db.holder().as_deref(), Some("broker-a"));
    assert_eq!(db.fence_holder().as_deref(), Some("broker-a"));
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    // The first renews; the second must not get in, even after leases.
    if let Ok(ev) = b.events.recv_timeout(Duration::from_millis(4000)) {
        panic!("the waiter got {ev:?} while the master renewed");
    }
    if let Ok(ev) = a.events.try_recv() {
        panic!("the master reported {ev:?} while renewing");
    }
    assert_eq!(db.holder().as_deref(), Some("broker-a"));
    a.send(Cmd::Release);
    let released = match a.next(DEADLINE, "release") {
        Ev::Released(t) => t,
        other => panic!("expected Released, got {other:?}"),
    };
    let (got, _) = b.acquired(DEADLINE, "takeover after release");
    eprintln!(
        "{d:?}: takeover after release: {:.1} ms",
        ms(got.saturating_duration_since(released))
    );
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    assert_eq!(db.fence_holder().as_deref(), Some("broker-b"));
    b.send(Cmd::Release);
    b.next(DEADLINE, "release b");
}

/// (b) a killed master (its connections closed, lease far from expiry):
/// the waiter takes over at once, through the session lock.
fn crash_takeover(d: Dialect) {
    let db = TestDb::new(d, "crash");
    let cfg = cfg(&db, 30_000, 1000);
    let a = Broker::start(&cfg, "broker-a", true);
    a.acquired(DEADLINE, "first acquire");
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    a.send(Cmd::Crash);
    let crashed = match a.next(DEADLINE, "crash") {
        Ev::Crashed(t) => t,
        other => panic!("expected Crashed, got {other:?}"),
    };
    let (got, _) = b.acquired(DEADLINE, "takeover after a crash");
    eprintln!(
        "{d:?}: takeover after the holder's connections closed: {:.1} ms",
        ms(got.saturating_duration_since(crashed))
    );
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    // Fenced: every write of the killed master's from now on commits
    // nothing (see `store::sql::write`).
    assert_eq!(db.fence_holder().as_deref(), Some("broker-b"));
}

/// (c) the server kills the master's connections: the master's keep loop
/// reports the session lost (well before the lease would expire), and the
/// waiter takes over.
fn server_kill(d: Dialect) {
    let db = TestDb::new(d, "kill");
    let cfg = cfg(&db, 10_000, 1000);
    let a = Broker::start(&cfg, "broker-a", true);
    let (_, ids) = a.acquired(DEADLINE, "first acquire");
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    let killed = db.kill(&ids);
    let (got, _) = b.acquired(DEADLINE, "takeover after a server-side kill");
    match a.next(cfg.renew_every + DEADLINE, "master notices the kill") {
        Ev::Lost(Lost::SessionDied(r), at) => eprintln!(
            "{d:?}: server-side kill: waiter took over in {:.1} ms, master noticed in {:.1} ms ({r})",
            ms(got.saturating_duration_since(killed)),
            ms(at.saturating_duration_since(killed))
        ),
        other => panic!("expected Lost(SessionDied), got {other:?}"),
    }
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
}

/// (d) a hung master (session lock held, no renewals) loses once its lease
/// expired; (e) its conditional renewal then reports Fenced.
fn hung_master(d: Dialect) {
    let db = TestDb::new(d, "hung");
    let cfg = cfg(&db, 1000, 250);
    let a = Broker::start(&cfg, "broker-a", false);
    a.acquired(DEADLINE, "first acquire");
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    b.acquired(cfg.lease + DEADLINE, "takeover from a hung master");
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    a.send(Cmd::Renew);
    match a.next(DEADLINE, "the old master renews") {
        Ev::Renewed(Err((true, _))) => {}
        other => panic!("expected a Fenced renewal, got {other:?}"),
    }
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
}

/// A write transaction that lasts three leases (a drain's huge DELETE, a
/// database stalled on I/O) while the master renews: every renewal goes
/// through, the master keeps its lease, and a waiting standby stays out.
/// (When the writers share-locked the lease row itself, this cost a
/// healthy master its lease.)
fn long_writer_does_not_starve_the_renewal(d: Dialect) {
    let db = TestDb::new(d, "longtx");
    let cfg = cfg(&db, 1000, 250);
    let a = Broker::start(&cfg, "broker-a", true);
    a.acquired(DEADLINE, "first acquire");
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    let writer = OpenWrite::start(d, db.url());
    // Three leases with the fence row share-locked: a renewal stuck behind
    // it would end the lease within one (the master reports Lost::Expired,
    // and the waiter takes the expired row).
    if let Ok(ev) = a.events.recv_timeout(cfg.lease * 3) {
        panic!("the master reported {ev:?} while a write transaction was open");
    }
    if let Ok(ev) = b.events.try_recv() {
        panic!("the waiter got {ev:?} while the master renewed");
    }
    assert_eq!(db.holder().as_deref(), Some("broker-a"));
    assert!(writer.commit(), "the long write transaction commits");
    // Dropped in order: the waiter's thread obeys only once it holds the
    // lease.
    drop(a);
    b.acquired(DEADLINE, "takeover after the master crashed");
}

/// A hung master with a write transaction open (a shared lock on the fence
/// row, as the writer's lease check takes): the waiter still takes over after
/// the lease, killing that transaction's session.
fn hung_writer(d: Dialect) {
    let db = TestDb::new(d, "writer");
    let cfg = cfg(&db, 1000, 250);
    let a = Broker::start(&cfg, "broker-a", false);
    a.acquired(DEADLINE, "first acquire");
    let writer = OpenWrite::start(d, db.url());
    let b = Broker::start(&cfg, "broker-b", true);
    b.waiting("second acquire");
    b.acquired(
        cfg.lease * 3 + DEADLINE,
        "takeover past a hung write transaction",
    );
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    assert!(
        !writer.commit(),
        "the hung writer's session should have been killed"
    );
}

/// `cfg` as another MariaDB account sees it (`brokk@localhost`, over the
/// unix socket that ops/services.sh keeps in its state directory): neither
/// may kill the other's sessions.
fn other_account(cfg: &LeaseConfig, db: &TestDb) -> LeaseConfig {
    let state = std::env::var("BROKK_SERVICES_DIR")
        .unwrap_or_else(|_| "/var/lib/brokk-services".to_string());
    let socket = format!("{state}/mariadb/sock");
    let mut other = cfg.clone();
    other.url = format!("mysql://brokk:brokk@localhost/{}?socket={socket}", db.name);
    other
}

/// A hung master of another database account (MariaDB `brokk@localhost`
/// over the unix socket): its session-lock connection cannot be killed, so
/// the waiter takes the expired row without the session lock, and picks the
/// session lock up at a renewal once the hung broker is gone.
#[test]
fn mysql_hung_master_other_account() {
    let db = TestDb::new(Dialect::MySql, "account");
    let cfg = cfg(&db, 1000, 250);
    let other = other_account(&cfg, &db);
    let a = Broker::start(&other, "broker-a", false);
    a.acquired(DEADLINE, "first acquire (unix socket account)");
    let b = Broker::start(&cfg, "broker-b", false);
    b.waiting("second acquire");
    b.acquired(
        cfg.lease + DEADLINE,
        "takeover from a hung master we cannot kill",
    );
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    a.send(Cmd::Renew);
    match a.next(DEADLINE, "the old master renews") {
        Ev::Renewed(Err((true, _))) => {}
        other => panic!("expected a Fenced renewal, got {other:?}"),
    }
    b.send(Cmd::Renew);
    match b.next(DEADLINE, "renew without the session lock") {
        Ev::Renewed(Ok(())) => {}
        other => panic!("expected a renewal, got {other:?}"),
    }
    b.send(Cmd::HasSessionLock);
    match b.next(DEADLINE, "session lock while the hung master lives") {
        Ev::SessionLock(false) => {}
        other => panic!("expected no session lock, got {other:?}"),
    }
    a.send(Cmd::Crash);
    a.next(DEADLINE, "crash");
    // The hung broker reports the crash before its connections close, and
    // the server frees the session lock only once it sees them close: a
    // renewal right after may come first (seen in a full test run). Renew
    // until one picks the lock up, and fail if none does by the deadline.
    let until = Instant::now() + DEADLINE;
    loop {
        b.send(Cmd::Renew);
        match b.next(DEADLINE, "renew after the hung master died") {
            Ev::Renewed(Ok(())) => {}
            other => panic!("expected a renewal, got {other:?}"),
        }
        b.send(Cmd::HasSessionLock);
        match b.next(DEADLINE, "session lock after the hung master died") {
            Ev::SessionLock(true) => break,
            Ev::SessionLock(false) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("expected the session lock by the deadline, got {other:?}"),
        }
    }
}

/// The same hung master of another account, in the middle of a write
/// transaction on a connection of its pool (the fence row share-locked): the
/// waiter may kill neither its session-lock connection nor its writer, and
/// would wait on the fence row until MariaDB's `wait_timeout` (8 hours). The
/// broker's connections have MariaDB end a transaction idle for ten leases
/// or 30 s (`idle_transaction_timeout`), so the waiter takes over then.
#[test]
fn mysql_hung_writer_other_account() {
    let db = TestDb::new(Dialect::MySql, "acctw");
    let cfg = cfg(&db, 1000, 250);
    let other = other_account(&cfg, &db);
    let a = Broker::start(&other, "broker-a", false);
    a.acquired(DEADLINE, "first acquire (unix socket account)");
    let writer = OpenWrite::start_in_pool(other.url.clone(), cfg.lease);
    let b = Broker::start(&cfg, "broker-b", false);
    b.waiting("second acquire");
    b.acquired(
        brokk::store::sql::conn::idle_transaction_limit(cfg.lease) + cfg.lease * 3 + DEADLINE,
        "takeover past a hung writer we may not kill",
    );
    assert_eq!(db.holder().as_deref(), Some("broker-b"));
    assert!(
        !writer.commit(),
        "MariaDB should have ended the hung writer's transaction"
    );
    drop(a);
}

#[test]
fn mysql_wait_then_release() {
    wait_then_release(Dialect::MySql);
}
#[test]
fn postgres_wait_then_release() {
    wait_then_release(Dialect::Postgres);
}
#[test]
fn mysql_crash_takeover() {
    crash_takeover(Dialect::MySql);
}
#[test]
fn postgres_crash_takeover() {
    crash_takeover(Dialect::Postgres);
}
#[test]
fn mysql_server_kill() {
    server_kill(Dialect::MySql);
}
#[test]
fn postgres_server_kill() {
    server_kill(Dialect::Postgres);
}
#[test]
fn mysql_hung_master() {
    hung_master(Dialect::MySql);
}
#[test]
fn postgres_hung_master() {
    hung_master(Dialect::Postgres);
}
#[test]
fn mysql_long_writer_does_not_starve_the_renewal() {
    long_writer_does_not_starve_the_renewal(Dialect::MySql);
}

#[test]
fn postgres_long_writer_does_not_starve_the_renewal() {
    long_writer_does_not_starve_the_renewal(Dialect::Postgres);
}

#[test]
fn mysql_hung_writer() {
    hung_writer(Dialect::MySql);
}
#[test]
fn postgres_hung_writer() {
    hung_writer(Dialect::Postgres);
}
