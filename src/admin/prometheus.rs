//! `/metrics` in Prometheus' text format, built per scrape from one
//! gathered snapshot (the shards keep plain counters; nothing on the
//! message path knows about Prometheus).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::gather::Gathered;
use crate::metrics::LATENCY_BOUNDS_US;

/// What one scrape reports: the shards' figures and the process's own.
#[derive(Debug)]
pub struct Scrape {
    pub gathered: Gathered,
    pub is_master: bool,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub store_used_bytes: u64,
    pub store_limit_bytes: u64,
    pub store_full: bool,
    pub uptime_secs: u64,
    /// Database modes: the writer's counters (None in the other modes).
    pub db: Option<DbFigures>,
}

/// The database writer's counters at one scrape.
#[derive(Debug, Clone, Copy)]
pub struct DbFigures {
    pub transactions: u64,
    pub rows: u64,
    pub commit_us: u64,
    pub conflicts: u64,
    pub overlapped: u64,
    pub failures: u64,
    pub unavailable_lanes: u64,
}

pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("brokk");
    registry.register_collector(Box::new(SnapshotCollector(std::sync::Mutex::new(Some(
        scrape,
    )))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A per-destination series: name, help, type and how to read it.
type DestinationFigure = (
    &'static str,
    &'static str,
    MetricType,
    fn(&crate::broker::shard::DestinationStats) -> u64,
);

/// Hands its snapshot to the encoder once (a registry is built per scrape).
#[derive(Debug)]
struct SnapshotCollector(std::sync::Mutex<Option<Scrape>>);

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = guard.as_ref() else {
            return Ok(());
        };
        let g = &s.gathered;
        gauge(
            &mut enc,
            "master",
            "1 on the master, 0 on a standby",
            i64::from(s.is_master),
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since the process started",
            s.uptime_secs as i64,
        )?;
        gauge(
            &mut enc,
            "connections",
            "Open client connections",
            g.connections.len() as i64,
        )?;
        gauge(
            &mut enc,
            "memory_used_bytes",
            "Bytes of messages held in memory",
            s.memory_used_bytes as i64,
        )?;
        gauge(
            &mut enc,
            "memory_limit_bytes",
            "limits.memory_limit_bytes",
            s.memory_limit_bytes as i64,
        )?;
        gauge(
            &mut enc,
            "store_used_bytes",
            "Journal bytes holding data (file mode)",
            s.store_used_bytes as i64,
        )?;
        gauge(
            &mut enc,
            "store_limit_bytes",
            "store.limit_bytes in force (file mode)",
            s.store_limit_bytes as i64,
        )?;
        gauge(
            &mut enc,
            "store_full",
            "1 while persistent producers wait for store space",
            i64::from(s.store_full),
        )?;
        gauge(
            &mut enc,
            "shards_silent",
            "Shards that did not answer this scrape in time",
            g.silent_shards as i64,
        )?;

        let per_dest: [DestinationFigure; 6] = [
            (
                "destination_pending",
                "Messages waiting or delivered and unacknowledged",
                MetricType::Gauge,
                |d| d.pending,
            ),
            (
                "destination_in_flight",
                "Messages delivered and unacknowledged",
                MetricType::Gauge,
                |d| d.in_flight,
            ),
            (
                "destination_paged",
                "Waiting messages paged out of memory to the spool",
                MetricType::Gauge,
                |d| d.paged,
            ),
            (
                "destination_consumers",
                "Consumers (topics: subscriptions with a consumer)",
                MetricType::Gauge,
                |d| d.consumers,
            ),
            (
                "destination_enqueued",
                "Messages that arrived since the broker started",
                MetricType::Counter,
                |d| d.enqueued,
            ),
            (
                "destination_dequeued",
                "Messages acknowledged, expired, purged or dead-lettered since the broker started",
                MetricType::Counter,
                |d| d.dequeued,
            ),
        ];
        for (name, help, kind, value) in per_dest {
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for d in &g.destinations {
                let labels = [("destination", d.destination.as_str()), ("kind", d.kind)];
                let fam = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value(d)).encode(fam)?,
                    _ => ConstGauge::new(value(d) as i64).encode(fam)?,
                }
            }
        }

        if let Some(db) = &s.db {
            let counters: [(&str, &str, u64); 5] = [
                ("db_transactions", "Write transactions the database writer committed", db.transactions),
                ("db_rows", "Rows those transactions wrote or deleted", db.rows),
                ("db_conflicts", "Transactions the database aborted as deadlock or serialization victims, written again at once", db.conflicts),
                ("db_overlapped_transactions", "Transactions that began while the one before them on their lane was still committing", db.overlapped),
                ("db_write_failures", "Failed writes (database unreachable, an error), retried until they succeed", db.failures),
            ];
            for (name, help, v) in counters {
                let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(v).encode(m)?;
            }
            let m = enc.encode_descriptor(
                "db_commit_seconds",
                "Time spent writing and committing those transactions (overlapped ones each count their own)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(db.commit_us as f64 / 1e6).encode(m)?;
            gauge(
                &mut enc,
                "db_unavailable_lanes",
                "Writer lanes that cannot write now (producers are held back)",
                db.unavailable_lanes as i64,
            )?;
        }
        let lat = &g.receipt_latency;
        // Per bucket: the encoder sums them into Prometheus's cumulative
        // `le` counts itself (summing here too made every bucket past the
        // first non-empty one too large).
        let buckets: Vec<(f64, u64)> = lat
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .map(|us| *us as f64 / 1e6)
                    .unwrap_or(f64::INFINITY);
                (bound, *c)
            })
            .collect();
        let mut m = enc.encode_descriptor(
            "receipt_latency_seconds",
            "From a frame asking for a receipt to its RECEIPT (durable), since the broker started",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            lat.sum_us as f64 / 1e6,
            lat.count(),
            &buckets,
            None,
        )?;
        Ok(())
    }
}
