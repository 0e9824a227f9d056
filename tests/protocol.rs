//! STOMP protocol behaviour: versions, heart-beats, authentication, limits
//! and bad input, against the real binary.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Broker, Client};

#[test]
fn connect_negotiates_the_highest_common_version() {
    let b = Broker::start(&[]);
    let c = Client::connect(b.stomp, &[("accept-version", "1.0,1.1")]);
    assert_eq!(
        c.connected.as_ref().unwrap().header_str("version"),
        Some("1.1")
    );
    let c = Client::connect(b.stomp, &[]);
    assert!(
        c.is_connected(),
        "a 1.0 client without accept-version connects"
    );
    let mut c = Client::connect(b.stomp, &[("accept-version", "2.0")]);
    let e = c.connected.take().unwrap();
    assert_eq!(e.command.as_str(), "ERROR");
    assert_eq!(e.header_str("version"), Some("1.0,1.1,1.2"));
    c.expect_closed_by_peer();
}

#[test]
fn stomp_frame_works_like_connect() {
    let b = Broker::start(&[]);
    let mut c = Client::raw(b.stomp);
    c.write(b"STOMP\naccept-version:1.2\nhost:x\n\n\0");
    assert_eq!(c.recv().unwrap().command.as_str(), "CONNECTED");
}

#[test]
fn frames_before_connect_are_refused() {
    let b = Broker::start(&[]);
    let mut c = Client::raw(b.stomp);
    c.write(b"SEND\ndestination:/queue/a\n\nx\0");
    c.expect_error();
    c.expect_closed_by_peer();
}

#[test]
fn configured_users_must_authenticate() {
    // Plain-text passcodes only with the switch (hashed ones: tests/security.rs).
    let cfg = "[auth]\nallow_plaintext_passwords = true\n[[users]]\nlogin = \"admin\"\npasscode = \"secret\"\n";
    let b = Broker::start_with_config(Some(cfg), &[]);
    let mut bad = Client::connect(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "admin"),
            ("passcode", "nope"),
        ],
    );
    let e = bad.connected.take().unwrap();
    assert_eq!(e.command.as_str(), "ERROR");
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("Authentication failed"));
    bad.expect_closed_by_peer();
    let none = Client::connect(b.stomp, &[("accept-version", "1.2")]);
    assert!(!none.is_connected());
    let good = Client::connect(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "admin"),
            ("passcode", "secret"),
        ],
    );
    assert!(good.is_connected());
}

#[test]
fn broker_sends_heartbeats_and_drops_a_silent_client() {
    let b = Broker::start_with_config(Some("[broker]\nheartbeat_min_ms = 100\n"), &[]);
    let mut c = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("heart-beat", "100,100")],
    );
    assert_eq!(
        c.connected.as_ref().unwrap().header_str("heart-beat"),
        Some("100,100")
    );
    // Reading raw bytes: the broker's heart-beats are bare newlines.
    let mut got = [0u8; 1];
    use std::io::Read;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    c.stream.read_exact(&mut got).unwrap();
    assert_eq!(got[0], b'\n');
    // We never send anything: the broker must close the connection.
    c.expect_closed_by_peer();
}

#[test]
fn a_client_that_sends_heartbeats_stays_connected() {
    let b = Broker::start_with_config(Some("[broker]\nheartbeat_min_ms = 300\n"), &[]);
    let mut c = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("heart-beat", "300,0")],
    );
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        c.write(b"\n");
    }
    c.send_sync("/queue/alive", "still here", &[]);
}

#[test]
fn malformed_frames_get_an_error_and_close() {
    let b = Broker::start(&[]);
    for bad in [
        &b"BOGUS\n\n\0"[..],
        b"SEND\nno-colon-here\n\n\0",
        b"SEND\ndestination:/queue/a\ncontent-length:zz\n\n\0",
        b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\0",
        b"SEND\ndestination:/queue/a\nx:bad\\tescape\n\n\0",
    ] {
        // Names the case in the output if one of the checks below fails.
        eprintln!("malformed frame {:?}", String::from_utf8_lossy(bad));
        let mut c = b.client();
        c.write(bad);
        let e = c.expect_error();
        assert!(e.header_str("message").is_some());
        c.expect_closed_by_peer();
    }
}

#[test]
fn oversized_frames_are_refused() {
    let b = Broker::start_with_config(Some("[limits]\nmax_frame_size = 4096\n"), &[]);
    let mut c = b.client();
    c.frame("SEND", &[("destination", "/queue/big")], &[b'x'; 5000]);
    let e = c.expect_error();
    assert!(e.header_str("message").unwrap().contains("max_frame_size"));
    // Without content-length the broker also stops buffering at the limit.
    let mut c = b.client();
    let mut raw = b"SEND\ndestination:/queue/big\n\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 10_000));
    c.write(&raw);
    c.expect_error();
}

#[test]
fn bad_requests_get_clear_errors() {
    let b = Broker::start(&[]);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        ("SEND", &[("destination", "nowhere")], "/queue/"),
        ("SEND", &[], "destination"),
        (
            "SEND",
            &[("destination", "/queue/a"), ("priority", "12")],
            "priority",
        ),
        ("ACK", &[("id", "ID:brokk-12345")], "unknown message id"),
        (
            "SUBSCRIBE",
            &[
                ("id", "1"),
                ("destination", "/queue/a"),
                ("ack", "sometimes"),
            ],
            "ack mode",
        ),
        (
            "COMMIT",
            &[("transaction", "never-begun")],
            "unknown transaction",
        ),
    ];
    for (cmd, headers, expect) in cases {
        let mut c = b.client();
        let mut h = headers.to_vec();
        h.push(("receipt", "77"));
        c.frame(cmd, &h, b"");
        let e = c.expect_error();
        let msg = e.header_str("message").unwrap();
        assert!(
            msg.contains(expect),
            "{cmd}: '{msg}' should mention '{expect}'"
        );
        assert_eq!(e.header_str("receipt-id"), Some("77"));
        c.expect_closed_by_peer();
    }
}

/// Names longer than ActiveMQ's JDBC columns hold are refused with an ERROR
/// in every mode (a database mode could never store them): a client-id or a
/// durable subscription name over 250 bytes.
#[test]
fn names_longer_than_the_jdbc_columns_are_refused() {
    let b = Broker::start(&[]);
    let long = "c".repeat(251);
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", &long)]);
    let e = c.connected.take().unwrap();
    assert_eq!(e.command.as_str(), "ERROR");
    assert!(e.header_str("message").unwrap().contains("client-id"));
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c")]);
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "1"),
            ("destination", "/topic/t"),
            ("activemq.subscriptionName", &long),
        ],
        b"",
    );
    let e = c.expect_error();
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("subscription name"));
}

/// A NUL (or another control character) in a client-id, a durable
/// subscription name or a selector is refused with an ERROR in every mode:
/// PostgreSQL refuses a NUL in a text column for good, so a database mode
/// could never commit the batch that stores the subscription (every later
/// receipt of that shard would wait behind it).
#[test]
fn control_characters_in_stored_names_are_refused() {
    let b = Broker::start(&[]);
    let mut c = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("client-id", "a\u{0}b")],
    );
    let e = c.connected.take().unwrap();
    assert_eq!(e.command.as_str(), "ERROR");
    let msg = e.header_str("message").unwrap();
    assert!(
        msg.contains("client-id") && msg.contains("control character"),
        "{msg}"
    );
    // The ERROR's message for a durable SUBSCRIBE with `name` and `extra`.
    let refused = |name: &str, extra: &[(&str, &str)]| {
        let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c")]);
        let mut h = vec![
            ("id", "1"),
            ("destination", "/topic/t"),
            ("activemq.subscriptionName", name),
        ];
        h.extend_from_slice(extra);
        c.frame("SUBSCRIBE", &h, b"");
        c.expect_error().header_str("message").unwrap().to_string()
    };
    let msg = refused("s\u{1}", &[]);
    assert!(
        msg.contains("subscription name") && msg.contains("control character"),
        "{msg}"
    );
    let msg = refused("s", &[("selector", "a = 'x\u{0}'")]);
    assert!(msg.contains("NUL"), "{msg}");
    // Nothing was stored: the same names, clean, work.
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c")]);
    c.subscribe(
        "1",
        "/topic/t",
        "auto",
        &[("activemq.subscriptionName", "s")],
    );
}

#[test]
fn disconnect_receipt_comes_after_everything_sent_before() {
    let b = Broker::start(&["--shards", "2"]);
    let mut p = b.client();
    for i in 0..100 {
        p.send(&format!("/queue/d{}", i % 7), "x");
    }
    p.disconnect();
    let total: u64 = b.status()["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["enqueued"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);
}

#[test]
fn max_connections_is_enforced_with_an_error() {
    let b = Broker::start_with_config(Some("[limits]\nmax_connections = 3\n"), &[]);
    let held: Vec<Client> = (0..3).map(|_| b.client()).collect();
    assert!(held.iter().all(Client::is_connected));
    let mut extra = Client::raw(b.stomp);
    let e = extra.expect_error();
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("maximum connections"));
    drop(held);
    b.wait_until("connections closed", |s| s["connections"] == 0);
    assert!(b.client().is_connected());
}

#[test]
fn a_thousand_concurrent_connections_are_served() {
    let b = Broker::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..1000).map(|_| b.client()).collect();
    assert!(clients.iter().all(Client::is_connected));
    b.wait_until("1000 connections", |s| s["connections"] == 1000);
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("/queue/k{}", i % 10), "x");
    }
    for c in clients.iter_mut() {
        c.frame("DISCONNECT", &[("receipt", "bye")], b"");
    }
    for c in clients.iter_mut() {
        c.expect_receipt("bye");
    }
    let total: u64 = b.status()["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pending"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000);
}

#[test]
fn status_endpoint_reports_role_and_destination_counts() {
    let b = Broker::start(&[]);
    let mut p = b.client();
    p.send_sync("/queue/s", "x", &[]);
    let s = b.status();
    assert_eq!(s["role"], "master");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_secs"].is_u64());
    let d = b.destination("/queue/s").unwrap();
    assert_eq!(
        (
            d["pending"].as_u64(),
            d["consumers"].as_u64(),
            d["enqueued"].as_u64(),
            d["dequeued"].as_u64()
        ),
        (Some(1), Some(0), Some(1), Some(0))
    );
    let mut http = TcpStream::connect(b.admin).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        http,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    use std::io::Read;
    http.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"));
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut b = Broker::start(&[]);
    let mut c = b.client();
    c.send_sync("/queue/bye", "x", &[]);
    let status = b.terminate();
    assert!(status.success(), "exit status {status:?}");
    c.expect_closed_by_peer();
    assert!(TcpStream::connect(b.stomp).is_err());
}

#[test]
fn producers_are_paused_at_the_memory_limit_and_nothing_is_lost() {
    let b = Broker::start_with_config(
        Some("[limits]\nmemory_limit_bytes = 1048576\n"),
        &["--shards", "2"],
    );
    const N: usize = 1500;
    let addr = b.stomp;
    let producer = std::thread::spawn(move || {
        let mut p = Client::connect(addr, &[("accept-version", "1.2")]);
        let body = "y".repeat(4096);
        for i in 0..N {
            p.frame(
                "SEND",
                &[("destination", "/queue/flow"), ("seq", &i.to_string())],
                body.as_bytes(),
            );
        }
        p.disconnect();
    });
    // With no consumer the producer must stall near the limit, not grow past
    // it: once memory is full, what the broker holds stays bounded, and the
    // producer's DISCONNECT receipt (which follows all N sends) cannot have come.
    b.wait_until("memory to fill", |s| {
        s["memory_used_bytes"].as_u64().unwrap() >= 1_048_576
    });
    let used = b.status()["memory_used_bytes"].as_u64().unwrap();
    assert!(used < 2 * 1_048_576, "memory use {used} ran past the limit");
    let enqueued = b.destination("/queue/flow").unwrap()["enqueued"]
        .as_u64()
        .unwrap();
    assert!(
        enqueued < N as u64,
        "all {N} messages were taken in at the limit"
    );
    assert!(!producer.is_finished());
    let mut c = b.client();
    c.subscribe(
        "s",
        "/queue/flow",
        "client",
        &[("activemq.prefetchSize", "100")],
    );
    for i in 0..N {
        let m = c.expect_message();
        assert_eq!(m.header_str("seq"), Some(i.to_string().as_str()));
        if i % 50 == 49 {
            c.ack(&m);
        }
    }
    producer.join().unwrap();
}

#[test]
fn a_client_that_consumes_and_produces_on_one_connection_keeps_going_at_the_memory_limit() {
    // 1 MiB: four 256 KiB messages delivered and not yet acknowledged fill it.
    let b = Broker::start_with_config(
        Some("[limits]\nmemory_limit_bytes = 1048576\n"),
        &["--shards", "2"],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = b.client();
    c.subscribe("s", "/queue/self", "client-individual", &[]);
    let body = vec![b'z'; 256 * 1024];
    let send = |seq: usize| -> Vec<u8> {
        let mut f = format!(
            "SEND\ndestination:/queue/self\nseq:{seq}\ncontent-length:{}\n\n",
            body.len()
        )
        .into_bytes();
        f.extend_from_slice(&body);
        f.push(0);
        f
    };
    let mut wbuf = Vec::new();
    for seq in 0..4 {
        wbuf.extend(send(seq));
    }
    c.write(&wbuf);
    let mut next = 4;
    for round in 0..20 {
        assert!(Instant::now() < deadline, "stalled in round {round}");
        let got: Vec<_> = (0..4).map(|_| c.expect_message()).collect();
        // One write: this round's ACKs and the next round's SENDs; on even
        // rounds all ACKs first, on odd ones each SEND ahead of an ACK.
        // Memory is full until ACKs are applied, so SENDs wait for them.
        let acks = got
            .iter()
            .map(|m| format!("ACK\nid:{}\n\n\0", m.header_str("ack").unwrap()).into_bytes());
        let sends = (next..next + 4).map(send);
        next += 4;
        let wbuf: Vec<u8> = if round % 2 == 0 {
            acks.chain(sends).flatten().collect()
        } else {
            sends
                .zip(acks)
                .flat_map(|(s, a)| [s, a])
                .flatten()
                .collect()
        };
        c.write(&wbuf);
    }
    for _ in 0..4 {
        c.expect_message();
    }
    assert!(Instant::now() < deadline);
}

#[test]
fn a_send_that_waits_for_memory_does_not_hold_back_the_ack_behind_it() {
    let b = Broker::start_with_config(Some("[limits]\nmemory_limit_bytes = 1048576\n"), &[]);
    let mut c = b.client();
    c.subscribe("s", "/queue/behind", "client-individual", &[]);
    // One message as large as the memory limit, delivered, not acknowledged.
    c.frame(
        "SEND",
        &[("destination", "/queue/behind"), ("receipt", "big")],
        &vec![b'b'; 1024 * 1024],
    );
    c.expect_receipt("big");
    let big = c.expect_message();
    // A SEND, then the ACK that frees the memory it waits for, in one write.
    let ack = big.header_str("ack").unwrap();
    c.write(
        format!("SEND\ndestination:/queue/behind\nreceipt:small\n\nsmall\0ACK\nid:{ack}\n\n\0")
            .as_bytes(),
    );
    c.expect_receipt("small");
    assert_eq!(common::body(&c.expect_message()), "small");
}

#[test]
fn a_producer_that_leaves_while_paused_loses_nothing_it_sent() {
    let b = Broker::start_with_config(Some("[limits]\nmemory_limit_bytes = 1048576\n"), &[]);
    // About 1 MiB and 30 KiB of messages: the SENDs past the limit are
    // read (and held) before the broker sees the end of the stream.
    const N: usize = 250;
    let addr = b.stomp;
    let producer = std::thread::spawn(move || {
        let mut p = Client::connect(addr, &[("accept-version", "1.2")]);
        let body = vec![b'y'; 4096];
        for i in 0..N {
            p.frame(
                "SEND",
                &[("destination", "/queue/gone"), ("seq", &i.to_string())],
                &body,
            );
        }
        // Dropped: closed without DISCONNECT, SENDs still unapplied.
    });
    b.wait_until("memory to fill", |s| {
        s["memory_used_bytes"].as_u64().unwrap() >= 1_048_576
    });
    let mut c = b.client();
    c.subscribe("s", "/queue/gone", "auto", &[]);
    for i in 0..N {
        let m = c.expect_message();
        assert_eq!(m.header_str("seq"), Some(i.to_string().as_str()));
    }
    producer.join().unwrap();
}

#[test]
fn half_connect_is_closed_after_connect_timeout() {
    let b = Broker::start_with_config(Some("[limits]\nconnect_timeout_ms = 300\n"), &[]);
    let started = Instant::now();
    let mut c = Client::raw(b.stomp);
    c.write(b"CONNECT\naccept-version:1.2\nhost:h\n");
    let e = c.expect_error();
    assert!(
        e.header_str("message")
            .unwrap()
            .contains("connect_timeout_ms"),
        "{e:?}"
    );
    c.expect_closed_by_peer();
    // A lower bound only: the broker must not give up before the timeout.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn http_and_tls_on_the_stomp_port_are_refused_at_once() {
    // Far longer than the harness waits for a close: a close seen here is
    // not the connect timeout.
    let b = Broker::start_with_config(Some("[limits]\nconnect_timeout_ms = 600000\n"), &[]);
    let tls_client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0x5e, 0x91, 0x0a, 0x2c,
    ];
    for (request, what) in [
        (&b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n"[..], "HTTP"),
        (b"POST /api HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "HTTP"),
        (b"CONNECT broker:61613 HTTP/1.1\r\n\r\n", "HTTP"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP"),
        (tls_client_hello, "TLS"),
    ] {
        eprintln!("request {:?}", String::from_utf8_lossy(request));
        let mut c = Client::raw(b.stomp);
        c.write(request);
        let e = c.expect_error();
        let message = e.header_str("message").unwrap();
        assert!(message.contains(what), "{message}");
        c.expect_closed_by_peer();
    }
}

#[test]
fn a_connection_slot_held_by_a_silent_socket_is_freed_by_the_connect_timeout() {
    let b = Broker::start_with_config(
        Some("[limits]\nmax_connections = 1\nconnect_timeout_ms = 300\n"),
        &[],
    );
    let mut silent = Client::raw(b.stomp);
    b.wait_until("the silent socket to hold the slot", |s| {
        s["connections"] == 1
    });
    let refused = b.client();
    assert!(!refused.is_connected(), "only one slot");
    silent.expect_error();
    silent.expect_closed_by_peer();
    b.wait_until("the slot to be free", |s| s["connections"] == 0);
    assert!(b.client().is_connected());
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[limits]\nmax_conections = 5\n", "max_conections"),
        ("shards = 0\n", "shards"),
        ("[limits]\nmax_frame_size = \"big\"\n", "max_frame_size"),
        ("[store]\nmode = \"tape\"\n", "mode"),
        ("[limits]\nconnect_timeout_ms = 0\n", "connect_timeout_ms"),
        (
            "[limits]\nconnect_timeout_ms = \"soon\"\n",
            "connect_timeout_ms",
        ),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
            .args(["serve", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} should name {key}: {err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["serve", "--shards", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/brokk.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["check-config", "--config", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_master_standby_configs_are_valid() {
    for f in ["broker-a.toml", "broker-b.toml"] {
        let path = format!("{}/ops/file-ha/{f}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The JMS kind a STOMP message gets (ActiveMQ's rule: a BytesMessage with
/// content-length, `amq-msg-type` outright) is the broker's business: a
/// STOMP consumer sees neither `amq-msg-type` nor the kind, only what the
/// sender's own headers were.
#[test]
fn the_jms_kind_of_a_stomp_message_stays_out_of_stomp_headers() {
    let b = Broker::start(&[]);
    let mut c = b.client();
    c.send_sync("/queue/kinds", "sized", &[("color", "red")]);
    c.send_sync(
        "/queue/kinds",
        "typed",
        &[("amq-msg-type", "bytes"), ("brokk-body", "map")],
    );
    c.subscribe("s", "/queue/kinds", "auto", &[]);
    for expected in ["sized", "typed"] {
        let m = c.expect_message();
        assert_eq!(common::body(&m), expected);
        assert_eq!(m.header_str("amq-msg-type"), None, "{m:?}");
        assert_eq!(m.header_str("brokk-body"), None, "{m:?}");
    }
}

/// `brokk-origin` (the producer's own message id, by which the broker
/// recognises an OpenWire failover resend) is the broker's to set: a STOMP
/// client that republishes a message with every header it got, that one
/// included, has its copy stored like any other message.
#[test]
fn a_stomp_republish_carrying_a_copied_origin_is_stored() {
    let b = Broker::start(&["--shards", "1"]);
    let mut c = b.client();
    let origin = [("brokk-origin", "ID:client-1-2-3-1:1:1:5")];
    c.send_sync("/queue/again", "first", &origin);
    c.send_sync("/queue/again", "copy", &origin);
    c.subscribe("s", "/queue/again", "auto", &[]);
    for expected in ["first", "copy"] {
        let m = c.expect_message();
        assert_eq!(common::body(&m), expected);
        assert_eq!(m.header_str("brokk-origin"), None, "{m:?}");
    }
}
