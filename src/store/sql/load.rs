//! Reading every table back at takeover, in one consistent snapshot
//! (MySQL `WITH CONSISTENT SNAPSHOT`, PostgreSQL `REPEATABLE READ`).
//!
//! `ACTIVEMQ_MSGS` is read in pages by ID (keyset paging), so a huge table
//! never needs one giant result set in the driver: pages of about
//! [`PAGE_BYTES`], between [`PAGE_MIN`] and [`PAGE_MAX`] rows, sized from
//! the largest row of the previous page (the driver holds a whole page
//! before the spill sees it: 10 000 rows of 32 KiB were 320 MiB).
//! A NULL in a column Brokk always fills is damage and an error; a NULL
//! `EXPIRATION` reads as 0 (never) and a NULL `PRIORITY` as 4 (the JMS
//! default), as rows written by other tools may have them.

use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Row, TxOpts};

use super::conn::{my_err, pg_err, Db, PgConn};
use super::schema::my_take;
use super::{Loaded, MsgRow, ProducerSeq, Redelivery, SqlError, SubRow, TopicAck, TxAckRow};

/// Bytes of `MSG` one page aims at.
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Fewest and most rows in a page (the LIMIT of `MSGS` and `PG_MSGS`); the
/// first page has `PAGE_MIN`.
pub const PAGE_MIN: i64 = 16;
pub const PAGE_MAX: i64 = 10_000;

/// The next page's rows, from the largest row of the last page (0: none
/// read yet). The largest, not the average: a run of big rows after many
/// small ones must not come in a page sized for the small ones.
fn next_page(largest: usize) -> i64 {
    if largest == 0 {
        return PAGE_MIN;
    }
    ((PAGE_BYTES / largest) as i64).clamp(PAGE_MIN, PAGE_MAX)
}

const WHAT: &str = "load the tables";

const MSGS: &str = "SELECT ID, CONTAINER, EXPIRATION, PRIORITY, XID, MSG FROM ACTIVEMQ_MSGS \
     WHERE ID > ? ORDER BY ID LIMIT ?";
const PG_MSGS: &str = "SELECT ID, CONTAINER, EXPIRATION, PRIORITY, XID, MSG FROM ACTIVEMQ_MSGS \
     WHERE ID > $1 ORDER BY ID LIMIT $2";
const SUBS: &str = "SELECT CONTAINER, CLIENT_ID, SUB_NAME, SELECTOR FROM ACTIVEMQ_ACKS \
     ORDER BY CONTAINER, CLIENT_ID, SUB_NAME";
const TOPIC_ACKS: &str =
    "SELECT ID, CLIENT_ID, SUB_NAME FROM BROKK_TOPIC_ACKS ORDER BY ID, CLIENT_ID, SUB_NAME";
const REDELIVERIES: &str = "SELECT ID, SUB_KEY, COUNT FROM BROKK_REDELIVERIES ORDER BY ID, SUB_KEY";
const PRODUCER_SEQS: &str = "SELECT CONTAINER, PRODUCER, SEQ FROM BROKK_PRODUCER_SEQ";
const TX_ACKS: &str = "SELECT TX, ID, SUB_KEY FROM BROKK_TX_ACKS ORDER BY TX, ID, SUB_KEY";
const TX: &str = "SELECT TX FROM BROKK_TX ORDER BY TX";
const LEASE_MYSQL: &str =
    "SELECT BROKER_NAME, TIME, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) FROM ACTIVEMQ_LOCK WHERE ID = 1";
const LEASE_PG: &str =
    "SELECT BROKER_NAME, TIME, (extract(epoch from clock_timestamp()) * 1000)::bigint FROM ACTIVEMQ_LOCK WHERE ID = 1";

/// How a PostgreSQL takeover reads `ACTIVEMQ_MSGS`: down the primary key,
/// in ID order, on its own backend. Left to itself the planner chose, in
/// the takeovers measured here, a sequential scan of the whole heap with a
/// sort (parallel workers, the sort spilling to disk) or a bitmap scan
/// with the same sort: for 2 800-3 400 pending rows, 40 ms and 26 ms
/// against 16-22 ms down the index. Its statistics cannot know better:
/// the table is a queue, nearly every row in its heap deleted, and a
/// sequential scan's cost grows with the heap (gigabytes after minutes of
/// load without vacuum) where the index's grows with the live rows (the
/// standby's sweep has marked the dead entries; see `sweep`). `LOCAL`:
/// the read's transaction only; the connection goes back to the pool.
/// (A sequential scan off covers the parallel one too.)
/// The read also holds its snapshot while it spills a page to disk: the
/// write transactions' idle limit (`conn::pg_idle_transaction`) is lifted
/// for it.
const PG_READ_PLAN: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL idle_in_transaction_session_timeout = 0";
/// The planner's own choice again, for the small tables read after the
/// messages (as configured for the server, database or role, not
/// necessarily `on`).
const PG_READ_PLAN_END: &str =
    "SET LOCAL enable_seqscan TO DEFAULT; SET LOCAL enable_bitmapscan TO DEFAULT";

/// The small tables a PostgreSQL takeover reads side by side, in the
/// order `load` names their answers.
const PG_SMALL: [&str; 6] = [SUBS, TOPIC_ACKS, REDELIVERIES, TX_ACKS, TX, PRODUCER_SEQS];

/// [`load`] on MySQL/MariaDB: one consistent snapshot.
async fn my_load(
    conn: &mut mysql_async::Conn,
    mut spill: Option<super::spill::Spill>,
) -> Result<Loaded, SqlError> {
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(true).with_readonly(true);
    let mut tx = conn.start_transaction(opts).await.map_err(my_err(WHAT))?;
    let mut out = Loaded::default();
    let mut after = i64::MIN;
    let mut largest = 0;
    loop {
        let limit = next_page(largest);
        largest = 0;
        let rows: Vec<Row> = tx.exec(MSGS, (after, limit)).await.map_err(my_err(WHAT))?;
        let n = rows.len();
        for mut r in rows {
            let id: i64 = my_take(&mut r, 0, WHAT)?;
            let msg: Option<Vec<u8>> = my_take(&mut r, 5, WHAT)?;
            largest = largest.max(msg.as_ref().map_or(0, Vec::len));
            out.messages.push(msg_row(
                id,
                my_take(&mut r, 1, WHAT)?,
                my_take(&mut r, 2, WHAT)?,
                my_take(&mut r, 3, WHAT)?,
                my_take(&mut r, 4, WHAT)?,
                msg.map(Bytes::from),
            )?);
            after = id;
        }
        if let Some(s) = &mut spill {
            let from = out.messages.len() - n;
            s.page(&mut out.messages[from..])?;
        }
        if (n as i64) < limit {
            break;
        }
    }
    out.spill = spill.take();
    for mut r in tx.query::<Row, _>(SUBS).await.map_err(my_err(WHAT))? {
        out.subs.push(SubRow {
            container: my_take(&mut r, 0, WHAT)?,
            client_id: my_take(&mut r, 1, WHAT)?,
            sub_name: my_take(&mut r, 2, WHAT)?,
            selector: my_take(&mut r, 3, WHAT)?,
        });
    }
    for mut r in tx.query::<Row, _>(TOPIC_ACKS).await.map_err(my_err(WHAT))? {
        out.topic_acks.push(TopicAck {
            id: my_take(&mut r, 0, WHAT)?,
            client_id: my_take(&mut r, 1, WHAT)?,
            sub_name: my_take(&mut r, 2, WHAT)?,
        });
    }
    for mut r in tx
        .query::<Row, _>(REDELIVERIES)
        .await
        .map_err(my_err(WHAT))?
    {
        out.redeliveries.push(Redelivery {
            id: my_take(&mut r, 0, WHAT)?,
            sub_key: my_take(&mut r, 1, WHAT)?,
            count: my_take::<Option<i64>>(&mut r, 2, WHAT)?.unwrap_or(0),
        });
    }
    for mut r in tx.query::<Row, _>(TX_ACKS).await.map_err(my_err(WHAT))? {
        out.tx_acks.push(TxAckRow {
            tx: my_take(&mut r, 0, WHAT)?,
            id: my_take(&mut r, 1, WHAT)?,
            sub_key: my_take(&mut r, 2, WHAT)?,
        });
    }
    for mut r in tx.query::<Row, _>(TX).await.map_err(my_err(WHAT))? {
        out.tx_decided.push(my_take(&mut r, 0, WHAT)?);
    }
    for mut r in tx
        .query::<Row, _>(PRODUCER_SEQS)
        .await
        .map_err(my_err(WHAT))?
    {
        out.producer_seqs.push(ProducerSeq {
            container: my_take(&mut r, 0, WHAT)?,
            producer: my_take(&mut r, 1, WHAT)?,
            seq: my_take(&mut r, 2, WHAT)?,
        });
    }
    tx.commit().await.map_err(my_err(WHAT))?;
    Ok(out)
}

/// Prepares a PostgreSQL takeover's reads on `conn` (pipelined, one round
/// trip; nothing when they are prepared already).
pub async fn pg_prepare_reads(conn: &mut PgConn) -> Result<(), tokio_postgres::Error> {
    let mut all = vec![PG_MSGS];
    all.extend(PG_SMALL);
    conn.prepare_all(&all).await
}

fn damaged(reason: String) -> SqlError {
    SqlError::Query { what: WHAT, reason }
}

fn msg_row(
    id: i64,
    container: Option<String>,
    expiration: Option<i64>,
    priority: Option<i64>,
    xid: Option<String>,
    msg: Option<Bytes>,
) -> Result<MsgRow, SqlError> {
    Ok(MsgRow {
        id,
        container: container
            .ok_or_else(|| damaged(format!("ACTIVEMQ_MSGS ID {id} has no CONTAINER")))?,
        expiration: expiration.unwrap_or(0),
        priority: priority.unwrap_or(4),
        xid,
        msg: msg.ok_or_else(|| damaged(format!("ACTIVEMQ_MSGS ID {id} has no MSG")))?,
    })
}

/// Everything the tables hold; messages ordered by ID. With `spill`, the
/// `MSG` of rows past its budget go to its file as each page arrives, so a
/// table larger than memory is read within bounded memory.
pub async fn load(db: &Db, mut spill: Option<super::spill::Spill>) -> Result<Loaded, SqlError> {
    match db {
        Db::MySql(pool) => {
            let mut conn = pool.get_conn().await.map_err(my_err(WHAT))?;
            // It holds its snapshot while it spills a page to disk: no idle
            // limit for it (see `conn::my_idle_transaction`), put back
            // before the connection goes back to the pool; one that failed
            // half-way is closed instead.
            conn.query_drop(super::conn::MY_IDLE_TRANSACTION_OFF)
                .await
                .map_err(my_err(WHAT))?;
            match my_load(&mut conn, spill).await {
                Ok(out) => {
                    conn.query_drop(super::conn::MY_IDLE_TRANSACTION_ON)
                        .await
                        .map_err(my_err(WHAT))?;
                    Ok(out)
                }
                Err(e) => {
                    let _ = conn.disconnect().await;
                    Err(e)
                }
            }
        }
        Db::Postgres(pool) => {
            let first = {
                let mut conn = pool.get().await?;
                let loaded = pg_load(&mut conn, spill.as_mut()).await;
                if loaded.is_err() {
                    conn.stmts.clear();
                }
                loaded
            };
            let mut out = match first {
                Ok(out) => out,
                // Once more on statements prepared afresh: those a waiting
                // standby prepared (maybe days ago, see `sweep`) fail if an
                // operator changed a column since ("cached plan must not
                // change result type"). Any other failure is tried again
                // once too; a second one ends the takeover.
                Err(e) => {
                    tracing::warn!(error = %e, "reading the tables failed; once more on statements prepared afresh");
                    let mut conn = pool.get().await?;
                    conn.stmts.clear();
                    pg_load(&mut conn, spill.as_mut()).await?
                }
            };
            out.spill = spill;
            Ok(out)
        }
    }
}

/// [`load`] on PostgreSQL, on `conn`; the spill (if any) is the caller's
/// to hand over, so that a second attempt still has it.
async fn pg_load(
    conn: &mut PgConn,
    mut spill: Option<&mut super::spill::Spill>,
) -> Result<Loaded, SqlError> {
    let e = pg_err(WHAT);
    // Prepared at once, pipelined: a takeover waits for this (a
    // waiting standby has them prepared already; see `sweep`).
    pg_prepare_reads(conn).await.map_err(&e)?;
    let small: Vec<tokio_postgres::Statement> =
        PG_SMALL.iter().map(|sql| conn.stmts[sql].clone()).collect();
    let page = conn.stmts[PG_MSGS].clone();
    let tx = conn
        .client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(&e)?;
    let mut out = Loaded::default();
    let mut after = i64::MIN;
    let mut largest = 0;
    // Sent ahead of the first page, on the same connection, so it costs
    // no round trip of its own.
    let mut plan = Some(tx.batch_execute(PG_READ_PLAN));
    loop {
        let limit = next_page(largest);
        largest = 0;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&after, &limit];
        let query = tx.query(&page, &params);
        let rows = match plan.take() {
            Some(plan) => {
                let (plan, rows) = futures_lite::future::zip(plan, query).await;
                plan.map_err(&e)?;
                rows
            }
            None => query.await,
        }
        .map_err(&e)?;
        let n = rows.len();
        for r in rows {
            let id: i64 = r.try_get(0).map_err(&e)?;
            let msg: Option<&[u8]> = r.try_get(5).map_err(&e)?;
            largest = largest.max(msg.map_or(0, <[u8]>::len));
            out.messages.push(msg_row(
                id,
                r.try_get(1).map_err(&e)?,
                r.try_get(2).map_err(&e)?,
                r.try_get(3).map_err(&e)?,
                r.try_get(4).map_err(&e)?,
                msg.map(Bytes::copy_from_slice),
            )?);
            after = id;
        }
        if let Some(s) = spill.as_deref_mut() {
            let from = out.messages.len() - n;
            s.page(&mut out.messages[from..])?;
        }
        if (n as i64) < limit {
            break;
        }
    }
    drop(plan);
    // The small tables side by side (pipelined on the connection, behind
    // the planner's settings given back).
    let (plan_end, answers) = futures_lite::future::zip(
        tx.batch_execute(PG_READ_PLAN_END),
        super::conn::join_all(small.iter().map(|s| tx.query(s, &[])).collect()),
    )
    .await;
    plan_end.map_err(&e)?;
    let answers: [Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>; 6] =
        answers.try_into().map_err(|_| SqlError::Query {
            what: WHAT,
            reason: "a small table's answer is missing".into(),
        })?;
    // Named, in PG_SMALL's order: each answer is tied to its table.
    let [subs, topic_acks, redeliveries, tx_acks, tx_rows, seqs] = answers;
    for r in subs.map_err(&e)? {
        out.subs.push(SubRow {
            container: r.try_get(0).map_err(&e)?,
            client_id: r.try_get(1).map_err(&e)?,
            sub_name: r.try_get(2).map_err(&e)?,
            selector: r.try_get(3).map_err(&e)?,
        });
    }
    for r in topic_acks.map_err(&e)? {
        out.topic_acks.push(TopicAck {
            id: r.try_get(0).map_err(&e)?,
            client_id: r.try_get(1).map_err(&e)?,
            sub_name: r.try_get(2).map_err(&e)?,
        });
    }
    for r in redeliveries.map_err(&e)? {
        out.redeliveries.push(Redelivery {
            id: r.try_get(0).map_err(&e)?,
            sub_key: r.try_get(1).map_err(&e)?,
            count: r.try_get::<_, Option<i64>>(2).map_err(&e)?.unwrap_or(0),
        });
    }
    for r in tx_acks.map_err(&e)? {
        out.tx_acks.push(TxAckRow {
            tx: r.try_get(0).map_err(&e)?,
            id: r.try_get(1).map_err(&e)?,
            sub_key: r.try_get(2).map_err(&e)?,
        });
    }
    for r in tx_rows.map_err(&e)? {
        out.tx_decided.push(r.try_get(0).map_err(&e)?);
    }
    for r in seqs.map_err(&e)? {
        out.producer_seqs.push(ProducerSeq {
            container: r.try_get(0).map_err(&e)?,
            producer: r.try_get(1).map_err(&e)?,
            seq: r.try_get(2).map_err(&e)?,
        });
    }
    tx.commit().await.map_err(&e)?;
    Ok(out)
}

/// Who holds the lease: `(BROKER_NAME, TIME, the database's now in ms)`.
pub async fn lease_holder(db: &Db) -> Result<(Option<String>, i64, i64), SqlError> {
    const WHAT: &str = "read the lease";
    let none = || SqlError::Query {
        what: WHAT,
        reason: "ACTIVEMQ_LOCK has no row ID=1".into(),
    };
    match db {
        Db::MySql(pool) => {
            let mut conn = pool.get_conn().await.map_err(my_err(WHAT))?;
            let mut r: Row = conn
                .query_first(LEASE_MYSQL)
                .await
                .map_err(my_err(WHAT))?
                .ok_or_else(none)?;
            Ok((
                my_take(&mut r, 0, WHAT)?,
                my_take::<Option<i64>>(&mut r, 1, WHAT)?.unwrap_or(0),
                my_take(&mut r, 2, WHAT)?,
            ))
        }
        Db::Postgres(pool) => {
            let conn = pool.get().await?;
            let e = pg_err(WHAT);
            let r = conn
                .client
                .query_opt(LEASE_PG, &[])
                .await
                .map_err(&e)?
                .ok_or_else(none)?;
            Ok((
                r.try_get(0).map_err(&e)?,
                r.try_get::<_, Option<i64>>(1).map_err(&e)?.unwrap_or(0),
                r.try_get(2).map_err(&e)?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_aim_at_a_few_megabytes_of_rows() {
        assert_eq!(next_page(0), PAGE_MIN);
        assert_eq!(next_page(100), PAGE_MAX);
        assert_eq!(next_page(32 * 1024), 256);
        assert_eq!(next_page(4 * 1024), 2048);
        assert_eq!(next_page(100 * 1024 * 1024), PAGE_MIN);
    }
}
