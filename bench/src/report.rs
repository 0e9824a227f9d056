//! Files bench writes with `--out DIR`: `summary.json` (the JSON line), one
//! `.hgrm` per latency histogram (the percentile-distribution text that
//! HdrHistogram's plotter reads, values in milliseconds) and `report.html`
//! with the latency percentile plot and throughput over time as inline SVG
//! (the page fetches nothing).

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
    let (w, h, l, r, t, b) = (720.0, 360.0, 70.0, 20.0, 30.0, 50.0);
    let fx = |x: f64| if log_x { x.max(1.0).log10() } else { x };
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
        y1 = y1.max(y);
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

fn html(
    summary: &serde_json::Value,
    curves: &[(String, Vec<(f64, f64)>)],
    timeline: &[(f64, u64, u64)],
) -> String {
    let (sent, consumed) = rates(timeline);
    let latency = svg_chart("Latency by percentile", "percentile", "ms", curves, true);
    let throughput = svg_chart(
        "Throughput over time",
        "seconds",
        "msg/s",
        &[("receipted".into(), sent), ("consumed".into(), consumed)],
        false,
    );
    let pretty = serde_json::to_string_pretty(summary).unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>bench report</title></head><body style=\"font-family:sans-serif\">\
         <h1>bench report</h1>{latency}<br>{throughput}<h2>summary.json</h2><pre>{}</pre></body></html>\n",
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
