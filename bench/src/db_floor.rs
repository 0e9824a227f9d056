//! `bench db-floor`: the database alone, written as a database-mode master
//! writes it, at a fixed rate, with no broker and no clients on the cores.
//!
//! Messages "arrive" at `--rate` on the clock, dealt in turn to
//! `--lanes` writers (a broker's shards each have one). Whenever a lane's
//! previous transaction has committed, every message of its own that
//! arrived since goes in one batch, on its own connection, through the
//! broker's own write path
//! (`brokk::store::sql::write::write_batch_as`: the fence check, the
//! multi-row INSERTs, the DELETEs by id, COMMIT), on the tables the broker
//! creates, under a lease set up as a takeover leaves it. A message is
//! consumed `--consume-after-ms` after it arrived: its DELETE joins the
//! next batch. The report is each message's arrival -> COMMIT time, the
//! least a receipt could take through that database on this machine with
//! a broker that cost nothing and wrote with as many lanes, and each
//! transaction's time. Each lane runs on a thread of its own and sleeps
//! until its next arrival (a runtime timer would wake it up to a
//! millisecond late), so the clients take next to no CPU from the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brokk::store::sql::conn::{self, Db};
use brokk::store::sql::schema::{self, Indexes};
use brokk::store::sql::write::{write_batch_as, Attempt};
use brokk::store::sql::{encoding, Batch, LeaseToken, MsgRow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use mysql_async::prelude::Queryable;

use crate::cluster::{BenchDb, Mode};
use crate::histogram;

/// The lease the batches are written under (as a takeover leaves it).
const HOLDER: &str = "bench-db-floor";

/// Far in the future (ms since the epoch): the lease never runs out.
const FOREVER: i64 = 4_000_000_000_000;

/// Arrivals of the first second are left out of the figures: connections
/// and statements warm up.
const WARM_UP: f64 = 1.0;

#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// mysql (MariaDB/MySQL) or postgres: a fresh database on the local
    /// server (started through ops/services.sh), dropped afterwards.
    #[arg(long)]
    pub mode: Mode,
    /// Messages per second.
    #[arg(long)]
    pub rate: f64,
    /// Seconds of arrivals.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// A message is deleted (consumed) this long after it arrived; 0: never
    /// (inserts only).
    #[arg(long, default_value_t = 150)]
    pub consume_after_ms: u64,
    /// Deletes go in groups of this many messages, as the acknowledgements
    /// of consumers that acknowledge cumulatively every N messages arrive
    /// (bench's STOMP consumers: every prefetch/2, 500, each; eight in step
    /// make 4 000); 1: one by one, as they are consumed.
    #[arg(long, default_value_t = 1)]
    pub ack_every: i64,
    /// Writers side by side, each with its own connection and every
    /// `lanes`-th message (a broker writes with one lane per shard).
    #[arg(long, default_value_t = 1)]
    pub lanes: usize,
}

pub fn run(args: &FloorArgs) -> Result<()> {
    if !matches!(args.mode, Mode::Mysql | Mode::Postgres) {
        bail!("db-floor needs --mode mysql or --mode postgres");
    }
    let rate_ok = args.rate.is_finite() && args.rate > 0.0;
    let duration_ok = args.duration.is_finite() && args.duration > WARM_UP;
    if !rate_ok || !duration_ok || args.lanes == 0 {
        bail!("db-floor needs --rate above 0, --duration above {WARM_UP} s and --lanes above 0");
    }
    // Ctrl-C ends the run early, and the database is dropped as after a
    // whole run.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    // Dropped (with its database) last.
    let fresh = BenchDb::make(args.mode)?;
    let url = fresh.url();
    block_on(async {
        let db = conn::connect(&url, 1, CONNECTION_IDLE).await?;
        schema::create_tables(&db, Indexes::Minimal).await?;
        take_lease(&db).await?;
        db.disconnect().await;
        Ok(())
    })?;
    // Every lane's clock: message k arrives at start + k / rate. Lanes
    // connect in the meantime.
    let start = Instant::now() + Duration::from_millis(500);
    let lanes: Vec<_> = (0..args.lanes)
        .map(|lane| {
            let (args, url, stop) = (args.clone(), url.clone(), stop.clone());
            std::thread::spawn(move || {
                block_on(write_lane(
                    &args,
                    &url,
                    Lane {
                        index: lane as i64,
                        of: args.lanes as i64,
                    },
                    start,
                    &stop,
                ))
            })
        })
        .collect();
    let mut total = Written::default();
    for lane in lanes {
        let written = lane
            .join()
            .map_err(|_| anyhow::anyhow!("a lane panicked"))??;
        total.add(&written)?;
    }
    // What the table holds now: the messages not yet consumed, no more, no
    // less (the check that every batch really went in).
    let rows_left = block_on(async {
        let db = conn::connect(&url, 1, CONNECTION_IDLE).await?;
        let n = count_messages(&db).await;
        db.disconnect().await;
        n
    })?;
    report(args, &total, rows_left);
    if rows_left != total.unconsumed {
        bail!(
            "ACTIVEMQ_MSGS holds {rows_left} rows, {} messages were not consumed",
            total.unconsumed
        );
    }
    Ok(())
}

/// Longest a write transaction may sit idle on the server (the broker
/// derives it from its lease; nothing here waits that long).
const CONNECTION_IDLE: Duration = Duration::from_secs(30);

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// One writer's share: the messages `k` with `k % of == index`.
#[derive(Debug, Clone, Copy)]
struct Lane {
    index: i64,
    of: i64,
}

impl Lane {
    /// How many of this lane's messages are among the first `k` (0-based
    /// message numbers below `k`).
    fn among_first(self, k: i64) -> i64 {
        if k <= self.index {
            0
        } else {
            (k - self.index - 1) / self.of + 1
        }
    }

    /// The message number of this lane's `j`-th message (from 0).
    fn message(self, j: i64) -> i64 {
        j * self.of + self.index
    }
}

/// What lanes wrote, and how long it took.
struct Written {
    latency: Histogram<u64>,
    transactions: Histogram<u64>,
    /// Messages arrived after the warm-up, all committed.
    messages: u64,
    /// Messages committed and not deleted.
    unconsumed: i64,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            latency: histogram(),
            transactions: histogram(),
            messages: 0,
            unconsumed: 0,
        }
    }
}

impl Written {
    fn add(&mut self, other: &Written) -> Result<()> {
        self.latency.add(&other.latency)?;
        self.transactions.add(&other.transactions)?;
        self.messages += other.messages;
        self.unconsumed += other.unconsumed;
        Ok(())
    }
}

/// One lane: message `k` (from 0, id `k + 1`) arrives at `start + k /
/// rate`; the lane writes its own until `--duration` (or a stop), then
/// once more for what arrived before the end.
async fn write_lane(
    args: &FloorArgs,
    url: &str,
    lane: Lane,
    start: Instant,
    stop: &AtomicBool,
) -> Result<Written> {
    let db = conn::connect(url, 1, CONNECTION_IDLE).await?;
    let lease = LeaseToken(HOLDER.to_string());
    let template = message_blob(args.size);
    let rate = args.rate;
    let consume_after = args.consume_after_ms as f64 / 1000.0;
    let every = args.ack_every.max(1);
    let arrival = |k: i64| k as f64 / rate;
    // Messages arrived strictly before `t` seconds: k / rate < t.
    let arrived_before = |t: f64| if t > 0.0 { (t * rate).ceil() as i64 } else { 0 };

    let mut out = Written::default();
    // This lane's messages sent, and deleted, so far (counts, from 0).
    let (mut sent, mut deleted) = (0i64, 0i64);
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        let last = elapsed >= args.duration || stop.load(Ordering::Relaxed);
        let now = elapsed.min(args.duration);
        let arrived = lane.among_first(arrived_before(now));
        let mut batch = Batch::default();
        if consume_after > 0.0 {
            // Consumed by now, and committed by an earlier batch; in
            // groups of `every`, as cumulative acknowledgements come.
            let consumed = lane
                .among_first(arrived_before(now - consume_after))
                .min(sent);
            let consumed = consumed / every * every;
            if consumed > deleted {
                batch.msg_deletes = (deleted..consumed).map(|j| lane.message(j) + 1).collect();
                deleted = consumed;
            }
        }
        let new = sent..arrived;
        batch.inserts = new
            .clone()
            .map(|j| MsgRow {
                id: lane.message(j) + 1,
                container: "queue://DEST.0".into(),
                expiration: 0,
                priority: 4,
                xid: None,
                msg: template.clone(),
            })
            .collect();
        if batch.inserts.is_empty() && batch.msg_deletes.is_empty() {
            if last {
                break;
            }
            // Until this lane's next message arrives.
            let next = start + Duration::from_secs_f64(arrival(lane.message(sent)));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            continue;
        }
        sent = arrived;
        let began = Instant::now();
        write_batch_as(&db, &lease, &batch, Attempt::First)
            .await
            .context("a batch failed")?;
        let committed = start.elapsed().as_secs_f64();
        out.transactions
            .saturating_record(micros(began.elapsed().as_secs_f64()));
        for k in new
            .map(|j| lane.message(j))
            .filter(|&k| arrival(k) >= WARM_UP)
        {
            out.latency
                .saturating_record(micros(committed - arrival(k)));
            out.messages += 1;
        }
        if last {
            break;
        }
    }
    out.unconsumed = sent - deleted;
    db.disconnect().await;
    Ok(out)
}

fn report(args: &FloorArgs, total: &Written, rows_left: i64) {
    let kind = if args.mode == Mode::Mysql {
        "mysql"
    } else {
        "postgres"
    };
    let transactions = total.transactions.len();
    println!(
        "db-floor {kind} at {} msg/s, {} lane(s), {} B, consumed after {} ms: {transactions} transactions ({:.0}/s), {} messages after the first second",
        args.rate,
        args.lanes,
        args.size,
        args.consume_after_ms,
        transactions as f64 / args.duration,
        total.messages,
    );
    let (latency, transactions_ms) = (
        percentiles(&total.latency),
        percentiles(&total.transactions),
    );
    println!("  arrival -> COMMIT ms: {}", shown(&latency));
    println!("  transaction ms:       {}", shown(&transactions_ms));
    println!(
        "{}",
        serde_json::json!({
            "mode": kind, "rate": args.rate, "lanes": args.lanes, "size": args.size,
            "consume_after_ms": args.consume_after_ms, "ack_every": args.ack_every,
            "transactions": transactions, "messages": total.messages,
            "rows_left": rows_left, "unconsumed": total.unconsumed,
            "arrival_to_commit": latency,
            "transaction": transactions_ms,
        })
    );
}

/// p50, p90, p99 and max in ms.
fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": ms(1.0)})
}

fn shown(p: &serde_json::Value) -> String {
    ["p50", "p90", "p99", "max"]
        .iter()
        .map(|k| {
            format!(
                "{k} {:.2}",
                p[format!("{k}_ms")].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn micros(secs: f64) -> u64 {
    (secs * 1e6).max(1.0) as u64
}

/// A message as the store encodes it: a 1 KiB body by default, and the
/// destination header.
fn message_blob(size: usize) -> Bytes {
    let body: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
    let props = [(
        Bytes::from_static(b"destination"),
        Bytes::from_static(b"/queue/DEST.0"),
    )];
    let mut msg = Vec::new();
    encoding::encode(1_700_000_000_000, &props, &body, &mut msg);
    Bytes::from(msg)
}

/// The lease row and the fence row, as a takeover by [`HOLDER`] leaves them.
async fn take_lease(db: &Db) -> Result<()> {
    let lock =
        format!("UPDATE ACTIVEMQ_LOCK SET BROKER_NAME = '{HOLDER}', TIME = {FOREVER} WHERE ID = 1");
    let fence = format!("UPDATE BROKK_FENCE SET HOLDER = '{HOLDER}' WHERE ID = 1");
    execute(db, &[&lock, &fence]).await
}

async fn count_messages(db: &Db) -> Result<i64> {
    const COUNT: &str = "SELECT COUNT(*) FROM ACTIVEMQ_MSGS";
    Ok(match db {
        Db::MySql(pool) => {
            let mut c = pool.get_conn().await?;
            let n: Option<i64> = c.query_first(COUNT).await.context(COUNT)?;
            n.unwrap_or(0)
        }
        Db::Postgres(pool) => {
            let c = pool.get().await?;
            c.client
                .query_one(COUNT, &[])
                .await
                .context(COUNT)?
                .try_get(0)?
        }
    })
}

async fn execute(db: &Db, statements: &[&str]) -> Result<()> {
    match db {
        Db::MySql(pool) => {
            let mut c = pool.get_conn().await?;
            for sql in statements {
                c.query_drop(*sql).await.with_context(|| sql.to_string())?;
            }
        }
        Db::Postgres(pool) => {
            let c = pool.get().await?;
            for sql in statements {
                c.client
                    .batch_execute(sql)
                    .await
                    .with_context(|| sql.to_string())?;
            }
        }
    }
    Ok(())
}
