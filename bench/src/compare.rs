//! `bench compare`: the same load against each mode in turn (bench runs
//! itself once per mode), then one comparison: `compare.json` and
//! `compare.html` (the summary table with one row per mode, the overlaid
//! latency percentile plot, links to each run's report). A mode that
//! cannot run (its service or store mode is missing) is listed as skipped
//! with the reason, not dropped.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::report;

pub fn run(modes: &[String], out: &Path, load: &[String]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for mode in modes {
        let dir = out.join(mode);
        eprintln!("bench compare: {mode} ...");
        let result = Command::new(&exe)
            .args(["--mode", mode, "--out"])
            .arg(&dir)
            .args(load)
            .output()?;
        if !result.status.success() {
            let reason = failure_reason(&String::from_utf8_lossy(&result.stderr));
            eprintln!("bench compare: {mode} skipped: {reason}");
            rows.push(serde_json::json!({"mode": mode, "skipped": reason}));
            continue;
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
        if let Ok(text) = std::fs::read_to_string(dir.join("send_to_receipt.hgrm")) {
            curves.push((mode.clone(), points_from_hgrm(&text)));
        }
        rows.push(serde_json::json!({"mode": mode, "summary": summary}));
    }
    let json = serde_json::json!({"load": load, "modes": rows});
    std::fs::write(
        out.join("compare.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(out.join("compare.html"), html(&rows, &curves, load))?;
    println!("{}", table(&rows));
    println!(
        "comparison written to {}",
        out.join("compare.html").display()
    );
    Ok(())
}

/// Why a run failed, from its stderr: bench's own `bench: ...` line or a
/// command-line `error: ...`, else the last line.
fn failure_reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("bench: ") && !l.starts_with("bench: kill"))
        .or_else(|| lines.iter().find(|l| l.starts_with("error: ")))
        .or(lines.last())
        .map_or_else(|| "failed".to_string(), |l| l.to_string())
}

/// (1/(1-q), ms) points from a `.hgrm` percentile distribution.
pub fn points_from_hgrm(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let v: f64 = f.next()?.parse().ok()?;
            let q: f64 = f.next()?.parse().ok()?;
            (q < 0.999_999).then(|| (1.0 / (1.0 - q), v))
        })
        .collect()
}

fn table(rows: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<10} {:>12} {:>10} {:>10} {:>10} {:>8} {:>10}  {}\n",
        "mode", "msg/s", "p50 ms", "p99 ms", "p99.9 ms", "lost", "dups", "failover gap ms"
    );
    for r in rows {
        let mode = r["mode"].as_str().unwrap_or("?");
        match r.get("skipped") {
            Some(reason) => {
                out += &format!("{mode:<10} skipped: {}\n", reason.as_str().unwrap_or(""))
            }
            None => {
                let s = &r["summary"];
                let l = &s["send_to_receipt"];
                let gaps: Vec<String> = s["failover"]
                    .as_array()
                    .map(|k| {
                        k.iter()
                            .map(|f| {
                                f["gap_ms"]
                                    .as_f64()
                                    .map_or("?".into(), |g| format!("{g:.1}"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out += &format!(
                    "{mode:<10} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>8} {:>10}  {}\n",
                    s["throughput_msgs_per_sec"].as_f64().unwrap_or(0.0),
                    l["p50_ms"].as_f64().unwrap_or(0.0),
                    l["p99_ms"].as_f64().unwrap_or(0.0),
                    l["p999_ms"].as_f64().unwrap_or(0.0),
                    s["lost_receipted"]
                        .as_u64()
                        .map_or("-".to_string(), |v| v.to_string()),
                    s["duplicates"]
                        .as_u64()
                        .map_or("-".to_string(), |v| v.to_string()),
                    if gaps.is_empty() {
                        "-".to_string()
                    } else {
                        gaps.join(" ")
                    }
                );
            }
        }
    }
    out
}

fn html(
    rows: &[serde_json::Value],
    curves: &[(String, Vec<(f64, f64)>)],
    load: &[String],
) -> String {
    let chart = report::svg_chart(
        "send→receipt latency by percentile",
        "percentile",
        "ms",
        curves,
        true,
    );
    let table_rows: Vec<report::Row> = rows
        .iter()
        .map(|r| match r.get("skipped") {
            Some(reason) => report::Row::Skipped {
                mode: r["mode"].as_str().unwrap_or("?"),
                reason: reason.as_str().unwrap_or(""),
            },
            None => report::Row::Run(&r["summary"]),
        })
        .collect();
    let links: Vec<String> = rows
        .iter()
        .filter(|r| r.get("skipped").is_none())
        .filter_map(|r| r["mode"].as_str())
        .map(|m| {
            let m = esc(m);
            format!("<a href=\"{m}/report.html\">{m}</a>")
        })
        .collect();
    format!(
        "{}<h1>bench compare</h1><p>load: <code>{}</code></p>{}{chart}<p>each run's report: {}</p></body></html>\n",
        report::page_head("bench compare"),
        esc(&load.join(" ")),
        report::summary_table(&table_rows),
        links.join(" · ")
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_points_round_trip_through_the_writer() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let pts = points_from_hgrm(&report::hgrm(&h));
        assert!(!pts.is_empty());
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn the_reason_is_bench_s_own_line_or_the_usage_error() {
        assert_eq!(
            failure_reason("bench: kill 1: SIGKILL\nbench: no zk broker serves\n\n"),
            "bench: no zk broker serves"
        );
        assert_eq!(
            failure_reason("error: invalid value 'x' for '--mode <MODE>'\n  [possible values: memory]\n\nFor more information, try '--help'.\n"),
            "error: invalid value 'x' for '--mode <MODE>'"
        );
        assert_eq!(failure_reason(""), "failed");
    }

    #[test]
    fn the_page_has_one_table_row_per_mode() {
        let rows = vec![
            serde_json::json!({"mode": "file", "summary": {"mode": "file", "throughput_msgs_per_sec": 10.0}}),
            serde_json::json!({"mode": "zk", "summary": {"mode": "zk", "throughput_msgs_per_sec": 20.0}}),
            serde_json::json!({"mode": "postgres", "skipped": "bench: no server"}),
        ];
        let page = html(&rows, &[], &["--persistent".into()]);
        assert_eq!(page.matches("<tr><td class=\"text\">").count(), 3, "{page}");
        assert!(page.contains("skipped: bench: no server"));
        assert!(page.contains("href=\"zk/report.html\""));
    }

    #[test]
    fn skipped_modes_are_listed_with_their_reason() {
        let rows = vec![serde_json::json!({"mode": "zk", "skipped": "bench: --mode Zk needs ..."})];
        assert!(table(&rows).contains("zk         skipped: bench: --mode Zk needs"));
    }
}
