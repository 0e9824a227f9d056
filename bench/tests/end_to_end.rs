//! bench run end to end against brokers it starts itself (the workspace's
//! brokk binary), checking what it reports.

use std::process::Command;

fn bench(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let exe = env!("CARGO_BIN_EXE_bench");
    let brokk = std::path::Path::new(exe).with_file_name("brokk");
    assert!(
        brokk.exists(),
        "build the workspace first: {} is missing",
        brokk.display()
    );
    let status = Command::new(exe)
        .args(args)
        .arg("--out")
        .arg(out)
        .env("BROKK_BIN", &brokk)
        .status()
        .expect("bench runs");
    assert!(status.success(), "bench {args:?} failed: {status:?}");
    assert!(out.join("send_to_receipt.hgrm").exists());
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn memory_mode_run_delivers_everything_once() {
    memory_run("mem", &[]);
}

#[test]
fn tls_run_against_brokers_bench_starts_delivers_everything_once() {
    memory_run("tls", &["--tls"]);
}

fn memory_run(tag: &str, extra: &[&str]) {
    let d = tempfile_dir(tag);
    let mut args: Vec<&str> =
        "--mode memory --shards 2 --producers 4 --consumers 2 --messages 2000 --size 256"
            .split(' ')
            .collect();
    args.extend_from_slice(extra);
    let s = bench(&args, &d);
    assert_eq!(s["receipted"], 2000);
    assert_eq!(s["consumed"], 2000);
    assert_eq!(s["lost_receipted"], 0);
    assert_eq!(s["duplicates"], 0);
    assert!(s["send_to_receipt"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(d.join("end_to_end.hgrm").exists());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn openwire_run_delivers_everything_once() {
    memory_run("ow", &["--protocol", "openwire"]);
}

#[test]
fn openwire_persistent_run_over_several_queues_delivers_everything_once() {
    memory_run(
        "owp",
        &[
            "--protocol",
            "openwire",
            "--persistent",
            "--destinations",
            "3",
        ],
    );
}

#[test]
fn file_mode_failover_loses_no_receipted_message() {
    failover_run("file", &[]);
}

/// A broken OpenWire connection moves producers and consumers to the next
/// broker; producers resend what had no Response.
#[test]
fn openwire_file_mode_failover_loses_no_receipted_message() {
    failover_run("owfile", &["--protocol", "openwire"]);
}

fn failover_run(tag: &str, extra: &[&str]) {
    let d = tempfile_dir(tag);
    let mut args: Vec<&str> = vec![
        "--mode",
        "file",
        "--shards",
        "2",
        "--producers",
        "4",
        "--consumers",
        "2",
        "--messages",
        "20000",
        "--size",
        "256",
        "--persistent",
        "--kill-master-after",
        "5000",
    ];
    args.extend_from_slice(extra);
    let s = bench(&args, &d);
    assert_eq!(s["receipted"], 20000);
    assert_eq!(s["lost_receipted"], 0, "{s}");
    assert!(s["failover"][0]["gap_ms"].as_f64().is_some(), "{s}");
    let _ = std::fs::remove_dir_all(d);
}

/// Three brokers elected through the local ZooKeeper ensemble (bench
/// starts it through ops/services.sh): the master is SIGKILLed once under
/// persistent load; a standby takes over, nothing receipted is lost, and
/// the killed broker comes back as a standby.
#[test]
fn zk_mode_failover_loses_no_receipted_message() {
    let d = tempfile_dir("zk");
    let s = bench(
        &[
            "--mode",
            "zk",
            "--shards",
            "1",
            "--producers",
            "4",
            "--consumers",
            "2",
            "--duration",
            "3",
            "--size",
            "256",
            "--persistent",
            "--kill-master-at",
            "1",
        ],
        &d,
    );
    assert!(s["receipted"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["lost_receipted"], 0, "{s}");
    let kills = s["failover"].as_array().unwrap();
    assert_eq!(kills.len(), 1, "{s}");
    assert!(kills[0]["gap_ms"].as_f64().is_some(), "{s}");
    assert_eq!(s["brokers"].as_array().unwrap().len(), 3, "{s}");
    let page = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert!(page.contains("class=\"marker\""), "the kill is not marked");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn duration_run_over_several_queues_accounts_for_every_message() {
    let d = tempfile_dir("dur");
    let s = bench(
        &[
            "--mode",
            "memory",
            "--shards",
            "2",
            "--producers",
            "3",
            "--consumers",
            "2",
            "--duration",
            "1",
            "--destinations",
            "3",
            "--size",
            "128",
        ],
        &d,
    );
    let receipted = s["receipted"].as_u64().unwrap();
    assert!(receipted > 0);
    assert_eq!(s["consumed"].as_u64().unwrap(), receipted, "{s}");
    assert_eq!(s["lost_receipted"], 0);
    assert_eq!(s["destinations"], 3);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn repeated_kills_by_time_lose_nothing() {
    let d = tempfile_dir("kills");
    let s = bench(
        &[
            "--mode",
            "file",
            "--shards",
            "1",
            "--producers",
            "2",
            "--consumers",
            "1",
            "--duration",
            "2.5",
            "--size",
            "128",
            "--persistent",
            "--kill-master-at",
            "0.7",
            "--kills",
            "2",
        ],
        &d,
    );
    assert_eq!(s["lost_receipted"], 0, "{s}");
    assert_eq!(s["failover"].as_array().unwrap().len(), 2, "{s}");
    let _ = std::fs::remove_dir_all(d);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bench-test-{tag}-{}", std::process::id()))
}

#[test]
fn compare_runs_each_mode_and_reports_missing_ones_as_skipped() {
    let d = tempfile_dir("compare");
    let exe = env!("CARGO_BIN_EXE_bench");
    let brokk = std::path::Path::new(exe).with_file_name("brokk");
    let status = Command::new(exe)
        .args(["compare", "--modes", "memory,nosuch", "--out"])
        .arg(&d)
        .args([
            "--",
            "--producers",
            "2",
            "--consumers",
            "1",
            "--messages",
            "1000",
            "--size",
            "64",
        ])
        .env("BROKK_BIN", &brokk)
        .status()
        .unwrap();
    assert!(status.success());
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("compare.json")).unwrap()).unwrap();
    let modes = c["modes"].as_array().unwrap();
    assert_eq!(modes[0]["summary"]["receipted"], 1000);
    assert!(
        modes[1]["skipped"]
            .as_str()
            .unwrap()
            .contains("invalid value 'nosuch'"),
        "{c}"
    );
    assert!(std::fs::read_to_string(d.join("compare.html"))
        .unwrap()
        .contains("<svg"));
    let _ = std::fs::remove_dir_all(d);
}

/// `bench db-floor` writes through the broker's own write path into a
/// fresh database on each server: every message that arrived after the
/// warm-up is committed and counted, and the table ends holding exactly
/// the ones not consumed yet (bench fails otherwise). PostgreSQL with two
/// lanes, each its own connection and half of the messages.
#[test]
fn db_floor_writes_every_message_on_both_databases() {
    for (mode, lanes) in [("mysql", "1"), ("postgres", "2")] {
        let args = [
            "db-floor",
            "--mode",
            mode,
            "--lanes",
            lanes,
            "--rate",
            "2000",
            "--duration",
            "3",
        ];
        let out = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(args)
            .output()
            .expect("bench runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "db-floor {mode} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = stdout
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
        // Arrivals from 1 s (after the warm-up) to 3 s at 2 000/s.
        assert_eq!(summary["messages"], 4_000, "{summary}");
        assert!(summary["transactions"].as_u64().unwrap() > 0, "{summary}");
        // Consumed 150 ms after arriving: the last 300 or so are left,
        // and the table holds exactly those.
        let left = summary["rows_left"].as_i64().unwrap();
        assert!((1..=1_000).contains(&left), "{summary}");
        assert_eq!(summary["rows_left"], summary["unconsumed"], "{summary}");
        assert!(summary["arrival_to_commit"]["p99_ms"].as_f64().unwrap() > 0.0);
    }
}
