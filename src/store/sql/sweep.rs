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

use std::convert::Infallible;
use std::time::Duration;

use tracing::debug;

use super::conn::{join_all, pg_err, pg_reason, Db, PgPool};
use super::{load, write, SqlError};

/// Live rows one step reads (its LIMIT): a table holding more is swept
/// over several steps, from where the last one stopped.
pub const CHUNK: i64 = 5_000;

/// Pause between steps.
pub const EVERY: Duration = Duration::from_millis(250);

/// Pause after an error (the database down or restarting).
const AFTER_ERROR: Duration = Duration::from_secs(1);

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
    loop {
        if let Err(e) = prepare_ahead(pool, connections).await {
            debug!(role = "standby", error = %e, "cannot prepare the takeover's statements ahead");
        }
        // A connection of its own, not the pool's: dropping this future
        // mid-query closes it, and the takeover's read never queues
        // behind a step.
        let conn = match pool.open_unpooled().await {
            Ok(c) => c,
            Err(e) => {
                debug!(role = "standby", error = %pg_reason(&e), "index sweep cannot connect; trying again");
                tokio::time::sleep(AFTER_ERROR).await;
                continue;
            }
        };
        // The sweep must walk the index: a sequential scan would prune
        // heap pages but leave the index entries for the takeover.
        let prepared = async {
            conn.client
                .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
                .await?;
            conn.client.prepare(STEP).await
        }
        .await;
        let step = match prepared {
            Ok(s) => s,
            Err(e) => {
                debug!(role = "standby", error = %pg_reason(&e), "index sweep cannot start; trying again");
                tokio::time::sleep(AFTER_ERROR).await;
                continue;
            }
        };
        loop {
            match conn.client.query_one(&step, &[&after, &CHUNK]).await {
                Ok(row) => {
                    let last: Option<i64> = row.get(0);
                    let n: i64 = row.get(1);
                    // A short chunk reached the end: start over.
                    after = match last {
                        Some(id) if n >= CHUNK => id,
                        _ => i64::MIN,
                    };
                    tokio::time::sleep(EVERY).await;
                }
                Err(e) => {
                    debug!(role = "standby", error = %pg_reason(&e), "index sweep step failed; pausing");
                    tokio::time::sleep(AFTER_ERROR).await;
                    if conn.client.is_closed() {
                        break;
                    }
                }
            }
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
