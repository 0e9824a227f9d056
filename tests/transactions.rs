//! Transactions are atomic across a crash: a COMMIT whose SENDs and ACKs
//! span destinations on several shards is, after a SIGKILL at any moment
//! and a restart, either wholly in effect or not at all. Real processes,
//! real files, real SIGKILL / SIGTERM.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use brokk::broker::Destination;
use brokk::protocol::stomp::{parse, Frame, Limits, Parsed, Version};
use bytes::BytesMut;
use common::{body, frame_bytes, Broker, Client};

/// Small segments, so that transactions cross segment rolls and segments
/// are reclaimed while decisions and prepared records are in them.
const CONFIG: &str = "[store]\nsegment_size_bytes = 1048576\nlimit_bytes = 67108864\n";

fn start_on(dir: &std::path::Path) -> Broker {
    let args: Vec<String> = vec![
        "--data".into(),
        dir.join("data").display().to_string(),
        "--shards".into(),
        "2".into(),
    ];
    Broker::spawn(Some(CONFIG), &args, Some(dir))
}

/// `/queue/<prefix>N`, the first such name that shard `shard` of 2 owns.
fn queue_on(shard: usize, prefix: &str) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| Destination::queue(n).owner(2) == shard)
        .map(|n| format!("/queue/{n}"))
        .expect("some name hashes to each shard")
}

/// Everything waiting in `dest`, delivered to a new subscription of `c`
/// (client-individual, unacknowledged) before the SUBSCRIBE's receipt.
fn everything_in(c: &mut Client, id: &str, dest: &str) -> Vec<Frame> {
    let receipt = format!("all-{id}");
    c.messages_before_receipt(
        "SUBSCRIBE",
        &[
            ("id", id),
            ("destination", dest),
            ("ack", "client-individual"),
            ("activemq.prefetchSize", "1000000"),
        ],
        &receipt,
    )
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    let mut v: Vec<String> = frames.iter().map(body).collect();
    v.sort();
    v
}

/// Receives exactly `n` MESSAGE frames (within 10 s each).
fn take(c: &mut Client, n: usize) -> Vec<Frame> {
    (0..n).map(|_| c.expect_message()).collect()
}

fn fill(p: &mut Client, dest: &str, prefix: &str, n: usize) {
    for i in 0..n {
        p.frame(
            "SEND",
            &[("destination", dest), ("persistent", "true")],
            format!("{prefix}-{i}").as_bytes(),
        );
    }
    // The receipt covers every SEND before it to this shard.
    p.send_sync(dest, &format!("{prefix}-last"), &[("persistent", "true")]);
}

#[test]
fn a_commit_across_shards_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (qa, qb) = (queue_on(0, "out"), queue_on(1, "out"));
    let (sa, sb) = (queue_on(0, "src"), queue_on(1, "src"));
    let mut b = start_on(dir.path());
    let mut p = b.client();
    fill(&mut p, &sa, "a", 2);
    fill(&mut p, &sb, "b", 2);
    let mut c = b.client();
    c.subscribe("sa", &sa, "client-individual", &[]);
    c.subscribe("sb", &sb, "client-individual", &[]);
    let got = take(&mut c, 6);
    c.frame("BEGIN", &[("transaction", "t")], b"");
    // Acknowledge two of each source queue's three; the third stays.
    let mut acked = Vec::new();
    for m in &got {
        if body(m).ends_with("-last") {
            continue;
        }
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
        acked.push(body(m));
    }
    assert_eq!(acked.len(), 4);
    for (dest, n) in [(&qa, 2), (&qb, 2)] {
        for i in 0..n {
            c.frame(
                "SEND",
                &[
                    ("destination", dest),
                    ("transaction", "t"),
                    ("persistent", "true"),
                ],
                format!("{dest}-{i}").as_bytes(),
            );
        }
    }
    c.frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    c.expect_receipt("c");
    b.kill9();

    let b = start_on(dir.path());
    let mut v = b.client();
    assert_eq!(
        bodies(&everything_in(&mut v, "qa", &qa)),
        vec![format!("{qa}-0"), format!("{qa}-1")]
    );
    assert_eq!(
        bodies(&everything_in(&mut v, "qb", &qb)),
        vec![format!("{qb}-0"), format!("{qb}-1")]
    );
    assert_eq!(bodies(&everything_in(&mut v, "sa", &sa)), vec!["a-last"]);
    assert_eq!(bodies(&everything_in(&mut v, "sb", &sb)), vec!["b-last"]);
}

#[test]
fn abort_drops_sends_and_acks_across_shards_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (qa, qb) = (queue_on(0, "out"), queue_on(1, "out"));
    let (sa, sb) = (queue_on(0, "src"), queue_on(1, "src"));
    let mut b = start_on(dir.path());
    let mut p = b.client();
    fill(&mut p, &sa, "a", 0);
    fill(&mut p, &sb, "b", 0);
    let mut c = b.client();
    c.subscribe("sa", &sa, "client-individual", &[]);
    c.subscribe("sb", &sb, "client-individual", &[]);
    let got = take(&mut c, 2);
    c.frame("BEGIN", &[("transaction", "t")], b"");
    for m in &got {
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
    }
    for dest in [&qa, &qb] {
        c.frame(
            "SEND",
            &[
                ("destination", dest),
                ("transaction", "t"),
                ("persistent", "true"),
            ],
            b"aborted",
        );
    }
    c.frame("ABORT", &[("transaction", "t"), ("receipt", "a")], b"");
    c.expect_receipt("a");
    // The ACKs were dropped too: the deliveries still await one, and can
    // be acknowledged outside the transaction.
    let id = got[0].header_str("ack").unwrap().to_string();
    c.frame("ACK", &[("id", &id), ("receipt", "ack")], b"");
    c.expect_receipt("ack");
    let still = body(&got[1]);
    b.kill9();

    let b = start_on(dir.path());
    let mut v = b.client();
    assert!(everything_in(&mut v, "qa", &qa).is_empty());
    assert!(everything_in(&mut v, "qb", &qb).is_empty());
    let left = [
        bodies(&everything_in(&mut v, "sa", &sa)),
        bodies(&everything_in(&mut v, "sb", &sb)),
    ]
    .concat();
    assert_eq!(left, vec![still]);
}

#[test]
fn a_transaction_on_one_shard_commits_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let q1 = queue_on(1, "one");
    let q2 = queue_on(1, "two");
    let src = queue_on(1, "src");
    let mut b = start_on(dir.path());
    let mut p = b.client();
    fill(&mut p, &src, "s", 1);
    let mut c = b.client();
    c.subscribe("s", &src, "client", &[]);
    let got = take(&mut c, 2);
    c.frame("BEGIN", &[("transaction", "t")], b"");
    // Cumulative (ack mode client): the first delivery goes with it.
    let id = got[0].header_str("ack").unwrap().to_string();
    c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
    for dest in [&q1, &q2] {
        c.frame(
            "SEND",
            &[
                ("destination", dest),
                ("transaction", "t"),
                ("persistent", "true"),
            ],
            b"one-shard",
        );
    }
    c.frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    c.expect_receipt("c");
    assert_eq!(b.destination(&src).unwrap()["pending"], 1);
    b.kill9();

    let b = start_on(dir.path());
    let mut v = b.client();
    assert_eq!(bodies(&everything_in(&mut v, "1", &q1)), vec!["one-shard"]);
    assert_eq!(bodies(&everything_in(&mut v, "2", &q2)), vec!["one-shard"]);
    assert_eq!(bodies(&everything_in(&mut v, "s", &src)), vec!["s-last"]);
}

#[test]
fn a_commit_completes_after_its_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (qa, qb) = (queue_on(0, "out"), queue_on(1, "out"));
    let mut b = start_on(dir.path());
    let mut waiter = b.client();
    waiter.subscribe("a", &qa, "client-individual", &[]);
    waiter.subscribe("b", &qb, "client-individual", &[]);
    {
        let mut c = b.client();
        c.frame("BEGIN", &[("transaction", "t")], b"");
        for dest in [&qa, &qb] {
            c.frame(
                "SEND",
                &[
                    ("destination", dest),
                    ("transaction", "t"),
                    ("persistent", "true"),
                ],
                b"orphan",
            );
        }
        // COMMIT, then the client goes away at once.
        c.frame("COMMIT", &[("transaction", "t")], b"");
        c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    // Applied anyway: both messages arrive.
    assert_eq!(bodies(&take(&mut waiter, 2)), vec!["orphan", "orphan"]);
    b.kill9();
    let b = start_on(dir.path());
    let mut v = b.client();
    assert_eq!(bodies(&everything_in(&mut v, "qa", &qa)), vec!["orphan"]);
    assert_eq!(bodies(&everything_in(&mut v, "qb", &qb)), vec!["orphan"]);
}

#[test]
fn a_receipt_after_a_commit_waits_for_the_commit() {
    let b = Broker::start(&["--shards", "2"]);
    let (qa, qb) = (queue_on(0, "out"), queue_on(1, "out"));
    let mut c = b.client();
    c.frame("BEGIN", &[("transaction", "t")], b"");
    for dest in [&qa, &qb] {
        c.frame(
            "SEND",
            &[
                ("destination", dest),
                ("transaction", "t"),
                ("persistent", "true"),
            ],
            b"committed",
        );
    }
    // No receipt on the COMMIT; the next frame's receipt covers it.
    c.frame("COMMIT", &[("transaction", "t")], b"");
    c.frame("DISCONNECT", &[("receipt", "bye")], b"");
    c.expect_receipt("bye");
    assert_eq!(b.destination(&qa).unwrap()["pending"], 1);
    assert_eq!(b.destination(&qb).unwrap()["pending"], 1);
}

#[test]
fn pipelined_commits_of_one_connection_apply_in_order() {
    let b = Broker::start(&["--shards", "2"]);
    let (qa, qb) = (queue_on(0, "out"), queue_on(1, "out"));
    let mut c = b.client();
    // Alternately a transaction on both shards (two-phase) and one on qa's
    // shard alone (one flush), with now and then a plain SEND, none waiting
    // for the one before: each must still land after what came before it.
    let mut seq = 0;
    for t in 0..30 {
        let tx = format!("t{t}");
        c.frame("BEGIN", &[("transaction", &tx)], b"");
        let dests: &[&String] = if t % 2 == 0 { &[&qa, &qb] } else { &[&qa] };
        for dest in dests {
            c.frame(
                "SEND",
                &[
                    ("destination", dest),
                    ("transaction", &tx),
                    ("persistent", "true"),
                ],
                format!("{seq:03}").as_bytes(),
            );
        }
        seq += 1;
        c.frame("COMMIT", &[("transaction", &tx)], b"");
        if t % 3 == 0 {
            c.frame(
                "SEND",
                &[("destination", &qa), ("persistent", "true")],
                format!("{seq:03}").as_bytes(),
            );
            seq += 1;
        }
    }
    c.frame("DISCONNECT", &[("receipt", "bye")], b"");
    c.expect_receipt("bye");
    let mut v = b.client();
    let got: Vec<String> = everything_in(&mut v, "a", &qa).iter().map(body).collect();
    let want: Vec<String> = (0..seq).map(|n| format!("{n:03}")).collect();
    assert_eq!(got, want, "qa in the order the connection sent");
}

// ---- crashes at chosen steps of the two-phase commit ----

const SEGMENT: u64 = 1048576;

fn start_faulty(dir: &std::path::Path, step: &str) -> Broker {
    let args: Vec<String> = vec![
        "--data".into(),
        dir.join("data").display().to_string(),
        "--shards".into(),
        "2".into(),
    ];
    Broker::spawn_env(
        Some(CONFIG),
        &args,
        Some(dir),
        &[("BROKK_FAULT_TX_CRASH", step)],
    )
}

/// Commits one transaction that SENDs `n` 64 KiB messages to each of
/// `outs` and ACKs the first delivery of each of `srcs` (each holding one
/// message), on a broker that kills itself during the COMMIT: no RECEIPT
/// comes, the connection just ends. Returns the ACKed bodies.
fn commit_into_a_crash(
    b: &mut Broker,
    outs: &[String; 2],
    srcs: &[String; 2],
    n: usize,
) -> Vec<String> {
    let mut c = b.client();
    c.subscribe("s0", &srcs[0], "client-individual", &[]);
    c.subscribe("s1", &srcs[1], "client-individual", &[]);
    let got = take(&mut c, 2);
    c.frame("BEGIN", &[("transaction", "t")], b"");
    let big = "x".repeat(64 * 1024);
    for out in outs {
        for i in 0..n {
            c.frame(
                "SEND",
                &[
                    ("destination", out),
                    ("transaction", "t"),
                    ("persistent", "true"),
                ],
                format!("{i}:{big}").as_bytes(),
            );
        }
    }
    for m in &got {
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
    }
    c.frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    c.expect_closed_by_peer();
    let status = b.wait_exit(10);
    assert!(!status.success(), "the fault switch killed it: {status:?}");
    got.iter().map(body).collect()
}

/// Sends and consumes more than a segment's worth on each shard, so that
/// every journal's active segment is a new one.
fn churn(b: &Broker, outs: &[String; 2]) {
    let mut p = b.client();
    let big = "y".repeat(64 * 1024);
    for out in outs {
        for _ in 0..20 {
            p.frame(
                "SEND",
                &[("destination", out), ("persistent", "true")],
                big.as_bytes(),
            );
        }
    }
    p.disconnect();
    let mut c = b.client();
    for (i, out) in outs.iter().enumerate() {
        for m in everything_in(&mut c, &format!("churn{i}"), out) {
            c.ack(&m);
        }
    }
    c.disconnect();
}

#[test]
fn a_crash_before_the_decision_drops_every_part_and_frees_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let outs = [queue_on(0, "out"), queue_on(1, "out")];
    let srcs = [queue_on(0, "src"), queue_on(1, "src")];
    let mut b = start_faulty(dir.path(), "prepared");
    let mut p = b.client();
    fill(&mut p, &srcs[0], "a", 0);
    fill(&mut p, &srcs[1], "b", 0);
    // More than a segment per shard of prepared SENDs.
    commit_into_a_crash(&mut b, &outs, &srcs, 20);

    let b = start_on(dir.path());
    let mut v = b.client();
    assert!(everything_in(&mut v, "o0", &outs[0]).is_empty());
    assert!(everything_in(&mut v, "o1", &outs[1]).is_empty());
    // The ACKs were never in effect: the sources still hold their message.
    let mut left = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        for m in everything_in(&mut v, &format!("s{i}"), src) {
            left.push(body(&m));
            v.ack(&m);
        }
    }
    left.sort();
    assert_eq!(left, vec!["a-last", "b-last"]);
    v.disconnect();
    // Nothing is live any more, dropped SENDs included: each journal is
    // back to its active segment.
    b.wait_until("every journal back to one segment", |s| {
        s["store_used_bytes"].as_u64() == Some(2 * SEGMENT)
    });
}

#[test]
fn a_crash_after_the_decision_applies_every_part_from_the_coordinators_journal() {
    let dir = tempfile::tempdir().unwrap();
    let outs = [queue_on(0, "out"), queue_on(1, "out")];
    let srcs = [queue_on(0, "src"), queue_on(1, "src")];
    let mut b = start_faulty(dir.path(), "decided");
    let mut p = b.client();
    fill(&mut p, &srcs[0], "a", 1);
    fill(&mut p, &srcs[1], "b", 1);
    // The participant that is not the coordinator dies before it applies
    // its part: only the coordinator's TxCommit says it is committed.
    let acked = commit_into_a_crash(&mut b, &outs, &srcs, 20);

    let b = start_on(dir.path());
    let mut v = b.client();
    for (i, out) in outs.iter().enumerate() {
        let got = everything_in(&mut v, &format!("o{i}"), out);
        assert_eq!(got.len(), 20, "every SEND to {out}");
        for m in &got {
            v.ack(m);
        }
    }
    let mut left = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        for m in everything_in(&mut v, &format!("s{i}"), src) {
            left.push(body(&m));
            v.ack(&m);
        }
    }
    for a in &acked {
        assert!(
            !left.contains(a),
            "the transaction's ACK of {a} is in effect"
        );
    }
    assert_eq!(
        left.len(),
        2,
        "the unacknowledged source messages: {left:?}"
    );
    v.disconnect();
    // The decision was released once every shard's TxDone was durable, and
    // the prepared ACKs let go of what they retired: once the journals
    // have moved past the segments they are in, those are free again.
    churn(&b, &outs);
    b.wait_until("every journal back to one segment", |s| {
        s["store_used_bytes"].as_u64() == Some(2 * SEGMENT)
    });
    // And it stays decided across another restart.
    let mut b = b;
    b.kill9();
    let b = start_on(dir.path());
    let mut v = b.client();
    assert!(everything_in(&mut v, "o0", &outs[0]).is_empty());
    assert!(everything_in(&mut v, "o1", &outs[1]).is_empty());
}

#[test]
fn segments_of_committed_transactions_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let outs = [queue_on(0, "out"), queue_on(1, "out")];
    let mut b = start_on(dir.path());
    let mut p = b.client();
    let big = "x".repeat(32 * 1024);
    // About 2.5 segments per shard of transactional SENDs.
    for t in 0..40 {
        let tx = format!("p{t}");
        p.frame("BEGIN", &[("transaction", &tx)], b"");
        for out in &outs {
            p.frame(
                "SEND",
                &[
                    ("destination", out),
                    ("transaction", &tx),
                    ("persistent", "true"),
                ],
                big.as_bytes(),
            );
            p.frame(
                "SEND",
                &[
                    ("destination", out),
                    ("transaction", &tx),
                    ("persistent", "true"),
                ],
                big.as_bytes(),
            );
        }
        p.frame("COMMIT", &[("transaction", &tx), ("receipt", &tx)], b"");
        p.expect_receipt(&tx);
    }
    assert!(b.status()["store_used_bytes"].as_u64().unwrap() >= 4 * SEGMENT);
    // Consumed in transactions too, each ACKing on both shards.
    let mut c = b.client();
    c.subscribe("a", &outs[0], "client-individual", &[]);
    c.subscribe("b", &outs[1], "client-individual", &[]);
    let mut got = take(&mut c, 160);
    let mut t = 0;
    while !got.is_empty() {
        let tx = format!("c{t}");
        t += 1;
        c.frame("BEGIN", &[("transaction", &tx)], b"");
        for m in got.drain(..got.len().min(10)) {
            let id = m.header_str("ack").unwrap().to_string();
            c.frame("ACK", &[("id", &id), ("transaction", &tx)], b"");
        }
        c.frame("COMMIT", &[("transaction", &tx), ("receipt", &tx)], b"");
        c.expect_receipt(&tx);
    }
    b.wait_until("every journal back to one segment", |s| {
        s["store_used_bytes"].as_u64() == Some(2 * SEGMENT)
    });
    // A restart finds nothing live, decisions included.
    b.kill9();
    let b = start_on(dir.path());
    b.wait_until("every journal at one segment after a restart", |s| {
        s["store_used_bytes"].as_u64() == Some(2 * SEGMENT)
    });
    let mut v = b.client();
    assert!(everything_in(&mut v, "o0", &outs[0]).is_empty());
    assert!(everything_in(&mut v, "o1", &outs[1]).is_empty());
}

// ---- repeated kills during multi-destination commits ----

/// A minimal client for the loop that the broker is killed under: it tells
/// a closed connection (the broker died) from silence (a bug).
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

enum Got {
    Frame(Frame),
    Closed,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Option<Raw> {
        let stream = TcpStream::connect(addr).ok()?;
        let mut r = Raw {
            stream,
            buf: BytesMut::new(),
        };
        r.write(&frame_bytes("CONNECT", &[("accept-version", "1.2")], b""))
            .then_some(())?;
        match r.next(Instant::now() + Duration::from_secs(20)) {
            Got::Frame(f) if f.command.as_str() == "CONNECTED" => Some(r),
            Got::Frame(f) => panic!("expected CONNECTED, got {f:?}"),
            Got::Closed => None,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next frame, or Closed; silence until `deadline` fails the test.
    fn next(&mut self, deadline: Instant) -> Got {
        loop {
            match parse(&mut self.buf, Version::V1_2, &Limits::default()) {
                Ok(Some(Parsed::Frame(f))) => return Got::Frame(f),
                Ok(Some(Parsed::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed frame: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the broker went silent without closing");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return Got::Closed,
            }
        }
    }
}

/// One transaction the loop sent a COMMIT for (or was about to).
#[derive(Debug, Clone)]
struct TxLog {
    marker: String,
    /// Bodies of the source messages it acknowledged.
    acked: Vec<String>,
    receipted: bool,
}

/// SENDs per queue per transaction.
const K: usize = 3;

/// Commits transactions until the broker dies: each SENDs K messages to
/// each of `outs` (a marker header and body per transaction) and ACKs one
/// delivered message from each of `srcs`, if it has one.
fn commit_loop(addr: SocketAddr, round: usize, outs: [String; 2], srcs: [String; 2]) -> Vec<TxLog> {
    let mut log = Vec::new();
    let Some(mut c) = Raw::connect(addr) else {
        return log;
    };
    // Delivered and not yet acknowledged, per source: (ack id, body).
    let mut pool: [VecDeque<(String, String)>; 2] = Default::default();
    let take = |f: Frame, pool: &mut [VecDeque<(String, String)>; 2]| -> Option<String> {
        match f.command.as_str() {
            "MESSAGE" => {
                let i = usize::from(f.header_str("subscription") == Some("s1"));
                pool[i].push_back((f.header_str("ack").unwrap().to_string(), body(&f)));
                None
            }
            "RECEIPT" => Some(f.header_str("receipt-id").unwrap().to_string()),
            _ => panic!("unexpected frame in the commit loop: {f:?}"),
        }
    };
    let mut setup = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        setup.extend(frame_bytes(
            "SUBSCRIBE",
            &[
                ("id", &format!("s{i}")),
                ("destination", src),
                ("ack", "client-individual"),
                ("activemq.prefetchSize", "16"),
            ],
            b"",
        ));
    }
    if !c.write(&setup) {
        return log;
    }
    let padding = "x".repeat(1500);
    for n in 0.. {
        let marker = format!("r{round}-t{n}");
        let tx = format!("tx-{n}");
        let mut bytes = frame_bytes("BEGIN", &[("transaction", &tx)], b"");
        for (i, out) in outs.iter().enumerate() {
            for j in 0..K {
                bytes.extend(frame_bytes(
                    "SEND",
                    &[
                        ("destination", out),
                        ("transaction", &tx),
                        ("persistent", "true"),
                        ("marker", &marker),
                    ],
                    format!("{marker}/{i}/{j}/{padding}").as_bytes(),
                ));
            }
        }
        let mut acked = Vec::new();
        for p in pool.iter_mut() {
            if let Some((id, b)) = p.pop_front() {
                bytes.extend(frame_bytes(
                    "ACK",
                    &[("id", &id), ("transaction", &tx)],
                    b"",
                ));
                acked.push(b);
            }
        }
        let receipt = format!("c-{n}");
        bytes.extend(frame_bytes(
            "COMMIT",
            &[("transaction", &tx), ("receipt", &receipt)],
            b"",
        ));
        // Logged before the COMMIT leaves: from here on it may be in effect.
        log.push(TxLog {
            marker,
            acked,
            receipted: false,
        });
        if !c.write(&bytes) {
            return log;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.next(deadline) {
                Got::Closed => return log,
                Got::Frame(f) => {
                    if take(f, &mut pool).as_deref() == Some(receipt.as_str()) {
                        if let Some(last) = log.last_mut() {
                            last.receipted = true;
                        }
                        break;
                    }
                }
            }
        }
    }
    log
}

/// A small deterministic generator for kill moments (seed printed).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn repeated_kills_during_cross_shard_commits_leave_each_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outs = [queue_on(0, "out"), queue_on(1, "out")];
    let srcs = [queue_on(0, "src"), queue_on(1, "src")];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments seed: {seed}");
    let mut rng = XorShift(seed);
    let mut b = start_on(dir.path());
    // Source messages the transactions acknowledge.
    let mut expected_src: HashSet<String> = HashSet::new();
    {
        let mut p = b.client();
        for (i, src) in srcs.iter().enumerate() {
            let prefix = format!("src{i}");
            fill(&mut p, src, &prefix, 399);
            expected_src.extend((0..399).map(|n| format!("{prefix}-{n}")));
            expected_src.insert(format!("{prefix}-last"));
        }
        p.disconnect();
    }
    let rounds = 24;
    let (mut committed, mut dropped, mut receipted) = (0, 0, 0);
    for round in 0..rounds {
        let addr = b.stomp;
        let loop_outs = outs.clone();
        let loop_srcs = srcs.clone();
        let client = std::thread::spawn(move || commit_loop(addr, round, loop_outs, loop_srcs));
        // The kill moment: anywhere from before the first COMMIT to well
        // into the loop. (This sleep only places the kill; nothing is
        // asserted on timing.)
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        // Every fourth round a clean stop: it completes commits in progress.
        if round % 4 == 3 {
            let status = b.terminate();
            assert!(status.success(), "clean stop failed: {status:?}");
        } else {
            b.kill9();
        }
        let log = client.join().expect("the commit loop");
        b = start_on(dir.path());

        let mut v = b.client();
        let mut out_frames = Vec::new();
        let mut per_marker: HashMap<String, [usize; 2]> = HashMap::new();
        let mut seen = HashSet::new();
        for (i, out) in outs.iter().enumerate() {
            let got = everything_in(&mut v, &format!("o{i}"), out);
            for m in &got {
                let marker = m.header_str("marker").expect("marker").to_string();
                assert!(
                    seen.insert(body(m)),
                    "duplicate message {}",
                    m.header_str("marker").unwrap()
                );
                per_marker.entry(marker).or_default()[i] += 1;
            }
            out_frames.extend(got);
        }
        let mut src_present: HashSet<String> = HashSet::new();
        for (i, src) in srcs.iter().enumerate() {
            for m in everything_in(&mut v, &format!("s{i}"), src) {
                assert!(
                    src_present.insert(body(&m)),
                    "duplicate source message {}",
                    body(&m)
                );
            }
        }
        let known: HashSet<&str> = log.iter().map(|t| t.marker.as_str()).collect();
        for marker in per_marker.keys() {
            assert!(
                known.contains(marker.as_str()),
                "round {round}: messages of {marker}, which is no transaction of this round"
            );
        }
        for t in &log {
            let counts = per_marker.get(&t.marker).copied().unwrap_or([0, 0]);
            let applied = counts != [0, 0];
            assert!(
                counts == [0, 0] || counts == [K, K],
                "round {round}: {} is partly applied: {counts:?} of {K} per queue",
                t.marker
            );
            assert!(
                applied || !t.receipted,
                "round {round}: {} was receipted but is gone",
                t.marker
            );
            for a in &t.acked {
                assert_eq!(
                    src_present.contains(a),
                    !applied,
                    "round {round}: {}'s ACK of {a} is {} but its SENDs are {}",
                    t.marker,
                    if src_present.contains(a) {
                        "not in effect"
                    } else {
                        "in effect"
                    },
                    if applied { "in effect" } else { "not" }
                );
                if applied {
                    expected_src.remove(a);
                }
            }
            committed += usize::from(applied);
            dropped += usize::from(!applied);
            receipted += usize::from(t.receipted);
        }
        // No source message lost or resurrected: exactly those no applied
        // transaction acknowledged are left.
        assert_eq!(
            src_present, expected_src,
            "round {round}: source queues differ from what the transactions left"
        );
        // Drain the outputs for the next round (durably: DISCONNECT's
        // receipt follows every shard's flush); the sources go back.
        for m in &out_frames {
            v.ack(m);
        }
        v.disconnect();
    }
    eprintln!(
        "{rounds} rounds: {committed} transactions in effect ({receipted} receipted), {dropped} dropped"
    );
    assert!(
        receipted >= rounds / 2,
        "too few transactions committed to show anything"
    );
}
