//! The database writer (on the side runtime), a lane per shard: merges the
//! batches its shard hands it into one transaction, writes it (the lease
//! checked inside, see [`super::write`]), and answers once it committed. While a
//! transaction is in flight the next batches queue up, so batches grow with
//! load by themselves (group commit); `linger_us` lets an idle writer wait
//! a little for company.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::conn::Db;
use super::write::Attempt;
use super::{shard_store, Batch, LeaseToken, SqlError};
use crate::store::journal::StoreUsage;

/// A shard's batch, and where the outcome goes.
pub struct WriteRequest {
    pub batch: Batch,
    pub reply: flume::Sender<()>,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_rows: usize,
    pub linger: Duration,
}

/// Starts the writer on the side runtime: `lanes` of it, one per shard,
/// each writing its shard's batches in order, one transaction at a time,
/// the lanes side by side (their transactions commit together in the
/// database's group commit). Shards' rows are disjoint (a destination
/// belongs to one shard), and what crosses shards (a transaction's parts
/// and decision, a dead-letter copy and its original) waits for the other
/// side to be durable before it goes on, so the lanes need no order
/// between them.
pub fn spawn(
    rt: &tokio::runtime::Handle,
    db: Arc<Db>,
    lease: LeaseToken,
    cfg: WriterConfig,
    usage: Arc<StoreUsage>,
    lanes: usize,
) -> Vec<flume::Sender<WriteRequest>> {
    (0..lanes.max(1))
        .map(|_| {
            let (tx, rx) = flume::unbounded();
            let lane = Lane {
                db: db.clone(),
                lease: lease.clone(),
                usage: usage.clone(),
            };
            rt.spawn(run(rx, lane, cfg.clone()));
            tx
        })
        .collect()
}

/// What one lane writes with.
struct Lane {
    db: Arc<Db>,
    lease: LeaseToken,
    usage: Arc<StoreUsage>,
}

async fn run(rx: flume::Receiver<WriteRequest>, lane: Lane, cfg: WriterConfig) {
    let mut held: Option<WriteRequest> = None;
    loop {
        let first = match held.take() {
            Some(r) => r,
            None => match rx.recv_async().await {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        if !cfg.linger.is_zero() && first.batch.rows() < cfg.max_rows && rx.is_empty() {
            tokio::time::sleep(cfg.linger).await;
        }
        let mut rows = first.batch.rows();
        let mut merged = first.batch;
        let mut replies = vec![first.reply];
        while let Ok(r) = rx.try_recv() {
            if rows + r.batch.rows() > cfg.max_rows {
                held = Some(r);
                break;
            }
            rows += r.batch.rows();
            merged.extend(r.batch);
            replies.push(r.reply);
        }
        shard_store::compact(&mut merged);
        write_until_done(&lane, &merged).await;
        for r in replies {
            let _ = r.send(());
        }
    }
}

/// Writes `batch`, retrying while the database cannot be reached: nothing
/// is receipted meanwhile, producers are held back, and the same batch is
/// written again once it is back (every statement in a batch is
/// idempotent, so a COMMIT whose answer was lost may be repeated). A lease
/// that is no longer ours ends the process (exit 3): another broker is
/// master now.
async fn write_until_done(lane: &Lane, batch: &Batch) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    let stats = &lane.usage.db;
    let mut attempt = Attempt::First;
    loop {
        let started = std::time::Instant::now();
        let result = super::write::write_batch_as(&lane.db, &lane.lease, batch, attempt).await;
        attempt = next_attempt(attempt, &result);
        match result {
            Ok(()) => {
                let took = started.elapsed();
                if took >= SLOW_TRANSACTION {
                    // A transaction holds its share of the fence row until
                    // it commits: slow ones delay a standby's takeover
                    // (never our own lease renewal).
                    warn!(
                        role = "master",
                        took_ms = took.as_millis() as u64,
                        rows = batch.rows(),
                        bytes = batch.bytes(),
                        "slow database write transaction"
                    );
                }
                stats.transactions.fetch_add(1, Relaxed);
                stats.rows.fetch_add(batch.rows() as u64, Relaxed);
                stats
                    .commit_us
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                if failures > 0 {
                    lane.usage
                        .unavailable
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    info!(role = "master", failures, "database writes succeed again");
                }
                return;
            }
            // Lanes lock rows of the same tables: the database may pick one
            // transaction to abort. Nothing is wrong with the database;
            // the batch (idempotent) goes again at once.
            Err(SqlError::Query { ref reason, .. }) if is_conflict(reason) => {
                stats.conflicts.fetch_add(1, Relaxed);
                continue;
            }
            Err(SqlError::IdTaken(why)) => {
                // Skipping the row would receipt a message never stored;
                // the next master (the standby, or this one restarted)
                // reads every row and starts its ids above them, and
                // producers resend what was not receipted.
                error!(role = "master", reason = %why, "another program writes into ACTIVEMQ_MSGS; stopping now, without draining");
                stop_serving()
            }
            Err(SqlError::Fenced(why)) => {
                error!(role = "master", reason = %why, "lost the master lease; stopping now, without draining");
                stop_serving()
            }
            Err(e) => {
                failures += 1;
                stats.failures.fetch_add(1, Relaxed);
                if failures == 1 {
                    lane.usage
                        .unavailable
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    warn!(role = "master", error = %e, "database write failed; producers held back, retrying until it succeeds");
                } else if failures.is_power_of_two() {
                    warn!(role = "master", error = %e, failures, "database write still failing");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// As `server::fenced`: the answer gate closed first, then `_exit` (exit
/// code 3), no exit handlers or destructors while the shards still serve.
fn stop_serving() -> ! {
    crate::ha::fence::revoke();
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(3) }
}

/// How the batch goes next after `result`. Only a COMMIT that failed
/// leaves its outcome unknown (it may have committed unheard of); every
/// other failure (no connection, BEGIN, the lease read, a statement, a
/// deadlock) rolled the transaction back, so the next attempt is still a
/// first one and still finds a foreign row under its ids (review: going
/// [`Attempt::Again`] after a deadlock would have skipped it and receipted
/// the message).
fn next_attempt(attempt: Attempt, result: &Result<(), SqlError>) -> Attempt {
    match result {
        Err(SqlError::Query { what, .. }) if *what == super::write::COMMIT => Attempt::Again,
        _ => attempt,
    }
}

/// A write transaction this slow is logged.
const SLOW_TRANSACTION: Duration = Duration::from_millis(500);

/// A deadlock or serialization failure (MySQL/MariaDB 1213, PostgreSQL
/// 40P01 / 40001): the transaction was chosen to abort, and may go again.
fn is_conflict(reason: &str) -> bool {
    // As mysql_async ("ERROR 1213 (40001): ...") and `conn::pg_reason`
    // ("... (SQLSTATE 40P01)") put them: a message that merely contains
    // the digits is not retried without a pause.
    reason.contains("ERROR 1213 (")
        || reason.contains("SQLSTATE 40P01")
        || reason.contains("SQLSTATE 40001")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_commit_makes_the_next_attempt_skip_rows() {
        let q = |what: &'static str| -> Result<(), SqlError> {
            Err(SqlError::Query {
                what,
                reason: "ERROR: deadlock detected (SQLSTATE 40P01)".into(),
            })
        };
        let first = Attempt::First;
        assert_eq!(
            next_attempt(first, &q(super::super::write::COMMIT)),
            Attempt::Again
        );
        for what in [
            "connect for a write",
            "begin a write",
            "read the lease",
            "insert messages",
            "delete messages",
        ] {
            assert_eq!(next_attempt(first, &q(what)), Attempt::First, "{what}");
        }
        let down: Result<(), SqlError> = Err(SqlError::Connect {
            url: "u".into(),
            reason: "refused".into(),
        });
        assert_eq!(next_attempt(first, &down), Attempt::First);
        assert_eq!(next_attempt(first, &Ok(())), Attempt::First);
        assert_eq!(
            next_attempt(Attempt::Again, &q("insert messages")),
            Attempt::Again
        );
    }

    #[test]
    fn conflicts_are_told_from_other_failures() {
        // As `conn::pg_reason` and mysql_async put them.
        assert!(is_conflict("ERROR: deadlock detected (SQLSTATE 40P01)"));
        assert!(is_conflict(
            "ERROR: could not serialize access due to concurrent update (SQLSTATE 40001)"
        ));
        assert!(is_conflict(
            "Server error: `ERROR 1213 (40001): Deadlock found when trying to get lock; try restarting transaction'"
        ));
        assert!(!is_conflict(
            "Server error: `ERROR 1062 (23000): Duplicate entry '1213' for key 'PRIMARY''"
        ));
        assert!(!is_conflict(
            "ERROR: value 40001 out of range (SQLSTATE 22003)"
        ));
        assert!(!is_conflict("Input/output error: broken pipe"));
    }
}
