//! Database mastership (`mysql` / `postgres` modes): the lease row
//! `ACTIVEMQ_LOCK` ID=1 plus the database's session lock.
//!
//! Two locks, because each alone fails one way:
//! - The **session lock** (MariaDB `GET_LOCK`, PostgreSQL
//!   `pg_advisory_lock`) lives exactly as long as the connection that took
//!   it: a master that is killed (or whose connection the server kills)
//!   loses it the moment its socket closes, and the standby blocked on it
//!   wakes up within about a millisecond. But a master that is alive and
//!   hung keeps it forever.
//! - The **lease row** (`BROKER_NAME` = the holder's token, `TIME` = expiry
//!   in ms on the database's clock) expires by itself when the master stops
//!   renewing. But alone it makes a standby wait a whole lease after a
//!   crash.
//!
//! Fencing has a row of its own, `BROKK_FENCE` ID=1 (`HOLDER` = the
//! master's token), rewritten only when the lease is taken, in the same
//! transaction as the lease row. Every write transaction share-locks it
//! and commits only if it names us (and the lease row, read without a
//! lock, has not expired; see `store::sql::write`), so a takeover waits for
//! the old master's transactions in flight and every later one commits
//! nothing. The renewal rewrites only the lease row, which no write
//! transaction locks: a long transaction (a drain's big DELETE, a database
//! stalled on I/O) can delay a takeover but never starve the master's own
//! renewal. (Earlier both lived in one row, and a 1.7 s transaction cost a
//! healthy master its lease.)
//!
//! The rule that ties them together: **whoever holds the session lock may
//! take the lease row at once**, whatever it says - the previous holder's
//! session is gone, so it is dead or was cut off, and its writes are fenced
//! by the row from then on. A standby that waits for the session lock also
//! watches the row; once the row has expired (a hung master), it kills the
//! hung master's session-lock connection (`KILL` / `pg_terminate_backend`)
//! so that the session lock - and with it the rule above - passes on. See
//! [`acquire`] for why killing rather than serving without the session lock,
//! and what happens when the kill is not allowed.
//!
//! All times in the row are the database's (`NOW(3)` / `clock_timestamp()`),
//! so brokers' clocks never matter; locally the holder only measures
//! intervals on the monotonic clock ([`Lease::valid_until`]).
//!
//! Every lease operation uses its own two connections, opened from the URL
//! (not the writer's pool): `session` holds the session lock and nothing
//! else runs a long statement on it; `rows` reads and updates the row with a
//! short lock-wait timeout, so a hung master's write transaction (which holds
//! a shared lock on the fence row) cannot block a takeover forever.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::store::sql::{redact, Dialect, LeaseToken, SqlError};

/// Longest single statement a PostgreSQL standby waits for the session
/// lock in (see `DbConn::session_lock`). Each one that times out is an
/// ERROR line in PostgreSQL's log ("canceling statement due to lock
/// timeout"): four a second, the price of a snapshot never older than the
/// index sweep's period (`store::sql::sweep::EVERY`).
const PG_WAIT_STATEMENT: Duration = Duration::from_millis(250);

/// The database's clock in ms since the epoch, MariaDB / MySQL.
const MY_NOW: &str = "CAST(UNIX_TIMESTAMP(NOW(3))*1000 AS SIGNED)";
/// The database's clock in ms since the epoch, PostgreSQL. `clock_timestamp`
/// (not `now()`, which is the transaction's start).
const PG_NOW: &str = "(extract(epoch from clock_timestamp())*1000)::bigint";

/// PostgreSQL advisory lock key ("brok"). Below 2^31, so that `pg_locks`
/// shows it as `classid = 0, objid = KEY, objsubid = 1`. Advisory locks are
/// per database, so brokers of different databases never meet.
const PG_KEY: i64 = 0x6272_6F6B;

/// MariaDB lock names are server-wide (unlike PostgreSQL's advisory locks),
/// so the name carries the database: two clusters on one server, or tests
/// in parallel, each get their own. At most 64 characters.
const MY_LOCK_PREFIX: &str = "brokk-master:";

/// The fence row, rewritten (or made) when the lease is taken (PostgreSQL:
/// see [`pg_fenced_take`]).
const MY_FENCE_TAKE: &str = "INSERT INTO BROKK_FENCE (ID, HOLDER) VALUES (1, ?) \
     ON DUPLICATE KEY UPDATE HOLDER = VALUES(HOLDER)";

/// How long an UPDATE of the row waits for a row lock before we look at who
/// holds it (MariaDB's `innodb_lock_wait_timeout` counts whole seconds).
const ROW_LOCK_WAIT_S: u64 = 1;

/// MariaDB: lock wait timeout (also MySQL's), the statement was rolled back.
const MY_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// MariaDB: `KILL` of a connection that no longer exists.
const MY_UNKNOWN_THREAD: u16 = 1094;
/// MariaDB: this connection was killed (sent to the victim).
const MY_CONNECTION_KILLED: u16 = 1927;
/// MariaDB: server shutdown in progress.
const MY_SERVER_SHUTDOWN: u16 = 1053;

/// Lease settings (`ha.lease_ms`).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// `store.url`: `mysql://...` or `postgres://...`.
    pub url: String,
    /// How long a renewal keeps the lease (the row's `TIME` = db now +
    /// lease). A hung master loses mastership about this long after its
    /// last renewal.
    pub lease: Duration,
    /// How often the master renews, and how often a waiting standby looks
    /// at the row. A quarter of the lease: three renewals may fail before
    /// the lease runs out.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// The default lease (`ha.lease_ms`).
    pub const DEFAULT_LEASE: Duration = Duration::from_millis(3000);

    /// `lease` with renewals every quarter of it.
    pub fn new(url: impl Into<String>, lease: Duration) -> LeaseConfig {
        LeaseConfig {
            url: url.into(),
            lease,
            renew_every: lease / 4,
        }
    }

    /// Subtracted from the lease locally: covers the difference in clock
    /// rates between us and the database and the time it takes the broker to
    /// stop serving once [`keep`] returns. The database's expiry is never
    /// earlier than ours even without it, since we count from the moment
    /// the renewal was sent, before the database read its clock.
    fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// How long after a renewal (or the take) was sent the lease counts as
    /// ours locally.
    fn validity(&self) -> Duration {
        self.lease.saturating_sub(self.margin())
    }

    /// How long one blocking wait for the session lock lasts before a
    /// waiting standby looks at the row again.
    fn wait_step(&self) -> Duration {
        self.renew_every
            .clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// Why the master lost its lease: the broker must stop serving (and exit,
/// code 3, as in file mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The row names another broker: a standby took over.
    Fenced(String),
    /// The connection holding the session lock died (killed by the server
    /// or an operator, or the network): a standby may already hold the
    /// session lock and have taken the row.
    SessionDied(String),
    /// No renewal succeeded before [`Lease::valid_until`]: the database may
    /// consider the lease expired.
    Expired,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Fenced(r) => write!(f, "fenced: {r}"),
            Lost::SessionDied(r) => write!(f, "session-lock connection died: {r}"),
            Lost::Expired => write!(f, "no renewal succeeded within the lease"),
        }
    }
}

/// The master lease, held: the session lock (while `session` is open) and
/// the row naming our token until [`Lease::valid_until`].
pub struct Lease {
    cfg: LeaseConfig,
    token: LeaseToken,
    session: DbConn,
    /// False only when we took over from a hung master whose session-lock
    /// connection we were not allowed to kill (see [`acquire`]): each
    /// renewal then tries to take the session lock without waiting.
    has_session_lock: bool,
    /// Reopened when it breaks: a renewal needs a working connection, not
    /// this one.
    rows: Option<DbConn>,
    valid_until: Instant,
}

/// What went wrong in a renewal, for [`keep`].
enum RenewFail {
    Fenced(String),
    SessionDied(String),
    Error(SqlError),
}

impl Lease {
    /// Extends the lease: `TIME = db now + lease` where the row still names
    /// our token. `Err(Fenced)` when it names another broker (or the
    /// session-lock connection died: a standby may take the row at any
    /// moment); other errors are worth retrying until
    /// [`Lease::valid_until`].
    pub async fn renew(&mut self) -> Result<(), SqlError> {
        match self.renew_inner().await {
            Ok(()) => Ok(()),
            Err(RenewFail::Fenced(r)) => Err(SqlError::Fenced(r)),
            Err(RenewFail::SessionDied(r)) => Err(SqlError::Fenced(format!(
                "the session-lock connection died: {r}"
            ))),
            Err(RenewFail::Error(e)) => Err(e),
        }
    }

    async fn renew_inner(&mut self) -> Result<(), RenewFail> {
        // No write transaction holds the lease row (they share-lock the
        // fence row, see the module's doc): only a standby taking over
        // makes this wait.
        // Counted from before the request leaves: the database sets the
        // expiry from its clock when it runs the UPDATE, which is later.
        let sent = Instant::now();
        let sent_boot = super::fence::now_ns();
        let updated = self.update_own_row().await;
        if let Ok(0) = updated {
            let holder = match self.rows.as_mut() {
                Some(rows) => match rows.read_row().await {
                    Ok(row) => row.describe(),
                    Err(e) => format!("unknown ({e})"),
                },
                None => "unknown".into(),
            };
            return Err(RenewFail::Fenced(format!(
                "ACTIVEMQ_LOCK no longer names us: holder {holder}"
            )));
        }
        // The session lock, checked even when the row was fine: once it is
        // gone a standby takes the row at once, so we are as good as fenced.
        if let Err(e) = self.session.ping().await {
            if !self.session.alive() {
                return Err(RenewFail::SessionDied(e.to_string()));
            }
            return Err(RenewFail::Error(e));
        }
        if let Err(e) = updated {
            return Err(RenewFail::Error(e));
        }
        if !self.has_session_lock {
            match self.session.session_lock(Duration::ZERO).await {
                Ok(true) => {
                    self.has_session_lock = true;
                    info!(role = "master", token = %self.token.0, "took the session lock the hung master held");
                }
                Ok(false) => {}
                Err(e) if !self.session.alive() => {
                    return Err(RenewFail::SessionDied(e.to_string()))
                }
                Err(e) => return Err(RenewFail::Error(e)),
            }
        }
        let validity = self.cfg.validity();
        self.valid_until = sent + validity;
        // The process's answer gate (armed by a database-mode server; a
        // no-op otherwise), on CLOCK_BOOTTIME: it keeps running while the
        // host is suspended, where `Instant` stops.
        super::fence::renew(sent_boot, validity);
        Ok(())
    }

    /// The conditional UPDATE on the `rows` connection (reopened if it
    /// broke): rows matched.
    async fn update_own_row(&mut self) -> Result<u64, SqlError> {
        if self.rows.is_none() {
            self.rows = Some(DbConn::connect(&self.cfg, Purpose::Rows).await?);
        }
        let Some(rows) = self.rows.as_mut() else {
            return Err(SqlError::Query {
                what: "renew the lease",
                reason: "no connection".into(),
            });
        };
        let r = rows
            .update_row(&self.token, self.cfg.lease, Cond::Ours)
            .await;
        if r.is_err() && !rows.alive() {
            self.rows = None;
        }
        // A lock-wait timeout: a standby is taking the row (its
        // transaction waits for our writes in flight); retried by `keep`
        // until valid_until, when the row will most likely name it.
        r?.ok_or_else(|| SqlError::Query {
            what: "renew the lease",
            reason: format!("the lease row stayed locked for {ROW_LOCK_WAIT_S} s"),
        })
    }

    /// Until when (local monotonic clock) the lease is surely ours: the
    /// moment the last successful renewal was sent, plus the lease, minus a
    /// safety margin. A master that has not renewed by then must stop
    /// serving.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Whether the connection holding the session lock is, as far as we
    /// know, still open. PostgreSQL notices a closed socket at once; on
    /// MariaDB this is only as fresh as the last renewal (which pings it).
    pub fn session_alive(&self) -> bool {
        self.session.alive()
    }

    /// Whether we hold the session lock (false only after taking over from
    /// a hung master we could not kill, see [`acquire`]).
    pub fn has_session_lock(&self) -> bool {
        self.has_session_lock
    }

    /// The server's ids of our connections (MariaDB `CONNECTION_ID()`,
    /// PostgreSQL backend pid), session first: for operators' logs, and for
    /// tests that kill them.
    pub fn backend_ids(&self) -> Vec<u64> {
        let mut ids = vec![self.session.backend_id()];
        if let Some(rows) = &self.rows {
            ids.push(rows.backend_id());
        }
        ids
    }

    /// Clean shutdown: clears the row (if still ours) and releases the
    /// session lock, so that a standby takes over at once instead of after
    /// the lease. Failures are only logged: closing the connections releases
    /// the session lock anyway, and its holder takes the row whatever it
    /// says.
    pub async fn release(self) {
        let token = self.token.clone();
        // Bounded: a shutdown must not hang on a database that does not
        // answer (or on a connection a cancelled renewal left mid-query).
        let limit = self.cfg.lease.max(Duration::from_secs(1));
        if tokio::time::timeout(limit, self.release_inner())
            .await
            .is_err()
        {
            warn!(role = "master", token = %token.0, "releasing the lease timed out; closing its connections");
        }
    }

    async fn release_inner(mut self) {
        if let Some(rows) = self.rows.as_mut() {
            match rows.clear_row(&self.token).await {
                Ok(n) => {
                    debug!(role = "master", token = %self.token.0, cleared = n, "lease row cleared")
                }
                Err(e) => {
                    warn!(role = "master", token = %self.token.0, error = %e, "cannot clear the lease row")
                }
            }
        }
        if self.has_session_lock {
            if let Err(e) = self.session.session_unlock().await {
                warn!(role = "master", token = %self.token.0, error = %e, "cannot release the session lock (closing its connection does)");
            }
        }
        if let Some(rows) = self.rows.take() {
            rows.close().await;
        }
        self.session.close().await;
        info!(role = "master", token = %self.token.0, "lease released");
    }
}

/// Holds the lease: renews every `renew_every` and returns why it was lost
/// (row taken over, session-lock connection died, or no renewal before
/// [`Lease::valid_until`]). Transient errors (a lock-wait timeout behind a
/// standby's takeover in progress, a broken `rows` connection) are retried until
/// then. Borrows the lease, so a caller can race it against its shutdown
/// signal and then [`Lease::release`] it.
pub async fn keep(lease: &mut Lease) -> Lost {
    let mut next = Instant::now() + lease.cfg.renew_every;
    loop {
        // Renewals that fail fast (the database refusing connections)
        // leave `valid_until` where it was: wake for it too, not only at
        // the next renewal, which may come after it.
        let wake = next.min(lease.valid_until);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = lease.session.closed() => {
                let lost = Lost::SessionDied("connection closed".into());
                warn!(role = "master", token = %lease.token.0, reason = %lost, "master lease lost");
                return lost;
            }
        }
        let started = Instant::now();
        if started >= lease.valid_until {
            warn!(role = "master", token = %lease.token.0, reason = %Lost::Expired, "master lease lost");
            return Lost::Expired;
        }
        next = started + lease.cfg.renew_every;
        let deadline = lease.valid_until;
        let lost = match tokio::time::timeout_at(deadline.into(), lease.renew_inner()).await {
            Ok(Ok(())) => continue,
            Ok(Err(RenewFail::Fenced(r))) => Lost::Fenced(r),
            Ok(Err(RenewFail::SessionDied(r))) => Lost::SessionDied(r),
            Ok(Err(RenewFail::Error(e))) => {
                warn!(role = "master", token = %lease.token.0, error = %e,
                    left_ms = lease.valid_until.saturating_duration_since(Instant::now()).as_millis() as u64,
                    "lease renewal failed; retrying");
                continue;
            }
            Err(_) => Lost::Expired,
        };
        warn!(role = "master", token = %lease.token.0, reason = %lost, "master lease lost");
        return lost;
    }
}

/// Waits until this broker holds the master lease (the standby's side), and
/// returns it. `on_waiting` is called once, when the lease is found taken
/// and we start to wait. An `Err` (database unreachable, a statement
/// failed) holds nothing - the connections close with it - and the caller
/// retries after a pause.
///
/// The wait is a blocking wait for the session lock, `renew_every` at a
/// time (no tight polling): a master that dies releases it with its
/// connection, and we get it within about a millisecond. Between waits we
/// read the row; once it has expired on the database's clock, its holder is
/// alive but not renewing (hung, or cut off from the database while its
/// session connection lingers), and we kill the connection that holds the
/// session lock (MariaDB `IS_USED_LOCK` + `KILL`, PostgreSQL `pg_locks` +
/// `pg_terminate_backend`; the expiry is re-checked in the same statement).
///
/// Why kill rather than take the row and serve without the session lock:
/// the rule "the session-lock holder takes the row at once" must only ever
/// meet a dead previous holder. A master serving without the session lock
/// would have it taken away by whichever standby gets the session lock when
/// the hung broker finally dies - a needless failover - and its own death
/// would be noticed only after a lease. Killing keeps one invariant: the
/// master holds both. It is also safe against a mistaken kill (a master that
/// renews just after our check): that master finds its session connection
/// dead and stops, and the row fences its writes. The kill needs the same
/// database account (MariaDB: same user@host) or, on PostgreSQL, membership
/// of the holder's role; when the database refuses it, we fall back to
/// taking the expired row with a conditional UPDATE (`TIME <= now`, so only
/// one standby wins) and serve without the session lock, trying to take it
/// at each renewal (see [`Lease::has_session_lock`]).
///
/// Taking the lease may block behind a write transaction of the previous
/// master (it holds a shared lock on the fence row for the transaction's
/// length);
/// the UPDATE gives up after a second, and when the row has expired we kill
/// the sessions that block it (PostgreSQL: the backends holding a row-level
/// table lock on `BROKK_FENCE` or `ACTIVEMQ_LOCK`; MariaDB, whose lock tables need the
/// PROCESS privilege: our account's connections in this database idle for
/// two `renew_every` or more - no live broker's lease connection idles that
/// long, and a master whose lease expired has no business holding
/// transactions), then retry.
pub async fn acquire(
    cfg: &LeaseConfig,
    token: &LeaseToken,
    mut on_waiting: impl FnMut(),
) -> Result<Lease, SqlError> {
    let mut session = DbConn::connect(cfg, Purpose::Session).await?;
    let mut rows = DbConn::connect(cfg, Purpose::Rows).await?;
    rows.prepare_take().await?;
    let mut own = [session.backend_id(), rows.backend_id()];
    let mut waiting = false;
    loop {
        let wait = if waiting {
            cfg.wait_step()
        } else {
            Duration::ZERO
        };
        if session.session_lock(wait).await? {
            info!(role = "standby", token = %token.0, "session lock taken; taking the lease row");
            let Some(sent) = take_row(cfg, token, &mut rows, &own, session.backend_id()).await?
            else {
                // Killed by a standby that found the row expired, before
                // we wrote it: wait again (on a new connection).
                warn!(role = "standby", token = %token.0, "lost the session lock before taking the row; waiting again");
                session = DbConn::connect(cfg, Purpose::Session).await?;
                own[0] = session.backend_id();
                continue;
            };
            return Ok(won(cfg, token, session, rows, true, sent));
        }
        let row = rows.read_row().await?;
        if !waiting {
            waiting = true;
            info!(role = "standby", token = %token.0, holder = %row.describe(), "the master lease is taken; waiting");
            on_waiting();
        }
        if !row.expired() {
            continue;
        }
        match rows.kill_session_holder(&own).await {
            Ok(killed) => {
                if !killed.is_empty() {
                    warn!(role = "standby", token = %token.0, holder = %row.describe(), killed = ?killed,
                        "the master's lease expired while it holds the session lock (hung): killed its session-lock connection");
                }
            }
            Err(e) if !rows.alive() => return Err(e),
            Err(e) => {
                warn!(role = "standby", token = %token.0, holder = %row.describe(), error = %e,
                    "the master's lease expired but its session-lock connection cannot be killed: taking the expired row without the session lock");
                if let Some(sent) = try_take_row(cfg, token, &mut rows, &own, Cond::Expired).await?
                {
                    return Ok(won(cfg, token, session, rows, false, sent));
                }
            }
        }
    }
}

fn won(
    cfg: &LeaseConfig,
    token: &LeaseToken,
    session: DbConn,
    rows: DbConn,
    has_session_lock: bool,
    sent: Instant,
) -> Lease {
    info!(role = "master", token = %token.0, session = session.backend_id(), rows = rows.backend_id(),
        has_session_lock, url = %redact(&cfg.url), "master lease taken");
    // The answer gate (see `Lease::renew_inner`), from when the take was
    // sent, on the boot clock.
    let validity = cfg.validity();
    let sent_boot = super::fence::now_ns().saturating_sub(sent.elapsed().as_nanos() as u64);
    super::fence::renew(sent_boot, validity);
    Lease {
        cfg: cfg.clone(),
        token: token.clone(),
        session,
        has_session_lock,
        rows: Some(rows),
        valid_until: sent + validity,
    }
}

/// Takes the row as the session-lock holder, retrying past lock-wait
/// timeouts (breaking the blockers once the row has expired). Some(when the
/// UPDATE was sent), or None when our session no longer holds the lock.
async fn take_row(
    cfg: &LeaseConfig,
    token: &LeaseToken,
    rows: &mut DbConn,
    own: &[u64],
    session: u64,
) -> Result<Option<Instant>, SqlError> {
    if let Some(sent) = try_take_row(cfg, token, rows, own, Cond::Held(session)).await? {
        return Ok(Some(sent));
    }
    // No row matched: the row is missing (the schema makes it; be robust
    // anyway), or we lost the session lock.
    rows.insert_row().await?;
    try_take_row(cfg, token, rows, own, Cond::Held(session)).await
}

/// One attempt (plus retries after lock-wait timeouts): Some(sent) when the
/// row is ours, None when the condition did not match.
async fn try_take_row(
    cfg: &LeaseConfig,
    token: &LeaseToken,
    rows: &mut DbConn,
    own: &[u64],
    cond: Cond,
) -> Result<Option<Instant>, SqlError> {
    loop {
        let sent = Instant::now();
        match rows.update_row(token, cfg.lease, cond).await? {
            Some(0) => return Ok(None),
            Some(_) => return Ok(Some(sent)),
            None => {
                let killed = rows
                    .kill_row_blockers(own, cfg.renew_every * 2)
                    .await
                    .unwrap_or_else(|e| {
                        warn!(role = "standby", token = %token.0, error = %e, "cannot look for the sessions blocking the lease row");
                        Vec::new()
                    });
                if killed.is_empty() {
                    debug!(role = "standby", token = %token.0, "the lease row is locked by a transaction; retrying");
                } else {
                    warn!(role = "standby", token = %token.0, killed = ?killed,
                        "the expired master's transactions held the lease row: killed their sessions");
                }
            }
        }
    }
}

/// Which UPDATE of the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    /// Take it whatever it says, if the session lock is still held by
    /// our session connection (this server id).
    Held(u64),
    /// Take it only if expired (we could not get the session lock).
    Expired,
    /// Renew it only if it names us.
    Ours,
}

/// The lease row as read, with the database's clock.
struct Row {
    time: Option<i64>,
    name: Option<String>,
    now: i64,
}

impl Row {
    fn expired(&self) -> bool {
        self.time.unwrap_or(0) <= self.now
    }

    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("(none)");
        match self.time {
            Some(t) if t > self.now => format!("{name}, {} ms left", t - self.now),
            Some(t) => format!("{name}, expired {} ms ago", self.now - t),
            None => format!("{name}, no expiry"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Session,
    Rows,
}

/// One dedicated connection.
enum DbConn {
    My {
        conn: mysql_async::Conn,
        id: u32,
        /// The session lock's name (per database, see [`MY_LOCK_PREFIX`]).
        lock: String,
        /// Cleared when an error says the connection is gone.
        alive: bool,
    },
    Pg {
        client: tokio_postgres::Client,
        pid: i32,
        /// Becomes true when the connection task ends (socket closed).
        closed: watch::Receiver<bool>,
        /// The session's `lock_timeout` as last set, in ms.
        lock_timeout_ms: u64,
        /// `SELECT pg_advisory_lock`, prepared once: a waiting standby
        /// runs it several times a second (see `PG_WAIT_STATEMENT`).
        lock_stmt: Option<tokio_postgres::Statement>,
        /// The session-lock holder's take of the lease row, prepared while
        /// it waits (see [`DbConn::prepare_take`]).
        take_stmt: Option<tokio_postgres::Statement>,
    },
}

fn my_err(what: &'static str, e: mysql_async::Error) -> SqlError {
    SqlError::Query {
        what,
        reason: e.to_string(),
    }
}

fn pg_err(what: &'static str, e: tokio_postgres::Error) -> SqlError {
    SqlError::Query {
        what,
        reason: pg_reason(&e),
    }
}

/// tokio-postgres says only "db error" for a server's error: the server's
/// message and SQLSTATE are in `as_db_error`.
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// Whether a MariaDB error means the connection is gone.
fn my_fatal(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Server(s) => {
            s.code == MY_CONNECTION_KILLED || s.code == MY_SERVER_SHUTDOWN
        }
        other => other.is_fatal(),
    }
}

fn my_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

impl DbConn {
    async fn connect(cfg: &LeaseConfig, purpose: Purpose) -> Result<DbConn, SqlError> {
        let dialect = Dialect::of_url(&cfg.url).map_err(|reason| SqlError::Connect {
            url: redact(&cfg.url),
            reason,
        })?;
        let connect_err = |reason: String| SqlError::Connect {
            url: redact(&cfg.url),
            reason,
        };
        match dialect {
            Dialect::MySql => {
                let opts = mysql_async::Opts::from_url(&cfg.url)
                    .map_err(|e| connect_err(e.to_string()))?;
                let opts = crate::store::sql::conn::my_keepalive(&opts)
                    // Stay on TCP: over the unix socket we would be another
                    // account (user@localhost), and KILL works only within
                    // one account.
                    .prefer_socket(false)
                    // Affected rows = rows matched, not rows changed: a
                    // renewal within the same ms changes nothing.
                    .client_found_rows(true);
                let mut conn = mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                let db: Option<Option<String>> = conn
                    .query_first("SELECT DATABASE()")
                    .await
                    .map_err(|e| my_err("read the database name", e))?;
                let db = db.flatten().unwrap_or_default();
                let mut lock = format!("{MY_LOCK_PREFIX}{db}");
                if lock.len() > 64 {
                    lock = format!("{MY_LOCK_PREFIX}{:016x}", fnv64(db.as_bytes()));
                }
                // The lease's clock is the database's, read in UTC (see
                // `conn::MY_UTC`).
                conn.query_drop(crate::store::sql::conn::MY_UTC)
                    .await
                    .map_err(|e| my_err("set the session's time zone", e))?;
                if purpose == Purpose::Rows {
                    conn.query_drop(format!(
                        "SET SESSION innodb_lock_wait_timeout = {ROW_LOCK_WAIT_S}"
                    ))
                    .await
                    .map_err(|e| my_err("set innodb_lock_wait_timeout", e))?;
                    // A take is a transaction on the fence row: one left
                    // open by a broker hung half-way must not hold the
                    // next standby up.
                    let idle = crate::store::sql::conn::idle_transaction_limit(cfg.lease);
                    conn.query_drop(crate::store::sql::conn::my_idle_transaction(idle))
                        .await
                        .map_err(|e| my_err("set idle_transaction_timeout", e))?;
                }
                let id = conn.id();
                debug!(purpose = ?purpose, id, lock = %lock, "lease connection open");
                Ok(DbConn::My {
                    conn,
                    id,
                    lock,
                    alive: true,
                })
            }
            Dialect::Postgres => {
                let config = crate::store::sql::conn::pg_config(&cfg.url)
                    .map_err(|e| connect_err(e.to_string()))?;
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                let (tx, closed) = watch::channel(false);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %pg_reason(&e), "lease connection ended");
                    }
                    let _ = tx.send(true);
                });
                let lock_timeout_ms = match purpose {
                    Purpose::Rows => ROW_LOCK_WAIT_S * 1000,
                    Purpose::Session => 0,
                };
                let idle = match purpose {
                    // See the MySQL branch.
                    Purpose::Rows => crate::store::sql::conn::idle_transaction_limit(cfg.lease),
                    Purpose::Session => Duration::ZERO,
                };
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = {lock_timeout_ms}; {}",
                        crate::store::sql::conn::pg_idle_transaction(idle)
                    ))
                    .await
                    .map_err(|e| pg_err("set lock_timeout", e))?;
                let row = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .map_err(|e| pg_err("read the backend pid", e))?;
                let pid: i32 = row
                    .try_get(0)
                    .map_err(|e| pg_err("read the backend pid", e))?;
                debug!(purpose = ?purpose, pid, "lease connection open");
                Ok(DbConn::Pg {
                    client,
                    pid,
                    closed,
                    lock_timeout_ms,
                    lock_stmt: None,
                    take_stmt: None,
                })
            }
        }
    }

    fn backend_id(&self) -> u64 {
        match self {
            DbConn::My { id, .. } => u64::from(*id),
            DbConn::Pg { pid, .. } => u64::try_from(*pid).unwrap_or_default(),
        }
    }

    fn alive(&self) -> bool {
        match self {
            DbConn::My { alive, .. } => *alive,
            DbConn::Pg { client, closed, .. } => !*closed.borrow() && !client.is_closed(),
        }
    }

    /// Completes when the connection is known to be closed (PostgreSQL: at
    /// once; MariaDB has no reader task, so never - its renewals find out).
    async fn closed(&mut self) {
        match self {
            DbConn::My { .. } => std::future::pending::<()>().await,
            DbConn::Pg { closed, .. } => {
                // Err: the task ended without sending (it always sends).
                let _ = closed.wait_for(|c| *c).await;
            }
        }
    }

    fn my_fail(alive: &mut bool, what: &'static str, e: mysql_async::Error) -> SqlError {
        if my_fatal(&e) {
            *alive = false;
        }
        my_err(what, e)
    }

    async fn ping(&mut self) -> Result<(), SqlError> {
        match self {
            DbConn::My { conn, alive, .. } => conn
                .ping()
                .await
                .map_err(|e| Self::my_fail(alive, "ping the session-lock connection", e)),
            DbConn::Pg { client, .. } => client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| pg_err("ping the session-lock connection", e)),
        }
    }

    /// Takes the session lock, waiting up to `wait` (zero: only if free).
    async fn session_lock(&mut self, wait: Duration) -> Result<bool, SqlError> {
        match self {
            DbConn::My {
                conn, lock, alive, ..
            } => {
                let got: Option<Option<i64>> = conn
                    .exec_first("SELECT GET_LOCK(?, ?)", (lock.as_str(), wait.as_secs_f64()))
                    .await
                    .map_err(|e| Self::my_fail(alive, "take the session lock", e))?;
                match got.flatten() {
                    Some(1) => Ok(true),
                    Some(_) => Ok(false),
                    None => Err(SqlError::Query {
                        what: "take the session lock",
                        reason: "GET_LOCK returned NULL".into(),
                    }),
                }
            }
            DbConn::Pg {
                client,
                lock_timeout_ms,
                lock_stmt,
                ..
            } => {
                if wait.is_zero() {
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&PG_KEY])
                        .await
                        .map_err(|e| pg_err("take the session lock", e))?;
                    return row
                        .try_get::<_, bool>(0)
                        .map_err(|e| pg_err("take the session lock", e));
                }
                // Waited out in short statements: a statement that waits
                // holds its snapshot, and PostgreSQL keeps every row deleted
                // after that snapshot's start from being found dead - by
                // vacuum, and by the index sweep that readies this standby's
                // takeover (`store::sql::sweep`).
                let deadline = Instant::now() + wait;
                let ms = (wait.min(PG_WAIT_STATEMENT).as_millis() as u64).max(1);
                if *lock_timeout_ms != ms {
                    client
                        .batch_execute(&format!("SET lock_timeout = {ms}"))
                        .await
                        .map_err(|e| pg_err("set lock_timeout", e))?;
                    *lock_timeout_ms = ms;
                }
                let stmt = match lock_stmt {
                    Some(s) => s.clone(),
                    None => {
                        let s = client
                            .prepare("SELECT pg_advisory_lock($1)")
                            .await
                            .map_err(|e| pg_err("take the session lock", e))?;
                        lock_stmt.insert(s).clone()
                    }
                };
                loop {
                    match client.execute(&stmt, &[&PG_KEY]).await {
                        Ok(_) => return Ok(true),
                        Err(e)
                            if e.code()
                                == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                        {
                            if Instant::now() >= deadline {
                                return Ok(false);
                            }
                        }
                        Err(e) => return Err(pg_err("take the session lock", e)),
                    }
                }
            }
        }
    }

    async fn session_unlock(&mut self) -> Result<(), SqlError> {
        match self {
            DbConn::My {
                conn, lock, alive, ..
            } => conn
                .exec_drop("SELECT RELEASE_LOCK(?)", (lock.as_str(),))
                .await
                .map_err(|e| Self::my_fail(alive, "release the session lock", e)),
            DbConn::Pg { client, .. } => client
                .execute("SELECT pg_advisory_unlock($1)", &[&PG_KEY])
                .await
                .map(drop)
                .map_err(|e| pg_err("release the session lock", e)),
        }
    }

    async fn read_row(&mut self) -> Result<Row, SqlError> {
        const WHAT: &str = "read ACTIVEMQ_LOCK";
        match self {
            DbConn::My { conn, alive, .. } => {
                let row: Option<(Option<i64>, Option<String>, i64)> = conn
                    .query_first(format!(
                        "SELECT TIME, BROKER_NAME, {MY_NOW} FROM ACTIVEMQ_LOCK WHERE ID = 1"
                    ))
                    .await
                    .map_err(|e| Self::my_fail(alive, WHAT, e))?;
                match row {
                    Some((time, name, now)) => Ok(Row { time, name, now }),
                    None => Ok(Row {
                        time: None,
                        name: None,
                        now: 0,
                    }),
                }
            }
            DbConn::Pg { client, .. } => {
                let row = client
                    .query_opt(
                        &format!(
                            "SELECT TIME, BROKER_NAME, {PG_NOW} FROM ACTIVEMQ_LOCK WHERE ID = 1"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| pg_err(WHAT, e))?;
                match row {
                    Some(r) => Ok(Row {
                        time: r.try_get(0).map_err(|e| pg_err(WHAT, e))?,
                        name: r.try_get(1).map_err(|e| pg_err(WHAT, e))?,
                        now: r.try_get(2).map_err(|e| pg_err(WHAT, e))?,
                    }),
                    None => Ok(Row {
                        time: None,
                        name: None,
                        now: 0,
                    }),
                }
            }
        }
    }

    /// The lease row's UPDATE for `cond` (`$1` the lease in ms, `$2` our
    /// token, `$3` with [`Cond::Held`] the session-lock holder), and the
    /// holder it needs.
    fn update_sql(&self, cond: Cond) -> (String, Option<u64>) {
        let (now, p) = match self {
            DbConn::My { .. } => (MY_NOW, ["?", "?", "?"]),
            DbConn::Pg { .. } => (PG_NOW, ["$1", "$2", "$3"]),
        };
        let set = format!("UPDATE ACTIVEMQ_LOCK SET TIME = {now} + {}", p[0]);
        match cond {
            // In one statement with the UPDATE, so that a holder whose
            // session was just killed (the lock not yet passed on) cannot
            // write after the next holder did: the next one's UPDATE
            // follows its taking the lock, which follows our release.
            Cond::Held(session) => {
                let held = match self {
                    DbConn::My { .. } => format!("IS_USED_LOCK(?) = {}", p[2]),
                    DbConn::Pg { .. } => format!(
                        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' \
                         AND l.granted AND l.classid = 0 AND l.objid = {PG_KEY} \
                         AND l.objsubid = 1 AND l.pid = {} \
                         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                        p[2]
                    ),
                };
                (
                    format!("{set}, BROKER_NAME = {} WHERE ID = 1 AND {held}", p[1]),
                    Some(session),
                )
            }
            Cond::Expired => (
                format!(
                    "{set}, BROKER_NAME = {} WHERE ID = 1 AND (TIME IS NULL OR TIME <= {now})",
                    p[1]
                ),
                None,
            ),
            Cond::Ours => (
                format!("{set} WHERE ID = 1 AND BROKER_NAME = {}", p[1]),
                None,
            ),
        }
    }

    /// Prepares the statement that takes the lease row once the session
    /// lock is ours (`Cond::Held`, with the fence row's rewrite), so the
    /// takeover sends it in one round trip, already parsed: at the moment
    /// of a failover the database is busy and parsing it there cost a
    /// round trip and 1.2 ms of parse (bench/RESULTS.md, session 21).
    /// MariaDB keeps it in the connection's statement cache, which the
    /// take's `exec_drop` finds by its text.
    async fn prepare_take(&mut self) -> Result<(), SqlError> {
        const WHAT: &str = "prepare the lease row's takeover";
        let (sql, _) = self.update_sql(Cond::Held(0));
        match self {
            DbConn::My { conn, alive, .. } => {
                for stmt in [sql.as_str(), MY_FENCE_TAKE] {
                    conn.prep(stmt)
                        .await
                        .map_err(|e| Self::my_fail(alive, WHAT, e))?;
                }
                Ok(())
            }
            DbConn::Pg {
                client, take_stmt, ..
            } => {
                let stmt = client
                    .prepare(&pg_fenced_take(&sql))
                    .await
                    .map_err(|e| pg_err(WHAT, e))?;
                *take_stmt = Some(stmt);
                Ok(())
            }
        }
    }

    /// The UPDATE of the lease row: Some(rows matched), or None when it
    /// gave up waiting for a row lock (a transaction holds the fence row,
    /// or another standby is taking the lease).
    async fn update_row(
        &mut self,
        token: &LeaseToken,
        lease: Duration,
        cond: Cond,
    ) -> Result<Option<u64>, SqlError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let (sql, holder) = self.update_sql(cond);
        const WHAT: &str = "update ACTIVEMQ_LOCK";
        // Taking the lease also rewrites the fence row, in the same
        // transaction: that waits for the write transactions in flight
        // (they share-lock it), and every later one sees the new holder.
        let fence = matches!(cond, Cond::Held(_) | Cond::Expired);
        match self {
            DbConn::My {
                conn, alive, lock, ..
            } => {
                let r = my_lease_update(conn, &sql, holder, lease_ms, token, lock, fence).await;
                match r {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if my_code(&e) == Some(MY_LOCK_WAIT_TIMEOUT) => Ok(None),
                    Err(e) => Err(Self::my_fail(alive, WHAT, e)),
                }
            }
            DbConn::Pg {
                client, take_stmt, ..
            } => {
                let pid = holder.map(|id| i32::try_from(id).unwrap_or_default());
                let prepared = match cond {
                    Cond::Held(_) => take_stmt.as_ref(),
                    _ => None,
                };
                match pg_lease_update(client, &sql, prepared, pid, lease_ms, token, fence).await {
                    Ok(n) => Ok(Some(n)),
                    Err(e)
                        if e.code()
                            == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(pg_err(WHAT, e)),
                }
            }
        }
    }

    /// The lease row if missing (the fence row is made when taken).
    async fn insert_row(&mut self) -> Result<(), SqlError> {
        const WHAT: &str = "insert the ACTIVEMQ_LOCK row";
        match self {
            DbConn::My { conn, alive, .. } => conn
                .query_drop(
                    "INSERT IGNORE INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL)",
                )
                .await
                .map_err(|e| Self::my_fail(alive, WHAT, e)),
            DbConn::Pg { client, .. } => client
                .batch_execute(
                    "INSERT INTO ACTIVEMQ_LOCK (ID, TIME, BROKER_NAME) VALUES (1, 0, NULL) \
                     ON CONFLICT (ID) DO NOTHING",
                )
                .await
                .map_err(|e| pg_err(WHAT, e)),
        }
    }

    async fn clear_row(&mut self, token: &LeaseToken) -> Result<u64, SqlError> {
        const WHAT: &str = "clear ACTIVEMQ_LOCK";
        match self {
            DbConn::My { conn, alive, .. } => {
                conn.exec_drop(
                    "UPDATE ACTIVEMQ_LOCK SET TIME = 0, BROKER_NAME = NULL WHERE ID = 1 AND BROKER_NAME = ?",
                    (token.0.as_str(),),
                )
                .await
                .map_err(|e| Self::my_fail(alive, WHAT, e))?;
                Ok(conn.affected_rows())
            }
            DbConn::Pg { client, .. } => client
                .execute(
                    "UPDATE ACTIVEMQ_LOCK SET TIME = 0, BROKER_NAME = NULL WHERE ID = 1 AND BROKER_NAME = $1",
                    &[&token.0],
                )
                .await
                .map_err(|e| pg_err(WHAT, e)),
        }
    }

    /// Kills the connection holding the session lock if the row has expired
    /// (checked in the same statement as the lookup) and it is not one of
    /// `own`. The ids killed.
    async fn kill_session_holder(&mut self, own: &[u64]) -> Result<Vec<u64>, SqlError> {
        const WHAT: &str = "kill the hung master's session-lock connection";
        match self {
            DbConn::My {
                conn, lock, alive, ..
            } => {
                let holder: Option<Option<u64>> = conn
                    .exec_first(
                        format!(
                            "SELECT IS_USED_LOCK(?) FROM ACTIVEMQ_LOCK \
                             WHERE ID = 1 AND (TIME IS NULL OR TIME <= {MY_NOW})"
                        ),
                        (lock.as_str(),),
                    )
                    .await
                    .map_err(|e| Self::my_fail(alive, WHAT, e))?;
                let Some(id) = holder.flatten().filter(|id| !own.contains(id)) else {
                    return Ok(Vec::new());
                };
                my_kill(conn, alive, id, WHAT).await?;
                Ok(vec![id])
            }
            DbConn::Pg { client, .. } => {
                let sql = format!(
                    "SELECT l.pid, pg_terminate_backend(l.pid) FROM pg_locks l \
                     WHERE l.locktype = 'advisory' AND l.granted \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND l.classid = 0 AND l.objid = {PG_KEY} AND l.objsubid = 1 \
                     AND l.pid <> ALL($1) \
                     AND EXISTS (SELECT 1 FROM ACTIVEMQ_LOCK a WHERE a.ID = 1 \
                                 AND (a.TIME IS NULL OR a.TIME <= {PG_NOW}))"
                );
                pg_kill(client, &sql, own, WHAT).await
            }
        }
    }

    /// Kills the sessions whose transactions block an UPDATE of the row, if
    /// the row has expired (see [`acquire`]). The ids killed.
    async fn kill_row_blockers(
        &mut self,
        own: &[u64],
        idle: Duration,
    ) -> Result<Vec<u64>, SqlError> {
        const WHAT: &str = "kill the sessions blocking the lease row";
        match self {
            DbConn::My { conn, alive, .. } => {
                let own_list = own.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                let idle_ms = idle.as_millis() as u64;
                let ids: Vec<u64> = conn
                    .query(format!(
                        "SELECT p.ID FROM information_schema.PROCESSLIST p \
                         WHERE p.USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                         AND p.DB = DATABASE() AND p.COMMAND = 'Sleep' \
                         AND COALESCE(/*M! p.TIME_MS, */ p.TIME * 1000) >= {idle_ms} \
                         AND p.ID NOT IN ({own_list}) \
                         AND EXISTS (SELECT 1 FROM ACTIVEMQ_LOCK a WHERE a.ID = 1 \
                                     AND (a.TIME IS NULL OR a.TIME <= {MY_NOW}))"
                    ))
                    .await
                    .map_err(|e| Self::my_fail(alive, WHAT, e))?;
                let mut killed = Vec::new();
                for id in ids {
                    match my_kill(conn, alive, id, WHAT).await {
                        Ok(()) => killed.push(id),
                        Err(e) if !*alive => return Err(e),
                        Err(e) => {
                            warn!(role = "standby", id, error = %e, "cannot kill a session blocking the lease row")
                        }
                    }
                }
                Ok(killed)
            }
            DbConn::Pg { client, .. } => {
                // A transaction that locked the fence row (FOR SHARE, FOR
                // UPDATE, UPDATE) holds a RowShare or RowExclusive lock on
                // BROKK_FENCE until it ends; row locks themselves are not in
                // pg_locks, and pg_blocking_pids sees only current waits.
                // ACTIVEMQ_LOCK too: where a broker of an earlier version
                // was master, its writers share-locked the lease row.
                let sql = format!(
                    "SELECT l.pid, pg_terminate_backend(l.pid) FROM pg_locks l \
                     WHERE l.locktype = 'relation' AND l.granted \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND l.relation IN ('brokk_fence'::regclass, 'activemq_lock'::regclass) \
                     AND l.mode IN ('RowShareLock', 'RowExclusiveLock') \
                     AND l.pid <> ALL($1) \
                     AND EXISTS (SELECT 1 FROM ACTIVEMQ_LOCK a WHERE a.ID = 1 \
                                 AND (a.TIME IS NULL OR a.TIME <= {PG_NOW}))"
                );
                pg_kill(client, &sql, own, WHAT).await
            }
        }
    }

    async fn close(self) {
        match self {
            DbConn::My { conn, .. } => {
                let _ = conn.disconnect().await;
            }
            DbConn::Pg { client, .. } => drop(client),
        }
    }
}

async fn my_kill(
    conn: &mut mysql_async::Conn,
    alive: &mut bool,
    id: u64,
    what: &'static str,
) -> Result<(), SqlError> {
    match conn.query_drop(format!("KILL CONNECTION {id}")).await {
        Ok(()) => Ok(()),
        Err(e) if my_code(&e) == Some(MY_UNKNOWN_THREAD) => Ok(()),
        Err(e) => Err(DbConn::my_fail(alive, what, e)),
    }
}

async fn pg_kill(
    client: &tokio_postgres::Client,
    sql: &str,
    own: &[u64],
    what: &'static str,
) -> Result<Vec<u64>, SqlError> {
    let own: Vec<i32> = own
        .iter()
        .filter_map(|id| i32::try_from(*id).ok())
        .collect();
    let rows = client
        .query(sql, &[&own])
        .await
        .map_err(|e| pg_err(what, e))?;
    let mut killed = Vec::new();
    for r in rows {
        let pid: i32 = r.try_get(0).map_err(|e| pg_err(what, e))?;
        let done: bool = r.try_get(1).map_err(|e| pg_err(what, e))?;
        if done {
            killed.push(u64::try_from(pid).unwrap_or_default());
        }
    }
    Ok(killed)
}

/// MariaDB: the lease row's UPDATE (`sql`), and with `fence` the fence
/// row's upsert, in one transaction. Rows of the lease matched.
async fn my_lease_update(
    conn: &mut mysql_async::Conn,
    sql: &str,
    holder: Option<u64>,
    lease_ms: i64,
    token: &LeaseToken,
    lock: &str,
    fence: bool,
) -> Result<u64, mysql_async::Error> {
    async fn update(
        conn: &mut mysql_async::Conn,
        sql: &str,
        holder: Option<u64>,
        lease_ms: i64,
        token: &str,
        lock: &str,
    ) -> Result<(), mysql_async::Error> {
        match holder {
            Some(id) => conn.exec_drop(sql, (lease_ms, token, lock, id)).await,
            None => conn.exec_drop(sql, (lease_ms, token)).await,
        }
    }
    if !fence {
        update(conn, sql, holder, lease_ms, &token.0, lock).await?;
        return Ok(conn.affected_rows());
    }
    conn.query_drop("START TRANSACTION").await?;
    let r = async {
        update(conn, sql, holder, lease_ms, &token.0, lock).await?;
        let n = conn.affected_rows();
        if n > 0 {
            conn.exec_drop(MY_FENCE_TAKE, (token.0.as_str(),)).await?;
        }
        conn.query_drop(if n > 0 { "COMMIT" } else { "ROLLBACK" })
            .await?;
        Ok(n)
    }
    .await;
    if r.is_err() {
        // A lock-wait timeout rolls back only its statement: end the
        // transaction, so that the lease row's lock goes too.
        let _ = conn.query_drop("ROLLBACK").await;
    }
    r
}

/// PostgreSQL: as [`my_lease_update`], but one statement: taking the lease
/// is the UPDATE of the row with the fence row's rewrite in a CTE, so the
/// fence is rewritten exactly when the UPDATE matched, in one implicit
/// transaction. A takeover waits for it: as BEGIN, UPDATE, upsert and
/// COMMIT it cost six round trips (each of the two statements parsed, then
/// run) on a database whose cores the failover has busy.
async fn pg_lease_update(
    client: &mut tokio_postgres::Client,
    sql: &str,
    prepared: Option<&tokio_postgres::Statement>,
    pid: Option<i32>,
    lease_ms: i64,
    token: &LeaseToken,
    fence: bool,
) -> Result<u64, tokio_postgres::Error> {
    if let (Some(stmt), Some(pid), true) = (prepared, &pid, fence) {
        return client.execute(stmt, &[&lease_ms, &token.0, pid]).await;
    }
    let fenced = fence.then(|| pg_fenced_take(sql));
    let sql = fenced.as_deref().unwrap_or(sql);
    match &pid {
        Some(pid) => client.execute(sql, &[&lease_ms, &token.0, pid]).await,
        None => client.execute(sql, &[&lease_ms, &token.0]).await,
    }
}

/// `update` (an UPDATE of the lease row whose `$2` is the taker's token)
/// with the fence row's rewrite: the rows it counts are the fence row's,
/// one when the UPDATE matched, none when it did not.
fn pg_fenced_take(update: &str) -> String {
    format!(
        "WITH taken AS ({update} RETURNING 1) \
         INSERT INTO BROKK_FENCE (ID, HOLDER) SELECT 1, $2 FROM taken \
         ON CONFLICT (ID) DO UPDATE SET HOLDER = EXCLUDED.HOLDER"
    )
}

/// FNV-1a, for a lock name that must fit in 64 characters.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
