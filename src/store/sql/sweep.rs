//! A PostgreSQL standby keeps `ACTIVEMQ_MSGS`'s primary key swept, so that
//! its takeover reads only live rows.
//!
//! Every message is a row inserted and, once consumed, deleted. PostgreSQL
//! leaves a deleted row's index entry in place until vacuum (autovacuum
//! visits a table at most once a minute), and an index scan that meets
//! such an entry fetches the heap tuple to find it dead; only then does it
//! mark the entry dead, so that later scans skip it. Nothing else scans the
//! key in order: the master deletes by exact ID. So the takeover's read
//! (`load`, keyset pages by ID) was the first to meet every row deleted
//! since the last vacuum. Measured on this machine: after 6 s of 33k
//! msg/s its first page took 163 ms (31k buffers, most read from disk and
//! dirtied) to find no live row, and the same query right after 0.7 ms;
//! a SIGKILL after 30 s of load took 1.13 s to read 96 pending messages.
//! MariaDB purges deleted rows' index entries by itself.
//!
//! So while it waits, a PostgreSQL standby walks the key in chunks
//! ([`CHUNK`] live rows, every [`EVERY`]), on a connection of its own,
//! reading only IDs: the scan marks the entries of rows deleted before the
//! oldest open snapshot dead, as the takeover's would, but off the
//! failover's clock (the same SIGKILL after 30 s: 69 ms to read 2 464).
//! Only rows deleted before every open snapshot can be marked, which is
//! why the standby's own wait for the session lock is a chain of short
//! statements (`ha::db_lease`). It costs the database one short index
//! scan every [`EVERY`]: the live rows of the chunk plus the entries
//! deleted since the sweep last passed (every deleted row's entry is
//! walked once, by the sweep instead of the takeover); about 3% of the
//! closed-loop throughput on this machine, where the database shares two
//! cores with the brokers and the load (a 100 ms period cost about 10%
//! for the same failovers). It changes nothing in the tables and takes no
//! lock a writer or a takeover waits for; an error only pauses it.
//!
//! A marked entry still stays in the index until vacuum removes it, and
//! every scan from the start of the key steps over all of them, as does
//! the takeover's. Autovacuum visits a database at most once a minute
//! (`autovacuum_naptime`), throttled, and falls behind under this churn:
//! measured here at 8 producers and consumers, the database grew to 9.8
//! GB in 330 s and a takeover after 150 s and 300 s of load read 1 184
//! and 2 436 pending messages in 221 and 262 ms (24 ms after 2 s). So the
//! standby also runs `VACUUM` on `ACTIVEMQ_MSGS` every [`VACUUM_EVERY`]
//! (never more than a fifth of the time, as the steps): the work
//! autovacuum would do later, in smaller passes. The same run with it
//! (three runs, six takeovers): 47-108 ms, the same throughput.
//! `TRUNCATE false`: truncating the table's empty tail takes a lock that
//! would hold the master's inserts up. `VACUUM` takes no lock that a read,
//! insert or delete waits for, but DDL on the table waits for it (and the
//! master's writes behind that), so it waits at most 2 s for its lock and
//! runs at most 30 s ([`VACUUM_LIMITS`]). A takeover cancels one in
//! progress (see `Cancel`); a SIGKILLed standby's stops within about 10 ms
//! on PostgreSQL 14 and later on Linux (`client_connection_check_interval`,
//! set on every connection, see `conn`) and elsewhere runs on until it
//! ends or times out. A database user that does not own the table does
//! not vacuum it (autovacuum's only): checked once, said once.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tokio_postgres::CancelToken;
use tracing::{debug, info, warn};

use super::conn::{join_all, pg_err, pg_reason, Db, PgPool};
use super::{load, write, SqlError};

/// Live rows one step reads (its LIMIT): a table holding more is swept
/// over several steps, from where the last one stopped.
pub const CHUNK: i64 = 5_000;

/// Pause between steps.
pub const EVERY: Duration = Duration::from_millis(250);

/// Pause between the standby's vacuums of `ACTIVEMQ_MSGS`.
pub const VACUUM_EVERY: Duration = Duration::from_secs(5);

/// The standby's vacuum (see the module's comment).
const VACUUM: &str = "VACUUM (TRUNCATE false) ACTIVEMQ_MSGS";

/// Pause after an error (the database down or restarting).
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// A sweep failing this long is worth a warning (once, until it works).
const WARN_AFTER: Duration = Duration::from_secs(30);

/// The sweep's session: it must walk the index (a sequential scan would
/// prune heap pages but leave the index entries for the takeover);
/// operators see what it is in `pg_stat_activity`.
const SESSION: &str = "SET enable_seqscan = off; SET enable_bitmapscan = off; \
     SET application_name = 'brokk-standby-sweep'";

/// A step never runs long: it holds a snapshot, which would keep rows
/// from being marked, by itself too; and it takes no lock. Part of the
/// sweep's session, set again after each vacuum (which has its own,
/// [`VACUUM_LIMITS`], and holds no such snapshot).
const STEP_LIMITS: &str = "SET statement_timeout = 5000; SET lock_timeout = 0";

/// One step: the highest ID among the next [`CHUNK`] live rows above
/// `$1`, and how many there were. An index-only scan on the primary key,
/// which fetches the heap (and marks dead entries) wherever a page is not
/// all-visible.
const STEP: &str = "SELECT max(ID), count(*) FROM \
     (SELECT ID FROM ACTIVEMQ_MSGS WHERE ID > $1 ORDER BY ID LIMIT $2) s";

/// Sweeps until dropped (PostgreSQL); on MySQL/MariaDB it only waits.
/// Meant to run beside the standby's wait for the lease and be dropped
/// when that ends: it never returns. First, and again whenever its own
/// connection broke (the database restarted), it readies `connections`
/// of the pool for the takeover: open, with the takeover's reads and the
/// writer's statements prepared (3-10 ms of a takeover under load).
pub async fn while_standby(db: &Db, connections: usize) -> Infallible {
    let Db::Postgres(pool) = db else {
        return std::future::pending().await;
    };
    let mut after = i64::MIN;
    let mut health = Health::default();
    let mut vacuum = Vacuum::new();
    loop {
        if let Err(e) = prepare_ahead(pool, connections).await {
            debug!(role = "standby", error = %e, "cannot prepare the takeover's statements ahead");
        }
        // A connection of its own, not the pool's: dropping this future
        // closes it (and cancels a step in progress, see `Cancel`), and
        // the takeover's read never queues behind a step.
        let conn = match pool.open_unpooled().await {
            Ok(c) => c,
            Err(e) => {
                health.failed("cannot connect", pg_reason(&e));
                tokio::time::sleep(AFTER_ERROR).await;
                continue;
            }
        };
        let prepared = async {
            conn.client.batch_execute(SESSION).await?;
            conn.client.batch_execute(STEP_LIMITS).await?;
            conn.client.prepare(STEP).await
        }
        .await;
        let step = match prepared {
            Ok(s) => s,
            Err(e) => {
                health.failed("cannot start", pg_reason(&e));
                tokio::time::sleep(AFTER_ERROR).await;
                continue;
            }
        };
        loop {
            let started = Instant::now();
            let cancel = Cancel(Some(conn.client.cancel_token()));
            let answer = conn.client.query_one(&step, &[&after, &CHUNK]).await;
            cancel.disarm();
            let took = started.elapsed();
            match answer.and_then(|row| Ok((row.try_get(0)?, row.try_get::<_, i64>(1)?))) {
                Ok((last, n)) => {
                    health.ok();
                    // A short chunk reached the end: start over.
                    after = match last {
                        Some(id) if n >= CHUNK => id,
                        _ => i64::MIN,
                    };
                    if vacuum.due() {
                        vacuum.run(&conn.client).await;
                    }
                    // Never more than a fifth of the time: a step slows
                    // down when entries cannot be marked (an old snapshot
                    // elsewhere, e.g. a long backup) and each pass walks
                    // them all again.
                    tokio::time::sleep(EVERY.max(took * 4)).await;
                }
                Err(e) => {
                    health.failed("a step failed", pg_reason(&e));
                    tokio::time::sleep(AFTER_ERROR).await;
                    if conn.client.is_closed() {
                        break;
                    }
                }
            }
        }
    }
}

/// When the standby vacuums `ACTIVEMQ_MSGS` next, and whether it may.
struct Vacuum {
    next: Instant,
    /// Whether this database user's ownership of the table was checked (a
    /// user that does not own it gets only a warning from PostgreSQL,
    /// every time, so it does not vacuum).
    owner_checked: bool,
    /// Off for good: the user does not own the table, or PostgreSQL
    /// refused the statement (a server before 12, without `TRUNCATE
    /// false`; no privilege). Said once; autovacuum's only then.
    off: bool,
}

/// The most a vacuum may run, and wait for its lock. While it runs,
/// another session's DDL on the table (an operator's `ALTER TABLE`,
/// `CREATE INDEX`) waits for it, and the master's writes queue behind that
/// DDL: autovacuum gives way to such a request, a manual `VACUUM` does not.
/// It waits for its own lock at most 2 s: long enough for a running
/// autovacuum, which holds the same lock for minutes at a time on this
/// churn (throttled), to give way to it (after `deadlock_timeout`, 1 s);
/// `SKIP_LOCKED` skipped every vacuum autovacuum was in (measured: 24 of
/// 35 in a 330 s run, reads 74 and 108 ms against 70 and 47).
const VACUUM_LIMITS: &str = "SET statement_timeout = 30000; SET lock_timeout = 2000";

/// Whether this user owns `ACTIVEMQ_MSGS` (a superuser counts).
const OWNS: &str = "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c \
     WHERE c.oid = 'activemq_msgs'::regclass";

impl Vacuum {
    fn new() -> Vacuum {
        Vacuum {
            next: Instant::now() + VACUUM_EVERY,
            owner_checked: false,
            off: false,
        }
    }

    fn due(&self) -> bool {
        !self.off && Instant::now() >= self.next
    }

    /// One vacuum, with its own limits instead of the steps' (see
    /// [`VACUUM_LIMITS`]); a takeover cancels it.
    async fn run(&mut self, client: &tokio_postgres::Client) {
        if !self.owner_checked {
            match client.query_one(OWNS, &[]).await {
                Ok(row) => {
                    self.owner_checked = true;
                    if !row.try_get::<_, bool>(0).unwrap_or(false) {
                        self.off = true;
                        info!(
                            role = "standby",
                            "this database user does not own ACTIVEMQ_MSGS: vacuuming it is left to autovacuum (a takeover after long uptime reads more slowly)"
                        );
                        return;
                    }
                }
                Err(e) => {
                    debug!(
                        role = "standby",
                        error = pg_reason(&e),
                        "cannot check who owns ACTIVEMQ_MSGS"
                    );
                    self.next = Instant::now() + VACUUM_EVERY;
                    return;
                }
            }
        }
        let started = Instant::now();
        let cancel = Cancel(Some(client.cancel_token()));
        let done = async {
            client.batch_execute(VACUUM_LIMITS).await?;
            let vacuumed = client.batch_execute(VACUUM).await;
            client.batch_execute(STEP_LIMITS).await?;
            vacuumed
        }
        .await;
        cancel.disarm();
        let took = started.elapsed();
        self.next = Instant::now() + VACUUM_EVERY.max(took * 4);
        let e = match done {
            Ok(()) => {
                debug!(
                    role = "standby",
                    ms = took.as_secs_f64() * 1000.0,
                    "vacuumed ACTIVEMQ_MSGS"
                );
                return;
            }
            // The sweep's next step finds the connection broken too.
            Err(_) if client.is_closed() => return,
            Err(e) => e,
        };
        use tokio_postgres::error::SqlState;
        let for_good = [
            SqlState::SYNTAX_ERROR,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        if e.code().is_some_and(|c| for_good.contains(c)) {
            self.off = true;
            warn!(
                role = "standby",
                error = pg_reason(&e),
                "cannot VACUUM ACTIVEMQ_MSGS; leaving it to autovacuum (a takeover after long uptime reads more slowly)"
            );
        } else {
            // Timed out, or its lock was taken (another vacuum, DDL, an
            // anti-wraparound autovacuum): again at the next turn.
            debug!(
                role = "standby",
                error = pg_reason(&e),
                "vacuuming ACTIVEMQ_MSGS failed; trying again later"
            );
        }
    }
}

/// Whether the sweep keeps failing: a warning once it has for
/// [`WARN_AFTER`], and a line when it works again.
#[derive(Default)]
struct Health {
    failing_since: Option<Instant>,
    warned: bool,
}

impl Health {
    fn failed(&mut self, what: &str, error: String) {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if !self.warned && since.elapsed() >= WARN_AFTER {
            self.warned = true;
            warn!(
                role = "standby",
                error,
                "the index sweep has failed for {} s ({what}); a takeover will read more slowly",
                WARN_AFTER.as_secs()
            );
        } else {
            debug!(role = "standby", error, "index sweep: {what}; trying again");
        }
    }

    fn ok(&mut self) {
        self.failing_since = None;
        if std::mem::take(&mut self.warned) {
            info!(role = "standby", "the index sweep works again");
        }
    }
}

/// Cancels the step in progress on the server if dropped armed: a client
/// that just closes its connection leaves PostgreSQL running the query
/// until it writes the answer, beside the takeover's read (or, where
/// `client_connection_check_interval` works, until its next check, up to
/// 10 ms later; the cancel is sooner).
struct Cancel(Option<CancelToken>);

impl Cancel {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let (Some(token), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = token.cancel_query(tokio_postgres::NoTls).await;
            });
        }
    }
}

/// Opens `n` pooled connections (or takes idle ones) and prepares the
/// takeover's reads and the writer's statements on each: the takeover's
/// read and its writer lanes may get any of them.
async fn prepare_ahead(pool: &PgPool, n: usize) -> Result<(), SqlError> {
    let ready = join_all(
        (0..n.max(1))
            .map(|_| async {
                let mut conn = pool.get().await?;
                load::pg_prepare_reads(&mut conn)
                    .await
                    .map_err(pg_err("prepare the takeover's reads"))?;
                write::pg_prepare_writes(&mut conn).await?;
                Ok::<_, SqlError>(conn)
            })
            .collect(),
    )
    .await;
    // All held until here, so that each was a different connection.
    ready.into_iter().try_for_each(|r| r.map(drop))
}
