//! Connections: a `mysql_async` pool, or a small pool of `tokio-postgres`
//! clients (that crate has none of its own).
//!
//! Everything here runs on a tokio runtime with IO and time enabled (the
//! side runtime, current-thread): both drivers spawn their connection tasks
//! with `tokio::spawn`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

use super::{redact, Dialect, SqlError};

/// How long a connection attempt may take before it counts as failed (a
/// firewalled host would otherwise hang the start).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on every database connection: idle this long, then probes
/// (PostgreSQL: every [`KEEPALIVE_INTERVAL`], closed after
/// [`KEEPALIVE_RETRIES`] missed, about 25 s in all; MySQL/MariaDB: at the
/// kernel's interval and count, as mysql_async sets only the idle time,
/// about 11 minutes in all, and the probes keep a NAT's entry alive). A
/// standby's connections may idle for days before its takeover uses them;
/// a firewall or NAT that dropped the flow silently would otherwise leave
/// them half-open, and the takeover's first query would wait out the
/// kernel's retransmissions (about 15 minutes) while the lease is held.
/// Noticed while idle, a dead connection is closed, and both pools open
/// another instead of handing it out. Each setting the URL names itself
/// (`keepalives`, `keepalives_idle`, `keepalives_interval`,
/// `keepalives_retries`; MySQL `tcp_keepalive`, in ms) is left as it is.
/// No `tcp_user_timeout`: a healthy server that stops reading while a long
/// statement blocks (an I/O stall) would have its connection cut.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Whether `url`'s query string names `key` (`...?key=...&...`).
fn url_sets(url: &str, key: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv.split('=').next() == Some(key)))
}

/// `url`'s PostgreSQL configuration with a connect timeout and the
/// keepalive settings above, each where the URL does not set its own.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if !url_sets(url, "keepalives") {
        config.keepalives(true);
    }
    if !url_sets(url, "keepalives_idle") {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if !url_sets(url, "keepalives_interval") {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if !url_sets(url, "keepalives_retries") {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    Ok(config)
}

/// `opts` with TCP keepalive after [`KEEPALIVE_IDLE`], unless the URL set
/// its own (`tcp_keepalive=`, in ms), and `CLIENT_FOUND_ROWS` off.
pub fn my_keepalive(opts: &Opts) -> OptsBuilder {
    let keep = opts.tcp_keepalive().or(Some(KEEPALIVE_IDLE));
    OptsBuilder::from_opts(opts.clone())
        .tcp_keepalive(keep)
        // Stated, whatever the URL says: a first write counts the rows it
        // inserted, and a row already there must count 0 (`write::Attempt`).
        .client_found_rows(false)
}

/// What every MySQL/MariaDB connection of a broker states at connect (the
/// pool's and the lease's). The database's clock is read as
/// `UNIX_TIMESTAMP(NOW(3))`, which goes through the session's time zone:
/// in a zone with daylight saving, the hour repeated in autumn would make
/// it jump back and forth by an hour (every lease expiring at once, or
/// lasting an hour longer), so the session runs in UTC.
pub const MY_UTC: &str = "SET time_zone = '+00:00'";

/// MariaDB ends a session whose transaction stays idle `seconds` (with its
/// locks: a hung master's write transaction holds the fence row, which a
/// standby's takeover waits for, and the standby may not be allowed to
/// kill it). MySQL has no such setting and skips it (MariaDB's executable
/// comment); there the standby's KILL is the only way (one account for
/// both brokers). `@brokk_idle_transaction` keeps the value, so that a
/// long read can lift the limit and put it back (see
/// [`MY_IDLE_TRANSACTION_OFF`]).
pub fn my_idle_transaction(limit: Duration) -> String {
    // Whole seconds, rounded up.
    let seconds = limit.as_millis().div_ceil(1000);
    format!(
        "SET @brokk_idle_transaction = {seconds} \
         /*M!100300 , SESSION idle_transaction_timeout = {seconds} */"
    )
}

/// Lifts [`my_idle_transaction`]'s limit for a read that holds its
/// snapshot between pages (a takeover's load, which spills to disk there).
pub const MY_IDLE_TRANSACTION_OFF: &str =
    "SET @brokk_unused = 0 /*M!100300 , SESSION idle_transaction_timeout = 0 */";

/// Puts [`my_idle_transaction`]'s limit back.
pub const MY_IDLE_TRANSACTION_ON: &str = "SET @brokk_unused = 0 \
     /*M!100300 , SESSION idle_transaction_timeout = @brokk_idle_transaction */";

/// The same limit on PostgreSQL (0: none): the server ends the session.
pub fn pg_idle_transaction(limit: Duration) -> String {
    format!(
        "SET idle_in_transaction_session_timeout = {}",
        limit.as_millis()
    )
}

/// How long a write transaction may stay idle before the database ends
/// it: ten leases, and at least 30 s. Far beyond any pause of a live
/// master (it would have lost its lease after one), and beyond the upload
/// of one large statement, which PostgreSQL counts as idle until it has
/// read it all (a message of `limits.max_frame_size`, 100 MiB, on a slow
/// link: were that cut, the batch would be retried and cut for ever).
/// Only a takeover behind a hung writer that the standby may not kill
/// waits this long.
pub fn idle_transaction_limit(lease: Duration) -> Duration {
    (lease * 10).max(Duration::from_secs(30))
}

/// Prepared statements each MySQL connection keeps (the driver's default
/// is 32): multi-row statements differ by row count, and a batch's last,
/// shorter chunk should not evict the full-size ones.
const MYSQL_STMT_CACHE: usize = 128;

/// A connected database.
pub enum Db {
    MySql(mysql_async::Pool),
    Postgres(Box<PgPool>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::MySql(_) => f.write_str("Db::MySql"),
            Db::Postgres(p) => write!(f, "Db::Postgres({})", p.url),
        }
    }
}

/// How long a MySQL/MariaDB pool connection beyond the first may idle
/// before it is closed.
const MYSQL_IDLE_TTL: Duration = Duration::from_secs(300);

/// Connects to `url` (`mysql://` or `postgres://`) with at most
/// `pool_size` connections, and really opens one, so that a wrong address
/// or password fails here, at start, rather than at the first write.
pub async fn connect(
    url: &str,
    pool_size: usize,
    idle_transaction: Duration,
) -> Result<Db, SqlError> {
    let shown = redact(url);
    let fail = |reason: String| SqlError::Connect {
        url: shown.clone(),
        reason,
    };
    let pool_size = pool_size.max(1);
    match Dialect::of_url(url).map_err(&fail)? {
        Dialect::MySql => {
            // mysql_async only knows the `mysql://` scheme.
            let url = match url.strip_prefix("mariadb://") {
                Some(rest) => format!("mysql://{rest}"),
                None => url.to_string(),
            };
            let opts = Opts::from_url(&url).map_err(|e| fail(e.to_string()))?;
            let constraints = PoolConstraints::new(1, pool_size)
                .ok_or_else(|| fail(format!("bad pool size {pool_size}")))?;
            let opts = my_keepalive(&opts)
                .pool_opts(
                    PoolOpts::new()
                        .with_constraints(constraints)
                        // Nothing here relies on session state, so no
                        // COM_RESET_CONNECTION round trip per checkout.
                        .with_reset_connection(false)
                        // Without a TTL mysql_async keeps only `min` (1)
                        // connections idle and closes the others as they
                        // come back: with two writer lanes committing side
                        // by side, one logged in again for every batch.
                        .with_inactive_connection_ttl(MYSQL_IDLE_TTL),
                )
                .stmt_cache_size(MYSQL_STMT_CACHE)
                // Stated, not the server's default: under SERIALIZABLE the
                // write transactions' lease check would share-lock the lease
                // row too (InnoDB turns plain reads into locking ones), and
                // the renewal would wait for them again (see ha::db_lease).
                .init(vec![
                    "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_string(),
                    MY_UTC.to_string(),
                    my_idle_transaction(idle_transaction),
                ]);
            let pool = mysql_async::Pool::new(opts);
            let first = tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await;
            match first {
                Ok(Ok(conn)) => {
                    drop(conn);
                    tracing::info!(url = %shown, "connected to MySQL/MariaDB");
                    Ok(Db::MySql(pool))
                }
                Ok(Err(e)) => {
                    let _ = pool.disconnect().await;
                    Err(fail(e.to_string()))
                }
                Err(_) => {
                    let _ = pool.disconnect().await;
                    Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}")))
                }
            }
        }
        Dialect::Postgres => {
            let config = pg_config(url).map_err(|e| fail(pg_reason(&e)))?;
            let pool = PgPool {
                config,
                url: shown.clone(),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(pool_size),
                idle_transaction,
            };
            let conn = pool.open().await.map_err(|e| fail(pg_reason(&e)))?;
            pool.put_back(conn);
            tracing::info!(url = %shown, "connected to PostgreSQL");
            Ok(Db::Postgres(Box::new(pool)))
        }
    }
}

/// The database's round trip: the least of a few trivial queries on one
/// connection (least, not mean: what the network and the server cost, not
/// what a busy machine's scheduler adds). None when the database does not
/// answer.
pub async fn round_trip(db: &Db) -> Option<Duration> {
    const TRIES: usize = 20;
    let mut least: Option<Duration> = None;
    match db {
        Db::MySql(pool) => {
            let mut conn = pool.get_conn().await.ok()?;
            for _ in 0..TRIES {
                let t = std::time::Instant::now();
                mysql_async::prelude::Queryable::query_drop(&mut conn, "SELECT 1")
                    .await
                    .ok()?;
                least = Some(least.map_or(t.elapsed(), |l| l.min(t.elapsed())));
            }
        }
        Db::Postgres(pool) => {
            let conn = pool.get().await.ok()?;
            for _ in 0..TRIES {
                let t = std::time::Instant::now();
                conn.client.simple_query("SELECT 1").await.ok()?;
                least = Some(least.map_or(t.elapsed(), |l| l.min(t.elapsed())));
            }
        }
    }
    least
}

impl Db {
    pub fn dialect(&self) -> Dialect {
        match self {
            Db::MySql(_) => Dialect::MySql,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The largest statement the server takes (MySQL/MariaDB's
    /// `max_allowed_packet`), if it has such a limit: a message must fit in
    /// one INSERT. None for PostgreSQL (its limit, 1 GiB per value, is above
    /// any frame the broker accepts).
    pub async fn max_statement_bytes(&self) -> Result<Option<u64>, SqlError> {
        match self {
            Db::MySql(pool) => {
                use mysql_async::prelude::Queryable;
                let mut conn = pool
                    .get_conn()
                    .await
                    .map_err(my_err("read max_allowed_packet"))?;
                let v: Option<u64> = conn
                    .query_first("SELECT @@max_allowed_packet")
                    .await
                    .map_err(my_err("read max_allowed_packet"))?;
                Ok(v)
            }
            Db::Postgres(_) => Ok(None),
        }
    }

    /// Closes every idle connection and waits for them to go (a dropped
    /// pool would close them in the background, maybe after the runtime).
    pub async fn disconnect(self) {
        match self {
            Db::MySql(pool) => {
                if let Err(e) = pool.disconnect().await {
                    tracing::warn!("closing the MySQL pool: {e}");
                }
            }
            Db::Postgres(pool) => {
                let idle = match pool.idle.lock() {
                    Ok(mut idle) => std::mem::take(&mut *idle),
                    Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
                };
                for conn in idle {
                    drop(conn.client);
                    drop(conn.stmts);
                    // The connection task ends once its client is gone.
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.task).await;
                }
            }
        }
    }
}

/// At most `permits` PostgreSQL connections, opened on demand and kept
/// while healthy.
pub struct PgPool {
    config: tokio_postgres::Config,
    url: String,
    idle: Mutex<Vec<PgConn>>,
    permits: Semaphore,
    /// See [`pg_idle_transaction`].
    idle_transaction: Duration,
}

/// One PostgreSQL connection and the statements prepared on it.
pub struct PgConn {
    pub client: Client,
    /// Statements prepared on this connection, by their SQL text (every
    /// statement Brokk issues is a constant, thanks to array parameters).
    pub stmts: HashMap<&'static str, Statement>,
    task: JoinHandle<()>,
}

impl PgConn {
    /// The prepared statement for `sql`, preparing it on first use.
    pub async fn prepare(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    /// Prepares every statement of `sqls` not prepared yet, pipelined (one
    /// round trip for all, not one each: a new master's first write, or a
    /// takeover's reads, wait for these).
    pub async fn prepare_all(
        &mut self,
        sqls: &[&'static str],
    ) -> Result<(), tokio_postgres::Error> {
        let missing: Vec<&'static str> = sqls
            .iter()
            .copied()
            .filter(|sql| !self.stmts.contains_key(sql))
            .collect();
        let client = &self.client;
        let prepared = join_all(missing.iter().map(|sql| client.prepare(sql)).collect()).await;
        for (sql, s) in missing.into_iter().zip(prepared) {
            self.stmts.insert(sql, s?);
        }
        Ok(())
    }
}

/// Polls every future until all are done (the futures crate's `join_all`,
/// which this crate does not otherwise need).
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

impl PgPool {
    /// A connection outside the pool (not counted in its size), closed
    /// when dropped: for work that may be abandoned mid-query.
    pub async fn open_unpooled(&self) -> Result<PgConn, tokio_postgres::Error> {
        self.open().await
    }

    async fn open(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let url = self.url.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(url = %url, "PostgreSQL connection ended: {}", pg_reason(&e));
            }
        });
        // Stated, not the server's default: the write transactions rely on
        // READ COMMITTED's row locks only (a SERIALIZABLE default would
        // make lanes fail each other's transactions for nothing).
        const ISOLATION: &str = "SET default_transaction_isolation = 'read committed'";
        // A backend notices that its client died only when it next reads
        // from it, after the statement in progress, and until then its
        // transaction keeps the fence row share-locked, which a takeover
        // waits for (see `ha::db_lease`): a killed master's big DELETE ran
        // on for tens of milliseconds. With this the backend looks every
        // 10 ms while a statement runs, and aborts it. PostgreSQL 14 and
        // later on Linux; a server that refuses it (older: no such setting;
        // Windows, BSD: only 0) does without, said once in the debug log.
        const CHECK: &str = "SET client_connection_check_interval = 10";
        let idle = pg_idle_transaction(self.idle_transaction);
        if let Err(e) = client
            .batch_execute(&format!("{ISOLATION}; {idle}; {CHECK}"))
            .await
        {
            // A refusal by the server (every SET undone: one implicit
            // transaction); anything else is a broken connection.
            if e.as_db_error().is_none() {
                return Err(e);
            }
            tracing::debug!(reason = %pg_reason(&e), "the server refuses client_connection_check_interval; connecting without it");
            client
                .batch_execute(&format!("{ISOLATION}; {idle}"))
                .await?;
        }
        Ok(PgConn {
            client,
            stmts: HashMap::new(),
            task,
        })
    }

    fn put_back(&self, conn: PgConn) {
        if conn.client.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// A connection for one use; it goes back to the pool when dropped.
    pub async fn get(&self) -> Result<PgGuard<'_>, SqlError> {
        let permit = self.permits.acquire().await.map_err(|_| SqlError::Query {
            what: "get a PostgreSQL connection",
            reason: "the pool is closed".into(),
        })?;
        let reused = loop {
            let next = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match next {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => self.open().await.map_err(|e| SqlError::Query {
                what: "connect to PostgreSQL",
                reason: format!("{}: {}", self.url, pg_reason(&e)),
            })?,
        };
        Ok(PgGuard {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }
}

/// A pooled PostgreSQL connection, returned to the pool on drop (unless
/// it broke). A transaction left open is rolled back by tokio-postgres
/// when its `Transaction` drops, before the connection is reused.
pub struct PgGuard<'a> {
    pool: &'a PgPool,
    conn: Option<PgConn>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for PgGuard<'_> {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        // Always Some until drop.
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for PgGuard<'_> {
    fn deref_mut(&mut self) -> &mut PgConn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PgGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}

/// A tokio-postgres error as text: its `Display` says only "db error" for
/// server errors, so the server's message and SQLSTATE are spelled out,
/// and the cause of other errors (e.g. "Connection refused") is appended.
pub fn pg_reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// Maps a PostgreSQL error to [`SqlError::Query`].
pub fn pg_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> SqlError {
    move |e| SqlError::Query {
        what,
        reason: pg_reason(&e),
    }
}

/// Maps a MySQL error to [`SqlError::Query`].
pub fn my_err(what: &'static str) -> impl Fn(mysql_async::Error) -> SqlError {
    move |e| SqlError::Query {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    #[test]
    fn postgres_gets_short_keepalives_unless_the_url_sets_them() {
        let c = pg_config("postgres://u:keepalives_idle@h/db").unwrap();
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let c = pg_config("postgres://u:p@h/db?keepalives_idle=60&connect_timeout=3").unwrap();
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let c = pg_config("postgres://u:p@h/db?keepalives=0").unwrap();
        assert!(!c.get_keepalives());
    }

    #[test]
    fn mysql_gets_a_short_keepalive_unless_the_url_sets_one() {
        let o = Opts::from(my_keepalive(&Opts::from_url("mysql://u:p@h/db").unwrap()));
        assert_eq!(o.tcp_keepalive(), Some(KEEPALIVE_IDLE));
        let o = Opts::from(my_keepalive(
            &Opts::from_url("mysql://u:p@h/db?tcp_keepalive=60000").unwrap(),
        ));
        assert_eq!(o.tcp_keepalive(), Some(Duration::from_secs(60)));
        // A first write counts rows inserted (`write::Attempt`).
        let o = Opts::from(my_keepalive(
            &Opts::from_url("mysql://u:p@h/db?client_found_rows=true").unwrap(),
        ));
        assert!(!o.client_found_rows());
    }
}
