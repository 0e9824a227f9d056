//! `bench db-floor`: the database alone, written as a database-mode master
//! writes it, at a fixed rate, with no broker and no clients on the cores.
//!
//! Messages "arrive" at `--rate` on the clock; whenever the previous
//! transaction has committed, every message that arrived since goes in one
//! batch through the broker's own write path
//! (`brokk::store::sql::write::write_batch_as`: the fence check, the
//! multi-row INSERTs, the DELETEs by id, COMMIT), on the tables the broker
//! creates, under a lease set up as a takeover leaves it. A message is
//! consumed `--consume-after-ms` after it arrived: its DELETE joins the
//! next batch. The report is each message's arrival -> COMMIT time, the
//! least a receipt could take through that database on this machine with
//! a broker that cost nothing, and each transaction's time.

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
}

pub fn run(args: &FloorArgs) -> Result<()> {
    if !matches!(args.mode, Mode::Mysql | Mode::Postgres) {
        bail!("db-floor needs --mode mysql or --mode postgres");
    }
    let rate_ok = args.rate.is_finite() && args.rate > 0.0;
    let duration_ok = args.duration.is_finite() && args.duration > WARM_UP;
    if !rate_ok || !duration_ok {
        bail!("db-floor needs --rate above 0 and --duration above {WARM_UP} s");
    }
    // Dropped (with its database) after the runtime below is gone.
    let fresh = BenchDb::make(args.mode)?;
    let url = fresh.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(args, &url))
}

async fn measure(args: &FloorArgs, url: &str) -> Result<()> {
    let db = conn::connect(url, 1, Duration::from_secs(30)).await?;
    schema::create_tables(&db, Indexes::Minimal).await?;
    take_lease(&db).await?;
    let lease = LeaseToken(HOLDER.to_string());
    let template = message_blob(args.size);
    let rate = args.rate;
    let consume_after = args.consume_after_ms as f64 / 1000.0;
    let arrival = |id: i64| (id - 1) as f64 / rate;

    let mut latency = histogram();
    let mut transactions = histogram();
    let mut next_id: i64 = 1;
    let mut deleted_to: i64 = 1;
    let mut messages = 0u64;
    let start = Instant::now();
    loop {
        let now = start.elapsed().as_secs_f64();
        if now >= args.duration {
            break;
        }
        // Ids below `arrived` have arrived.
        let arrived = (now * rate) as i64 + 1;
        if arrived <= next_id {
            tokio::time::sleep(Duration::from_micros(100)).await;
            continue;
        }
        let ids = next_id..arrived;
        next_id = arrived;
        let mut batch = Batch {
            inserts: ids
                .clone()
                .map(|id| MsgRow {
                    id,
                    container: "queue://DEST.0".into(),
                    expiration: 0,
                    priority: 4,
                    xid: None,
                    msg: template.clone(),
                })
                .collect(),
            ..Batch::default()
        };
        if consume_after > 0.0 {
            // Consumed by now, and committed by an earlier batch.
            let consumed_to = (((now - consume_after).max(0.0) * rate) as i64 + 1).min(ids.start);
            let every = args.ack_every.max(1);
            let consumed_to = (consumed_to - 1) / every * every + 1;
            batch.msg_deletes = (deleted_to..consumed_to).collect();
            deleted_to = deleted_to.max(consumed_to);
        }
        let began = Instant::now();
        write_batch_as(&db, &lease, &batch, Attempt::First)
            .await
            .context("a batch failed")?;
        let committed = start.elapsed().as_secs_f64();
        transactions.saturating_record(micros(began.elapsed().as_secs_f64()));
        for id in ids.filter(|&id| arrival(id) >= WARM_UP) {
            latency.saturating_record(micros(committed - arrival(id)));
            messages += 1;
        }
    }
    // What the tables hold now: the messages not yet consumed, no more, no
    // less (the check that every batch really went in).
    let rows_left = count_messages(&db).await?;
    let unconsumed = next_id - deleted_to;
    let kind = if args.mode == Mode::Mysql {
        "mysql"
    } else {
        "postgres"
    };
    println!(
        "db-floor {kind} at {rate} msg/s, {} B, consumed after {} ms: {} transactions ({:.0}/s), {messages} messages after the first second",
        args.size,
        args.consume_after_ms,
        transactions.len(),
        transactions.len() as f64 / args.duration,
    );
    let (latency, transactions_ms) = (percentiles(&latency), percentiles(&transactions));
    println!("  arrival -> COMMIT ms: {}", shown(&latency));
    println!("  transaction ms:       {}", shown(&transactions_ms));
    println!(
        "{}",
        serde_json::json!({
            "mode": kind, "rate": rate, "size": args.size,
            "consume_after_ms": args.consume_after_ms,
            "transactions": transactions.len(), "messages": messages,
            "rows_left": rows_left, "unconsumed": unconsumed,
            "arrival_to_commit": latency,
            "transaction": transactions_ms,
        })
    );
    db.disconnect().await;
    if rows_left != unconsumed {
        bail!("ACTIVEMQ_MSGS holds {rows_left} rows, {unconsumed} messages were not consumed");
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
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
