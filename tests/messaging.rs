//! Messaging semantics ActiveMQ users rely on, against the real binary.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use brokk::protocol::stomp::Frame;
use common::{body, Broker, Client};

/// Sends a marker to `dest` and waits for its receipt: every message that
/// was waiting or in flight before it is delivered ahead of it, so "the
/// next message is the marker" proves that nothing else was.
fn send_marker(p: &mut Client, dest: &str) {
    p.send_sync(dest, "marker", &[]);
}

#[test]
fn queue_keeps_messages_until_a_consumer_takes_them() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    for i in 0..10 {
        p.send_sync("/queue/keep", &format!("m{i}"), &[]);
    }
    b.wait_until("10 pending", |_| {
        b.destination("/queue/keep").unwrap()["pending"] == 10
    });
    let mut c = b.client();
    c.subscribe("s", "/queue/keep", "auto", &[]);
    for i in 0..10 {
        let m = c.expect_message();
        assert_eq!(body(&m), format!("m{i}"));
        assert_eq!(m.header_str("destination"), Some("/queue/keep"));
        assert_eq!(m.header_str("subscription"), Some("s"));
    }
    send_marker(&mut p, "/queue/keep");
    assert_eq!(body(&c.expect_message()), "marker");
    b.wait_until("queue drained", |_| {
        let d = b.destination("/queue/keep").unwrap();
        d["pending"] == 0 && d["dequeued"] == 11 && d["enqueued"] == 11
    });
}

#[test]
fn competing_consumers_share_a_queue_without_duplicates() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c1 = b.client();
    let mut c2 = b.client();
    c1.subscribe(
        "a",
        "/queue/work",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    c2.subscribe(
        "b",
        "/queue/work",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    let mut p = b.client();
    for i in 0..20 {
        p.send_sync("/queue/work", &format!("{i}"), &[]);
    }
    let mut seen = HashSet::new();
    let (mut n1, mut n2) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 messages arrived",
            seen.len()
        );
        for (c, n) in [(&mut c1, &mut n1), (&mut c2, &mut n2)] {
            if let Some(m) = c.recv_timeout(Duration::from_millis(200)) {
                assert!(seen.insert(body(&m)), "duplicate {}", body(&m));
                *n += 1;
                c.ack(&m);
            }
        }
    }
    assert!(n1 > 0 && n2 > 0, "both consumers get work: {n1} / {n2}");
}

#[test]
fn prefetch_limits_unacknowledged_deliveries() {
    let b = Broker::start(&[]);
    let mut p = b.client();
    for i in 0..5 {
        p.send_sync("/queue/pf", &format!("{i}"), &[]);
    }
    let mut c = b.client();
    // The deliveries a SUBSCRIBE or an ACK makes possible come before its
    // RECEIPT: exactly the prefetch window, then one per ACK.
    let first = c.messages_before_receipt(
        "SUBSCRIBE",
        &[
            ("id", "s"),
            ("destination", "/queue/pf"),
            ("ack", "client-individual"),
            ("activemq.prefetchSize", "2"),
        ],
        "sub",
    );
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["0", "1"]);
    let next =
        c.messages_before_receipt("ACK", &[("id", first[0].header_str("ack").unwrap())], "ack");
    assert_eq!(next.iter().map(body).collect::<Vec<_>>(), ["2"]);
}

#[test]
fn client_ack_is_cumulative_and_client_individual_is_not() {
    let b = Broker::start(&[]);
    let mut p = b.client();
    for i in 0..3 {
        p.send_sync("/queue/cum", &format!("{i}"), &[]);
        p.send_sync("/queue/ind", &format!("{i}"), &[]);
    }
    let mut c = b.client();
    c.subscribe("c", "/queue/cum", "client", &[]);
    let ms: Vec<_> = (0..3).map(|_| c.expect_message()).collect();
    // Acking the second acknowledges the first as well.
    c.ack(&ms[1]);
    let mut i = b.client();
    i.subscribe("i", "/queue/ind", "client-individual", &[]);
    let is: Vec<_> = (0..3).map(|_| i.expect_message()).collect();
    i.ack(&is[1]);
    b.wait_until("acks applied", |_| {
        b.destination("/queue/cum").unwrap()["pending"] == 1
            && b.destination("/queue/ind").unwrap()["pending"] == 2
    });
    // Closing redelivers exactly what was not acknowledged.
    drop(c);
    drop(i);
    let mut r = b.client();
    r.subscribe("r1", "/queue/cum", "auto", &[]);
    let m = r.expect_message();
    assert_eq!(body(&m), "2");
    assert_eq!(m.header_str("redelivered"), Some("true"));
    r.subscribe("r2", "/queue/ind", "auto", &[]);
    let got: HashSet<String> = (0..2).map(|_| body(&r.expect_message())).collect();
    assert_eq!(got, HashSet::from(["0".to_string(), "2".to_string()]));
    send_marker(&mut p, "/queue/cum");
    send_marker(&mut p, "/queue/ind");
    for _ in 0..2 {
        assert_eq!(body(&r.expect_message()), "marker");
    }
}

#[test]
fn topics_fan_out_to_current_subscribers_only() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    p.send_sync("/topic/news", "before anyone listened", &[]);
    let mut s1 = b.client();
    let mut s2 = b.client();
    s1.subscribe("1", "/topic/news", "auto", &[]);
    s2.subscribe("2", "/topic/news", "auto", &[]);
    p.send_sync("/topic/news", "hello", &[]);
    assert_eq!(body(&s1.expect_message()), "hello");
    assert_eq!(body(&s2.expect_message()), "hello");
    send_marker(&mut p, "/topic/news");
    assert_eq!(body(&s1.expect_message()), "marker");
}

#[test]
fn durable_subscription_keeps_messages_while_the_subscriber_is_away() {
    let b = Broker::start(&[]);
    let durable = [("activemq.subscriptionName", "audit")];
    let mut s = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("client-id", "auditor")],
    );
    s.subscribe("d", "/topic/events", "client-individual", &durable);
    s.disconnect();
    let mut p = b.client();
    for i in 0..3 {
        p.send_sync("/topic/events", &format!("e{i}"), &[]);
    }
    let mut s = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("client-id", "auditor")],
    );
    s.subscribe("d", "/topic/events", "client-individual", &durable);
    for i in 0..3 {
        let m = s.expect_message();
        assert_eq!(body(&m), format!("e{i}"));
        s.ack(&m);
    }
    // Unsubscribing with the name removes the subscription for good.
    s.frame(
        "UNSUBSCRIBE",
        &[
            ("id", "d"),
            ("activemq.subscriptionName", "audit"),
            ("receipt", "u"),
        ],
        b"",
    );
    s.expect_receipt("u");
    p.send_sync("/topic/events", "after", &[]);
    s.subscribe("d2", "/topic/events", "auto", &durable);
    send_marker(&mut p, "/topic/events");
    assert_eq!(body(&s.expect_message()), "marker");
}

#[test]
fn durable_subscription_requires_a_client_id() {
    let b = Broker::start(&[]);
    let mut c = b.client();
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "d"),
            ("destination", "/topic/t"),
            ("activemq.subscriptionName", "x"),
        ],
        b"",
    );
    let e = c.expect_error();
    assert!(e.header_str("message").unwrap().contains("client-id"));
}

#[test]
fn nack_redelivers_then_dead_letters_after_max_redeliveries() {
    let b = Broker::start_with_config(Some("[broker]\nmax_redeliveries = 2\n"), &["--shards", "2"]);
    let mut p = b.client();
    p.send_sync("/queue/poison", "bad", &[("persistent", "true")]);
    let mut c = b.client();
    c.subscribe("s", "/queue/poison", "client-individual", &[]);
    let mut m = c.expect_message();
    for round in 0..3 {
        assert_eq!(m.header_str("redelivered").is_some(), round > 0);
        let id = m.header_str("ack").unwrap().to_string();
        // A redelivery the NACK causes comes before the NACK's receipt.
        let back = c.messages_before_receipt("NACK", &[("id", &id)], &format!("n{round}"));
        if round < 2 {
            assert_eq!(back.len(), 1, "round {round}: redelivered once");
            m = back.into_iter().next().unwrap();
        } else {
            assert!(back.is_empty(), "past max_redeliveries: {back:?}");
        }
    }
    // Dead-lettered, not back in the queue ahead of a newer message.
    send_marker(&mut p, "/queue/poison");
    assert_eq!(body(&c.expect_message()), "marker");
    let mut d = b.client();
    d.subscribe("dlq", "/queue/ActiveMQ.DLQ", "auto", &[]);
    let m = d.expect_message();
    assert_eq!(body(&m), "bad");
    assert_eq!(m.header_str("original-destination"), Some("/queue/poison"));
}

#[test]
fn transactions_apply_sends_and_acks_on_commit_only() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    p.frame("BEGIN", &[("transaction", "t1")], b"");
    p.frame(
        "SEND",
        &[("destination", "/queue/tx"), ("transaction", "t1")],
        b"one",
    );
    p.frame(
        "SEND",
        &[("destination", "/queue/tx2"), ("transaction", "t1")],
        b"two",
    );
    let mut c = b.client();
    c.subscribe("s", "/queue/tx", "client-individual", &[]);
    // The marker, sent after the transacted SEND, comes first: that SEND
    // is not in the queue yet.
    send_marker(&mut p, "/queue/tx");
    let marker = c.expect_message();
    assert_eq!(body(&marker), "marker");
    ack_delivery(&mut c, "1.2", &marker, "m1");
    p.frame("COMMIT", &[("transaction", "t1"), ("receipt", "c")], b"");
    p.expect_receipt("c");
    let m = c.expect_message();
    assert_eq!(body(&m), "one");
    // Aborted sends vanish.
    p.frame("BEGIN", &[("transaction", "t2")], b"");
    p.frame(
        "SEND",
        &[("destination", "/queue/tx"), ("transaction", "t2")],
        b"never",
    );
    p.frame("ABORT", &[("transaction", "t2"), ("receipt", "a")], b"");
    p.expect_receipt("a");
    send_marker(&mut p, "/queue/tx");
    let marker = c.expect_message();
    assert_eq!(body(&marker), "marker");
    ack_delivery(&mut c, "1.2", &marker, "m2");
    // A transacted ACK takes effect on COMMIT: its receipt says the broker
    // has read it, and the message is still pending.
    let id = m.header_str("ack").unwrap().to_string();
    c.frame("BEGIN", &[("transaction", "t3")], b"");
    c.frame(
        "ACK",
        &[("id", &id), ("transaction", "t3"), ("receipt", "a3")],
        b"",
    );
    c.expect_receipt("a3");
    assert_eq!(b.destination("/queue/tx").unwrap()["pending"], 1);
    c.frame("COMMIT", &[("transaction", "t3"), ("receipt", "c3")], b"");
    c.expect_receipt("c3");
    assert_eq!(b.destination("/queue/tx").unwrap()["pending"], 0);
    assert_eq!(b.destination("/queue/tx2").unwrap()["pending"], 1);
}

/// An ACK in a transaction counts at its COMMIT even when the client
/// unsubscribed in between (as ActiveMQ closes a JMS consumer of a
/// transacted session only when the transaction ends): the message does
/// not come back. After an ABORT it does.
#[test]
fn a_transacted_ack_holds_through_an_unsubscribe_before_its_commit() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    for end in ["COMMIT", "ABORT"] {
        let q = format!("/queue/tx-unsubscribed-{end}");
        p.send_sync(&q, "one", &[]);
        let mut c = b.client();
        c.subscribe("s", &q, "client-individual", &[]);
        let m = c.expect_message();
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("BEGIN", &[("transaction", "t")], b"");
        c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
        c.frame("UNSUBSCRIBE", &[("id", "s"), ("receipt", "u")], b"");
        c.expect_receipt("u");
        c.frame(end, &[("transaction", "t"), ("receipt", "e")], b"");
        c.expect_receipt("e");
        if end == "COMMIT" {
            // Consumed, and the subscription closed: nothing in flight.
            b.wait_until("the COMMIT's ACK applied", |_| {
                b.destination(&q)
                    .is_some_and(|d| d["pending"] == 0 && d["in_flight"] == 0)
            });
        }
        send_marker(&mut p, &q);
        let mut next = b.client();
        next.subscribe("s", &q, "auto", &[]);
        let first = next.expect_message();
        if end == "COMMIT" {
            assert_eq!(body(&first), "marker", "an acknowledged message came back");
        } else {
            assert_eq!(body(&first), "one", "{end}");
            assert_eq!(first.header_str("redelivered"), Some("true"));
            assert_eq!(body(&next.expect_message()), "marker");
        }
    }
}

/// A durable subscription unsubscribed for good while a transaction
/// acknowledges on it is removed even if the connection ends before the
/// transaction does; and subscribing to it again on that connection in
/// the meantime is not refused.
#[test]
fn a_durable_subscription_unsubscribed_inside_a_transaction_is_removed_or_reopened() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    let topic = "/topic/tx-durable";
    let who = [("accept-version", "1.2"), ("client-id", "tx-durable")];
    let durable = [("activemq.subscriptionName", "d")];
    let held_in_a_transaction = |c: &mut Client, p: &mut Client| {
        c.subscribe("s", topic, "client-individual", &durable);
        p.send_sync(topic, "one", &[]);
        let m = c.expect_message();
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("BEGIN", &[("transaction", "t")], b"");
        c.frame("ACK", &[("id", &id), ("transaction", "t")], b"");
    };
    // Removed (UNSUBSCRIBE naming it), then the connection ends first.
    let mut c = Client::connect(b.stomp, &who);
    held_in_a_transaction(&mut c, &mut p);
    c.frame(
        "UNSUBSCRIBE",
        &[
            ("id", "s"),
            ("activemq.subscriptionName", "d"),
            ("receipt", "u"),
        ],
        b"",
    );
    c.expect_receipt("u");
    c.disconnect();
    p.send_sync(topic, "for nobody", &[]);
    let mut c = Client::connect(b.stomp, &who);
    c.subscribe("s", topic, "client-individual", &durable);
    send_marker(&mut p, topic);
    let first = c.expect_message();
    assert_eq!(
        body(&first),
        "marker",
        "the removed subscription kept messages"
    );
    ack_delivery(&mut c, "1.2", &first, "a1");
    // Closed (UNSUBSCRIBE without the name), then subscribed again.
    c.frame("UNSUBSCRIBE", &[("id", "s"), ("receipt", "u1")], b"");
    c.expect_receipt("u1");
    held_in_a_transaction(&mut c, &mut p);
    c.frame("UNSUBSCRIBE", &[("id", "s"), ("receipt", "u2")], b"");
    c.expect_receipt("u2");
    c.subscribe("s2", topic, "client-individual", &durable);
    // It was closed to open it again: what the transaction acknowledged
    // on it comes back, once.
    let again = c.expect_message();
    assert_eq!(body(&again), "one");
    assert_eq!(again.header_str("redelivered"), Some("true"));
    c.frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    c.expect_receipt("c");
    send_marker(&mut p, topic);
    assert_eq!(body(&c.expect_message()), "marker");
}

#[test]
fn expired_messages_are_never_delivered() {
    let b = Broker::start(&[]);
    let mut p = b.client();
    p.send_sync("/queue/exp", "stale", &[("expires", "1000")]);
    let far = (brokk::broker::message::now_ms() + 3_600_000).to_string();
    p.send_sync("/queue/exp", "fresh", &[("expires", &far)]);
    let mut c = b.client();
    c.subscribe("s", "/queue/exp", "auto", &[]);
    let m = c.expect_message();
    assert_eq!(body(&m), "fresh");
    assert_eq!(m.header_str("expires"), Some(far.as_str()));
    send_marker(&mut p, "/queue/exp");
    assert_eq!(body(&c.expect_message()), "marker");
}

#[test]
fn higher_priority_is_delivered_first() {
    let b = Broker::start(&[]);
    let mut p = b.client();
    for (body, prio) in [("low", "1"), ("high", "9"), ("mid", "5")] {
        p.send_sync("/queue/prio", body, &[("priority", prio)]);
    }
    let mut c = b.client();
    c.subscribe("s", "/queue/prio", "auto", &[]);
    let order: Vec<String> = (0..3).map(|_| body(&c.expect_message())).collect();
    assert_eq!(order, ["high", "mid", "low"]);
}

#[test]
fn application_headers_and_binary_bodies_pass_through() {
    let b = Broker::start(&[]);
    let mut c = b.client();
    c.subscribe("s", "/queue/hdr", "auto", &[]);
    let mut p = b.client();
    let payload = b"a\0b\0c";
    // 1.2 escaping: the value contains a colon and a newline.
    p.write(b"SEND\ndestination:/queue/hdr\nx-weird:a\\cb\\nc\ncorrelation-id:42\npersistent:true\ncontent-length:5\n\na\0b\0c\0");
    let m = c.expect_message();
    assert_eq!(&m.body[..], payload);
    assert_eq!(m.header_str("x-weird"), Some("a:b\nc"));
    assert_eq!(m.header_str("correlation-id"), Some("42"));
    assert_eq!(m.header_str("persistent"), Some("true"));
    assert!(m.header_str("message-id").unwrap().starts_with("ID:"));
}

#[test]
fn many_destinations_across_shards_all_deliver() {
    let b = Broker::start(&["--shards", "4"]);
    let mut c = b.client();
    for i in 0..16 {
        c.subscribe(&format!("s{i}"), &format!("/queue/multi{i}"), "auto", &[]);
    }
    let mut p = b.client();
    for round in 0..5 {
        for i in 0..16 {
            p.send(&format!("/queue/multi{i}"), &format!("{i}-{round}"));
        }
    }
    let mut got = HashSet::new();
    for _ in 0..80 {
        assert!(got.insert(body(&c.expect_message())));
    }
    for i in 0..16 {
        send_marker(&mut p, &format!("/queue/multi{i}"));
    }
    for _ in 0..16 {
        assert_eq!(body(&c.expect_message()), "marker");
    }
}

/// ACKs `m` the way a client of `version` does: 1.2 with the MESSAGE's
/// `ack` value, 1.1 with `message-id` and `subscription`; with a receipt,
/// so that an ERROR shows up here and not later.
fn ack_delivery(c: &mut Client, version: &str, m: &Frame, receipt: &str) {
    let mut h = vec![("receipt", receipt)];
    if version == "1.2" {
        h.push((
            "id",
            m.header_str("ack").expect("1.2 MESSAGE has an ack header"),
        ));
    } else {
        h.push(("message-id", m.header_str("message-id").unwrap()));
        h.push(("subscription", m.header_str("subscription").unwrap()));
    }
    c.frame("ACK", &h, b"");
    c.expect_receipt(receipt);
}

#[test]
fn a_topic_subscribed_twice_on_one_connection_acks_each_delivery_individually() {
    let b = Broker::start(&["--shards", "2"]);
    for version in ["1.1", "1.2"] {
        let dest = format!("/topic/twice-individual-{version}");
        let mut c = Client::connect(b.stomp, &[("accept-version", version)]);
        c.subscribe("a", &dest, "client-individual", &[]);
        c.subscribe("b", &dest, "client-individual", &[]);
        let mut p = b.client();
        p.send_sync(&dest, "one", &[]);
        p.send_sync(&dest, "two", &[]);
        let got: Vec<_> = (0..4).map(|_| c.expect_message()).collect();
        let subs: HashSet<_> = got
            .iter()
            .map(|m| (m.header_str("subscription").unwrap(), body(m)))
            .collect();
        assert_eq!(subs.len(), 4, "each subscription gets each message once");
        // Both deliveries of a message carry its one message-id.
        let ids: HashSet<_> = got.iter().map(|m| m.header_str("message-id")).collect();
        assert_eq!(ids.len(), 2);
        for (i, m) in got.iter().enumerate() {
            ack_delivery(&mut c, version, m, &format!("ack-{i}"));
        }
        let d = b.destination(&dest).unwrap();
        assert_eq!(
            (d["pending"].as_u64(), d["dequeued"].as_u64()),
            (Some(0), Some(4)),
            "{version}"
        );
    }
}

#[test]
fn a_topic_subscribed_twice_on_one_connection_acks_cumulatively_per_subscription() {
    let b = Broker::start(&["--shards", "2"]);
    for version in ["1.1", "1.2"] {
        let dest = format!("/topic/twice-client-{version}");
        let mut c = Client::connect(b.stomp, &[("accept-version", version)]);
        c.subscribe("a", &dest, "client", &[]);
        c.subscribe("b", &dest, "client", &[]);
        let mut p = b.client();
        p.send_sync(&dest, "one", &[]);
        p.send_sync(&dest, "two", &[]);
        let got: Vec<_> = (0..4).map(|_| c.expect_message()).collect();
        // The last delivery on each subscription acknowledges both of its messages.
        for sub in ["a", "b"] {
            let last = got
                .iter()
                .rfind(|m| m.header_str("subscription") == Some(sub))
                .unwrap();
            assert_eq!(body(last), "two");
            ack_delivery(&mut c, version, last, &format!("ack-{sub}"));
        }
        let d = b.destination(&dest).unwrap();
        assert_eq!(
            (d["pending"].as_u64(), d["dequeued"].as_u64()),
            (Some(0), Some(4)),
            "{version}"
        );
    }
}

#[test]
fn a_queue_subscribed_twice_on_one_connection_acks_each_delivery() {
    let b = Broker::start(&["--shards", "2"]);
    for version in ["1.1", "1.2"] {
        let dest = format!("/queue/twice-{version}");
        let mut c = Client::connect(b.stomp, &[("accept-version", version)]);
        c.subscribe("a", &dest, "client-individual", &[]);
        c.subscribe("b", &dest, "client-individual", &[]);
        let mut p = b.client();
        p.send_sync(&dest, "one", &[]);
        p.send_sync(&dest, "two", &[]);
        let got: Vec<_> = (0..2).map(|_| c.expect_message()).collect();
        let subs: HashSet<_> = got.iter().map(|m| m.header_str("subscription")).collect();
        assert_eq!(subs, HashSet::from([Some("a"), Some("b")]));
        for (i, m) in got.iter().enumerate() {
            ack_delivery(&mut c, version, m, &format!("ack-{i}"));
        }
        let d = b.destination(&dest).unwrap();
        assert_eq!(
            (d["pending"].as_u64(), d["dequeued"].as_u64()),
            (Some(0), Some(2)),
            "{version}"
        );
    }
}

#[test]
fn an_ack_without_subscription_takes_the_oldest_delivery_of_the_message() {
    let b = Broker::start(&[]);
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.1")]);
    c.subscribe("a", "/topic/nosub", "client-individual", &[]);
    c.subscribe("b", "/topic/nosub", "client-individual", &[]);
    b.client().send_sync("/topic/nosub", "x", &[]);
    let first = c.expect_message();
    let second = c.expect_message();
    let id = first.header_str("message-id").unwrap();
    assert_eq!(second.header_str("message-id"), Some(id));
    // One ACK per MESSAGE received, as a client unaware of subscriptions sends them.
    for r in ["r1", "r2"] {
        c.frame("ACK", &[("message-id", id), ("receipt", r)], b"");
        c.expect_receipt(r);
    }
    let d = b.destination("/topic/nosub").unwrap();
    assert_eq!(
        (d["pending"].as_u64(), d["dequeued"].as_u64()),
        (Some(0), Some(2))
    );
    // A third has no delivery left to name.
    c.frame("ACK", &[("message-id", id), ("receipt", "r3")], b"");
    let e = c.expect_error();
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("unknown message id"));
}

/// Started with a CPU affinity (`taskset`, systemd's `CPUAffinity=`, a
/// container's cpuset), the broker pins its shards among the CPUs it was
/// given, never on one kept for something else (on a two-core machine,
/// CPU 0 is the one left out here).
#[test]
fn shards_stay_on_the_cpus_the_broker_was_given() {
    let allowed = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    // The last CPU this test may use, if that is not CPU 0.
    let last = allowed
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    if last == 0 {
        eprintln!("skipped: only CPU 0 available ({allowed})");
        return;
    }
    let cpu = last.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let args: Vec<String> = ["--shards", "2", "--mode", "memory", "--data", &data]
        .map(String::from)
        .to_vec();
    let b = Broker::spawn_wrapped(&["taskset", "-c", &cpu], &args);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", b.pid())).unwrap();
    let mut shards = 0;
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let name = status.lines().next().unwrap_or_default().to_string();
        if !name.contains("brokk-shard") {
            continue;
        }
        shards += 1;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        assert_eq!(
            cpus, cpu,
            "{name} runs on CPUs {cpus}, not the broker's {cpu}"
        );
    }
    assert!(shards >= 2, "two shard threads, found {shards}");
    // And it serves.
    let mut c = b.client();
    c.send_sync("/queue/pinned", "m", &[]);
}

/// A durable subscriber that disconnects (DISCONNECT with a receipt) and
/// subscribes again at once, on a connection it had open already, gets its
/// subscription and the message it had been given and not acknowledged:
/// once the receipt came, the old connection's subscription is closed
/// everywhere. (The close used to follow the receipt, so the new
/// SUBSCRIBE could reach the topic's shard first and be refused as
/// "already active".)
#[test]
fn a_durable_subscriber_can_subscribe_again_right_after_its_disconnect_receipt() {
    let b = Broker::start(&["--shards", "2"]);
    let sub = [("activemq.subscriptionName", "back")];
    let connect = || Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c1")]);
    let mut p = b.client();
    let mut c = connect();
    c.subscribe("d", "/topic/back", "client-individual", &sub);
    for round in 0..500 {
        p.send_sync(
            "/topic/back",
            &format!("m{round}"),
            &[("persistent", "true")],
        );
        let m = c.expect_message();
        assert_eq!(body(&m), format!("m{round}"));
        c.ack(&m);
        p.send_sync(
            "/topic/back",
            &format!("away{round}"),
            &[("persistent", "true")],
        );
        // Open before the old one leaves: the SUBSCRIBE goes right after
        // the receipt.
        let mut next = connect();
        c.disconnect();
        next.subscribe("d", "/topic/back", "client-individual", &sub);
        let m = next.expect_message();
        assert_eq!(body(&m), format!("away{round}"), "round {round}");
        next.ack(&m);
        c = next;
    }
}

/// `n` messages of 64 KiB in `queue` (header `seq`: 0..n), then a
/// consumer subscribed in `ack` mode that has read nothing: after a moment
/// the broker has filled its socket and is blocked writing to it.
fn unread_backlog(b: &Broker, queue: &str, n: usize, ack: &str) -> Client {
    send_backlog(b, queue, 0..n, 64 * 1024);
    unread_subscriber(b, queue, ack)
}

/// Messages of `size` bytes in `queue`, header `seq` from `seqs`; in the
/// queue on return.
fn send_backlog(b: &Broker, queue: &str, seqs: std::ops::Range<usize>, size: usize) {
    let body = "x".repeat(size);
    let mut p = b.client();
    for i in seqs {
        p.frame(
            "SEND",
            &[("destination", queue), ("seq", &i.to_string())],
            body.as_bytes(),
        );
    }
    p.send_sync("/queue/backlog-done", "", &[]);
}

/// A consumer of `queue` in `ack` mode that reads nothing: after a
/// moment the broker, writing it a backlog, is blocked on its full socket.
fn unread_subscriber(b: &Broker, queue: &str, ack: &str) -> Client {
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    // No receipt: waiting for one would read the deliveries ahead of it.
    c.frame(
        "SUBSCRIBE",
        &[("id", "s"), ("destination", queue), ("ack", ack)],
        b"",
    );
    std::thread::sleep(Duration::from_millis(300));
    c
}

/// Deliveries the broker had dispatched to a consumer but not yet written
/// to it when it unsubscribed (its socket full) go back as they were: not
/// marked redelivered and not counted toward `max_redeliveries`, so a
/// client that subscribes and unsubscribes often sends nothing it never
/// saw to the dead-letter queue. Those written to it come back marked.
#[test]
fn deliveries_never_written_to_a_closed_consumer_do_not_count_as_redelivered() {
    let b = Broker::start(&["--shards", "2"]);
    // More than loopback's socket buffers hold: the connection's writer is
    // stuck in this batch ...
    let first = 300;
    let mut c = unread_backlog(&b, "/queue/unseen", first, "client-individual");
    // ... while these are dispatched to it and wait behind, not encoded.
    let n = first + 100;
    send_backlog(&b, "/queue/unseen", first..n, 1024);
    b.wait_until("all dispatched to the first consumer", |_| {
        b.destination("/queue/unseen")
            .is_some_and(|d| d["in_flight"] == n)
    });
    c.frame("UNSUBSCRIBE", &[("id", "s")], b"");
    let mut d = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    d.subscribe("s", "/queue/unseen", "auto", &[]);
    let (mut marked, mut unmarked) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while marked.len() + unmarked.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = d
            .recv_timeout(left)
            .unwrap_or_else(|| panic!("{} + {} of {n}", marked.len(), unmarked.len()));
        let seq = m.header_str("seq").unwrap().to_string();
        let fresh = match m.header_str("redelivered") {
            Some("true") => marked.insert(seq),
            _ => unmarked.insert(seq),
        };
        assert!(fresh, "delivered twice");
    }
    assert!(
        !marked.is_empty(),
        "what was written to the first consumer is marked"
    );
    let late: Vec<String> = (first..n).map(|i| i.to_string()).collect();
    let late_marked = late.iter().filter(|s| marked.contains(*s)).count();
    assert_eq!(
        late_marked,
        0,
        "dispatched behind the stuck write, never written, yet marked redelivered (of {})",
        late.len()
    );
    drop(c);
}

/// A message whose reader dies while the broker writes it (the client's
/// kernel resets the connection, the write fails) still counts as
/// redelivered: a message that kills every consumer reaches the
/// dead-letter queue instead of going round forever.
#[test]
fn a_message_whose_reader_dies_mid_write_still_reaches_the_dead_letter_queue() {
    let b = Broker::start_with_config(Some("[broker]\nmax_redeliveries = 1\n"), &["--shards", "2"]);
    let queue = "/queue/kills-readers";
    send_backlog(&b, queue, 0..300, 64 * 1024);
    for _ in 0..2 {
        // The broker is writing it a backlog it does not read; then it dies
        // with data unread, so its kernel answers with a reset.
        let c = unread_subscriber(&b, queue, "auto");
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    }
    let mut d = b.client();
    d.subscribe("dlq", "/queue/ActiveMQ.DLQ", "auto", &[]);
    let m = d.expect_message();
    assert_eq!(
        m.header_str("seq"),
        Some("0"),
        "the head of the queue, read twice"
    );
    assert_eq!(m.header_str("original-destination"), Some(queue));
}

/// A new auto-ack consumer of `queue` gets the `n` messages' rest: none
/// of `first` (what the last consumer read), and every other once.
fn the_rest_comes_to_the_next_consumer_once(b: &Broker, queue: &str, first: &[String], n: usize) {
    let mut d = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    d.subscribe("s", queue, "auto", &[]);
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.len() + rest.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = d
            .recv_timeout(left)
            .unwrap_or_else(|| panic!("{} + {} of {n}", first.len(), rest.len()));
        rest.push(m.header_str("seq").unwrap().to_string());
    }
    // A copy too many would come now.
    if let Some(m) = d.recv_timeout(Duration::from_millis(500)) {
        rest.push(m.header_str("seq").unwrap().to_string());
    }
    let firsts: HashSet<&String> = first.iter().collect();
    let twice: Vec<&String> = rest.iter().filter(|s| firsts.contains(s)).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(
        first.len() + rest.len(),
        n,
        "{} + {}",
        first.len(),
        rest.len()
    );
}

/// An auto-acknowledging consumer that says DISCONNECT while the broker is
/// still writing it a backlog (its socket full) keeps every message it
/// read before the RECEIPT, and the rest go to the next consumer: none
/// comes twice, none is lost.
#[test]
fn an_auto_ack_consumer_disconnecting_mid_backlog_gets_no_message_twice() {
    let b = Broker::start(&["--shards", "2"]);
    let n = 200;
    let mut c = unread_backlog(&b, "/queue/backlog", n, "auto");
    let first: Vec<String> = c
        .messages_before_receipt("DISCONNECT", &[], "bye")
        .iter()
        .map(|m| m.header_str("seq").unwrap().to_string())
        .collect();
    the_rest_comes_to_the_next_consumer_once(&b, "/queue/backlog", &first, n);
}

/// The same for an UNSUBSCRIBE on a connection that stays: what the client
/// read before the RECEIPT is its own, nothing of that subscription comes
/// after it, and the rest goes to the next consumer, none twice. (The
/// Unsubscribe used to reach the queue before the auto-acknowledgements of
/// the batch being written: those messages went back to the queue while
/// this client read them.)
#[test]
fn an_auto_ack_consumer_unsubscribing_mid_backlog_gets_no_message_twice() {
    let b = Broker::start(&["--shards", "2"]);
    let n = 200;
    let mut c = unread_backlog(&b, "/queue/backlog", n, "auto");
    let first: Vec<String> = c
        .messages_before_receipt("UNSUBSCRIBE", &[("id", "s")], "gone")
        .iter()
        .map(|m| m.header_str("seq").unwrap().to_string())
        .collect();
    the_rest_comes_to_the_next_consumer_once(&b, "/queue/backlog", &first, n);
    if let Some(m) = c.recv_timeout(Duration::from_millis(100)) {
        panic!("a frame after the UNSUBSCRIBE's receipt: {m:?}");
    }
}

/// A durable subscriber whose socket is full (the broker is writing it a
/// backlog) that closes its subscription and opens it again at once, on
/// the same connection, gets it: the SUBSCRIBE does not overtake the
/// UNSUBSCRIBE (it would be refused as already active), whatever the
/// writer is doing, and every message comes, none lost.
#[test]
fn a_durable_subscription_closed_and_opened_again_behind_a_full_socket_is_not_refused() {
    durable_closed_and_opened_again("client-individual");
    durable_closed_and_opened_again("auto");
}

/// With `ack`: in `client-individual` mode every message comes on the new
/// subscription (the old one acknowledged none); in `auto` mode those the
/// old one was given count as consumed, and each of the others comes on
/// the new one, none on both.
fn durable_closed_and_opened_again(ack: &str) {
    let b = Broker::start(&["--shards", "2"]);
    let n = 100;
    let sub = ("activemq.subscriptionName", "again");
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c1")]);
    c.subscribe("d", "/topic/again", ack, &[sub]);
    let body = "x".repeat(64 * 1024);
    let mut p = b.client();
    for i in 0..n {
        p.frame(
            "SEND",
            &[
                ("destination", "/topic/again"),
                ("persistent", "true"),
                ("seq", &i.to_string()),
            ],
            body.as_bytes(),
        );
    }
    p.send_sync("/queue/backlog-done", "", &[]);
    // The broker fills the socket meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    c.frame("UNSUBSCRIBE", &[("id", "d")], b"");
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "e"),
            ("destination", "/topic/again"),
            ("ack", ack),
            sub,
            ("receipt", "again"),
        ],
        b"",
    );
    let auto = ack == "auto";
    let (mut old, mut new) = (HashSet::new(), HashSet::new());
    let mut receipt = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while new.union(&old).count() < n || !receipt {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c.recv_timeout(left).unwrap_or_else(|| {
            panic!(
                "{ack}: {} + {} of {n} messages, receipt: {receipt}",
                old.len(),
                new.len()
            )
        });
        match f.command.as_str() {
            "RECEIPT" => receipt = true,
            "MESSAGE" => {
                let seq = f.header_str("seq").unwrap().to_string();
                if f.header_str("subscription") == Some("e") {
                    if !auto {
                        c.ack(&f);
                    }
                    assert!(new.insert(seq), "{ack}: twice on the new subscription");
                } else if auto {
                    // (In client-individual mode they come again on the
                    // new one.)
                    old.insert(seq);
                }
            }
            _ => panic!("{f:?}"),
        }
    }
    let both: Vec<_> = old.intersection(&new).collect();
    assert!(both.is_empty(), "{ack}: on both subscriptions: {both:?}");
}

/// A plain ACK is applied at once after an UNSUBSCRIBE of the same
/// connection while its client reads nothing (its socket full): the
/// memory it frees is not held by the client's socket (its own SENDs may
/// be waiting for that memory).
#[test]
fn an_ack_after_an_unsubscribe_is_applied_while_the_client_reads_nothing() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    p.send_sync("/queue/small", "one", &[]);
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    c.subscribe("a", "/queue/small", "client-individual", &[]);
    let m = c.expect_message();
    let body = "x".repeat(64 * 1024);
    for i in 0..200 {
        p.frame(
            "SEND",
            &[("destination", "/queue/full"), ("seq", &i.to_string())],
            body.as_bytes(),
        );
    }
    p.send_sync("/queue/full-done", "", &[]);
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "b"),
            ("destination", "/queue/full"),
            ("ack", "client-individual"),
        ],
        b"",
    );
    // The broker fills the socket meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    c.frame("UNSUBSCRIBE", &[("id", "b")], b"");
    c.ack(&m);
    b.wait_until("the ACK applied", |_| {
        b.destination("/queue/small")
            .is_some_and(|d| d["pending"] == 0 && d["in_flight"] == 0)
    });
    drop(c);
}

/// An auto-acknowledging consumer whose connection ends while the broker
/// is writing it a backlog (here: an ERROR for a bad frame, after which
/// the client reads to the end) gets no message that another consumer
/// gets too, and none is lost.
#[test]
fn an_auto_ack_consumer_closed_by_an_error_mid_backlog_gets_no_message_twice() {
    let b = Broker::start(&["--shards", "2"]);
    let n = 200;
    let mut c = unread_backlog(&b, "/queue/backlog", n, "auto");
    c.frame("ACK", &[("id", "no-such-delivery")], b"");
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no ERROR and close within 20 s");
        match c.recv_timeout(left) {
            Some(f) if f.command.as_str() == "MESSAGE" => {
                first.push(f.header_str("seq").unwrap().to_string())
            }
            Some(f) if f.command.as_str() == "ERROR" => break,
            other => panic!("expected MESSAGE or ERROR, got {other:?}"),
        }
    }
    c.expect_closed_by_peer();
    the_rest_comes_to_the_next_consumer_once(&b, "/queue/backlog", &first, n);
}

/// A consumer that says DISCONNECT with a receipt and then neither reads
/// nor closes (no heart-beats agreed, so nothing would end the connection)
/// does not keep what it was given: its subscriptions close at the
/// DISCONNECT, and the messages go to the next consumer.
#[test]
fn a_consumer_silent_after_disconnect_gives_its_messages_back() {
    let b = Broker::start(&["--shards", "2"]);
    let n = 200;
    let mut c = unread_backlog(&b, "/queue/silent", n, "client-individual");
    c.frame("DISCONNECT", &[("receipt", "bye")], b"");
    every_message_comes_back(&b, "/queue/silent", n);
    drop(c);
}

/// All `n` messages of `queue` come to a new consumer within 40 s.
fn every_message_comes_back(b: &Broker, queue: &str, n: usize) {
    let mut d = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    d.subscribe("s", queue, "client-individual", &[]);
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = d
            .recv_timeout(left)
            .unwrap_or_else(|| panic!("{} of {n} came back", got.len()));
        got.insert(m.header_str("seq").unwrap().to_string());
        d.ack(&m);
    }
}

/// A consumer that says DISCONNECT and then reads nothing more, leaving
/// its socket half open, does not keep what it was given: the messages it
/// had not acknowledged go to the next consumer (its subscriptions closed
/// at the DISCONNECT; the broker shuts the socket after a grace period).
#[test]
fn a_consumer_that_stops_reading_after_disconnect_gives_its_messages_back() {
    let b = Broker::start(&["--shards", "2"]);
    let n = 200;
    let mut c = unread_backlog(&b, "/queue/stuck", n, "client-individual");
    c.frame("DISCONNECT", &[("receipt", "bye")], b"");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    every_message_comes_back(&b, "/queue/stuck", n);
    drop(c);
}
