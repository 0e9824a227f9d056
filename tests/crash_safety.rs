//! Crash safety of the broker and its `file` store: dead-lettering,
//! panicking shards, message ids across restarts, clean shutdown. Real
//! processes, real files, real SIGKILL / SIGTERM.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use brokk::broker::Destination;
use brokk::protocol::stomp::Frame;
use common::{body, Broker, Client};

const DLQ: &str = "/queue/ActiveMQ.DLQ";

fn start_on(dir: &std::path::Path, config: Option<&str>, extra: &[&str]) -> Broker {
    let mut args: Vec<String> = vec!["--data".into(), dir.join("data").display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Broker::spawn(config, &args, Some(dir))
}

/// Messages not yet acknowledged in `dest` (0 if the broker does not know it).
fn pending(b: &Broker, dest: &str) -> u64 {
    b.destination(dest)
        .and_then(|d| d["pending"].as_u64())
        .unwrap_or(0)
}

/// A queue name (without `/queue/`) whose owner, with `shards` shards, is
/// (`same = true`) or is not the dead-letter queue's owner.
fn queue_owned(prefix: &str, shards: usize, same: bool) -> String {
    let dlq_owner = Destination::queue("ActiveMQ.DLQ").owner(shards);
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| (Destination::queue(n).owner(shards) == dlq_owner) == same)
        .expect("some name hashes to the wanted shard")
}

/// Receives exactly `n` MESSAGE frames, each acknowledged (client-individual),
/// failing if they do not all come within 10 s.
fn take_acked(c: &mut Client, n: usize) -> Vec<Frame> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "got {} of {n} messages", got.len());
        let Some(m) = c.recv_timeout(left) else {
            panic!("connection ended after {} of {n} messages", got.len());
        };
        assert_eq!(m.command.as_str(), "MESSAGE", "{m:?}");
        c.ack(&m);
        got.push(m);
    }
    got
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The reproduction from the review: NACK a persistent message until it is
/// dead-lettered. The shard used to panic (a journal borrow held across the
/// retirement) and the message came back in both queues after a restart.
fn nack_until_dead_lettered(shards: usize, dlq_on_same_shard: bool) {
    let name = queue_owned("poison", shards, dlq_on_same_shard);
    let queue = format!("/queue/{name}");
    let dir = tempfile::tempdir().unwrap();
    let n = shards.to_string();
    let mut b = start_on(dir.path(), None, &["--shards", &n]);
    let mut p = b.client();
    p.send_sync(&queue, "poison", &[("persistent", "true")]);
    let mut c = b.client();
    c.subscribe("s", &queue, "client-individual", &[]);
    // Delivered once, then redelivered max_redeliveries (6) times.
    for i in 0..7 {
        let m = c.expect_message();
        assert_eq!(body(&m), "poison");
        let id = m.header_str("ack").unwrap().to_string();
        let receipt = format!("n{i}");
        c.frame("NACK", &[("id", &id), ("receipt", &receipt)], b"");
        c.expect_receipt(&receipt);
    }
    b.wait_until("the message in the DLQ", |_| pending(&b, DLQ) == 1);
    assert_eq!(pending(&b, &queue), 0);
    // Still serving: a receipt from the shard that dead-lettered.
    p.send_sync(&queue, "after", &[]);
    c.disconnect();
    p.disconnect();
    // A clean stop completes the move (the original's retirement follows
    // the copy's flush); the restart shows it exactly once, in the DLQ.
    assert!(b.terminate().success());
    let b = start_on(dir.path(), None, &["--shards", &n]);
    assert_eq!(pending(&b, &queue), 0, "the original is retired");
    let mut d = b.client();
    d.subscribe("d", DLQ, "client-individual", &[]);
    let m = take_acked(&mut d, 1).remove(0);
    assert_eq!(body(&m), "poison");
    assert_eq!(m.header_str("original-destination"), Some(queue.as_str()));
    // The ACK went without a receipt: its owner may apply it a moment
    // after the status is read. No second copy may be left.
    b.wait_until("the DLQ copy acknowledged", |_| pending(&b, DLQ) == 0);
}

#[test]
fn nack_past_max_redeliveries_dead_letters_on_one_shard_without_crashing() {
    nack_until_dead_lettered(1, true);
}

#[test]
fn nack_past_max_redeliveries_dead_letters_across_shards() {
    nack_until_dead_lettered(2, false);
}

fn expire_into_dlq(shards: usize, dlq_on_same_shard: bool) {
    let name = queue_owned("short", shards, dlq_on_same_shard);
    let queue = format!("/queue/{name}");
    let dir = tempfile::tempdir().unwrap();
    let n = shards.to_string();
    let mut b = start_on(dir.path(), None, &["--shards", &n]);
    let mut p = b.client();
    let expires = (now_ms() + 300).to_string();
    for i in 0..3 {
        p.send_sync(
            &queue,
            &format!("e{i}"),
            &[("persistent", "true"), ("expires", &expires)],
        );
    }
    // Nobody consumes: the sweep moves them.
    b.wait_until("expired messages in the DLQ", |_| pending(&b, DLQ) == 3);
    assert_eq!(pending(&b, &queue), 0);
    p.send_sync(&queue, "still serving", &[]);
    p.disconnect();
    assert!(b.terminate().success());
    let b = start_on(dir.path(), None, &["--shards", &n]);
    assert_eq!(pending(&b, &queue), 0, "expired originals stay retired");
    assert_eq!(pending(&b, DLQ), 3);
    let mut d = b.client();
    d.subscribe("d", DLQ, "client-individual", &[]);
    let bodies: HashSet<String> = take_acked(&mut d, 3).iter().map(body).collect();
    assert_eq!(
        bodies,
        HashSet::from(["e0".into(), "e1".into(), "e2".into()])
    );
}

#[test]
fn expired_persistent_messages_go_to_the_dlq_on_one_shard() {
    expire_into_dlq(1, true);
}

#[test]
fn expired_persistent_messages_go_to_the_dlq_across_shards() {
    expire_into_dlq(2, false);
}

#[test]
fn a_topic_message_expiring_in_two_durable_subscriptions_makes_two_distinct_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path(), None, &["--shards", "1"]);
    let mut s = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("client-id", "durable-c")],
    );
    for name in ["one", "two"] {
        s.subscribe(
            name,
            "/topic/ticks",
            "client-individual",
            &[("activemq.subscriptionName", name)],
        );
    }
    s.disconnect();
    let mut p = b.client();
    let expires = (now_ms() + 300).to_string();
    p.send_sync(
        "/topic/ticks",
        "tick",
        &[("persistent", "true"), ("expires", &expires)],
    );
    b.wait_until("both copies in the DLQ", |_| pending(&b, DLQ) == 2);
    p.disconnect();
    assert!(b.terminate().success());
    let b = start_on(dir.path(), None, &["--shards", "1"]);
    assert_eq!(pending(&b, DLQ), 2, "both copies survive the restart");
    assert_eq!(pending(&b, "/topic/ticks"), 0, "the original is retired");
    let mut d = b.client();
    d.subscribe("d", DLQ, "client-individual", &[]);
    let got = take_acked(&mut d, 2);
    assert!(got.iter().all(|m| body(m) == "tick"));
    assert_ne!(
        got[0].header_str("message-id"),
        got[1].header_str("message-id"),
        "each copy is a message of its own"
    );
}

#[test]
fn dead_lettered_segments_are_reclaimed() {
    // Every message is dead-lettered into the journal it came from; once the
    // DLQ is consumed, the journal must shrink back to its one active
    // segment (the copies used to share the originals' ids, which pinned
    // every segment after them for good).
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nsegment_size_bytes = 1048576\nlimit_bytes = 67108864\n";
    let b = start_on(dir.path(), Some(config), &["--shards", "1"]);
    let mut p = b.client();
    let big = "x".repeat(64 * 1024);
    let expires = (now_ms() + 500).to_string();
    for _ in 0..40 {
        p.send_sync(
            "/queue/reclaim",
            &big,
            &[("persistent", "true"), ("expires", &expires)],
        );
    }
    assert!(b.status()["store_used_bytes"].as_u64().unwrap() >= 2 * 1048576);
    b.wait_until("all 40 in the DLQ", |_| pending(&b, DLQ) == 40);
    let mut d = b.client();
    d.subscribe("d", DLQ, "client-individual", &[]);
    take_acked(&mut d, 40);
    // A fence: the last ACK is applied.
    d.disconnect();
    b.wait_until("the journal back to one segment", |s| {
        s["store_used_bytes"].as_u64() == Some(1048576)
    });
}

#[test]
fn a_panicking_shard_ends_the_process_and_the_standby_takes_over() {
    // The destination whose owner (shard 1 of 2, not the first) panics.
    let boom = (0..1000)
        .map(|i| format!("boom{i}"))
        .find(|n| Destination::queue(n).owner(2) == 1)
        .unwrap();
    let boom = format!("/queue/{boom}");
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--data".into(),
        dir.path().join("data").display().to_string(),
        "--shards".into(),
        "2".into(),
    ];
    let mut master = Broker::spawn_env(
        None,
        &args,
        Some(dir.path()),
        &[("BROKK_FAULT_PANIC_DESTINATION", boom.as_str())],
    );
    assert!(master.role_line.starts_with("brokk listening"));
    let mut standby = Broker::spawn_any(None, &args, Some(dir.path()));
    assert!(standby.role_line.starts_with("brokk standby"));
    let mut p = master.client();
    p.send_sync("/queue/kept", "receipted", &[("persistent", "true")]);
    p.send(&boom, "trigger");
    let status = master.wait_exit(10);
    assert!(
        !status.success(),
        "a panic must fail the process: {status:?}"
    );
    standby.wait_for_master();
    let mut c = standby.client();
    c.subscribe("s", "/queue/kept", "client-individual", &[]);
    assert_eq!(body(&take_acked(&mut c, 1)[0]), "receipted");
}

#[test]
fn new_ids_start_above_the_store_when_the_clock_is_behind() {
    // Two runs with the same (frozen) clock: the second broker is "behind"
    // the ids the first one wrote. Its new messages must not reuse them, or
    // the first run's ACKs would retire them at the next recovery.
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--data".into(),
        dir.path().join("data").display().to_string(),
        "--shards".into(),
        "1".into(),
    ];
    let frozen = [("BROKK_FAULT_ID_CLOCK_US", "1000000")];
    let mut first = Broker::spawn_env(None, &args, Some(dir.path()), &frozen);
    let mut p = first.client();
    for i in 0..20 {
        p.send_sync("/queue/ids", &format!("old{i}"), &[("persistent", "true")]);
    }
    let mut c = first.client();
    c.subscribe("s", "/queue/ids", "client-individual", &[]);
    take_acked(&mut c, 20);
    c.disconnect();
    first.kill9();

    let mut second = Broker::spawn_env(None, &args, Some(dir.path()), &frozen);
    let mut p = second.client();
    for i in 0..20 {
        p.send_sync("/queue/ids", &format!("new{i}"), &[("persistent", "true")]);
    }
    second.kill9();

    let third = start_on(dir.path(), None, &["--shards", "1"]);
    assert_eq!(pending(&third, "/queue/ids"), 20, "no new message retired");
    let mut c = third.client();
    c.subscribe("s", "/queue/ids", "client-individual", &[]);
    let bodies: HashSet<String> = take_acked(&mut c, 20).iter().map(body).collect();
    assert!(bodies.iter().all(|b| b.starts_with("new")), "{bodies:?}");
}

#[test]
fn a_clean_shutdown_keeps_the_last_acks_and_redelivery_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path(), None, &["--shards", "2"]);
    let queues: Vec<String> = (0..4).map(|i| format!("/queue/last{i}")).collect();
    let mut p = b.client();
    for q in &queues {
        for i in 0..10 {
            p.send_sync(q, &format!("{q}-{i}"), &[("persistent", "true")]);
        }
    }
    p.disconnect();
    let mut c = b.client();
    for (i, q) in queues.iter().enumerate() {
        c.subscribe(&format!("s{i}"), q, "client-individual", &[]);
    }
    // Half acknowledged (no receipt: nothing forces a flush), half left in
    // flight: the SIGTERM's connection close gives those back, counting a
    // redelivery each.
    let end = Instant::now() + Duration::from_secs(10);
    let mut acked = HashSet::new();
    let mut held = HashSet::new();
    while acked.len() + held.len() < 40 {
        assert!(Instant::now() < end, "deliveries stopped");
        let m = c.expect_message();
        if (acked.len() + held.len()) % 2 == 0 {
            c.ack(&m);
            acked.insert(body(&m));
        } else {
            held.insert(body(&m));
        }
    }
    b.wait_until("the acks applied", |_| {
        queues.iter().map(|q| pending(&b, q)).sum::<u64>() == 20
    });
    assert!(b.terminate().success());

    let b = start_on(dir.path(), None, &["--shards", "2"]);
    let mut c = b.client();
    for (i, q) in queues.iter().enumerate() {
        c.subscribe(&format!("s{i}"), q, "client-individual", &[]);
    }
    let back = take_acked(&mut c, 20);
    for m in &back {
        assert!(
            held.contains(&body(m)),
            "acknowledged {} came back",
            body(m)
        );
        assert_eq!(
            m.header_str("redelivered"),
            Some("true"),
            "the redelivery count of {} was lost",
            body(m)
        );
    }
}
