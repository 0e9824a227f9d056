//! JMS message selectors over STOMP (the SUBSCRIBE `selector` header),
//! against the real binary.

mod common;

use std::collections::HashMap;

use brokk::protocol::stomp::Frame;
use common::{body, data_args, Broker, Client};

fn colored(p: &mut Client, dest: &str, body: &str, color: &str, extra: &[(&str, &str)]) {
    let mut h = vec![("color", color)];
    h.extend_from_slice(extra);
    p.send_sync(dest, body, &h);
}

/// SUBSCRIBEs with a selector (and `extra` headers); returns what was
/// delivered before the receipt (everything waiting that it matches, up
/// to its prefetch).
fn subscribe_with(
    c: &mut Client,
    id: &str,
    dest: &str,
    selector: &str,
    extra: &[(&str, &str)],
) -> Vec<Frame> {
    let mut h = vec![
        ("id", id),
        ("destination", dest),
        ("ack", "client-individual"),
        ("activemq.prefetchSize", "100"),
        ("selector", selector),
    ];
    h.extend_from_slice(extra);
    c.messages_before_receipt("SUBSCRIBE", &h, &format!("sub-{id}"))
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(body).collect()
}

#[test]
fn queue_consumers_with_disjoint_selectors_each_get_their_own_messages() {
    let b = Broker::start(&["--shards", "2"]);
    let q = "/queue/paint";
    let mut p = b.client();
    // A message nobody selects goes first: it must not hold back the rest.
    colored(&mut p, q, "g0", "green", &[]);
    for i in 0..6 {
        let color = if i % 2 == 0 { "red" } else { "blue" };
        colored(&mut p, q, &format!("{color}{i}"), color, &[]);
    }
    let mut red = b.client();
    let mut blue = b.client();
    assert_eq!(
        bodies(&subscribe_with(&mut red, "r", q, "color = 'red'", &[])),
        ["red0", "red2", "red4"]
    );
    assert_eq!(
        bodies(&subscribe_with(&mut blue, "b", q, "color = 'blue'", &[])),
        ["blue1", "blue3", "blue5"]
    );
    // Live traffic is routed the same way, whoever's turn it is.
    for i in 6..12 {
        let color = if i % 3 == 0 { "blue" } else { "red" };
        colored(&mut p, q, &format!("{color}{i}"), color, &[]);
    }
    let mut got: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, c, n) in [("red", &mut red, 4), ("blue", &mut blue, 2)] {
        for _ in 0..n {
            let m = c.expect_message();
            assert_eq!(m.header_str("color"), Some(name), "{name} got {m:?}");
            got.entry(name).or_default().push(body(&m));
            c.ack(&m);
        }
    }
    assert_eq!(got["red"], ["red7", "red8", "red10", "red11"]);
    assert_eq!(got["blue"], ["blue6", "blue9"]);
    // The unselected message is still there, for a consumer that takes it.
    let mut any = b.client();
    let rest = any.messages_before_receipt(
        "SUBSCRIBE",
        &[("id", "a"), ("destination", q), ("ack", "auto")],
        "sub-a",
    );
    assert_eq!(bodies(&rest), ["g0"]);
}

#[test]
fn stomp_headers_compare_as_numbers_and_jms_headers_are_selectable() {
    let b = Broker::start(&[]);
    let q = "/queue/prices";
    let mut p = b.client();
    p.send_sync(q, "cheap", &[("price", "4")]);
    p.send_sync(q, "dear", &[("price", "10"), ("priority", "7")]);
    p.send_sync(q, "dearer", &[("price", "12.5")]);
    p.send_sync(q, "unpriced", &[("price", "ask")]);
    let mut c = b.client();
    assert_eq!(
        bodies(&subscribe_with(&mut c, "n", q, "price > 5", &[])),
        ["dear", "dearer"]
    );
    let mut c2 = b.client();
    assert_eq!(
        bodies(&subscribe_with(
            &mut c2,
            "s",
            q,
            "price = 'ask' OR (JMSPriority = 4 AND price BETWEEN 0 AND 5)",
            &[]
        )),
        ["cheap", "unpriced"]
    );
}

#[test]
fn topic_subscriber_receives_only_what_its_selector_matches() {
    let b = Broker::start(&["--shards", "2"]);
    let t = "/topic/weather";
    let mut eu = b.client();
    let mut all = b.client();
    eu.subscribe(
        "eu",
        t,
        "auto",
        &[("selector", "region LIKE 'eu-%' AND temp >= 20")],
    );
    all.subscribe("all", t, "auto", &[]);
    let mut p = b.client();
    let sent = [
        ("eu-west", "25"),
        ("us-east", "30"),
        ("eu-north", "5"),
        ("eu-south", "20"),
    ];
    for (region, temp) in sent {
        p.send_sync(
            t,
            &format!("{region}:{temp}"),
            &[("region", region), ("temp", temp)],
        );
    }
    // The last message matches both: whatever came before it in `eu`'s
    // subscription has been delivered by then.
    p.send_sync(t, "marker", &[("region", "eu-marker"), ("temp", "99")]);
    let mut eu_got = Vec::new();
    loop {
        let m = body(&eu.expect_message());
        if m == "marker" {
            break;
        }
        eu_got.push(m);
    }
    assert_eq!(eu_got, ["eu-west:25", "eu-south:20"]);
    for (region, temp) in sent {
        assert_eq!(body(&all.expect_message()), format!("{region}:{temp}"));
    }
    assert_eq!(body(&all.expect_message()), "marker");
}

#[test]
fn a_bad_selector_gets_an_error_frame_naming_the_problem() {
    let b = Broker::start(&[]);
    for (selector, expected) in [
        (
            "color = ",
            "invalid selector at position 9: expected a value",
        ),
        (
            "color = 'red' AND",
            "expected a value, found the end of the selector",
        ),
        ("price > 'x'", "only with = and <>"),
        ("((((a = 1", "expected ')'"),
        ("color != 'red'", "use '<>'"),
    ] {
        let mut c = b.client();
        c.frame(
            "SUBSCRIBE",
            &[
                ("id", "s"),
                ("destination", "/queue/q"),
                ("selector", selector),
                ("receipt", "r"),
            ],
            b"",
        );
        let e = c.expect_error();
        let message = e.header_str("message").unwrap_or_default();
        assert!(
            message.contains(expected),
            "{selector:?}: ERROR said {message:?}"
        );
        assert!(
            message.contains(selector.trim()),
            "{message:?} names the selector"
        );
        assert_eq!(e.header_str("receipt-id"), Some("r"));
        c.expect_closed_by_peer();
    }
    // Too long for a durable subscription's store column.
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "long")]);
    let long = format!("a IN ({})", vec!["'xxxxxxxxxx'"; 30].join(","));
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "d"),
            ("destination", "/topic/t"),
            ("activemq.subscriptionName", "d"),
            ("selector", &long),
        ],
        b"",
    );
    let e = c.expect_error();
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("longer than 250 bytes"));
    // The broker is fine: an empty selector is no selector.
    let mut ok = b.client();
    ok.subscribe("s", "/queue/q", "auto", &[("selector", " ")]);
    let mut p = b.client();
    p.send_sync("/queue/q", "hello", &[]);
    assert_eq!(body(&ok.expect_message()), "hello");
}

fn durable_client(b: &Broker) -> Client {
    Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "sel")])
}

/// Persistent SENDs of `(body, amount)`, each receipted.
fn send_amounts(p: &mut Client, dest: &str, messages: &[(&str, &str)]) {
    for (name, amount) in messages {
        p.send_sync(dest, name, &[("amount", amount), ("persistent", "true")]);
    }
}

#[test]
fn a_durable_subscription_keeps_its_selector_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = data_args(dir.path(), &["--shards", "2"]);
    let t = "/topic/orders";
    let name = [("activemq.subscriptionName", "big")];
    let mut b = Broker::spawn(None, &args, Some(dir.path()));
    let mut s = durable_client(&b);
    subscribe_with(&mut s, "d", t, "amount > 100", &name);
    s.disconnect();
    let mut p = b.client();
    send_amounts(&mut p, t, &[("a", "50"), ("b", "500"), ("c", "101")]);
    b.kill9();

    // After the restart the subscription filters what arrives while it
    // is offline, with the selector it was made with.
    let b = Broker::spawn(None, &args, Some(dir.path()));
    let mut p = b.client();
    send_amounts(&mut p, t, &[("d", "7"), ("e", "1000")]);
    let mut s = durable_client(&b);
    let got = subscribe_with(&mut s, "d", t, "amount > 100", &name);
    assert_eq!(bodies(&got), ["b", "c", "e"]);
    for m in &got {
        s.ack(m);
    }
    s.disconnect();

    // Another selector is another subscription (as in ActiveMQ): the old
    // one's messages go with it.
    send_amounts(&mut p, t, &[("f", "5000")]);
    let mut s = durable_client(&b);
    let got = subscribe_with(&mut s, "d", t, "amount < 10", &name);
    assert_eq!(bodies(&got), Vec::<String>::new());
    send_amounts(&mut p, t, &[("g", "3"), ("h", "30"), ("i", "4")]);
    assert_eq!(body(&s.expect_message()), "g");
    assert_eq!(body(&s.expect_message()), "i");
}

#[test]
fn a_committed_transaction_reaches_only_the_durable_subscriptions_that_select_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = data_args(dir.path(), &["--shards", "2"]);
    let t = "/topic/ledger";
    let mut b = Broker::spawn(None, &args, Some(dir.path()));
    let clients = ["big", "small"];
    for (client, selector) in clients.iter().zip(["amount > 100", "amount <= 100"]) {
        let mut s = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", client)]);
        subscribe_with(
            &mut s,
            "d",
            t,
            selector,
            &[("activemq.subscriptionName", "s")],
        );
        s.disconnect();
    }
    let mut p = b.client();
    p.frame("BEGIN", &[("transaction", "tx")], b"");
    for (name, amount) in [("x", "5"), ("y", "500"), ("z", "50")] {
        p.frame(
            "SEND",
            &[
                ("destination", t),
                ("transaction", "tx"),
                ("persistent", "true"),
                ("amount", amount),
            ],
            name.as_bytes(),
        );
    }
    p.frame("COMMIT", &[("transaction", "tx"), ("receipt", "c")], b"");
    p.expect_receipt("c");
    b.kill9();
    let b = Broker::spawn(None, &args, Some(dir.path()));
    for (client, expected) in clients.iter().zip([vec!["y"], vec!["x", "z"]]) {
        let mut s = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", client)]);
        let selector = if *client == "big" {
            "amount > 100"
        } else {
            "amount <= 100"
        };
        let got = subscribe_with(
            &mut s,
            "d",
            t,
            selector,
            &[("activemq.subscriptionName", "s")],
        );
        assert_eq!(bodies(&got), expected, "{client}");
    }
}
