//! The database writer (on the side runtime), a lane per shard: merges the
//! batches its shard hands it into one transaction, writes it (the lease
//! checked inside, see [`super::write`]), and answers once it committed. While a
//! transaction is in flight the next batches queue up, so batches grow with
//! load by themselves (group commit); `linger_us` lets an idle writer wait
//! a little for company. A lane's next transaction may begin while the one
//! before it commits (see [`run`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::conn::Db;
use super::write::Attempt;
use super::{shard_store, Batch, LeaseToken, SqlError};
use crate::store::journal::StoreUsage;

/// A shard's batch, and where the outcome goes.
pub struct WriteRequest {
    pub batch: Batch,
    pub reply: flume::Sender<()>,
    /// Told when the transaction carrying the batch is about to COMMIT,
    /// when the lanes overlap their transactions: the shard may hand over
    /// the next batch then (see `server::db_shard::flusher`).
    pub committing: Option<flume::Sender<()>>,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_rows: usize,
    pub linger: Duration,
    /// Whether a lane's next transaction may begin while the one before
    /// it commits (two of the pool's connections a lane; see [`run`]).
    pub overlap: bool,
}

/// `store.overlap`: whether a lane's next transaction begins while the one
/// before it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// When the database's round trip is at least [`OVERLAP_FROM`]
    /// (measured at start).
    #[default]
    Auto,
    Always,
    Never,
}

/// The round trip from which `auto` overlaps. Overlapping hides a
/// transaction's BEGIN and INSERT round trips behind the COMMIT before
/// it, but makes more, smaller transactions. Measured here (PostgreSQL,
/// 8 producers at 20 000 msg/s through `bench --db-rtt-us 500`): p50 10.8
/// -> 7.7 ms, p99 16.0 -> 12.5 ms; on loopback (a round trip of 30-60 us)
/// 28% more transactions at 40 500 msg/s, p50 2.1-2.3 -> 2.5-2.8 ms, and
/// 5-10% less closed-loop peak.
pub const OVERLAP_FROM: Duration = Duration::from_micros(200);

impl Overlap {
    /// Whether `lanes` lanes overlap, given `pool_size` connections and
    /// the database's `round_trip`. The pool must have two connections a
    /// lane and one more for whatever else runs (recovery, reading spilled
    /// messages back): with fewer a failed transaction, which goes again
    /// on a fresh connection, could wait for one held by the transaction
    /// after it, which waits for it.
    pub fn decide(self, pool_size: usize, lanes: usize, round_trip: Duration) -> bool {
        pool_size > 2 * lanes.max(1) && self.wanted(round_trip)
    }

    /// Whether the setting asks for it with this `round_trip`, whatever
    /// the pool.
    pub fn wanted(self, round_trip: Duration) -> bool {
        match self {
            Overlap::Auto => round_trip >= OVERLAP_FROM,
            Overlap::Always => true,
            Overlap::Never => false,
        }
    }
}

/// Starts the writer on the side runtime: `lanes` of it, one per shard,
/// each writing its shard's batches in order, the lanes side by side
/// (their transactions commit together in the database's group commit).
/// Shards' rows are disjoint (a destination belongs to one shard), and
/// what crosses shards (a transaction's parts and decision, a dead-letter
/// copy and its original) waits for the other side to be durable before
/// it goes on, so the lanes need no order between them.
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
            let lane = Arc::new(Lane {
                db: db.clone(),
                lease: lease.clone(),
                usage: usage.clone(),
            });
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

/// The lane's transaction before the one being gathered.
struct Previous {
    /// Fires (or closes) once it sent its COMMIT, or ended.
    committing: oneshot::Receiver<()>,
    /// What the next one waits for.
    before: Before,
}

/// What a transaction learns of the one before it on its lane.
struct Before {
    /// Fires once it committed and answered; closes only if its task died.
    done: oneshot::Receiver<()>,
    /// Fires if it failed and goes again on its own: the next one rolls
    /// back then (its rows could hold up that one's statements, on MySQL
    /// where a DELETE's scan locks every row it reads, with neither the
    /// database nor the lane seeing the cycle). Closes unfired otherwise.
    again: Option<oneshot::Receiver<()>>,
}

/// What the transaction after learns: see [`Before`].
struct After {
    done: oneshot::Sender<()>,
    again: oneshot::Sender<()>,
}

/// The error a transaction ends with when the one before it goes again.
const BEFORE_GOES_AGAIN: &str = "wait for the transaction before";

/// One lane. A batch is gathered from whatever queued while the previous
/// transaction ran, so batches grow with load (group commit). With
/// `overlap`, gathering starts as soon as the previous transaction sends
/// its COMMIT, and the next one inserts its messages while that COMMIT is
/// on its way to disk (about a third of a transaction's time on
/// PostgreSQL here); its other statements, whose deletes may name the
/// previous one's rows, wait until that one committed. Not sooner: on
/// MariaDB the previous one's deletes may lock every row (a full scan
/// under REPEATABLE READ), and would wait for ours, which wait for them.
async fn run(rx: flume::Receiver<WriteRequest>, lane: Arc<Lane>, cfg: WriterConfig) {
    let mut held: Option<WriteRequest> = None;
    let mut previous: Option<Previous> = None;
    loop {
        if let Some(p) = previous.as_mut() {
            let _ = (&mut p.committing).await;
        }
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
        let mut told = vec![first.committing];
        while let Ok(r) = rx.try_recv() {
            if rows + r.batch.rows() > cfg.max_rows {
                held = Some(r);
                break;
            }
            rows += r.batch.rows();
            merged.extend(r.batch);
            replies.push(r.reply);
            told.push(r.committing);
        }
        shard_store::compact(&mut merged);
        if !cfg.overlap {
            // Never told: the shard waits for the answer.
            drop(told);
            write_until_done(&lane, &merged, Attempt::First).await;
            for r in replies {
                let _ = r.send(());
            }
            continue;
        }
        let (committing_tx, committing) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let (again_tx, again) = oneshot::channel();
        let before = previous.take().map(|p| p.before);
        let task = transaction(
            lane.clone(),
            merged,
            replies,
            before,
            Committing {
                lane: committing_tx,
                shard: told,
            },
            After {
                done: done_tx,
                again: again_tx,
            },
        );
        tokio::spawn(async move {
            use futures_lite::FutureExt;
            if std::panic::AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .is_err()
            {
                // Its shard would wait for the answer for ever, holding
                // producers back while this broker keeps the lease.
                error!(role = "master", "a database write panicked; stopping now");
                stop_serving()
            }
        });
        previous = Some(Previous {
            committing,
            before: Before {
                done,
                again: Some(again),
            },
        });
    }
}

/// One overlapped transaction (see [`run`]): first as described there; if
/// that fails for any reason but a lost lease or a foreign row, the batch
/// goes again on its own, after the previous one, as without overlap.
/// Answers its shard, then lets the next transaction go on.
async fn transaction(
    lane: Arc<Lane>,
    batch: Batch,
    replies: Vec<flume::Sender<()>>,
    mut before: Option<Before>,
    committing: Committing,
    after: After,
) {
    let mut committing = Some(committing);
    let started = std::time::Instant::now();
    let result = super::write::write_after(
        &lane.db,
        &lane.lease,
        &batch,
        Attempt::First,
        Some(wait_before(&mut before, &lane)),
        || {
            if let Some(c) = committing.take() {
                c.tell();
            }
        },
    )
    .await;
    match result {
        Ok(()) => lane.committed(&batch, started),
        Err(e) => {
            stop_if_final(&e);
            // The next one (if it began) rolls back: see `Before::again`.
            let _ = after.again.send(());
            let attempt = attempt_after(Attempt::First, &e);
            match &e {
                SqlError::Query { reason, .. } if is_conflict(reason) => {
                    lane.usage.db.conflicts.fetch_add(1, Relaxed);
                }
                SqlError::Query { what, .. } if *what == BEFORE_GOES_AGAIN => {}
                _ => {
                    lane.usage.db.failures.fetch_add(1, Relaxed);
                    warn!(role = "master", error = %e, "database write failed; writing the batch again on its own")
                }
            }
            wait_for(&mut before).await;
            write_until_done(&lane, &batch, attempt).await;
        }
    }
    for r in replies {
        let _ = r.send(());
    }
    drop(committing);
    let _ = after.done.send(());
}

/// `write_after`'s wait for the transaction before (if any): whether it
/// made us wait, or an error if that one goes again on its own.
async fn wait_before(
    slot: &mut Option<Before>,
    lane: &Lane,
) -> Result<super::write::Waited, SqlError> {
    use super::write::Waited;
    let Some(b) = slot.as_mut() else {
        return Ok(Waited::No);
    };
    match b.done.try_recv() {
        Ok(()) => {
            // Received: never polled again.
            *slot = None;
            return Ok(Waited::No);
        }
        Err(oneshot::error::TryRecvError::Empty) => {
            lane.usage.db.overlapped.fetch_add(1, Relaxed);
        }
        // Its task died (a closed receiver is not polled again).
        Err(oneshot::error::TryRecvError::Closed) => previous_died(),
    }
    loop {
        tokio::select! {
            biased;
            done = &mut b.done => {
                if done.is_err() {
                    previous_died()
                }
                *slot = None;
                return Ok(Waited::Yes);
            }
            again = async { b.again.as_mut().expect("checked by the guard").await }, if b.again.is_some() => {
                b.again = None;
                if again.is_ok() {
                    return Err(SqlError::Query {
                        what: BEFORE_GOES_AGAIN,
                        reason: "it failed and goes again on its own".into(),
                    });
                }
            }
        }
    }
}

/// Who learns that a transaction is about to COMMIT: the lane, which then
/// gathers the next one, and the shards whose batches it carries, which
/// then hand over their next (the order matters little: the lane waits
/// for the shard's batch, which is on a longer way).
struct Committing {
    lane: oneshot::Sender<()>,
    shard: Vec<Option<flume::Sender<()>>>,
}

impl Committing {
    fn tell(self) {
        // The shards first: the next batch travels from them.
        for s in self.shard.into_iter().flatten() {
            let _ = s.try_send(());
        }
        let _ = self.lane.send(());
    }
}

/// Waits until the previous transaction committed (once; nothing if none).
async fn wait_for(before: &mut Option<Before>) {
    if let Some(b) = before.take() {
        if b.done.await.is_err() {
            previous_died()
        }
    }
}

/// The transaction before ended without committing, which only a panic
/// does: our deletes might name rows that were never written. The next
/// master reads the tables as they are; producers resend what was not
/// receipted.
fn previous_died() -> ! {
    error!(
        role = "master",
        "a database write ended without committing; stopping now"
    );
    stop_serving()
}

impl Lane {
    /// Counts a committed transaction that began at `started`.
    fn committed(&self, batch: &Batch, started: std::time::Instant) {
        let took = started.elapsed();
        if took >= SLOW_TRANSACTION {
            // A transaction holds its share of the fence row until it
            // commits: slow ones delay a standby's takeover (never our
            // own lease renewal).
            warn!(
                role = "master",
                took_ms = took.as_millis() as u64,
                rows = batch.rows(),
                bytes = batch.bytes(),
                "slow database write transaction"
            );
        }
        let stats = &self.usage.db;
        stats.transactions.fetch_add(1, Relaxed);
        stats.rows.fetch_add(batch.rows() as u64, Relaxed);
        stats.commit_us.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// Writes `batch`, retrying while the database cannot be reached: nothing
/// is receipted meanwhile, producers are held back, and the same batch is
/// written again once it is back (every statement in a batch is
/// idempotent, so a COMMIT whose answer was lost may be repeated). A lease
/// that is no longer ours ends the process (exit 3): another broker is
/// master now.
async fn write_until_done(lane: &Lane, batch: &Batch, first: Attempt) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    let stats = &lane.usage.db;
    let mut attempt = first;
    loop {
        let started = std::time::Instant::now();
        let result = super::write::write_batch_as(&lane.db, &lane.lease, batch, attempt).await;
        attempt = next_attempt(attempt, &result);
        let e = match result {
            Ok(()) => {
                lane.committed(batch, started);
                if failures > 0 {
                    lane.usage.unavailable.fetch_sub(1, Relaxed);
                    info!(role = "master", failures, "database writes succeed again");
                }
                return;
            }
            Err(e) => e,
        };
        stop_if_final(&e);
        // Lanes lock rows of the same tables: the database may pick one
        // transaction to abort. Nothing is wrong with the database; the
        // batch goes again at once.
        if matches!(&e, SqlError::Query { reason, .. } if is_conflict(reason)) {
            stats.conflicts.fetch_add(1, Relaxed);
            continue;
        }
        failures += 1;
        stats.failures.fetch_add(1, Relaxed);
        if failures == 1 {
            lane.usage.unavailable.fetch_add(1, Relaxed);
            warn!(role = "master", error = %e, "database write failed; producers held back, retrying until it succeeds");
        } else if failures.is_power_of_two() {
            warn!(role = "master", error = %e, failures, "database write still failing");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Stops the process on a failure no retry can mend: the lease is
/// another broker's, or another program writes under our ids.
fn stop_if_final(e: &SqlError) {
    match e {
        SqlError::IdTaken(why) => {
            // Skipping the row would receipt a message never stored; the
            // next master (the standby, or this one restarted) reads every
            // row and starts its ids above them, and producers resend what
            // was not receipted.
            error!(role = "master", reason = %why, "another program writes into ACTIVEMQ_MSGS; stopping now, without draining");
            stop_serving()
        }
        SqlError::Fenced(why) => {
            error!(role = "master", reason = %why, "lost the master lease; stopping now, without draining");
            stop_serving()
        }
        _ => {}
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
        Err(e) => attempt_after(attempt, e),
        Ok(()) => attempt,
    }
}

/// [`next_attempt`] after `e`.
fn attempt_after(attempt: Attempt, e: &SqlError) -> Attempt {
    match e {
        SqlError::Query { what, .. } if *what == super::write::COMMIT => Attempt::Again,
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
    fn lanes_overlap_only_with_room_in_the_pool_and_as_configured() {
        let far = OVERLAP_FROM;
        let near = OVERLAP_FROM - Duration::from_micros(1);
        assert!(Overlap::Auto.decide(8, 2, far));
        assert!(!Overlap::Auto.decide(8, 2, near), "loopback");
        assert!(Overlap::Always.decide(8, 2, near));
        assert!(!Overlap::Never.decide(8, 2, far));
        // Two connections a lane and one more, or none overlap.
        assert!(!Overlap::Always.decide(4, 2, far));
        assert!(Overlap::Always.decide(5, 2, far));
        assert!(!Overlap::Always.decide(2, 1, far));
        assert!(Overlap::Always.decide(3, 1, far));
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
