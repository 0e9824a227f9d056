//! Files bench writes with `--out DIR`: `summary.json` (the JSON line), one
//! `.hgrm` per latency histogram (the percentile-distribution text that
//! HdrHistogram's plotter reads, values in milliseconds) and `report.html`:
//! a summary table (the load, throughput, latency percentiles, failover
//! gaps, the loss audit), the latency percentile plot and throughput over
//! time (master kills marked) as inline SVG, then the raw summary JSON (the
//! page fetches nothing).

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
    timeline: &[(f64, u64, u64)],
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
    let mut curves = vec![("send→receipt".to_string(), percentile_points(send))];
    if !e2e.is_empty() {
        curves.push(("end-to-end".to_string(), percentile_points(e2e)));
    }
    std::fs::write(dir.join("report.html"), html(summary, &curves, timeline))?;
    Ok(())
}

/// (1/(1-q), latency ms) points of a histogram, for a percentile plot.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(q, _)| *q < 0.999_999)
        .map(|(q, ms)| (1.0 / (1.0 - q), ms))
        .collect()
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// A line chart as SVG. `log_x`: x on a log10 axis (percentile plots).
pub fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    svg_chart_marked(title, x_label, y_label, series, log_x, &[])
}

/// A line chart as SVG with labelled vertical lines at `markers` (x, label).
pub fn svg_chart_marked(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    markers: &[(f64, String)],
) -> String {
    let (w, h, l, r, t, b) = (720.0, 360.0, 70.0, 20.0, 30.0, 50.0);
    let fx = |x: f64| if log_x { x.max(1.0).log10() } else { x };
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
        y1 = y1.max(y);
    }
    for &(x, _) in markers {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
    }
    if x0 >= x1 {
        x0 = 0.0;
        x1 = x1.max(1.0);
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.05 };
    let sx = |x: f64| l + (fx(x) - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (1.0 - y / y1) * (h - t - b);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    out += &format!(
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    out += &format!(
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b
    );
    out += &format!(
        r#"<line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        out += &format!(
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            l - 6.0,
            sy(y) + 4.0,
            axis_label(y)
        );
    }
    if log_x {
        for (label, x) in [
            ("0%", 1.0),
            ("90%", 10.0),
            ("99%", 100.0),
            ("99.9%", 1e3),
            ("99.99%", 1e4),
            ("99.999%", 1e5),
        ] {
            if fx(x) <= x1 {
                out += &format!(
                    r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
                    sx(x),
                    h - b + 16.0
                );
            }
        }
    } else {
        for i in 0..=4 {
            let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
            out += &format!(
                r#"<text x="{}" y="{}" text-anchor="middle">{x:.1}</text>"#,
                sx(x),
                h - b + 16.0
            );
        }
    }
    out += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        w / 2.0,
        h - 10.0,
        esc(x_label)
    );
    out += &format!(
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    for (k, (x, label)) in markers.iter().enumerate() {
        let (mx, c) = (sx(*x), "#555");
        out += &format!(
            r#"<line class="marker" x1="{mx:.1}" y1="{t}" x2="{mx:.1}" y2="{}" stroke="{c}" stroke-dasharray="5 4"/>"#,
            h - b
        );
        out += &format!(
            r#"<text x="{:.1}" y="{:.1}" fill="{c}" font-size="11">{}</text>"#,
            mx + 4.0,
            h - b - 8.0 - 14.0 * (k % 4) as f64,
            esc(label)
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let d: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        out += &format!(
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            d.join(" ")
        );
        out += &format!(
            r#"<text x="{}" y="{}" fill="{c}">{}</text>"#,
            l + 10.0,
            t + 16.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    out + "</svg>"
}

/// Short axis numbers: 0.25, 12.5, 310k, 1.2M.
fn axis_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// (x, y) points of one line.
pub type Series = Vec<(f64, f64)>;

/// Throughput per interval from (seconds, receipted, consumed) samples.
pub fn rates(timeline: &[(f64, u64, u64)]) -> (Series, Series) {
    let mut sent = Vec::new();
    let mut consumed = Vec::new();
    for w in timeline.windows(2) {
        let dt = (w[1].0 - w[0].0).max(1e-9);
        sent.push((w[1].0, (w[1].1 - w[0].1) as f64 / dt));
        consumed.push((w[1].0, (w[1].2.saturating_sub(w[0].2)) as f64 / dt));
    }
    (sent, consumed)
}

/// The page's head: title and the summary table's style.
pub fn page_head(title: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif}}\
         table.summary{{font-size:13px}}\
         table.summary{{border-collapse:collapse;margin:1em 0}}\
         table.summary th,table.summary td{{border:1px solid #bbb;padding:3px 7px}}\
         table.summary td{{text-align:right;white-space:nowrap}}\
         table.summary td.text{{text-align:left}}\
         table.summary th{{background:#eee}}\
         table.summary td.bad{{background:#fcc;font-weight:bold}}\
         </style></head><body>",
        esc(title)
    )
}

/// One row of the summary table: a run's `summary.json`, or a mode that did
/// not run and why.
pub enum Row<'a> {
    Run(&'a serde_json::Value),
    Skipped { mode: &'a str, reason: &'a str },
}

/// What ran: the mode (with its zk sync), or the brokers given.
fn mode_label(s: &serde_json::Value) -> String {
    match (s["mode"].as_str(), s["sync"].as_str()) {
        (Some(m), Some(sync)) => format!("{m} ({sync})"),
        (Some(m), None) => m.to_string(),
        _ => s["brokers"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "?".into()),
    }
}

/// Each kill's failover gap (last receipt from the old master to the
/// first from the new one), e.g. `1: 1234.5 ms`, one per line.
/// Brokers that exited by themselves (restarted by bench) are counted too.
fn failover_cell(s: &serde_json::Value) -> String {
    let kills = s["failover"].as_array().cloned().unwrap_or_default();
    let restarts = match s["broker_restarts"].as_u64() {
        Some(n) if n > 0 => format!(
            "<span title=\"brokers that exited by themselves (a zk master without a quorum exits 3) and were restarted\">{n} exited, restarted</span>"
        ),
        _ => String::new(),
    };
    if kills.is_empty() {
        return if restarts.is_empty() {
            "–".into()
        } else {
            restarts
        };
    }
    let ms = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |m| format!("{m:.1}"));
    let gaps = kills
        .iter()
        .enumerate()
        .map(|(k, f)| {
            format!(
                "<span title=\"killed {} at {} s; new master announced after {} ms\">{}: {} ms</span>",
                esc(f["killed"].as_str().unwrap_or("?")),
                f["at_s"].as_f64().map_or("?".into(), |t| format!("{t:.2}")),
                ms(&f["new_master_ms"]),
                k + 1,
                ms(&f["gap_ms"])
            )
        })
        .collect::<Vec<_>>()
        .join("<br>");
    if restarts.is_empty() {
        gaps
    } else {
        format!("{gaps}<br>{restarts}")
    }
}

/// The summary table: one row per run (a `bench` run has one, `bench
/// compare` one per mode).
pub fn summary_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "<table class=\"summary\"><tr>\
         <th colspan=\"8\">load</th><th colspan=\"2\">throughput (msg/s)</th>\
         <th colspan=\"3\">send→receipt (ms)</th><th colspan=\"3\">end-to-end (ms)</th>\
         <th>failover</th><th colspan=\"3\">loss audit</th></tr><tr>\
         <th>mode</th><th>shards</th><th>producers</th><th>consumers</th><th>size (B)</th>\
         <th>persistent</th><th>window</th><th>duration</th>\
         <th>sent (receipted)</th><th>received</th>\
         <th>p50</th><th>p99</th><th>p99.9</th><th>p50</th><th>p99</th><th>p99.9</th>\
         <th>gap per kill</th><th>lost receipted</th><th>duplicates</th><th>unreceipted missing</th></tr>\n",
    );
    let num = |v: &serde_json::Value| v.as_u64().map_or("–".into(), |n| n.to_string());
    let ms = |v: &serde_json::Value| v.as_f64().map_or("–".into(), |m| format!("{m:.3}"));
    for row in rows {
        let s = match row {
            Row::Skipped { mode, reason } => {
                let _ = writeln!(
                    out,
                    "<tr><td class=\"text\">{}</td><td class=\"text\" colspan=\"19\">skipped: {}</td></tr>",
                    esc(mode),
                    esc(reason)
                );
                continue;
            }
            Row::Run(s) => s,
        };
        let duration = match s["duration"].as_f64() {
            Some(d) => format!("{d} s"),
            None => format!(
                "{} msgs in {:.1} s",
                num(&s["messages"]),
                s["produce_secs"].as_f64().unwrap_or(0.0)
            ),
        };
        let e2e = |k: &str| {
            if s["end_to_end"]["count"].as_u64().unwrap_or(0) == 0 {
                "–".to_string()
            } else {
                ms(&s["end_to_end"][k])
            }
        };
        let audit = |k: &str, flag: bool| {
            let v = &s[k];
            let bad = flag && v.as_u64().is_some_and(|n| n > 0);
            format!(
                "<td{}>{}</td>",
                if bad { " class=\"bad\"" } else { "" },
                num(v)
            )
        };
        let _ = writeln!(
            out,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"text\">{}</td>{}{}{}</tr>",
            esc(&mode_label(s)),
            s["shards"].as_u64().map_or("default".into(), |n| n.to_string()),
            num(&s["producers"]),
            num(&s["consumers"]),
            num(&s["size"]),
            s["persistent"].as_bool().map_or("?", |p| if p { "yes" } else { "no" }),
            num(&s["window"]),
            esc(&duration),
            s["throughput_msgs_per_sec"].as_f64().unwrap_or(0.0),
            if s["consumers"].as_u64().unwrap_or(0) > 0 {
                format!("{:.0}", s["consume_throughput_msgs_per_sec"].as_f64().unwrap_or(0.0))
            } else {
                "–".into()
            },
            ms(&s["send_to_receipt"]["p50_ms"]),
            ms(&s["send_to_receipt"]["p99_ms"]),
            ms(&s["send_to_receipt"]["p999_ms"]),
            e2e("p50_ms"),
            e2e("p99_ms"),
            e2e("p999_ms"),
            failover_cell(s),
            audit("lost_receipted", true),
            // Resends after a failover may be delivered twice (at least once).
            audit("duplicates", false),
            audit("unconfirmed_missing", false),
        );
    }
    out + "</table>\n"
}

/// The kills of a run as plot markers: (seconds into the run, label).
pub fn kill_markers(summary: &serde_json::Value) -> Vec<(f64, String)> {
    summary["failover"]
        .as_array()
        .map(|kills| {
            kills
                .iter()
                .enumerate()
                .filter_map(|(k, f)| {
                    let at = f["at_s"].as_f64()?;
                    let gap = f["gap_ms"]
                        .as_f64()
                        .map_or(String::new(), |g| format!(", gap {g:.0} ms"));
                    Some((at, format!("kill {}{gap}", k + 1)))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn html(
    summary: &serde_json::Value,
    curves: &[(String, Vec<(f64, f64)>)],
    timeline: &[(f64, u64, u64)],
) -> String {
    let (sent, consumed) = rates(timeline);
    let table = summary_table(&[Row::Run(summary)]);
    let latency = svg_chart("Latency by percentile", "percentile", "ms", curves, true);
    let throughput = svg_chart_marked(
        "Throughput over time",
        "seconds",
        "msg/s",
        &[("receipted".into(), sent), ("consumed".into(), consumed)],
        false,
        &kill_markers(summary),
    );
    let pretty = serde_json::to_string_pretty(summary).unwrap_or_default();
    format!(
        "{}<h1>bench report</h1>{table}{latency}<br>{throughput}<h2>summary.json</h2><pre>{}</pre></body></html>\n",
        page_head("bench report"),
        esc(&pretty)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_between_samples() {
        let (sent, consumed) = rates(&[(0.0, 0, 0), (0.5, 100, 50), (1.0, 300, 50)]);
        assert_eq!(sent, vec![(0.5, 200.0), (1.0, 400.0)]);
        assert_eq!(consumed, vec![(0.5, 100.0), (1.0, 0.0)]);
    }

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
    fn the_page_leads_with_the_table_marks_kills_and_ends_with_the_json() {
        let summary = serde_json::json!({
            "mode": "zk", "sync": "quorum_disk", "shards": 2, "producers": 64, "consumers": 8,
            "size": 1024, "persistent": true, "window": 64, "duration": 10.0,
            "throughput_msgs_per_sec": 12345.6, "consume_throughput_msgs_per_sec": 12000.0,
            "send_to_receipt": {"count": 10, "p50_ms": 1.5, "p99_ms": 9.25, "p999_ms": 20.0},
            "end_to_end": {"count": 10, "p50_ms": 2.5, "p99_ms": 19.0, "p999_ms": 40.0},
            "failover": [{"killed": "127.0.0.1:1", "at_s": 4.0, "gap_ms": 1234.6, "new_master_ms": 1100.0}],
            "lost_receipted": 2, "duplicates": 3, "unconfirmed_missing": 0,
        });
        let page = html(
            &summary,
            &[("x".into(), vec![(1.0, 1.0), (10.0, 2.0)])],
            &[(0.0, 0, 0), (5.0, 10, 5), (10.0, 20, 20)],
        );
        let table = page.find("<table").unwrap();
        let svg = page.find("<svg").unwrap();
        let json = page.find("summary.json").unwrap();
        assert!(table < svg && svg < json, "{page}");
        for cell in [
            "zk (quorum_disk)",
            "<td>12346</td>",
            "<td>12000</td>",
            "<td>9.250</td>",
            "<td>19.000</td>",
            "1: 1234.6 ms",
            "<td class=\"bad\">2</td>",
            "<td>3</td>",
            "10 s",
        ] {
            assert!(page.contains(cell), "{cell} missing: {page}");
        }
        assert_eq!(page.matches("class=\"marker\"").count(), 1);
        assert!(page.contains("kill 1, gap 1235 ms"));
    }

    #[test]
    fn a_skipped_mode_is_a_row_with_its_reason() {
        let t = summary_table(&[Row::Skipped {
            mode: "zk",
            reason: "no <ZooKeeper>",
        }]);
        assert!(t.contains("skipped: no &lt;ZooKeeper&gt;"), "{t}");
    }

    #[test]
    fn writes_summary_and_histograms() {
        let d = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        h.record(1500).unwrap();
        write(
            &d,
            &serde_json::json!({"a": 1}),
            &h,
            &h,
            &[(0.0, 0, 0), (1.0, 10, 5)],
        )
        .unwrap();
        let html = std::fs::read_to_string(d.join("report.html")).unwrap();
        assert!(
            html.contains("<svg")
                && html.contains("Throughput over time")
                && !html.contains("http://")
                || html.contains("xmlns=\"http://www.w3.org/2000/svg\"")
        );
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(s["a"], 1);
        assert!(d.join("send_to_receipt.hgrm").exists() && d.join("end_to_end.hgrm").exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}
