//! Files bench writes with `--out DIR`: `summary.json` (the JSON line) and
//! one `.hgrm` per latency histogram, the percentile-distribution text that
//! HdrHistogram's plotter reads (values in milliseconds).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// The percentile distribution of a histogram recorded in microseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

pub fn write(
    dir: &Path,
    summary: &serde_json::Value,
    send: &Histogram<u64>,
    e2e: &Histogram<u64>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(summary)? + "\n",
    )?;
    std::fs::write(dir.join("send_to_receipt.hgrm"), hgrm(send))?;
    if !e2e.is_empty() {
        std::fs::write(dir.join("end_to_end.hgrm"), hgrm(e2e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_lists_percentiles_up_to_the_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap();
        }
        let text = hgrm(&h);
        let first = text.lines().nth(2).unwrap();
        assert!(first.trim_start().starts_with("1.000"), "{first}");
        assert!(
            text.contains("#[Max     =      100.0")
                && text.contains("Total count    =          100]"),
            "{text}"
        );
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        assert!(last_row.contains("1.000000000000"), "{last_row}");
    }

    #[test]
    fn writes_summary_and_histograms() {
        let d = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        h.record(1500).unwrap();
        write(&d, &serde_json::json!({"a": 1}), &h, &h).unwrap();
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(s["a"], 1);
        assert!(d.join("send_to_receipt.hgrm").exists() && d.join("end_to_end.hgrm").exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}
