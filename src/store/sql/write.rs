//! Writing one [`Batch`] as one database transaction, fenced by the lease.
//!
//! The transaction first reads the fence row (`BROKK_FENCE`) under a
//! shared row lock, and the lease row without one, and checks that both
//! still name us and that the lease has not expired by the database's
//! clock; a master that took over must first take the fence row's
//! exclusive lock to rewrite it, so it waits for this transaction, and
//! this transaction sees its write if it came first. Then the batch is
//! applied in the order documented on [`Batch`], and committed.
//!
//! Round trips are few: every change is a multi-row statement (at most
//! [`MSG_CHUNK`] messages, [`ROW_CHUNK`] other rows each).
//! - MySQL: binary-protocol prepared statements (cached by the driver per
//!   row count), bodies sent as raw bytes; the statements that carry only
//!   integers (decisions, deletes, finished transactions) go as one
//!   multi-statement text query, since integers need no escaping.
//! - PostgreSQL: every statement is a constant taking arrays (`unnest`,
//!   `= ANY`), prepared once per connection, and all of them are sent
//!   pipelined, so applying a batch is about one round trip.
//!
//! Duplicates are ignored only where the batch may legitimately repeat a
//! row (acks, decisions): MySQL uses `ON DUPLICATE KEY UPDATE k = k`
//! rather than `INSERT IGNORE`, which would also turn other errors (a too
//! long value) into warnings.

use std::collections::HashMap;
use std::fmt::Write as _;

use mysql_async::prelude::Queryable;
use mysql_async::{Row, TxOpts, Value};
use tokio_postgres::types::ToSql;

use super::conn::{join_all, my_err, pg_err, Db, PgConn};
use super::schema::my_take;
use super::{Batch, LeaseToken, MsgRow, Redelivery, SqlError, SubRow, TxAckRow};

/// Messages per INSERT statement.
pub const MSG_CHUNK: usize = 256;
/// Most bytes of rows in one INSERT by default: a statement must stay under
/// the server's packet limit (`max_allowed_packet`: 16 MiB on MariaDB,
/// 4 MiB on MySQL 5.7 by default). See [`set_statement_limit`].
pub const MSG_CHUNK_BYTES: usize = 1 << 20;

/// The row budget in force (see [`set_statement_limit`]).
static CHUNK_BUDGET: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(MSG_CHUNK_BYTES);

/// The server's largest statement (MySQL's `max_allowed_packet`, read at
/// start, before a standby waits): INSERT chunks stay within half of it.
/// A single message larger than the budget goes alone; the broker caps
/// frames below the limit.
pub fn set_statement_limit(limit: u64) {
    let budget = (limit / 2).min(MSG_CHUNK_BYTES as u64).max(1) as usize;
    CHUNK_BUDGET.store(budget, std::sync::atomic::Ordering::Relaxed);
}

/// What a row costs in a statement besides its `MSG`: the container and
/// the other columns.
const ROW_OVERHEAD: usize = 64;

/// The inserts in statements of at most [`MSG_CHUNK`] rows and the chunk
/// budget in bytes (at least one row each).
fn msg_chunks(rows: &[MsgRow]) -> impl Iterator<Item = &[MsgRow]> {
    let budget = CHUNK_BUDGET.load(std::sync::atomic::Ordering::Relaxed);
    msg_chunks_within(rows, budget)
}

fn msg_chunks_within(rows: &[MsgRow], budget: usize) -> impl Iterator<Item = &[MsgRow]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < MSG_CHUNK {
            bytes += rest[n].msg.len() + rest[n].container.len() + ROW_OVERHEAD;
            if n > 0 && bytes > budget {
                break;
            }
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}
/// Other rows (acks, ids to delete) per statement.
pub const ROW_CHUNK: usize = 1000;
/// Size at which MySQL's multi-statement text is sent in parts (well under
/// the server's `max_allowed_packet`, 16 MiB by default).
const MYSQL_TEXT_LIMIT: usize = 256 << 10;

// The fence row share-locked for the transaction's length: a takeover
// rewrites it, so it waits for the transactions in flight, and those after
// it see the new holder and commit nothing. The lease row is only read (a
// plain, non-locking read; MariaDB's LOCK IN SHARE MODE does not reach into
// the subquery under REPEATABLE READ, which the pool sets): the renewal
// rewrites it every `lease / 4` and must never wait for a long write
// transaction (see `ha::db_lease`). Its holder is checked too: a takeover
// by a broker of a version without the fence row rewrites only that row.
const MYSQL_FENCE: &str = "SELECT f.HOLDER, \
     (SELECT l.BROKER_NAME FROM ACTIVEMQ_LOCK l WHERE l.ID = 1), \
     (SELECT l.TIME FROM ACTIVEMQ_LOCK l WHERE l.ID = 1), \
     CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) \
     FROM BROKK_FENCE f WHERE f.ID = 1 LOCK IN SHARE MODE";
const PG_FENCE: &str = "SELECT f.HOLDER, l.BROKER_NAME, l.TIME, \
     (extract(epoch from clock_timestamp()) * 1000)::bigint \
     FROM BROKK_FENCE f LEFT JOIN ACTIVEMQ_LOCK l ON l.ID = 1 WHERE f.ID = 1 FOR SHARE OF f";

/// Opens `n` of the pool's connections side by side and, on PostgreSQL,
/// prepares the write statements on each, so that a new master's first
/// transactions (one per writer lane) pay neither a login nor a prepare:
/// run beside the takeover's reads, it comes off the failover gap. Best
/// effort: a failure here only means the first write does it. `n` must
/// leave the pool a connection for whatever runs beside it.
pub async fn warm(db: &Db, n: usize) {
    match db {
        Db::MySql(pool) => {
            let conns = join_all((0..n).map(|_| pool.get_conn()).collect()).await;
            drop(conns);
        }
        Db::Postgres(pool) => {
            let guards = join_all(
                (0..n)
                    .map(|_| async {
                        let mut g = pool.get().await?;
                        pg_prepare_all(&mut g).await?;
                        Ok::<_, SqlError>(g)
                    })
                    .collect(),
            )
            .await;
            for g in &guards {
                if let Err(e) = g {
                    tracing::debug!(error = %e, "warming a database connection failed");
                }
            }
        }
    }
}

/// The statement every write transaction begins with (public for the
/// tests that hold its locks the way a slow transaction does).
pub fn fence_query(dialect: super::Dialect) -> &'static str {
    match dialect {
        super::Dialect::MySql => MYSQL_FENCE,
        super::Dialect::Postgres => PG_FENCE,
    }
}

/// Applies `batch` in one transaction if `lease` still holds the fence row;
/// otherwise commits nothing and returns [`SqlError::Fenced`]. Any other
/// failure rolls back and returns [`SqlError::Query`].
pub async fn write_batch(db: &Db, lease: &LeaseToken, batch: &Batch) -> Result<(), SqlError> {
    write_batch_as(db, lease, batch, Attempt::Again).await
}

/// What a failed COMMIT of a write is called ([`SqlError::Query::what`]):
/// the one failure after which a batch may have committed unheard of.
pub const COMMIT: &str = "commit a write";

/// Whether a batch may already be (partly) in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Its first transaction: none of its messages can be in the table
    /// yet (ids are new, above every row read at takeover), so a row
    /// already there under one of their ids was written by someone else
    /// (another program writing into these tables, an operator's
    /// `MAX(ID) + 1`), and skipping it would receipt a message never
    /// stored: that ends in [`SqlError::IdTaken`], nothing committed.
    /// PostgreSQL inserts plainly (a unique violation): `ON CONFLICT DO
    /// NOTHING` costs an index probe and a second WAL record a row
    /// (speculative insertion; 64 rows of 1 KiB, pgbench here: 0.70-0.72
    /// ms a statement without it, 0.80-0.83 with it). MySQL keeps `ON
    /// DUPLICATE KEY UPDATE ID = ID` (no measurable cost) and counts the
    /// rows inserted: a row there counts 0.
    First,
    /// Any later one: an earlier transaction may have committed without
    /// our hearing, so every statement skips what is already there.
    Again,
}

/// [`write_batch`], knowing whether this is the batch's first attempt.
pub async fn write_batch_as(
    db: &Db,
    lease: &LeaseToken,
    batch: &Batch,
    attempt: Attempt,
) -> Result<(), SqlError> {
    let alone: Option<std::future::Ready<Result<Waited, SqlError>>> = None;
    write_after(db, lease, batch, attempt, alone, || {}).await
}

/// What the transaction before did, as `write_after`'s `before` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// It had committed already (or there was none).
    No,
    /// It committed while we waited.
    Yes,
}

/// [`write_batch_as`] overlapping the transaction before it (a writer
/// lane's, see `writer`): the fence row is share-locked and checked and the
/// batch's new messages are inserted at once, while that one commits; only
/// then is `before` awaited (it resolves once that transaction committed,
/// or fails, and then this one rolls back: that one goes again on its own
/// and its statements could wait for our rows). The rest of the batch (its
/// deletes may name rows the previous one inserted) and the COMMIT follow.
/// `committing` is called just before the COMMIT is sent.
///
/// The fence row is share-locked from the start, as every write
/// transaction's: a takeover waits for it (and kills it if it hangs, see
/// `ha::db_lease`). If `before` made us wait, the lease is read again right
/// before the COMMIT: its expiry is judged by the database's clock at that
/// moment, not when the inserts went out. On MySQL/MariaDB, whose
/// REPEATABLE READ would show that read the lease row as the first read
/// found it (a renewal since would go unseen, and a healthy master take
/// itself for fenced), the first read's expiry is counted down on our
/// clock instead, and a transaction that waited past it goes again.
/// Without `before` the transaction is on its own: nothing waits.
pub async fn write_after(
    db: &Db,
    lease: &LeaseToken,
    batch: &Batch,
    attempt: Attempt,
    before: Option<impl std::future::Future<Output = Result<Waited, SqlError>>>,
    committing: impl FnOnce(),
) -> Result<(), SqlError> {
    match db {
        Db::MySql(pool) => {
            let mut conn = pool
                .get_conn()
                .await
                .map_err(my_err("connect for a write"))?;
            let mut tx = conn
                .start_transaction(TxOpts::default())
                .await
                .map_err(my_err("begin a write"))?;
            let read_at = std::time::Instant::now();
            let left = match my_check_lease(&mut tx, lease).await {
                Ok(left) => left,
                Err(e) => {
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            };
            my_insert_msgs(&mut tx, &batch.inserts, attempt).await?;
            if let Some(before) = before {
                let waited = match before.await {
                    Ok(waited) => waited,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        return Err(e);
                    }
                };
                // Read again, the lease row would show what the first read
                // saw (REPEATABLE READ): renewals since go unseen. What it
                // said still holds until `left` has passed on our clock
                // (renewals only push the expiry out, and a takeover must
                // first rewrite the fence row, share-locked here since),
                // counted from before the read.
                if waited == Waited::Yes && read_at.elapsed() >= left {
                    let _ = tx.rollback().await;
                    return Err(SqlError::Query {
                        what: "read the lease",
                        reason: "the lease read at BEGIN may have run out while the transaction before committed; going again".into(),
                    });
                }
            }
            my_apply_rest(&mut tx, &Deduped::new(batch)).await?;
            committing();
            if let Err(e) = commit_faults().await {
                let _ = tx.rollback().await;
                return Err(e);
            }
            tx.commit().await.map_err(my_err(COMMIT))
        }
        Db::Postgres(pool) => {
            let mut guard = pool.get().await?;
            let written = pg_write(&mut guard, lease, batch, attempt, before, committing).await;
            if matches!(written, Err(SqlError::Query { .. })) {
                // The retry prepares afresh: a statement prepared long ago
                // (by this master, or by a waiting standby) fails for good
                // once an operator changed a column it returns.
                guard.stmts.clear();
            }
            written
        }
    }
}

/// Reads the fence row (share-locking it) and the lease row, and checks
/// that both are ours; MySQL/MariaDB.
async fn my_check_lease(
    tx: &mut mysql_async::Transaction<'_>,
    lease: &LeaseToken,
) -> Result<std::time::Duration, SqlError> {
    // Prepared (once per connection): as text, its parse was 100 of the
    // 150 us it took of every transaction.
    let fence: Option<Row> = tx
        .exec_first(MYSQL_FENCE, ())
        .await
        .map_err(my_err("read the lease"))?;
    let holder = match fence {
        None => None,
        Some(mut r) => Some(Fence {
            holder: my_take(&mut r, 0, "read the lease")?,
            lease_holder: my_take(&mut r, 1, "read the lease")?,
            expiry: my_take(&mut r, 2, "read the lease")?,
            now: my_take(&mut r, 3, "read the lease")?,
        }),
    };
    check_lease(lease, holder)
}

/// [`write_after`] on PostgreSQL, on `guard`: BEGIN; the fence read
/// pipelined with the inserts; the rest of the batch, pipelined (with the
/// fence read again if `before` made us wait); the COMMIT.
async fn pg_write(
    guard: &mut PgConn,
    lease: &LeaseToken,
    batch: &Batch,
    attempt: Attempt,
    before: Option<impl std::future::Future<Output = Result<Waited, SqlError>>>,
    committing: impl FnOnce(),
) -> Result<(), SqlError> {
    let stmts = pg_prepare_all(guard).await?;
    let tx = guard
        .client
        .transaction()
        .await
        .map_err(pg_err("begin a write"))?;
    let inserts = pg_insert_calls(&stmts, &batch.inserts, attempt);
    let (fence, inserted) = join2(tx.query_opt(&stmts.fence, &[]), pg_run(&tx, &inserts)).await;
    // The lease first: an insert that failed because another broker is
    // master now is reported as that.
    if let Err(e) = pg_check_lease(lease, fence) {
        let _ = tx.rollback().await;
        return Err(e);
    }
    if let Err(e) = inserted {
        return Err(pg_id_taken(e, &batch.inserts, attempt));
    }
    drop(inserts);
    let waited = match before {
        None => Waited::No,
        Some(before) => match before.await {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        },
    };
    let batch = Deduped::new(batch);
    let rest = pg_rest_calls(&stmts, &batch);
    let applied = match waited {
        Waited::No => pg_run(&tx, &rest).await,
        Waited::Yes => {
            let (fence, applied) = join2(tx.query_opt(&stmts.fence, &[]), pg_run(&tx, &rest)).await;
            if let Err(e) = pg_check_lease(lease, fence) {
                let _ = tx.rollback().await;
                return Err(e);
            }
            applied
        }
    };
    applied?;
    committing();
    if let Err(e) = commit_faults().await {
        let _ = tx.rollback().await;
        return Err(e);
    }
    tx.commit().await.map_err(pg_err(COMMIT))
}

/// Test-only fault switches, just before a write transaction's COMMIT
/// (the n-th counts transactions that got this far):
/// - `BROKK_FAULT_SLOW_COMMIT_EVERY=n:ms`: every n-th waits `ms` first, as
///   one stalled in the database would;
/// - `BROKK_FAULT_COMMIT_FAILS_EVERY=n`: every n-th ends in an error as a
///   failed COMMIT (the caller rolls back), whose outcome the writer must
///   take as unknown.
async fn commit_faults() -> Result<(), SqlError> {
    struct Faults {
        slow: Option<(u64, u64)>,
        fail: Option<u64>,
    }
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let faults = FAULTS.get_or_init(|| Faults {
        slow: std::env::var("BROKK_FAULT_SLOW_COMMIT_EVERY")
            .ok()
            .and_then(|v| {
                let (n, ms) = v.split_once(':')?;
                Some((n.parse().ok().filter(|&n| n > 0)?, ms.parse().ok()?))
            }),
        fail: std::env::var("BROKK_FAULT_COMMIT_FAILS_EVERY")
            .ok()
            .and_then(|v| v.parse().ok().filter(|&n| n > 0)),
    });
    if faults.slow.is_none() && faults.fail.is_none() {
        return Ok(());
    }
    let nth = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if let Some((every, ms)) = faults.slow {
        if nth.is_multiple_of(every) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
    match faults.fail {
        Some(every) if nth.is_multiple_of(every) => Err(SqlError::Query {
            what: COMMIT,
            reason: "BROKK_FAULT_COMMIT_FAILS_EVERY: rolled back instead".into(),
        }),
        _ => Ok(()),
    }
}

/// Checks the fence read's answer (PostgreSQL).
fn pg_check_lease(
    lease: &LeaseToken,
    row: Result<Option<tokio_postgres::Row>, tokio_postgres::Error>,
) -> Result<(), SqlError> {
    let e = pg_err("read the lease");
    let holder = match row.map_err(&e)? {
        None => None,
        Some(r) => Some(Fence {
            holder: r.try_get(0).map_err(&e)?,
            lease_holder: r.try_get(1).map_err(&e)?,
            expiry: r.try_get(2).map_err(&e)?,
            now: r.try_get(3).map_err(&e)?,
        }),
    };
    check_lease(lease, holder).map(drop)
}

/// A failed first insert of `rows`: PostgreSQL's unique violation of the
/// primary key means a row already there under one of our new ids
/// ([`SqlError::IdTaken`]).
fn pg_id_taken(e: SqlError, rows: &[MsgRow], attempt: Attempt) -> SqlError {
    if attempt == Attempt::First {
        if let SqlError::Query {
            what: "insert messages",
            reason,
        } = &e
        {
            // The primary key's (PostgreSQL names it so unless an operator
            // renamed it); a unique index an operator added stays a query
            // error, retried as before.
            if reason.contains("SQLSTATE 23505") && reason.contains("activemq_msgs_pkey") {
                return SqlError::IdTaken(format!("{} ({reason})", id_range(rows)));
            }
        }
    }
    e
}

/// Polls `a`, then `b`, until both are done: requests they send go out in
/// that order (pipelined on one PostgreSQL connection).
async fn join2<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match (ra, rb) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("poll_fn returns only once both are done"),
    }
}

/// The ids of `rows`, for an error.
fn id_range(rows: &[MsgRow]) -> String {
    let lo = rows.iter().map(|m| m.id).min().unwrap_or(0);
    let hi = rows.iter().map(|m| m.id).max().unwrap_or(0);
    format!("one of the {} ids {lo}..={hi}", rows.len())
}

/// What a write transaction reads before it writes.
struct Fence {
    /// `BROKK_FENCE.HOLDER` (share-locked).
    holder: Option<String>,
    /// `ACTIVEMQ_LOCK.BROKER_NAME` and `TIME` (read without a lock).
    lease_holder: Option<String>,
    expiry: Option<i64>,
    /// The database's clock, ms.
    now: i64,
}

/// Whether the fence (and the lease row) name us, unexpired.
fn check_lease(lease: &LeaseToken, fence: Option<Fence>) -> Result<std::time::Duration, SqlError> {
    let Some(f) = fence else {
        return Err(SqlError::Fenced("BROKK_FENCE has no row ID=1".into()));
    };
    for (table, holder) in [
        ("BROKK_FENCE", &f.holder),
        ("ACTIVEMQ_LOCK", &f.lease_holder),
    ] {
        if holder.as_deref() != Some(lease.0.as_str()) {
            return Err(SqlError::Fenced(format!(
                "{table} names {}, not {}",
                holder.as_deref().unwrap_or("nobody"),
                lease.0
            )));
        }
    }
    let expiry = f.expiry.unwrap_or(0);
    if expiry <= f.now {
        return Err(SqlError::Fenced(format!(
            "the lease expired {} ms ago (by the database's clock)",
            f.now - expiry
        )));
    }
    Ok(std::time::Duration::from_millis((expiry - f.now) as u64))
}

/// The batch with repeated keys collapsed where a statement could not take
/// them twice (PostgreSQL's `ON CONFLICT DO UPDATE` refuses to touch a row
/// twice in one statement): the last redelivery count and the last
/// subscription definition win, as they would applied one by one.
struct Deduped<'a> {
    b: &'a Batch,
    redeliveries: Vec<&'a Redelivery>,
    subs_added: Vec<&'a SubRow>,
    /// One row per (container, producer), the highest sequence, in key
    /// order (PostgreSQL refuses to upsert one row twice in a statement).
    producer_seqs: Vec<(&'a str, &'a str, i64)>,
}

impl<'a> Deduped<'a> {
    fn new(b: &'a Batch) -> Self {
        Deduped {
            b,
            redeliveries: last_wins(&b.redeliveries, |r| (r.id, r.sub_key.as_str())),
            subs_added: last_wins(&b.subs_added, |s| {
                (
                    s.container.as_str(),
                    s.client_id.as_str(),
                    s.sub_name.as_str(),
                )
            }),
            producer_seqs: {
                let mut max: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
                for p in &b.producer_seqs {
                    let e = max
                        .entry((p.container.as_str(), p.producer.as_str()))
                        .or_insert(p.seq);
                    *e = (*e).max(p.seq);
                }
                max.into_iter().map(|((c, p), s)| (c, p, s)).collect()
            },
        }
    }
}

fn last_wins<'a, T, K: std::hash::Hash + Eq>(
    rows: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        last.insert(key(r), i);
    }
    rows.iter()
        .enumerate()
        .filter(|(i, r)| last.get(&key(r)) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

// ---------------------------------------------------------------- MySQL

/// `head` followed by `n` copies of `tuple`, comma separated, then `tail`.
fn values_sql(head: &str, tuple: &str, n: usize, tail: &str) -> String {
    let mut s = String::with_capacity(head.len() + n * (tuple.len() + 1) + tail.len());
    s.push_str(head);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(tuple);
    }
    s.push_str(tail);
    s
}

fn text(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::NULL, text)
}

async fn my_exec(
    tx: &mut mysql_async::Transaction<'_>,
    what: &'static str,
    sql: String,
    params: Vec<Value>,
) -> Result<(), SqlError> {
    tx.exec_drop(sql, mysql_async::Params::Positional(params))
        .await
        .map_err(my_err(what))
}

/// A batch's messages, first in its transaction (see [`write_after`]).
async fn my_insert_msgs(
    tx: &mut mysql_async::Transaction<'_>,
    inserts: &[MsgRow],
    attempt: Attempt,
) -> Result<(), SqlError> {
    for chunk in msg_chunks(inserts) {
        let sql = values_sql(
            "INSERT INTO ACTIVEMQ_MSGS (ID, CONTAINER, MSGID_PROD, MSGID_SEQ, EXPIRATION, MSG, PRIORITY, XID) VALUES ",
            "(?,?,'brokk',?,?,?,?,?)",
            chunk.len(),
            // Idempotent: a batch whose COMMIT answer was lost is written
            // again (see the writer); its rows may already be there.
            " ON DUPLICATE KEY UPDATE ID = ID",
        );
        let mut p = Vec::with_capacity(chunk.len() * 7);
        for m in chunk {
            p.push(Value::Int(m.id));
            p.push(text(&m.container));
            p.push(Value::Int(m.id));
            p.push(Value::Int(m.expiration));
            // One copy: the driver's values own their bytes.
            p.push(Value::Bytes(m.msg.to_vec()));
            p.push(Value::Int(m.priority));
            p.push(opt_text(m.xid.as_deref()));
        }
        my_exec(tx, "insert messages", sql, p).await?;
        // A row inserted counts 1, one already there 0 (the connection
        // never sets CLIENT_FOUND_ROWS, see `conn`).
        if attempt == Attempt::First && tx.affected_rows() < chunk.len() as u64 {
            return Err(SqlError::IdTaken(id_range(chunk)));
        }
    }
    Ok(())
}

/// Everything in a batch but its messages, in [`Batch`]'s order.
async fn my_apply_rest(
    tx: &mut mysql_async::Transaction<'_>,
    d: &Deduped<'_>,
) -> Result<(), SqlError> {
    let b = d.b;
    for chunk in b.topic_acks.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "INSERT INTO BROKK_TOPIC_ACKS (ID, CLIENT_ID, SUB_NAME) VALUES ",
            "(?,?,?)",
            chunk.len(),
            " ON DUPLICATE KEY UPDATE ID = ID",
        );
        let p = chunk
            .iter()
            .flat_map(|a| [Value::Int(a.id), text(&a.client_id), text(&a.sub_name)])
            .collect();
        my_exec(tx, "insert topic acks", sql, p).await?;
    }
    for chunk in d.redeliveries.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "INSERT INTO BROKK_REDELIVERIES (ID, SUB_KEY, COUNT) VALUES ",
            "(?,?,?)",
            chunk.len(),
            " ON DUPLICATE KEY UPDATE COUNT = VALUES(COUNT)",
        );
        let p = chunk
            .iter()
            .flat_map(|r| [Value::Int(r.id), text(&r.sub_key), Value::Int(r.count)])
            .collect();
        my_exec(tx, "upsert redeliveries", sql, p).await?;
    }
    // Pruned rows first: a later batch may have sent to one again.
    for chunk in b.producer_seqs_gone.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "DELETE FROM BROKK_PRODUCER_SEQ WHERE (CONTAINER, PRODUCER) IN (",
            "(?,?)",
            chunk.len(),
            ")",
        );
        let p = chunk.iter().flat_map(|(c, q)| [text(c), text(q)]).collect();
        my_exec(tx, "prune producer sequences", sql, p).await?;
    }
    for chunk in d.producer_seqs.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "INSERT INTO BROKK_PRODUCER_SEQ (CONTAINER, PRODUCER, SEQ) VALUES ",
            "(?,?,?)",
            chunk.len(),
            " ON DUPLICATE KEY UPDATE SEQ = GREATEST(SEQ, VALUES(SEQ))",
        );
        let p = chunk
            .iter()
            .flat_map(|(c, q, n)| [text(c), text(q), Value::Int(*n)])
            .collect();
        my_exec(tx, "upsert producer sequences", sql, p).await?;
    }
    for chunk in d.subs_added.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "INSERT INTO ACTIVEMQ_ACKS (CONTAINER, SUB_DEST, CLIENT_ID, SUB_NAME, SELECTOR, LAST_ACKED_ID, PRIORITY) VALUES ",
            "(?,?,?,?,?,0,5)",
            chunk.len(),
            " ON DUPLICATE KEY UPDATE SELECTOR = VALUES(SELECTOR), SUB_DEST = VALUES(SUB_DEST)",
        );
        let p = chunk
            .iter()
            .flat_map(|s| {
                [
                    text(&s.container),
                    text(&s.container),
                    text(&s.client_id),
                    text(&s.sub_name),
                    opt_text(s.selector.as_deref()),
                ]
            })
            .collect();
        my_exec(tx, "upsert subscriptions", sql, p).await?;
    }
    for chunk in b.tx_acks.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "INSERT INTO BROKK_TX_ACKS (TX, ID, SUB_KEY) VALUES ",
            "(?,?,?)",
            chunk.len(),
            " ON DUPLICATE KEY UPDATE TX = TX",
        );
        my_exec(tx, "insert prepared acks", sql, my_tx_ack_values(chunk)).await?;
    }
    // Integers only: one multi-statement text query (sent in parts if huge).
    let mut sql = String::new();
    for chunk in b.tx_decided.chunks(ROW_CHUNK) {
        int_list(&mut sql, "INSERT INTO BROKK_TX (TX) VALUES ", chunk, true);
        sql.push_str(" ON DUPLICATE KEY UPDATE TX = TX;");
        flush_text(tx, &mut sql, false).await?;
    }
    for chunk in b.deletes.chunks(ROW_CHUNK) {
        for table in [
            "ACTIVEMQ_MSGS",
            "BROKK_TOPIC_ACKS",
            "BROKK_REDELIVERIES",
            "BROKK_TX_ACKS",
        ] {
            int_list(
                &mut sql,
                &format!("DELETE FROM {table} WHERE ID IN ("),
                chunk,
                false,
            );
            sql.push_str(");");
        }
        flush_text(tx, &mut sql, false).await?;
    }
    for chunk in b.msg_deletes.chunks(ROW_CHUNK) {
        int_list(
            &mut sql,
            "DELETE FROM ACTIVEMQ_MSGS WHERE ID IN (",
            chunk,
            false,
        );
        sql.push_str(");");
        flush_text(tx, &mut sql, false).await?;
    }
    for chunk in b.xid_cleared.chunks(ROW_CHUNK) {
        int_list(
            &mut sql,
            "UPDATE ACTIVEMQ_MSGS SET XID = NULL WHERE ID IN (",
            chunk,
            false,
        );
        sql.push_str(");");
        flush_text(tx, &mut sql, false).await?;
    }
    for chunk in b.tx_forgotten.chunks(ROW_CHUNK) {
        int_list(&mut sql, "DELETE FROM BROKK_TX WHERE TX IN (", chunk, false);
        sql.push_str(");");
        flush_text(tx, &mut sql, false).await?;
    }
    flush_text(tx, &mut sql, true).await?;
    for chunk in b.tx_acks_done.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "DELETE FROM BROKK_TX_ACKS WHERE (TX, ID, SUB_KEY) IN (",
            "(?,?,?)",
            chunk.len(),
            ")",
        );
        my_exec(
            tx,
            "delete applied prepared acks",
            sql,
            my_tx_ack_values(chunk),
        )
        .await?;
    }
    for chunk in b.subs_removed.chunks(ROW_CHUNK) {
        let sql = values_sql(
            "DELETE FROM ACTIVEMQ_ACKS WHERE (CONTAINER, CLIENT_ID, SUB_NAME) IN (",
            "(?,?,?)",
            chunk.len(),
            ")",
        );
        let p = chunk
            .iter()
            .flat_map(|s| [text(&s.container), text(&s.client_id), text(&s.sub_name)])
            .collect();
        my_exec(tx, "delete subscriptions", sql, p).await?;
        // Only the acks on this subscription's topic: the same client id
        // and name may subscribe another topic too.
        let sql = values_sql(
            "DELETE a FROM BROKK_TOPIC_ACKS a JOIN ACTIVEMQ_MSGS m ON m.ID = a.ID \
             WHERE (m.CONTAINER, a.CLIENT_ID, a.SUB_NAME) IN (",
            "(?,?,?)",
            chunk.len(),
            ")",
        );
        let p = chunk
            .iter()
            .flat_map(|s| [text(&s.container), text(&s.client_id), text(&s.sub_name)])
            .collect();
        my_exec(tx, "delete subscriptions' topic acks", sql, p).await?;
    }
    Ok(())
}

/// Prepared-ack rows as statement values (TX, ID, SUB_KEY per row).
fn my_tx_ack_values(chunk: &[TxAckRow]) -> Vec<Value> {
    chunk
        .iter()
        .flat_map(|a| [Value::Int(a.tx), Value::Int(a.id), text(&a.sub_key)])
        .collect()
}

/// Appends `head` and the integers, as `(1),(2)` (`rows`) or `1,2`.
fn int_list(sql: &mut String, head: &str, ints: &[i64], rows: bool) {
    sql.push_str(head);
    for (i, v) in ints.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        let _ = if rows {
            write!(sql, "{sep}({v})")
        } else {
            write!(sql, "{sep}{v}")
        };
    }
}

/// Sends the accumulated text statements when `force` or when large.
async fn flush_text(
    tx: &mut mysql_async::Transaction<'_>,
    sql: &mut String,
    force: bool,
) -> Result<(), SqlError> {
    if sql.is_empty() || (!force && sql.len() < MYSQL_TEXT_LIMIT) {
        return Ok(());
    }
    let text = std::mem::take(sql);
    tx.query_drop(text)
        .await
        .map_err(my_err("apply decisions and deletes"))
}

// ----------------------------------------------------------- PostgreSQL

/// The messages' INSERT, as a literal both forms below extend.
macro_rules! pg_insert_msgs {
    () => {
        "INSERT INTO ACTIVEMQ_MSGS (ID, CONTAINER, MSGID_PROD, MSGID_SEQ, EXPIRATION, MSG, PRIORITY, XID) \
         SELECT id, c, 'brokk', id, e, m, p, x \
         FROM unnest($1::bigint[], $2::varchar[], $3::bigint[], $4::bytea[], $5::bigint[], $6::varchar[]) AS t(id, c, e, m, p, x)"
    };
}
const PG_INSERT_MSGS: &str = concat!(pg_insert_msgs!(), " ON CONFLICT (ID) DO NOTHING");
/// [`PG_INSERT_MSGS`] for a batch's first attempt (see [`Attempt`]).
const PG_INSERT_NEW_MSGS: &str = pg_insert_msgs!();
const PG_TOPIC_ACKS: &str = "INSERT INTO BROKK_TOPIC_ACKS (ID, CLIENT_ID, SUB_NAME) \
     SELECT * FROM unnest($1::bigint[], $2::varchar[], $3::varchar[]) ON CONFLICT DO NOTHING";
const PG_REDELIVERIES: &str = "INSERT INTO BROKK_REDELIVERIES (ID, SUB_KEY, COUNT) \
     SELECT * FROM unnest($1::bigint[], $2::varchar[], $3::bigint[]) \
     ON CONFLICT (ID, SUB_KEY) DO UPDATE SET COUNT = EXCLUDED.COUNT";
const PG_PRODUCER_SEQS: &str = "INSERT INTO BROKK_PRODUCER_SEQ (CONTAINER, PRODUCER, SEQ) \
     SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[]) \
     ON CONFLICT (CONTAINER, PRODUCER) DO UPDATE SET SEQ = GREATEST(BROKK_PRODUCER_SEQ.SEQ, EXCLUDED.SEQ)";
const PG_PRODUCER_SEQS_GONE: &str = "DELETE FROM BROKK_PRODUCER_SEQ \
     WHERE (CONTAINER, PRODUCER) IN (SELECT * FROM unnest($1::varchar[], $2::varchar[]))";
const PG_SUBS_ADD: &str = "INSERT INTO ACTIVEMQ_ACKS (CONTAINER, SUB_DEST, CLIENT_ID, SUB_NAME, SELECTOR, LAST_ACKED_ID, PRIORITY) \
     SELECT c, c, ci, sn, s, 0, 5 FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[]) AS t(c, ci, sn, s) \
     ON CONFLICT (CONTAINER, CLIENT_ID, SUB_NAME, PRIORITY) DO UPDATE SET SELECTOR = EXCLUDED.SELECTOR, SUB_DEST = EXCLUDED.SUB_DEST";
const PG_TX_ACKS: &str = "INSERT INTO BROKK_TX_ACKS (TX, ID, SUB_KEY) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::varchar[]) ON CONFLICT DO NOTHING";
const PG_TX_DECIDED: &str =
    "INSERT INTO BROKK_TX (TX) SELECT * FROM unnest($1::bigint[]) ON CONFLICT DO NOTHING";
const PG_DELETE_MSGS: &str = "DELETE FROM ACTIVEMQ_MSGS WHERE ID = ANY($1::bigint[])";
/// A message's rows in every table (see `Batch::deletes`).
const PG_DELETES: [&str; 4] = [
    PG_DELETE_MSGS,
    "DELETE FROM BROKK_TOPIC_ACKS WHERE ID = ANY($1::bigint[])",
    "DELETE FROM BROKK_REDELIVERIES WHERE ID = ANY($1::bigint[])",
    "DELETE FROM BROKK_TX_ACKS WHERE ID = ANY($1::bigint[])",
];
const PG_TX_FORGOTTEN: &str = "DELETE FROM BROKK_TX WHERE TX = ANY($1::bigint[])";
const PG_TX_ACKS_DONE: &str = "DELETE FROM BROKK_TX_ACKS a USING unnest($1::bigint[], $2::bigint[], $3::varchar[]) AS t(tx, id, k) \
     WHERE a.TX = t.tx AND a.ID = t.id AND a.SUB_KEY = t.k";
const PG_XID_CLEARED: &str = "UPDATE ACTIVEMQ_MSGS SET XID = NULL WHERE ID = ANY($1::bigint[])";
const PG_SUBS_REMOVE: &str = "DELETE FROM ACTIVEMQ_ACKS a USING unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS t(c, ci, sn) \
     WHERE a.CONTAINER = t.c AND a.CLIENT_ID = t.ci AND a.SUB_NAME = t.sn";
const PG_SUBS_REMOVE_ACKS: &str = "DELETE FROM BROKK_TOPIC_ACKS a USING ACTIVEMQ_MSGS m, \
     unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS t(c, ci, sn) \
     WHERE m.ID = a.ID AND m.CONTAINER = t.c AND a.CLIENT_ID = t.ci AND a.SUB_NAME = t.sn";

/// Every write statement, for [`pg_prepare_all`] (a constant: the check
/// runs before every transaction, and allocates nothing once prepared).
const PG_WRITE_STATEMENTS: [&str; 19] = [
    PG_FENCE,
    PG_INSERT_MSGS,
    PG_INSERT_NEW_MSGS,
    PG_TOPIC_ACKS,
    PG_REDELIVERIES,
    PG_PRODUCER_SEQS,
    PG_PRODUCER_SEQS_GONE,
    PG_SUBS_ADD,
    PG_TX_ACKS,
    PG_TX_DECIDED,
    PG_TX_FORGOTTEN,
    PG_TX_ACKS_DONE,
    PG_XID_CLEARED,
    PG_SUBS_REMOVE,
    PG_SUBS_REMOVE_ACKS,
    PG_DELETES[0],
    PG_DELETES[1],
    PG_DELETES[2],
    PG_DELETES[3],
];

/// The write statements, prepared on one connection.
struct PgStmts {
    fence: tokio_postgres::Statement,
    insert_msgs: tokio_postgres::Statement,
    insert_new_msgs: tokio_postgres::Statement,
    topic_acks: tokio_postgres::Statement,
    redeliveries: tokio_postgres::Statement,
    producer_seqs: tokio_postgres::Statement,
    producer_seqs_gone: tokio_postgres::Statement,
    subs_add: tokio_postgres::Statement,
    tx_acks: tokio_postgres::Statement,
    tx_decided: tokio_postgres::Statement,
    deletes: Vec<tokio_postgres::Statement>,
    delete_msgs: tokio_postgres::Statement,
    tx_forgotten: tokio_postgres::Statement,
    tx_acks_done: tokio_postgres::Statement,
    xid_cleared: tokio_postgres::Statement,
    subs_remove: tokio_postgres::Statement,
    subs_remove_acks: tokio_postgres::Statement,
}

/// Prepares the write statements on `conn` ahead of its first batch (a
/// waiting standby does, see `sweep`).
pub async fn pg_prepare_writes(conn: &mut PgConn) -> Result<(), SqlError> {
    pg_prepare_all(conn).await.map(drop)
}

async fn pg_prepare_all(conn: &mut PgConn) -> Result<PgStmts, SqlError> {
    let e = pg_err("prepare the write statements");
    // Once per connection, all at once; then every `prepare` below is a
    // lookup.
    conn.prepare_all(&PG_WRITE_STATEMENTS).await.map_err(&e)?;
    let mut deletes = Vec::new();
    for sql in PG_DELETES {
        deletes.push(conn.prepare(sql).await.map_err(&e)?);
    }
    Ok(PgStmts {
        fence: conn.prepare(PG_FENCE).await.map_err(&e)?,
        insert_msgs: conn.prepare(PG_INSERT_MSGS).await.map_err(&e)?,
        insert_new_msgs: conn.prepare(PG_INSERT_NEW_MSGS).await.map_err(&e)?,
        topic_acks: conn.prepare(PG_TOPIC_ACKS).await.map_err(&e)?,
        redeliveries: conn.prepare(PG_REDELIVERIES).await.map_err(&e)?,
        producer_seqs: conn.prepare(PG_PRODUCER_SEQS).await.map_err(&e)?,
        producer_seqs_gone: conn.prepare(PG_PRODUCER_SEQS_GONE).await.map_err(&e)?,
        subs_add: conn.prepare(PG_SUBS_ADD).await.map_err(&e)?,
        tx_acks: conn.prepare(PG_TX_ACKS).await.map_err(&e)?,
        tx_decided: conn.prepare(PG_TX_DECIDED).await.map_err(&e)?,
        deletes,
        delete_msgs: conn.prepare(PG_DELETE_MSGS).await.map_err(&e)?,
        tx_forgotten: conn.prepare(PG_TX_FORGOTTEN).await.map_err(&e)?,
        tx_acks_done: conn.prepare(PG_TX_ACKS_DONE).await.map_err(&e)?,
        xid_cleared: conn.prepare(PG_XID_CLEARED).await.map_err(&e)?,
        subs_remove: conn.prepare(PG_SUBS_REMOVE).await.map_err(&e)?,
        subs_remove_acks: conn.prepare(PG_SUBS_REMOVE_ACKS).await.map_err(&e)?,
    })
}

/// Column arrays for one statement; they must outlive the pipelined
/// futures that borrow them, so they are all built before sending.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// Prepared-ack rows as column arrays (TX, ID, SUB_KEY).
fn tx_ack_columns(chunk: &[TxAckRow]) -> Params {
    let txs: Vec<i64> = chunk.iter().map(|a| a.tx).collect();
    let ids: Vec<i64> = chunk.iter().map(|a| a.id).collect();
    let keys: Vec<String> = chunk.iter().map(|a| a.sub_key.clone()).collect();
    vec![Box::new(txs), Box::new(ids), Box::new(keys)]
}

/// One statement to send: what it does (for an error), and its arguments.
type PgCall<'s> = (&'static str, &'s tokio_postgres::Statement, Params);

/// A batch's messages (see [`write_after`]).
fn pg_insert_calls<'s>(s: &'s PgStmts, inserts: &[MsgRow], attempt: Attempt) -> Vec<PgCall<'s>> {
    let mut calls: Vec<PgCall<'s>> = Vec::new();
    for chunk in msg_chunks(inserts) {
        let ids: Vec<i64> = chunk.iter().map(|m| m.id).collect();
        let containers: Vec<String> = chunk.iter().map(|m| m.container.clone()).collect();
        let exps: Vec<i64> = chunk.iter().map(|m| m.expiration).collect();
        // `bytes::Bytes` clones share the buffer: no copy of the bodies
        // until the driver encodes them into the wire buffer.
        let msgs: Vec<PgBytes> = chunk.iter().map(|m| PgBytes(m.msg.clone())).collect();
        let prios: Vec<i64> = chunk.iter().map(|m| m.priority).collect();
        let xids: Vec<Option<String>> = chunk.iter().map(|m| m.xid.clone()).collect();
        calls.push((
            "insert messages",
            match attempt {
                Attempt::First => &s.insert_new_msgs,
                Attempt::Again => &s.insert_msgs,
            },
            vec![
                Box::new(ids),
                Box::new(containers),
                Box::new(exps),
                Box::new(msgs),
                Box::new(prios),
                Box::new(xids),
            ],
        ));
    }
    calls
}

/// Everything in a batch but its messages, in [`Batch`]'s order.
fn pg_rest_calls<'s>(s: &'s PgStmts, d: &Deduped<'_>) -> Vec<PgCall<'s>> {
    let b = d.b;
    let mut calls: Vec<PgCall<'s>> = Vec::new();
    for chunk in b.topic_acks.chunks(ROW_CHUNK) {
        let ids: Vec<i64> = chunk.iter().map(|a| a.id).collect();
        let cids: Vec<String> = chunk.iter().map(|a| a.client_id.clone()).collect();
        let names: Vec<String> = chunk.iter().map(|a| a.sub_name.clone()).collect();
        calls.push((
            "insert topic acks",
            &s.topic_acks,
            vec![Box::new(ids), Box::new(cids), Box::new(names)],
        ));
    }
    for chunk in d.redeliveries.chunks(ROW_CHUNK) {
        let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
        let keys: Vec<String> = chunk.iter().map(|r| r.sub_key.clone()).collect();
        let counts: Vec<i64> = chunk.iter().map(|r| r.count).collect();
        calls.push((
            "upsert redeliveries",
            &s.redeliveries,
            vec![Box::new(ids), Box::new(keys), Box::new(counts)],
        ));
    }
    // Pruned rows first: a later batch may have sent to one again.
    for chunk in b.producer_seqs_gone.chunks(ROW_CHUNK) {
        let cs: Vec<String> = chunk.iter().map(|(c, _)| c.clone()).collect();
        let ps: Vec<String> = chunk.iter().map(|(_, p)| p.clone()).collect();
        calls.push((
            "prune producer sequences",
            &s.producer_seqs_gone,
            vec![Box::new(cs), Box::new(ps)],
        ));
    }
    for chunk in d.producer_seqs.chunks(ROW_CHUNK) {
        let cs: Vec<String> = chunk.iter().map(|(c, _, _)| c.to_string()).collect();
        let ps: Vec<String> = chunk.iter().map(|(_, p, _)| p.to_string()).collect();
        let ns: Vec<i64> = chunk.iter().map(|(_, _, n)| *n).collect();
        calls.push((
            "upsert producer sequences",
            &s.producer_seqs,
            vec![Box::new(cs), Box::new(ps), Box::new(ns)],
        ));
    }
    for chunk in d.subs_added.chunks(ROW_CHUNK) {
        let cs: Vec<String> = chunk.iter().map(|x| x.container.clone()).collect();
        let cids: Vec<String> = chunk.iter().map(|x| x.client_id.clone()).collect();
        let names: Vec<String> = chunk.iter().map(|x| x.sub_name.clone()).collect();
        let sels: Vec<Option<String>> = chunk.iter().map(|x| x.selector.clone()).collect();
        calls.push((
            "upsert subscriptions",
            &s.subs_add,
            vec![
                Box::new(cs),
                Box::new(cids),
                Box::new(names),
                Box::new(sels),
            ],
        ));
    }
    for chunk in b.tx_acks.chunks(ROW_CHUNK) {
        calls.push(("insert prepared acks", &s.tx_acks, tx_ack_columns(chunk)));
    }
    for chunk in b.tx_decided.chunks(ROW_CHUNK) {
        calls.push((
            "insert decisions",
            &s.tx_decided,
            vec![Box::new(chunk.to_vec())],
        ));
    }
    for chunk in b.deletes.chunks(ROW_CHUNK) {
        for stmt in &s.deletes {
            calls.push(("delete messages", stmt, vec![Box::new(chunk.to_vec())]));
        }
    }
    for chunk in b.msg_deletes.chunks(ROW_CHUNK) {
        calls.push((
            "delete messages",
            &s.delete_msgs,
            vec![Box::new(chunk.to_vec())],
        ));
    }
    for chunk in b.xid_cleared.chunks(ROW_CHUNK) {
        calls.push((
            "clear applied SENDs' XID",
            &s.xid_cleared,
            vec![Box::new(chunk.to_vec())],
        ));
    }
    for chunk in b.tx_acks_done.chunks(ROW_CHUNK) {
        calls.push((
            "delete applied prepared acks",
            &s.tx_acks_done,
            tx_ack_columns(chunk),
        ));
    }
    for chunk in b.tx_forgotten.chunks(ROW_CHUNK) {
        calls.push((
            "delete forgotten decisions",
            &s.tx_forgotten,
            vec![Box::new(chunk.to_vec())],
        ));
    }
    for chunk in b.subs_removed.chunks(ROW_CHUNK) {
        let cs: Vec<String> = chunk.iter().map(|x| x.container.clone()).collect();
        let cids: Vec<String> = chunk.iter().map(|x| x.client_id.clone()).collect();
        let names: Vec<String> = chunk.iter().map(|x| x.sub_name.clone()).collect();
        calls.push((
            "delete subscriptions",
            &s.subs_remove,
            vec![
                Box::new(cs.clone()),
                Box::new(cids.clone()),
                Box::new(names.clone()),
            ],
        ));
        // Only the acks on this subscription's topic (see the MySQL side).
        calls.push((
            "delete subscriptions' topic acks",
            &s.subs_remove_acks,
            vec![Box::new(cs), Box::new(cids), Box::new(names)],
        ));
    }
    calls
}

/// Sends `calls` on `tx`.
async fn pg_run(
    tx: &tokio_postgres::Transaction<'_>,
    calls: &[PgCall<'_>],
) -> Result<(), SqlError> {
    // Pipelined: every request is written before the first answer is
    // awaited; the server runs them in order, and after a failure the
    // rest fail too ("current transaction is aborted"): the first error
    // is the one reported.
    let futures = calls.iter().map(|(what, stmt, params)| {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        async move { tx.execute(*stmt, &refs).await.map_err(pg_err(what)) }
    });
    for result in join_all(futures.collect()).await {
        result?;
    }
    Ok(())
}

/// A `bytea` parameter from shared bytes (tokio-postgres takes `&[u8]`
/// or `Vec<u8>`; this avoids copying the bodies into owned vectors).
#[derive(Debug)]
struct PgBytes(bytes::Bytes);

impl ToSql for PgBytes {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        (&self.0[..]).to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&[u8] as ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(id: i64, size: usize) -> MsgRow {
        MsgRow {
            id,
            container: "queue://q".into(),
            expiration: 0,
            priority: 4,
            xid: None,
            msg: Bytes::from(vec![0u8; size]),
        }
    }

    #[test]
    fn insert_chunks_stay_within_the_budget_and_a_large_row_goes_alone() {
        let budget = 4096;
        let rows: Vec<MsgRow> = [1000, 1000, 1000, 1000, 9000, 10, 10]
            .iter()
            .enumerate()
            .map(|(i, &n)| row(i as i64, n))
            .collect();
        let chunks: Vec<Vec<i64>> = msg_chunks_within(&rows, budget)
            .map(|c| c.iter().map(|r| r.id).collect())
            .collect();
        assert_eq!(chunks, vec![vec![0, 1, 2], vec![3], vec![4], vec![5, 6]]);
        for c in msg_chunks_within(&rows, budget) {
            let bytes: usize = c
                .iter()
                .map(|r| r.msg.len() + r.container.len() + ROW_OVERHEAD)
                .sum();
            assert!(c.len() == 1 || bytes <= budget);
        }
    }

    #[test]
    fn the_budget_follows_the_servers_statement_limit() {
        set_statement_limit(1 << 20);
        assert_eq!(
            CHUNK_BUDGET.load(std::sync::atomic::Ordering::Relaxed),
            512 << 10
        );
        set_statement_limit(64 << 20);
        assert_eq!(
            CHUNK_BUDGET.load(std::sync::atomic::Ordering::Relaxed),
            MSG_CHUNK_BYTES
        );
    }
}
