//! The `file` store and file-lock master/standby, with real processes,
//! real files and real SIGKILL.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{body, free_addr, Broker, Client};

const SMALL_SEGMENTS: &str = "[store]\nsegment_size_bytes = 1048576\nlimit_bytes = 4194304\n";

fn start_on(dir: &std::path::Path, config: Option<&str>, extra: &[&str]) -> Broker {
    let mut args: Vec<String> = vec!["--data".into(), dir.join("data").display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Broker::spawn(config, &args, Some(dir))
}

/// Drains a queue: receives (and acknowledges) exactly the messages the
/// broker says it holds, each within a deadline; returns their bodies.
fn drain(b: &Broker, queue: &str) -> Vec<String> {
    let expected = b
        .destination(queue)
        .and_then(|d| d["pending"].as_u64())
        .unwrap_or(0) as usize;
    let mut got = Vec::new();
    if expected == 0 {
        return got;
    }
    let mut c = b.client();
    c.subscribe(
        "drain",
        queue,
        "client-individual",
        &[("activemq.prefetchSize", "500")],
    );
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < expected {
        let left = end.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "drained {} of {expected} from {queue}",
            got.len()
        );
        let m = c.recv_timeout(left).unwrap_or_else(|| {
            panic!(
                "{queue}: connection ended after {} of {expected}",
                got.len()
            )
        });
        assert_eq!(m.command.as_str(), "MESSAGE");
        got.push(body(&m));
        c.ack(&m);
    }
    c.disconnect();
    b.wait_until("the drained queue empty", |_| {
        b.destination(queue)
            .is_none_or(|d| d["pending"].as_u64() == Some(0))
    });
    got
}

#[test]
fn persistent_messages_survive_a_kill_and_acked_ones_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path(), None, &["--shards", "2"]);
    let mut p = b.client();
    for i in 0..50 {
        p.send_sync(
            &format!("/queue/keep{}", i % 3),
            &format!("m{i}"),
            &[("persistent", "true")],
        );
    }
    p.send_sync("/queue/keep0", "not persistent", &[]);
    let mut c = b.client();
    c.subscribe("s", "/queue/keep1", "client-individual", &[]);
    let mut acked = HashSet::new();
    for _ in 0..5 {
        let m = c.expect_message();
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("ACK", &[("id", &id), ("receipt", "a")], b"");
        c.expect_receipt("a");
        acked.insert(body(&m));
    }
    b.kill9();
    let b = start_on(dir.path(), None, &["--shards", "2"]);
    let mut all: Vec<String> = (0..3)
        .flat_map(|q| drain(&b, &format!("/queue/keep{q}")))
        .collect();
    all.sort();
    let mut expected: Vec<String> = (0..50)
        .map(|i| format!("m{i}"))
        .filter(|m| !acked.contains(m))
        .collect();
    expected.sort();
    assert_eq!(
        all, expected,
        "every receipted persistent message, minus the acknowledged ones"
    );
}

#[test]
fn receipted_messages_survive_twenty_random_kills() {
    let dir = tempfile::tempdir().unwrap();
    let receipted: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let consumed: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut next: u64 = 0;
    // A small deterministic generator: kill points differ per iteration.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20 {
        let mut b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "2"]);
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (addr, receipted, stop) = (b.stomp, receipted.clone(), stop.clone());
            let start = next;
            std::thread::spawn(move || -> u64 {
                let mut p = Client::connect(addr, &[("accept-version", "1.2")]);
                let mut n = start;
                while !stop.load(Ordering::Relaxed) {
                    let id = n.to_string();
                    p.frame(
                        "SEND",
                        &[
                            ("destination", "/queue/crash"),
                            ("persistent", "true"),
                            ("receipt", &id),
                        ],
                        id.as_bytes(),
                    );
                    n += 1;
                    match p.recv_timeout(Duration::from_secs(5)) {
                        Some(f) if f.command.as_str() == "RECEIPT" => {
                            receipted
                                .lock()
                                .unwrap()
                                .insert(f.header_str("receipt-id").unwrap().parse().unwrap());
                        }
                        other => {
                            eprintln!("producer stopped on {other:?}");
                            break;
                        }
                    }
                }
                n
            })
        };
        let consumer = {
            let (addr, acked, consumed, stop) =
                (b.stomp, acked.clone(), consumed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, &[("accept-version", "1.2")]);
                c.frame(
                    "SUBSCRIBE",
                    &[
                        ("id", "c"),
                        ("destination", "/queue/crash"),
                        ("ack", "client-individual"),
                    ],
                    b"",
                );
                while !stop.load(Ordering::Relaxed) {
                    let Some(m) = c.recv_timeout(Duration::from_secs(5)) else {
                        break;
                    };
                    if m.command.as_str() != "MESSAGE" {
                        continue;
                    }
                    let n: u64 = body(&m).parse().unwrap();
                    consumed.lock().unwrap().insert(n);
                    let id = m.header_str("ack").unwrap().to_string();
                    c.frame("ACK", &[("id", &id), ("receipt", &format!("ack-{n}"))], b"");
                    // The ACK's receipt may come after more MESSAGE frames;
                    // only a RECEIPT makes the acknowledgement durable.
                    if let Some(r) = c.recv_timeout(Duration::from_secs(5)) {
                        if let Some(rid) = r.header_str("receipt-id") {
                            acked
                                .lock()
                                .unwrap()
                                .insert(rid.trim_start_matches("ack-").parse().unwrap());
                        }
                    }
                }
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 250));
        b.kill9();
        stop.store(true, Ordering::Relaxed);
        next = producer.join().unwrap();
        consumer.join().unwrap();
    }
    let b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "2"]);
    let left: HashSet<u64> = drain(&b, "/queue/crash")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let receipted = receipted.lock().unwrap();
    let acked = acked.lock().unwrap();
    let consumed = consumed.lock().unwrap();
    assert!(
        receipted.len() > 100,
        "the test produced too little: {}",
        receipted.len()
    );
    for id in receipted.iter() {
        assert!(
            left.contains(id) || consumed.contains(id),
            "receipted message {id} was lost"
        );
    }
    for id in acked.iter() {
        assert!(
            !left.contains(id),
            "message {id} was acknowledged with a receipt but came back"
        );
    }
    for id in left.iter() {
        assert!(*id < next, "message {id} was never sent");
    }
}

#[test]
fn shard_count_is_taken_from_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path(), None, &["--shards", "3"]);
    let mut p = b.client();
    for i in 0..12 {
        p.send_sync(&format!("/queue/sh{i}"), "x", &[("persistent", "true")]);
    }
    b.kill9();
    let b = start_on(dir.path(), None, &["--shards", "1"]);
    assert_eq!(b.status()["shards"], 3);
    let total: usize = (0..12)
        .map(|i| drain(&b, &format!("/queue/sh{i}")).len())
        .sum();
    assert_eq!(total, 12);
}

#[test]
fn segments_are_reused_and_disk_use_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "1"]);
    let mut c = b.client();
    c.subscribe("s", "/queue/cycle", "auto", &[]);
    let mut p = b.client();
    let payload = "z".repeat(8192);
    // 10 MiB through 1 MiB segments.
    for i in 0..1280 {
        p.frame(
            "SEND",
            &[
                ("destination", "/queue/cycle"),
                ("persistent", "true"),
                ("receipt", "r"),
            ],
            payload.as_bytes(),
        );
        p.expect_receipt("r");
        let _ = c.expect_message();
        if i % 200 == 0 {
            let used: u64 = std::fs::read_dir(data.join("shard-0"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(used <= 4 * 1048576 + 1048576, "journal uses {used} bytes");
        }
    }
    let files = std::fs::read_dir(data.join("shard-0")).unwrap().count();
    assert!(files <= 5, "{files} segment files for a 4 MiB limit");
}

/// A broker of a shared-file pair on `dir`/data, two shards, at these
/// STOMP and admin addresses.
fn pair_args(dir: &std::path::Path, stomp: &str, admin: &str) -> Vec<String> {
    let data = dir.join("data").display().to_string();
    [
        "--data", &data, "--stomp", stomp, "--admin", admin, "--shards", "2",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// A client that reaches the new master while it recovers waits and is
/// served once it serves, instead of being refused and left to its
/// back-off: the client ports open as the takeover begins (here it
/// stalls, with a test-only switch, to be caught in the act).
#[test]
fn a_client_connecting_during_a_takeover_waits_and_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, a1, s2, a2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args = |s: &str, a: &str| pair_args(dir.path(), s, a);
    let mut master = Broker::spawn(None, &args(&s1, &a1), Some(dir.path()));
    let mut standby = Broker::spawn_env(
        None,
        &args(&s2, &a2),
        Some(dir.path()),
        &[("BROKK_FAULT_TAKEOVER_PAUSE_MS", "4000")],
    );
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    assert!(
        std::net::TcpStream::connect(&s2).is_err(),
        "a standby does not listen for clients"
    );
    master
        .client()
        .send_sync("/queue/across", "kept", &[("persistent", "true")]);
    master.kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while standby.status()["role"] != "recovering" {
        assert!(std::time::Instant::now() < deadline, "no takeover began");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut early = loop {
        if let Ok(s) = std::net::TcpStream::connect(&s2) {
            break s;
        }
        assert_eq!(
            standby.status()["role"],
            "recovering",
            "the ports stayed closed while the broker recovered"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        standby.status()["role"],
        "recovering",
        "connected before serving"
    );
    // Nothing answers it while the broker recovers.
    early
        .write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        .unwrap();
    early
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut first = [0u8; 9];
    let silent = matches!(
        early.read(&mut first),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    assert!(silent, "answered while recovering");
    assert_eq!(
        standby.status()["role"],
        "recovering",
        "the check ran while recovering"
    );
    // Its CONNECT waited in the queue: answered once the broker serves.
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    early.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"CONNECTED", "the waiting client is served");
    drop(early);
    let mut c = Client::connect(standby.stomp, &[("accept-version", "1.2")]);
    standby.wait_for_master_within(20);
    c.subscribe("s", "/queue/across", "auto", &[]);
    assert_eq!(body(&c.expect_message()), "kept");
}

#[test]
fn standby_takes_over_when_master_is_killed_and_old_master_stays_standby() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, a1, s2, a2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args = |s: &str, a: &str| pair_args(dir.path(), s, a);
    let mut master = Broker::spawn(None, &args(&s1, &a1), Some(dir.path()));
    let mut standby = Broker::spawn_any(None, &args(&s2, &a2), Some(dir.path()));
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    assert_eq!(standby.status()["role"], "standby");
    assert!(
        std::net::TcpStream::connect(&s2).is_err(),
        "a standby does not listen for clients"
    );
    let brokers = [master.stomp, standby.stomp];
    let receipted: Arc<Mutex<Vec<u64>>> = Arc::default();
    let producer = {
        let receipted = receipted.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut which = 0;
            let mut fails = 0;
            while n < 400 && fails < 200 {
                let Ok(s) = std::net::TcpStream::connect(brokers[which]) else {
                    which = 1 - which;
                    fails += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                drop(s);
                let mut p = Client::connect(brokers[which], &[("accept-version", "1.2")]);
                if !p.is_connected() {
                    which = 1 - which;
                    continue;
                }
                loop {
                    let id = n.to_string();
                    // After a failover the last unreceipted one is sent again.
                    p.frame(
                        "SEND",
                        &[
                            ("destination", "/queue/ha"),
                            ("persistent", "true"),
                            ("receipt", &id),
                        ],
                        id.as_bytes(),
                    );
                    match p.recv_timeout(Duration::from_secs(5)) {
                        Some(f) if f.command.as_str() == "RECEIPT" => {
                            receipted.lock().unwrap().push(n);
                            n += 1;
                            if n == 400 {
                                break;
                            }
                        }
                        _ => {
                            which = 1 - which;
                            break;
                        }
                    }
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receipted.lock().unwrap().len() < 100 {
        assert!(
            std::time::Instant::now() < deadline && !producer.is_finished(),
            "the producer stopped before 100 receipts"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    master.kill9();
    standby.wait_for_master();
    assert_eq!(standby.status()["role"], "master");
    producer.join().unwrap();
    let receipted = receipted.lock().unwrap().clone();
    assert_eq!(receipted.len(), 400);
    // The old master comes back as a standby.
    let old = Broker::spawn_any(None, &args(&s1, &a1), Some(dir.path()));
    assert!(
        old.role_line.starts_with("brokk standby"),
        "{}",
        old.role_line
    );
    assert_eq!(old.status()["role"], "standby");
    let got: HashSet<u64> = drain(&standby, "/queue/ha")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    for id in &receipted {
        assert!(
            got.contains(id),
            "receipted message {id} lost in the failover"
        );
    }
}

#[test]
fn durable_subscription_survives_segment_reuse_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "1"]);
    // With a selector, which the new segments' snapshot must carry too.
    let durable = [
        ("activemq.subscriptionName", "keep"),
        ("selector", "kind = 'keep'"),
    ];
    let mut s = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "dur")]);
    s.subscribe("d", "/topic/reuse", "client-individual", &durable);
    s.disconnect();
    // Push several segments' worth through a queue so that the segment that
    // recorded the subscription is reused.
    let mut c = b.client();
    c.subscribe("q", "/queue/filler", "auto", &[]);
    let mut p = b.client();
    let payload = "f".repeat(16 * 1024);
    for _ in 0..400 {
        p.frame(
            "SEND",
            &[
                ("destination", "/queue/filler"),
                ("persistent", "true"),
                ("receipt", "r"),
            ],
            payload.as_bytes(),
        );
        p.expect_receipt("r");
        let _ = c.expect_message();
    }
    let first = data.join("shard-0").join("seg-000000.log");
    let header = std::fs::read(&first).unwrap();
    assert_ne!(
        u64::from_le_bytes(header[8..16].try_into().unwrap()),
        1,
        "the first segment should have been reused"
    );
    p.send_sync(
        "/topic/reuse",
        "passed over",
        &[("persistent", "true"), ("kind", "other")],
    );
    p.send_sync(
        "/topic/reuse",
        "kept for the durable subscriber",
        &[("persistent", "true"), ("kind", "keep")],
    );
    b.kill9();
    let b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "1"]);
    let mut s = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "dur")]);
    s.subscribe("d", "/topic/reuse", "client-individual", &durable);
    assert_eq!(body(&s.expect_message()), "kept for the durable subscriber");
}

#[test]
fn producers_are_held_back_at_the_store_limit_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_on(dir.path(), Some(SMALL_SEGMENTS), &["--shards", "1"]);
    let addr = b.stomp;
    const N: usize = 600;
    let producer = std::thread::spawn(move || {
        let mut p = Client::connect(addr, &[("accept-version", "1.2")]);
        let payload = "s".repeat(16 * 1024);
        for i in 0..N {
            p.frame(
                "SEND",
                &[
                    ("destination", "/queue/full"),
                    ("persistent", "true"),
                    ("seq", &i.to_string()),
                ],
                payload.as_bytes(),
            );
        }
        p.disconnect();
    });
    // 600 x 16 KiB is more than the 4 MiB limit: without a consumer the
    // producer must stall, not fail and not grow the journal without bound.
    b.wait_until("journal to fill", |_| {
        b.destination("/queue/full")
            .is_some_and(|d| d["pending"].as_u64().unwrap() >= 150)
    });
    // The broker says it is holding persistent producers back (a positive
    // signal, not a pause of the test's own).
    b.wait_until("the store limit reached", |s| s["store_full"] == true);
    assert!(
        !producer.is_finished(),
        "the producer should be held back at the store limit"
    );
    let files = std::fs::read_dir(dir.path().join("data/shard-0"))
        .unwrap()
        .count();
    assert!(files <= 6, "{files} segment files for a 4 MiB limit");
    let mut c = b.client();
    c.subscribe(
        "s",
        "/queue/full",
        "client",
        &[("activemq.prefetchSize", "50")],
    );
    for i in 0..N {
        let m = c.expect_message();
        assert_eq!(m.header_str("seq"), Some(i.to_string().as_str()));
        if i % 25 == 24 {
            c.ack(&m);
        }
    }
    producer.join().unwrap();
}

#[test]
fn send_fail_if_no_space_answers_with_an_error_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{SMALL_SEGMENTS}[limits]\nsend_fail_if_no_space = true\n");
    let b = start_on(dir.path(), Some(&config), &["--shards", "1"]);
    let mut p = b.client();
    let payload = "e".repeat(16 * 1024);
    let mut accepted = 0;
    let error = loop {
        p.frame(
            "SEND",
            &[
                ("destination", "/queue/nospace"),
                ("persistent", "true"),
                ("receipt", "r"),
            ],
            payload.as_bytes(),
        );
        let f = p.recv().expect("a reply");
        if f.command.as_str() == "ERROR" {
            break f;
        }
        accepted += 1;
        assert!(accepted < 1000, "the store limit never refused a SEND");
    };
    assert!(error
        .header_str("message")
        .unwrap()
        .contains("out of space"));
    assert_eq!(error.header_str("receipt-id"), Some("r"));
    // Everything accepted before the refusal is kept.
    assert_eq!(drain(&b, "/queue/nospace").len(), accepted);
}

#[test]
fn dead_lettered_persistent_message_survives_a_kill_and_is_never_lost() {
    use brokk::broker::Destination;
    // A queue owned by the other shard than the DLQ: the move crosses shards.
    let dlq_owner = Destination::queue("ActiveMQ.DLQ").owner(2);
    let name = (0..100)
        .map(|i| format!("poison{i}"))
        .find(|n| Destination::queue(n).owner(2) != dlq_owner)
        .unwrap();
    let queue = format!("/queue/{name}");
    let dir = tempfile::tempdir().unwrap();
    let config = "[broker]\nmax_redeliveries = 0\n";
    let mut b = start_on(dir.path(), Some(config), &["--shards", "2"]);
    let mut p = b.client();
    p.send_sync(&queue, "poison", &[("persistent", "true")]);
    let mut c = b.client();
    c.subscribe("s", &queue, "client-individual", &[]);
    let m = c.expect_message();
    let id = m.header_str("ack").unwrap().to_string();
    c.frame("NACK", &[("id", &id), ("receipt", "n")], b"");
    c.expect_receipt("n");
    b.wait_until("the message in the DLQ", |_| {
        b.destination("/queue/ActiveMQ.DLQ")
            .is_some_and(|d| d["pending"] == 1)
    });
    // Killed while the move may still be under way (the original is
    // retired only after the copy is durable): a crash may keep both,
    // never neither. A clean stop completes it (tests/crash_safety.rs).
    b.kill9();
    let b = start_on(dir.path(), Some(config), &["--shards", "2"]);
    let dlq = b
        .destination("/queue/ActiveMQ.DLQ")
        .map_or(0, |d| d["pending"].as_u64().unwrap());
    let original = b
        .destination(&queue)
        .map_or(0, |d| d["pending"].as_u64().unwrap());
    assert!(dlq + original >= 1, "the poison message was lost");
    assert!(
        dlq <= 1 && original <= 1,
        "copies multiplied: {dlq} + {original}"
    );
}

/// The README's first command: `brokk serve` with no arguments keeps its
/// journal in the relative `./data` (it failed to open the shard
/// directories through a relative path).
#[test]
fn serve_with_no_arguments_runs_on_the_relative_default_data_directory() {
    use std::io::BufRead;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args([
            "serve",
            "--stomp",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--openwire",
            "127.0.0.1:0",
        ])
        .current_dir(cwd.path())
        .env("BROKK_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("brokk listening"), "got {line:?}");
    assert!(cwd.path().join("data").join("shard-0").is_dir());
}
