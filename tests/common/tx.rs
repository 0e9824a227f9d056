//! Cross-shard STOMP transactions under crashes, for every store mode
//! (tests/transactions.rs on files, tests/db_transactions.rs on the
//! databases): queue names per shard, a COMMIT into the
//! `BROKK_FAULT_TX_CRASH` fault switch, and a loop of commits that the
//! broker is killed under, with the all-or-nothing checks after each
//! restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use brokk::broker::Destination;
use brokk::protocol::stomp::{parse, Frame, Limits, Parsed, Version};
use bytes::BytesMut;

use super::{body, frame_bytes, Broker, Client, Rng};

/// `/queue/<prefix>N`, the first such name that shard `shard` of 2 owns.
pub fn queue_on(shard: usize, prefix: &str) -> String {
    owned_by(shard, prefix, false)
}

/// `/queue/<prefix>N` or `/topic/<prefix>N`, the first such name that
/// shard `shard` of 2 owns.
fn owned_by(shard: usize, prefix: &str, topic: bool) -> String {
    let (kind, make): (&str, fn(&str) -> Destination) = if topic {
        ("topic", |n| Destination::Topic(n.into()))
    } else {
        ("queue", Destination::queue)
    };
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| make(n).owner(2) == shard)
        .map(|n| format!("/{kind}/{n}"))
        .expect("some name hashes to each shard")
}

/// One output queue and one source queue on each shard of 2.
pub fn outs_and_srcs() -> ([String; 2], [String; 2]) {
    (
        [queue_on(0, "out"), queue_on(1, "out")],
        [queue_on(0, "src"), queue_on(1, "src")],
    )
}

/// Everything waiting in `dest`, delivered to a new subscription of `c`
/// (client-individual, unacknowledged) before the SUBSCRIBE's receipt.
pub fn everything_in(c: &mut Client, id: &str, dest: &str) -> Vec<Frame> {
    subscribe_for_all(c, id, dest, &[])
}

/// [`everything_in`] with `extra` SUBSCRIBE headers.
fn subscribe_for_all(c: &mut Client, id: &str, dest: &str, extra: &[(&str, &str)]) -> Vec<Frame> {
    let receipt = format!("all-{id}");
    let mut h = vec![
        ("id", id),
        ("destination", dest),
        ("ack", "client-individual"),
        ("activemq.prefetchSize", "1000000"),
    ];
    h.extend_from_slice(extra);
    c.messages_before_receipt("SUBSCRIBE", &h, &receipt)
}

pub fn bodies(frames: &[Frame]) -> Vec<String> {
    let mut v: Vec<String> = frames.iter().map(body).collect();
    v.sort();
    v
}

/// Receives exactly `n` MESSAGE frames (within 10 s each).
pub fn take(c: &mut Client, n: usize) -> Vec<Frame> {
    (0..n).map(|_| c.expect_message()).collect()
}

/// `n` persistent SENDs `<prefix>-0..n` to `dest`, then `<prefix>-last`
/// with a receipt.
pub fn fill(p: &mut Client, dest: &str, prefix: &str, n: usize) {
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

/// Commits one transaction that SENDs `n` 64 KiB messages to each of
/// `outs` and ACKs the first delivery of each of `srcs` (so that both
/// shards have a part of either kind), on a broker that kills itself
/// during the COMMIT: no RECEIPT comes, the connection just ends. Returns
/// the ACKed bodies.
pub fn commit_into_a_crash(
    b: &mut Broker,
    outs: &[String; 2],
    srcs: &[String; 2],
    n: usize,
) -> Vec<String> {
    let mut c = b.client();
    c.subscribe("s0", &srcs[0], "client-individual", &[]);
    c.subscribe("s1", &srcs[1], "client-individual", &[]);
    let mut first: [Option<Frame>; 2] = [None, None];
    while first.iter().any(Option::is_none) {
        let m = c.expect_message();
        let i = usize::from(m.header_str("subscription") == Some("s1"));
        first[i].get_or_insert(m);
    }
    let got: Vec<Frame> = first.into_iter().flatten().collect();
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

/// After a crash before the decision: no part of the transaction is in
/// effect (`outs` empty, each of `srcs` still holds its `a-last` /
/// `b-last`). The source messages are consumed, durably.
pub fn assert_dropped(b: &Broker, outs: &[String; 2], srcs: &[String; 2]) {
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
}

/// After a crash once the decision was durable: every part is in effect
/// (`n` SENDs on each of `outs`, none of the `acked` source messages left,
/// the other two still there). Everything is consumed, durably.
pub fn assert_applied(
    b: &Broker,
    outs: &[String; 2],
    srcs: &[String; 2],
    acked: &[String],
    n: usize,
) {
    let mut v = b.client();
    for (i, out) in outs.iter().enumerate() {
        let got = everything_in(&mut v, &format!("o{i}"), out);
        assert_eq!(got.len(), n, "every SEND to {out}");
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
    for a in acked {
        assert!(
            !left.contains(a),
            "the transaction's ACK of {a} is not in effect"
        );
    }
    assert_eq!(
        left.len(),
        2,
        "the unacknowledged source messages: {left:?}"
    );
    v.disconnect();
}

// ---- durable subscriptions with selectors, a commit applied by recovery ----

/// `/topic/<prefix>N`, the first such name that shard `shard` of 2 owns.
pub fn topic_on(shard: usize, prefix: &str) -> String {
    owned_by(shard, prefix, true)
}

/// The client id of the durable subscriptions below.
const SELECTIVE: &str = "selective";

/// A connection of the durable subscriptions' client.
fn selective_client(stomp: SocketAddr) -> Client {
    Client::connect(
        stomp,
        &[("accept-version", "1.2"), ("client-id", SELECTIVE)],
    )
}

/// Everything waiting for durable subscription `name` on `topic`
/// (`red`: `color = 'red'`; `all`: no selector), before the SUBSCRIBE's
/// receipt, unacknowledged.
fn everything_for(c: &mut Client, topic: &str, name: &str) -> Vec<Frame> {
    let mut extra = vec![("activemq.subscriptionName", name)];
    if name == "red" {
        extra.push(("selector", "color = 'red'"));
    }
    subscribe_for_all(c, &format!("{name}@{topic}"), topic, &extra)
}

/// Makes the durable subscriptions `all` and `red` on each of `topics` and
/// leaves them offline; then, on a broker that kills itself once the
/// decision is stored (`BROKK_FAULT_TX_CRASH=decided`), commits a
/// transaction that SENDs a blue and a red message to each topic: the
/// participant that is not the coordinator dies before it applies its
/// part, which recovery then applies.
pub fn commit_to_selective_subscriptions_into_a_crash(b: &mut Broker, topics: &[String; 2]) {
    commit_to_selective_subscriptions(b.stomp, topics);
    let status = b.wait_exit(10);
    assert!(!status.success(), "the fault switch killed it: {status:?}");
}

/// The same on the broker serving at `stomp`, up to the end of the COMMIT's
/// connection (the caller sees the process go).
pub fn commit_to_selective_subscriptions(stomp: SocketAddr, topics: &[String; 2]) {
    let mut s = selective_client(stomp);
    for t in topics {
        for name in ["all", "red"] {
            assert!(everything_for(&mut s, t, name).is_empty());
        }
    }
    s.disconnect();
    let mut c = Client::connect(stomp, &[("accept-version", "1.2")]);
    c.frame("BEGIN", &[("transaction", "t")], b"");
    for t in topics {
        for color in ["blue", "red"] {
            c.frame(
                "SEND",
                &[
                    ("destination", t),
                    ("transaction", "t"),
                    ("persistent", "true"),
                    ("color", color),
                ],
                format!("{color}@{t}").as_bytes(),
            );
        }
    }
    c.frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    c.expect_closed_by_peer();
}

/// After that crash: `red` gets only the red messages, `all` both, on
/// each topic. With `ack`, all of them are acknowledged; without, none
/// (they must still be there after another restart).
pub fn assert_selectors_kept(stomp: SocketAddr, topics: &[String; 2], ack: bool) {
    let mut s = selective_client(stomp);
    for t in topics {
        let red = everything_for(&mut s, t, "red");
        assert_eq!(
            bodies(&red),
            vec![format!("red@{t}")],
            "a selector passing over the blue message keeps doing so"
        );
        let all = everything_for(&mut s, t, "all");
        assert_eq!(bodies(&all), vec![format!("blue@{t}"), format!("red@{t}")]);
        if ack {
            for m in red.iter().chain(&all) {
                s.ack(m);
            }
        }
    }
    s.disconnect();
}

/// Nothing waits for either durable subscription on `topics` any more.
pub fn assert_selective_consumed(stomp: SocketAddr, topics: &[String; 2]) {
    let mut s = selective_client(stomp);
    for t in topics {
        for name in ["all", "red"] {
            let left = everything_for(&mut s, t, name);
            assert!(left.is_empty(), "{name} on {t}: {left:?}");
        }
    }
    s.disconnect();
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

/// Source messages per source queue for [`kills_during_commits`].
pub const SOURCE_MESSAGES: usize = 400;

/// `rounds` times: a loop of cross-shard commits on `b`, killed at a
/// random moment (SIGKILL; every fourth round a clean SIGTERM stop), then
/// `restart()` for a new broker on the same store, which must show every
/// transaction all or nothing, every receipted one in effect, and each
/// transaction's source ACKs in effect exactly when its SENDs are. The
/// outputs are drained after each round; returns the last broker, whose
/// source queues still hold what no transaction acknowledged.
pub fn kills_during_commits(
    rounds: usize,
    mut b: Broker,
    mut restart: impl FnMut() -> Broker,
) -> Broker {
    let (outs, srcs) = outs_and_srcs();
    let mut rng = Rng::seeded();
    // Source messages the transactions acknowledge.
    let mut expected_src: HashSet<String> = HashSet::new();
    {
        let mut p = b.client();
        for (i, src) in srcs.iter().enumerate() {
            let prefix = format!("src{i}");
            fill(&mut p, src, &prefix, SOURCE_MESSAGES - 1);
            expected_src.extend((0..SOURCE_MESSAGES - 1).map(|n| format!("{prefix}-{n}")));
            expected_src.insert(format!("{prefix}-last"));
        }
        p.disconnect();
    }
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
        b = restart();

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
        let mut back: Vec<&String> = src_present.difference(&expected_src).collect();
        let mut lost: Vec<&String> = expected_src.difference(&src_present).collect();
        back.sort();
        lost.sort();
        assert!(
            back.is_empty() && lost.is_empty(),
            "round {round}: source queues differ from what the transactions left: \
             {} there that an applied transaction acknowledged {back:?}, \
             {} missing that none did {lost:?}",
            back.len(),
            lost.len()
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
    b
}
