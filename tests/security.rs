//! Security (issue 14): STOMP over TLS (a rustls client and stomp.py),
//! mutual TLS, hashed passcodes, per-destination authorization, the
//! connection rate limit, and start-up errors for bad settings.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::{client_config, is_timeout, Ended, Pki, TlsClient};
use common::{Broker, Client};

/// A PHC string for `password`, made by `brokk hash-password`.
fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    phc
}

/// `[tls]` and a TLS listener on a free port, with the server's files.
fn tls_section(pki: &Pki, client_ca: Option<&Path>) -> String {
    let (cert, key) = pki.issue("localhost", true);
    let mut s = format!(
        "[listeners]\nstomp_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!(
            "client_ca_file = {:?}\n",
            ca.display().to_string()
        ));
    }
    s
}

fn login<'a>(user: &'a str, pass: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("accept-version", "1.2"),
        ("login", user),
        ("passcode", pass),
    ]
}

#[test]
fn tls_and_plain_listeners_serve_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let b = Broker::start_with_config(Some(&tls_section(&pki, None)), &["--shards", "2"]);
    let tls_addr = b.stomp_tls.expect("a TLS listener in the start line");
    let cfg = client_config(&pki.ca_file(), None);
    let mut tls = TlsClient::connect(tls_addr, cfg.clone(), &[]);
    assert!(tls.is_connected(), "{:?}", tls.connected);
    tls.frame(
        "SUBSCRIBE",
        &[
            ("id", "1"),
            ("destination", "/queue/tls.in"),
            ("receipt", "s"),
        ],
        b"",
    );
    tls.expect("RECEIPT");
    let mut plain = b.client();
    plain.send_sync("/queue/tls.in", "from plain", &[]);
    let m = tls.expect("MESSAGE");
    assert_eq!(&m.body[..], b"from plain");
    // Many messages one way over TLS, in order.
    plain.subscribe("1", "/queue/tls.out", "auto", &[]);
    for i in 0..200 {
        tls.frame(
            "SEND",
            &[("destination", "/queue/tls.out")],
            format!("m{i}").as_bytes(),
        );
    }
    for i in 0..200 {
        assert_eq!(common::body(&plain.expect_message()), format!("m{i}"));
    }
}

#[test]
fn stomppy_over_tls() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "stomp.py runs from the virtualenv in .venv (ops/test.sh makes it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let cfg = format!(
        "{}[[users]]\nlogin = \"py\"\npasscode_hash = \"{}\"\n",
        tls_section(&pki, None),
        hash("snake")
    );
    let b = Broker::start_with_config(Some(&cfg), &[]);
    let port = b.stomp_tls.unwrap().port().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/stomppy_tls.py");
    let mut child = Command::new(python)
        .arg(script)
        .args([&port, pki.ca_file().to_str().unwrap(), "py", "snake"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, 60, "stomp.py over TLS");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "stomp.py over TLS failed: {out}");
    assert!(out.contains("received hello over tls"), "{out}");
}

#[test]
fn mutual_tls_logs_in_by_certificate_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other-ca");
    let cfg = format!(
        "{}[[users]]\nlogin = \"alice\"\ngroups = [\"ops\"]\n[[users]]\nlogin = \"bob\"\npasscode_hash = \"{}\"\n",
        tls_section(&pki, Some(&pki.ca_file())),
        hash("pw")
    );
    let b = Broker::start_with_config(Some(&cfg), &[]);
    let addr = b.stomp_tls.unwrap();
    let (c, k) = pki.issue("alice", false);
    // The certificate's CN is the login: no passcode needed.
    let mut alice = TlsClient::connect(addr, client_config(&pki.ca_file(), Some((&c, &k))), &[]);
    assert!(alice.is_connected(), "{:?}", alice.connected);
    alice.frame(
        "SEND",
        &[("destination", "/queue/m"), ("receipt", "r")],
        b"x",
    );
    alice.expect("RECEIPT");
    // A certificate from this CA for a login that is not configured.
    let (c, k) = pki.issue("mallory", false);
    let mut m = TlsClient::connect(addr, client_config(&pki.ca_file(), Some((&c, &k))), &[]);
    let e = m.connected.take().expect("an ERROR frame");
    assert_eq!(e.command.as_str(), "ERROR");
    assert!(e
        .header_str("message")
        .unwrap()
        .contains("not a configured user"));
    assert_eq!(m.recv().unwrap_err(), Ended::Closed);
    // No certificate, or one another CA signed: the handshake fails.
    for cert in [None, Some(other.issue("alice", false))] {
        let cfg = client_config(
            &pki.ca_file(),
            cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        );
        let mut c = TlsClient::connect(addr, cfg, &login("bob", "pw"));
        assert!(!c.is_connected(), "{:?}", c.connected);
        if c.connected.is_none() {
            assert_eq!(c.recv().unwrap_err(), Ended::Closed);
        }
    }
    // The plain listener still takes passcodes.
    let bob = Client::connect(b.stomp, &login("bob", "pw"));
    assert!(bob.is_connected());
}

#[test]
fn hashed_passcodes_are_checked_and_anonymous_clients_refused() {
    let cfg = format!(
        "[[users]]\nlogin = \"ann\"\npasscode_hash = \"{}\"\n",
        hash("correct horse")
    );
    let b = Broker::start_with_config(Some(&cfg), &[]);
    for headers in [
        &login("ann", "wrong")[..],
        &login("nobody", "correct horse")[..],
        &[("accept-version", "1.2")][..],
    ] {
        let mut c = Client::connect(b.stomp, headers);
        let e = c.connected.take().unwrap();
        assert_eq!(e.command.as_str(), "ERROR", "{headers:?}");
        assert!(e
            .header_str("message")
            .unwrap()
            .contains("Authentication failed"));
        c.expect_closed_by_peer();
    }
    // Twice: the second login comes from the cache of verified pairs.
    for _ in 0..2 {
        let c = Client::connect(b.stomp, &login("ann", "correct horse"));
        assert!(c.is_connected(), "{:?}", c.connected);
        c.disconnect();
    }
}

const AUTHZ: &str = r#"
[[authorization]]
destination = "/queue/orders.>"
read = ["ops", "admins"]
write = ["shop"]
admin = ["admins"]

[[authorization]]
destination = "/queue/orders.*.audit"
read = ["audit"]
write = ["shop"]
admin = ["shop"]

[[authorization]]
destination = "/topic/prices.*"
read = ["*"]
write = ["admins"]
admin = ["admins"]
"#;

/// The error a denied frame gets, and that the connection then closes.
fn expect_denied(c: &mut Client, message: &str) {
    let e = c.expect_error();
    assert_eq!(e.header_str("message"), Some(message), "{e:?}");
    c.expect_closed_by_peer();
}

#[test]
fn authorization_allows_and_denies_read_write_and_admin() {
    let mut cfg =
        String::from("[auth]\nallow_plaintext_passwords = true\ncreate_requires_admin = true\n");
    for (user, group) in [
        ("adm", "admins"),
        ("shop", "shop"),
        ("ops", "ops"),
        ("aud", "audit"),
        ("x", "none"),
    ] {
        cfg.push_str(&format!(
            "[[users]]\nlogin = \"{user}\"\npasscode = \"pw\"\ngroups = [\"{group}\"]\n"
        ));
    }
    cfg.push_str(AUTHZ);
    let b = Broker::start_with_config(Some(&cfg), &["--shards", "2"]);
    let as_user = |u: &str| {
        let c = Client::connect(b.stomp, &login(u, "pw"));
        assert!(c.is_connected(), "{u}: {:?}", c.connected);
        c
    };
    // admin: shop may write orders.>, but the first use of a new
    // destination needs admin, which only the admins group has there.
    let mut shop = as_user("shop");
    shop.frame(
        "SEND",
        &[("destination", "/queue/orders.new"), ("receipt", "r")],
        b"1",
    );
    expect_denied(
        &mut shop,
        "not authorized to create /queue/orders.new (admin)",
    );
    let mut adm = as_user("adm");
    // Admin creates it (and admins may read); admin grants no write
    // (`>`: orders.new is under orders.>).
    adm.subscribe("1", "/queue/orders.new", "auto", &[]);
    adm.frame("SEND", &[("destination", "/queue/orders.new")], b"x");
    expect_denied(&mut adm, "not authorized to write /queue/orders.new");
    // The queue exists now: write allowed, read allowed.
    let mut shop = as_user("shop");
    shop.send_sync("/queue/orders.new", "first order", &[]);
    let mut ops = as_user("ops");
    ops.subscribe("1", "/queue/orders.new", "auto", &[]);
    assert_eq!(common::body(&ops.expect_message()), "first order");
    // write denied, read denied.
    ops.frame("SEND", &[("destination", "/queue/orders.new")], b"x");
    expect_denied(&mut ops, "not authorized to write /queue/orders.new");
    let mut shop2 = as_user("shop");
    shop2.frame(
        "SUBSCRIBE",
        &[("id", "1"), ("destination", "/queue/orders.new")],
        b"",
    );
    expect_denied(&mut shop2, "not authorized to read /queue/orders.new");
    // `*`: orders.eu.audit matches the more specific orders.*.audit, where
    // shop holds admin, so it may create it; ops' read from orders.> no
    // longer applies there, audit's does.
    shop.send_sync("/queue/orders.eu.audit", "audited", &[]);
    let mut aud = as_user("aud");
    aud.subscribe("1", "/queue/orders.eu.audit", "auto", &[]);
    assert_eq!(common::body(&aud.expect_message()), "audited");
    let mut ops = as_user("ops");
    ops.frame(
        "SUBSCRIBE",
        &[("id", "1"), ("destination", "/queue/orders.eu.audit")],
        b"",
    );
    expect_denied(&mut ops, "not authorized to read /queue/orders.eu.audit");
    // `*` is one segment: prices.fx matches, prices.fx.eu matches no entry.
    let mut adm = as_user("adm");
    adm.subscribe("2", "/topic/prices.fx", "auto", &[]);
    let mut anyone = as_user("x");
    anyone.subscribe("1", "/topic/prices.fx", "auto", &[]);
    anyone.frame(
        "SUBSCRIBE",
        &[("id", "2"), ("destination", "/topic/prices.fx.eu")],
        b"",
    );
    expect_denied(&mut anyone, "not authorized to read /topic/prices.fx.eu");
    // A destination no entry matches: denied to everyone.
    let mut adm2 = as_user("adm");
    adm2.frame("SEND", &[("destination", "/queue/elsewhere")], b"x");
    expect_denied(&mut adm2, "not authorized to write /queue/elsewhere");
    // The allowed connections are still fine.
    shop.send_sync("/queue/orders.new", "second", &[]);
}

/// Reads until the peer closes; fails on any byte that is not a STOMP
/// ERROR, and on 10 s of silence (a silence is not a close).
fn expect_closed(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {
                panic!(
                    "not closed within 10 s; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            }
            Err(_) => return got,
        }
    }
}

#[test]
fn plain_stomp_to_the_tls_port_and_tls_to_the_plain_port_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    // A connect timeout far beyond the test's deadline: a close must come
    // from the mismatch, not from a timer.
    let cfg = format!(
        "{}[limits]\nconnect_timeout_ms = 600000\n",
        tls_section(&pki, None)
    );
    let b = Broker::start_with_config(Some(&cfg), &[]);
    let mut s = TcpStream::connect(b.stomp_tls.unwrap()).unwrap();
    s.write_all(b"CONNECT\naccept-version:1.2\n\n\0").unwrap();
    let got = expect_closed(s);
    assert!(!got.starts_with(b"CONNECTED"), "{got:?}");
    // TLS to the plain port: the codec knows a ClientHello; the close
    // comes at once (with a plain ERROR frame the TLS client cannot read).
    let mut c = TlsClient::connect(b.stomp, client_config(&pki.ca_file(), None), &[]);
    assert!(!c.is_connected());
    assert!(c.connected.is_none());
    assert_eq!(c.recv().unwrap_err(), Ended::Closed);
    let mut raw = TcpStream::connect(b.stomp).unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .unwrap();
    let got = expect_closed(raw);
    assert!(
        got.starts_with(b"ERROR"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(String::from_utf8_lossy(&got).contains("TLS"), "{got:?}");
}

#[test]
fn connections_over_the_per_address_rate_are_closed() {
    let b = Broker::start_with_config(Some("[limits]\nconnections_per_ip_per_sec = 1\n"), &[]);
    // One per second is allowed; a burst soon has one closed at once.
    let mut refused = false;
    let mut open = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(b.stomp).unwrap();
        if s.write_all(b"CONNECT\naccept-version:1.2\n\n\0").is_err() {
            refused = true;
            break;
        }
        let mut first = [0u8; 9];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match s.read(&mut first) {
            Ok(n) if first[..n].starts_with(b"CONNECTED") => open.push(s),
            Ok(0) => {
                refused = true;
                break;
            }
            Err(e) if !is_timeout(&e) => {
                refused = true;
                break;
            }
            other => panic!("neither CONNECTED nor a close: {other:?} {first:?}"),
        }
    }
    assert!(refused, "50 connections in a row, none over 1 per second");
}

/// Runs `brokk serve` with `config`; it must exit 2 naming `key`.
fn expect_config_error(dir: &Path, config: &str, key: &str) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args([
            "serve",
            "--stomp",
            "127.0.0.1:0",
            "--openwire",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--mode",
            "memory",
            "--config",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, 30, &format!("brokk on a bad {key}"));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{key}: {err}");
    assert!(err.contains(&format!("config key `{key}`")), "{key}: {err}");
}

#[test]
fn bad_security_settings_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.issue("localhost", true);
    let (_, other_key) = pki.issue("other", true);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let tls = |c: &Path, k: &Path| {
        format!(
            "[listeners]\nstomp_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            c.display().to_string(),
            k.display().to_string()
        )
    };
    let d = dir.path();
    expect_config_error(d, &tls(&d.join("missing.crt"), &key), "tls.cert_file");
    expect_config_error(d, &tls(&garbage, &key), "tls.cert_file");
    expect_config_error(d, &tls(&cert, &d.join("missing.key")), "tls.key_file");
    expect_config_error(d, &tls(&cert, &garbage), "tls.key_file");
    expect_config_error(d, &tls(&cert, &other_key), "tls.key_file");
    let ca = format!(
        "{}client_ca_file = \"/nonexistent/ca.pem\"\n",
        tls(&cert, &key)
    );
    expect_config_error(d, &ca, "tls.client_ca_file");
    expect_config_error(
        d,
        "[listeners]\nstomp_tls = \"127.0.0.1:0\"\n",
        "listeners.stomp_tls",
    );
    expect_config_error(
        d,
        "[[users]]\nlogin = \"a\"\npasscode = \"p\"\n",
        "users.passcode",
    );
    expect_config_error(
        d,
        "[[users]]\nlogin = \"a\"\npasscode_hash = \"md5:x\"\n",
        "users.passcode_hash",
    );
    expect_config_error(
        d,
        "[[authorization]]\ndestination = \"/queue/>\"\nread = [\"*\"]\n",
        "authorization",
    );
    let bad_pattern =
        "[[users]]\nlogin = \"a\"\n[[authorization]]\ndestination = \"/queue/a.>.b\"\n";
    expect_config_error(d, bad_pattern, "authorization.destination");
}

#[test]
fn destinations_recovered_at_start_need_no_admin_right() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let cfg = format!(
        "[auth]\nallow_plaintext_passwords = true\ncreate_requires_admin = true\n\
         [[users]]\nlogin = \"adm\"\npasscode = \"pw\"\ngroups = [\"admins\"]\n\
         [[users]]\nlogin = \"shop\"\npasscode = \"pw\"\ngroups = [\"shop\"]\n{AUTHZ}"
    );
    let mut b = Broker::start_with_config(Some(&cfg), &["--data", &data]);
    let mut adm = Client::connect(b.stomp, &login("adm", "pw"));
    // admins create orders.kept (they may read it, not write it); shop
    // leaves a persistent message in it, so the restart recovers it.
    adm.subscribe("1", "/queue/orders.kept", "client", &[]);
    adm.disconnect();
    let mut shop = Client::connect(b.stomp, &login("shop", "pw"));
    shop.send_sync("/queue/orders.kept", "kept", &[("persistent", "true")]);
    assert!(b.terminate().success());
    let b = Broker::start_with_config(Some(&cfg), &["--data", &data]);
    // No admin for shop, yet the recovered queue takes its SEND.
    let mut shop = Client::connect(b.stomp, &login("shop", "pw"));
    shop.send_sync("/queue/orders.kept", "after restart", &[]);
    // A new one still needs admin.
    shop.frame("SEND", &[("destination", "/queue/orders.other")], b"x");
    expect_denied(
        &mut shop,
        "not authorized to create /queue/orders.other (admin)",
    );
}

#[test]
fn the_admin_port_serves_over_tls_and_closes_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let cfg = tls_section(&pki, None).replace(
        "[listeners]\n",
        "[listeners]\nadmin_tls = \"127.0.0.1:0\"\n",
    );
    let b = Broker::start_with_config(Some(&cfg), &[]);
    let addr: std::net::SocketAddr = b
        .role_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin_tls="))
        .expect("the admin TLS address on the role line")
        .parse()
        .unwrap();
    // HTTPS: /healthz answers.
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(
        client_config(&pki.ca_file(), None),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""role":"master""#), "{answer}");
    // Plain HTTP to the TLS port: closed, never answered in clear.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = expect_closed(plain);
    assert!(!String::from_utf8_lossy(&got).contains("master"), "{got:?}");
    // Without [tls] it is a config error naming the key.
    expect_config_error(
        dir.path(),
        "[listeners]\nadmin_tls = \"127.0.0.1:0\"\n",
        "listeners.admin_tls",
    );
}

#[test]
fn by_default_read_and_write_need_no_admin_to_make_a_destination() {
    // Brokk keeps no record of empty destinations: with ActiveMQ's rule, a
    // failover would lock read-only consumers out of every queue that was
    // empty. The default asks only for the right used.
    let cfg = "[auth]\nallow_plaintext_passwords = true\n\
        [[users]]\nlogin = \"reader\"\npasscode = \"pw\"\ngroups = [\"readers\"]\n\
        [[authorization]]\ndestination = \"/queue/jobs.>\"\nread = [\"readers\"]\n";
    let b = Broker::start_with_config(Some(cfg), &[]);
    let mut c = Client::connect(b.stomp, &login("reader", "pw"));
    assert!(c.is_connected(), "{:?}", c.connected);
    c.subscribe("s", "/queue/jobs.never-seen", "auto", &[]);
    c.frame("SEND", &[("destination", "/queue/jobs.never-seen")], b"x");
    expect_denied(&mut c, "not authorized to write /queue/jobs.never-seen");
}
