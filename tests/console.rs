//! The admin port: console pages, JSON API, /healthz, /metrics and the
//! admin CLI, against the real binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_addr, Broker, Client};
use serde_json::{json, Value};

const USERS: &str = r#"
[auth]
allow_plaintext_passwords = true

[[users]]
login = "ops"
passcode = "secret"
groups = ["admins"]

[[users]]
login = "viewer"
passcode = "look"
groups = ["monitors"]

[[users]]
login = "app"
passcode = "app"
"#;

/// An HTTP answer: status and JSON (or text) body.
struct Answer {
    code: u16,
    text: String,
    cookie: Option<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

fn http(
    b: &Broker,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut req = agent.request(method, &format!("http://{}{path}", b.admin));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let r = match body {
        Some(v) => req.send_json(v),
        None => req.call(),
    };
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let code = r.status();
    let cookie = r.header("set-cookie").map(String::from);
    Answer {
        code,
        text: r.into_string().unwrap(),
        cookie,
    }
}

fn basic(login: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{pass}"));
    format!("Basic {b64}")
}

fn queues(b: &Broker, who: &str) -> Value {
    http(b, "GET", "/api/queues", &[("Authorization", who)], None).json()
}

/// A STOMP client with the application's credentials.
fn app_client(b: &Broker) -> Client {
    Client::connect(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "app"),
            ("passcode", "app"),
        ],
    )
}

/// Arguments for a broker restarted on the same data directory.
fn restartable(dir: &std::path::Path) -> Vec<String> {
    let data = dir.join("data").display().to_string();
    ["--data", &data, "--shards", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn start(config: &str) -> Broker {
    Broker::start_with_config(Some(config), &["--shards", "2"])
}

#[test]
fn without_users_only_status_health_and_metrics_answer() {
    let b = start("");
    let page = http(&b, "GET", "/", &[], None);
    assert_eq!(page.code, 200);
    assert!(
        page.text.contains("console is <strong>off</strong>"),
        "{}",
        page.text
    );
    assert!(page.text.contains("[[users]]"), "says how to turn it on");
    let q = http(&b, "GET", "/api/queues", &[], None);
    assert_eq!(q.code, 403);
    assert!(q.json()["error"].as_str().unwrap().contains("[[users]]"));
    // Not even a login can open it.
    let login = http(
        &b,
        "POST",
        "/api/login",
        &[],
        Some(json!({"login": "ops", "passcode": "secret"})),
    );
    assert_eq!(login.code, 403);
    assert_eq!(
        http(&b, "GET", "/status", &[], None).json()["role"],
        "master"
    );
    assert_eq!(http(&b, "GET", "/healthz", &[], None).code, 200);
    let m = http(&b, "GET", "/metrics", &[], None);
    assert_eq!(m.code, 200);
    assert!(m.text.contains("brokk_master 1"), "{}", m.text);
    assert_eq!(http(&b, "GET", "/nope", &[], None).code, 404);
}

#[test]
fn an_admin_acts_and_a_reader_only_looks() {
    let b = start(USERS);
    let ops = basic("ops", "secret");
    let viewer = basic("viewer", "look");
    let act = |path: &str, method: &str, who: &str, body: Option<Value>| {
        http(
            &b,
            method,
            path,
            &[("Authorization", who), ("X-Brokk-CSRF", "1")],
            body,
        )
    };
    // Send: three messages, one with a higher priority and a header.
    let sent = act(
        "/api/send",
        "POST",
        &ops,
        Some(json!({"destination": "/queue/orders", "body": "first", "count": 2})),
    );
    assert_eq!(sent.code, 200, "{}", sent.text);
    assert_eq!(sent.json()["sent"], 2);
    let urgent = act(
        "/api/send",
        "POST",
        &ops,
        Some(
            json!({"destination": "/queue/orders", "body": "urgent", "priority": 9,
                    "headers": {"kind": "rush"}}),
        ),
    );
    assert_eq!(urgent.code, 200, "{}", urgent.text);

    // A reader sees the queue and browses it in dispatch order.
    let qs = queues(&b, &viewer);
    let q = qs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "orders")
        .expect("queue listed");
    assert_eq!(q["pending"], 3);
    assert_eq!(q["enqueued"], 3);
    let browsed = http(
        &b,
        "GET",
        "/api/queues/orders/messages?max=10",
        &[("Authorization", &viewer)],
        None,
    )
    .json();
    let msgs = browsed["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["body_preview"], "urgent");
    assert_eq!(msgs[0]["headers"], json!([["kind", "rush"]]));
    assert!(msgs[0]["message_id"]
        .as_str()
        .unwrap()
        .starts_with("ID:brokk-"));
    assert_eq!(msgs[1]["body_preview"], "first");

    // A consumer gets what the console sent, headers included.
    let mut c = app_client(&b);
    c.subscribe("s", "/queue/orders", "client-individual", &[]);
    let m = c.recv().expect("the urgent message");
    assert_eq!(std::str::from_utf8(&m.body).unwrap(), "urgent");
    assert_eq!(m.header_str("kind"), Some("rush"));
    assert_eq!(m.header_str("priority"), Some("9"));
    drop(c);

    // The reader may not act; the admin must send the CSRF header.
    let denied = act("/api/queues/orders/purge", "POST", &viewer, None);
    assert_eq!(denied.code, 403);
    assert!(denied.json()["error"]
        .as_str()
        .unwrap()
        .contains("read role"));
    let no_csrf = http(
        &b,
        "POST",
        "/api/queues/orders/purge",
        &[("Authorization", &ops)],
        None,
    );
    assert_eq!(no_csrf.code, 403);
    assert!(no_csrf.json()["error"].as_str().unwrap().contains("CSRF"));
    // A user in no console group, and a wrong passcode.
    assert_eq!(
        http(
            &b,
            "GET",
            "/api/queues",
            &[("Authorization", &basic("app", "app"))],
            None
        )
        .code,
        403
    );
    assert_eq!(
        http(
            &b,
            "GET",
            "/api/queues",
            &[("Authorization", &basic("ops", "nope"))],
            None
        )
        .code,
        401
    );
    assert_eq!(http(&b, "GET", "/api/queues", &[], None).code, 401);

    // Deleting a queue with a consumer is refused; purging works.
    let mut c = app_client(&b);
    c.subscribe(
        "s",
        "/queue/orders",
        "client-individual",
        &[("activemq.prefetchSize", "1")],
    );
    assert!(c.recv().is_some());
    let busy = act("/api/queues/orders", "DELETE", &ops, None);
    assert_eq!(busy.code, 409, "{}", busy.text);
    let purged = act("/api/queues/orders/purge", "POST", &ops, None);
    assert_eq!(purged.code, 200, "{}", purged.text);
    // Three pending (the first consumer left without acking): one is out
    // to this consumer, two wait.
    assert_eq!(purged.json()["removed"], 2, "the waiting ones; one is out");
    drop(c);
    // The consumer's close reaches the broker in its own time.
    let end = Instant::now() + Duration::from_secs(10);
    while queues(&b, &viewer)
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "orders" && q["consumers"] != 0)
    {
        assert!(Instant::now() < end, "the consumer never left");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deleted = act("/api/queues/%2Fqueue%2Forders", "DELETE", &ops, None);
    assert_eq!(deleted.code, 200, "{}", deleted.text);
    let qs = queues(&b, &viewer);
    assert!(qs.as_array().unwrap().iter().all(|q| q["name"] != "orders"));

    // Bad input: clear errors, never a crash.
    assert_eq!(
        act("/api/queues/nothing/purge", "POST", &ops, None).code,
        404
    );
    assert_eq!(act("/api/queues/a%20b/purge", "POST", &ops, None).code, 400);
    assert_eq!(
        act("/api/queues/%2Ftopic%2Ft/purge", "POST", &ops, None).code,
        400
    );
    for bad in [
        json!({"destination": "orders", "body": "x"}),
        json!({"destination": "/queue/x", "priority": 10}),
        json!({"destination": "/queue/x", "count": 0}),
        json!({"destination": "/queue/x", "headers": {"persistent": "false"}}),
        json!({"destination": "/queue/x", "headers": {"a\nb": "c"}}),
        json!({"destination": "/queue/x", "surprise": true}),
    ] {
        let r = act("/api/send", "POST", &ops, Some(bad.clone()));
        assert_eq!(r.code, 400, "{bad}: {}", r.text);
        assert!(r.json()["error"].is_string());
    }
    assert!(b.status()["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["destination"] != "/queue/x"));
    assert_eq!(b.status()["role"], "master", "still serving");
}

#[test]
fn a_body_over_the_frame_limit_is_refused() {
    let b = start(&format!(
        "{USERS}\n[limits]\nmax_frame_size = 4096\n[admin]\nsend_max_bytes = 1000\n"
    ));
    let r = http(
        &b,
        "POST",
        "/api/send",
        &[
            ("Authorization", &basic("ops", "secret")),
            ("X-Brokk-CSRF", "1"),
        ],
        Some(json!({"destination": "/queue/big", "body": "z".repeat(5000)})),
    );
    assert_eq!(r.code, 413, "{}", r.text);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_frame_size"));
}

#[test]
fn a_browser_session_needs_its_csrf_token_to_act() {
    let b = start(USERS);
    let wrong = http(
        &b,
        "POST",
        "/api/login",
        &[],
        Some(json!({"login": "ops", "passcode": "bad"})),
    );
    assert_eq!(wrong.code, 401);
    let login = http(
        &b,
        "POST",
        "/api/login",
        &[],
        Some(json!({"login": "ops", "passcode": "secret"})),
    );
    assert_eq!(login.code, 200, "{}", login.text);
    let set = login.cookie.clone().expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let me = http(&b, "GET", "/api/me", &[("Cookie", &cookie)], None).json();
    assert_eq!(me["role"], "admin");
    let body = json!({"destination": "/queue/c", "body": "x"});
    let forged = http(
        &b,
        "POST",
        "/api/send",
        &[("Cookie", &cookie), ("X-Brokk-CSRF", "guess")],
        Some(body.clone()),
    );
    assert_eq!(forged.code, 403);
    let ok = http(
        &b,
        "POST",
        "/api/send",
        &[("Cookie", &cookie), ("X-Brokk-CSRF", &csrf)],
        Some(body),
    );
    assert_eq!(ok.code, 200, "{}", ok.text);
    http(&b, "POST", "/api/logout", &[("Cookie", &cookie)], None);
    assert_eq!(
        http(&b, "GET", "/api/me", &[("Cookie", &cookie)], None).code,
        401
    );
}

#[test]
fn console_sends_are_durable_and_purges_are_final() {
    let dir = tempfile::tempdir().unwrap();
    let args = restartable(dir.path());
    let ops = basic("ops", "secret");
    let hdrs = [("Authorization", ops.as_str()), ("X-Brokk-CSRF", "1")];
    let mut b = Broker::spawn(Some(USERS), &args, Some(dir.path()));
    let r = http(
        &b,
        "POST",
        "/api/send",
        &hdrs,
        Some(json!({"destination": "/queue/kept", "body": "k", "count": 5})),
    );
    assert_eq!(r.code, 200, "{}", r.text);
    b.kill9();
    let mut b = Broker::spawn(Some(USERS), &args, Some(dir.path()));
    assert_eq!(b.destination("/queue/kept").unwrap()["pending"], 5);
    let r = http(&b, "POST", "/api/queues/kept/purge", &hdrs, None);
    assert_eq!(r.json()["removed"], 5);
    b.kill9();
    let b = Broker::spawn(Some(USERS), &args, Some(dir.path()));
    let pending = b
        .destination("/queue/kept")
        .map(|d| d["pending"].as_u64().unwrap())
        .unwrap_or(0);
    assert_eq!(pending, 0, "purged messages stay gone after a crash");
}

#[test]
fn healthz_and_the_console_tell_master_from_standby() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let (s1, a1, s2, a2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let args = |s: &str, a: &str| -> Vec<String> {
        ["--data", &data, "--stomp", s, "--admin", a, "--shards", "1"]
            .iter()
            .map(|x| x.to_string())
            .collect()
    };
    let with_peer = |peer: &str| format!("{USERS}\n[admin]\npeers = [\"http://{peer}\"]\n");
    let mut master = Broker::spawn(Some(&with_peer(&a2)), &args(&s1, &a1), Some(dir.path()));
    let standby = Broker::spawn_any(Some(&with_peer(&a1)), &args(&s2, &a2), Some(dir.path()));
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    let viewer = basic("viewer", "look");
    let auth = [("Authorization", viewer.as_str())];

    assert_eq!(http(&master, "GET", "/healthz", &[], None).code, 200);
    let h = http(&standby, "GET", "/healthz", &[], None);
    assert_eq!(h.code, 503);
    assert_eq!(h.json()["role"], "standby");
    // The standby's console answers, says what it is and who is master.
    let o = http(&standby, "GET", "/api/overview", &auth, None).json();
    assert_eq!(o["role"], "standby");
    let holder = o["ha"]["holder"]
        .as_str()
        .expect("the epoch's holder")
        .to_string();
    let mo = http(&master, "GET", "/api/overview", &auth, None).json();
    assert_eq!(mo["ha"]["holder"], holder.as_str());
    assert_eq!(mo["ha"]["epoch"], o["ha"]["epoch"]);
    let q = http(&standby, "GET", "/api/queues", &auth, None);
    assert_eq!(q.code, 503);
    assert!(q.json()["error"]
        .as_str()
        .unwrap()
        .contains("not the master"));
    let m = http(&standby, "GET", "/metrics", &[], None).text;
    assert!(m.contains("brokk_master 0"), "{m}");
    // The Cluster page sees the peer's role.
    let cl = http(&master, "GET", "/api/cluster", &auth, None).json();
    let peer = &cl.as_array().unwrap()[1];
    assert_eq!(peer["reachable"], true, "{cl}");
    assert_eq!(peer["role"], "standby");

    master.kill9();
    let mut standby = standby;
    standby.wait_for_master();
    let end = Instant::now() + Duration::from_secs(20);
    while http(&standby, "GET", "/healthz", &[], None).code != 200 {
        assert!(
            Instant::now() < end,
            "the new master's /healthz never said 200"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = http(&standby, "GET", "/api/overview", &auth, None).json();
    assert_eq!(o["role"], "master");
    assert_ne!(o["ha"]["holder"], holder.as_str(), "a new epoch holder");
}

#[test]
fn metrics_count_destinations_connections_and_receipts() {
    let b = start(USERS);
    let mut c = app_client(&b);
    for i in 0..3 {
        c.send_sync("/queue/m", &format!("{i}"), &[("persistent", "true")]);
    }
    let m = http(&b, "GET", "/metrics", &[], None).text;
    assert!(
        m.contains(r#"brokk_destination_enqueued_total{destination="/queue/m",kind="queue"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"brokk_destination_pending{destination="/queue/m",kind="queue"} 3"#));
    assert!(m.contains("brokk_connections 1"), "{m}");
    let count = m
        .lines()
        .find_map(|l| l.strip_prefix("brokk_receipt_latency_seconds_count "))
        .expect("a receipt histogram");
    let count: u64 = count.parse().unwrap();
    assert!(count >= 3, "{count}");
    // Prometheus's buckets are cumulative: they never fall, and the last
    // (+Inf) holds every receipt, no more.
    let buckets: Vec<u64> = m
        .lines()
        .filter_map(|l| l.strip_prefix("brokk_receipt_latency_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 15, "{m}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(*buckets.last().unwrap(), count, "{m}");
    // The connection is listed with its counters.
    let cs = connections(&b);
    let conn = &cs.as_array().unwrap()[0];
    assert_eq!(conn["protocol"], "stomp");
    assert_eq!(conn["messages_in"], 3);
    assert_eq!(conn["messages_out"], 0);
    assert!(conn["bytes_in"].as_u64().unwrap() > 0);
    // What a consumer received is what its connection counts as out.
    c.subscribe("s", "/queue/m", "client-individual", &[]);
    for _ in 0..3 {
        let f = c.recv().expect("a MESSAGE");
        assert_eq!(f.command, brokk::protocol::stomp::Command::Message, "{f:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cs = connections(&b);
        let out = cs.as_array().unwrap()[0]["messages_out"].as_u64().unwrap();
        if out == 3 {
            break;
        }
        assert!(out < 3, "messages_out {out} after 3 deliveries");
        assert!(
            std::time::Instant::now() < deadline,
            "messages_out stayed {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(c);
}

/// `/api/connections`, as a viewer.
fn connections(b: &Broker) -> Value {
    http(
        b,
        "GET",
        "/api/connections",
        &[("Authorization", &basic("viewer", "look"))],
        None,
    )
    .json()
}

fn cli(b: &Broker, args: &[&str], user: (&str, &str)) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(args)
        .env("BROKK_ADMIN", format!("http://{}", b.admin))
        .env("BROKK_ADMIN_USER", user.0)
        .env("BROKK_ADMIN_PASSWORD", user.1)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_cli_sends_lists_browses_and_purges() {
    let b = start(USERS);
    let ops = ("ops", "secret");
    let (ok, out, err) = cli(
        &b,
        &[
            "send",
            "/queue/cli",
            "hello",
            "--count",
            "4",
            "--header",
            "app:demo",
        ],
        ops,
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"sent\": 4"), "{out}");
    let (ok, out, _) = cli(&b, &["dstat"], ("viewer", "look"));
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with("/queue/cli"))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "4", "queue size: {line}");
    let (ok, out, _) = cli(&b, &["browse", "cli", "--max", "2"], ("viewer", "look"));
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(v["messages"][0]["headers"], json!([["app", "demo"]]));
    let (ok, _, err) = cli(&b, &["purge", "cli"], ("viewer", "look"));
    assert!(!ok, "a reader cannot purge");
    assert!(err.contains("HTTP 403"), "{err}");
    let (ok, out, _) = cli(&b, &["purge", "/queue/cli"], ops);
    assert!(ok);
    assert!(out.contains("\"removed\": 4"), "{out}");
    let (ok, _, err) = cli(&b, &["dstat"], ("ops", "wrong"));
    assert!(!ok);
    assert!(
        err.contains("HTTP 401") && err.contains("wrong login"),
        "{err}"
    );
}

#[test]
fn the_console_pages_are_served_without_anything_from_the_network() {
    let b = start(USERS);
    let page = http(&b, "GET", "/", &[], None);
    assert_eq!(page.code, 200);
    for id in [
        "page-overview",
        "page-queues",
        "page-topics",
        "page-subscribers",
        "page-connections",
        "page-send",
        "page-cluster",
    ] {
        assert!(page.text.contains(id), "{id}");
    }
    let js = http(&b, "GET", "/console.js", &[], None).text;
    let css = http(&b, "GET", "/console.css", &[], None).text;
    for text in [&page.text, &js, &css] {
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "no external fetch"
        );
    }
    let api = http(&b, "GET", "/openapi.json", &[], None).json();
    assert_eq!(api["openapi"], "3.0.3");
    assert!(api["paths"]["/api/send"]["post"].is_object());
}

#[test]
fn authorization_rules_bind_the_console_too() {
    let users = USERS.replace(
        "allow_plaintext_passwords = true",
        "allow_plaintext_passwords = true\ncreate_requires_admin = true",
    );
    let config = format!(
        r#"{users}
[[authorization]]
destination = "/queue/open.>"
read = ["admins", "monitors"]
write = ["admins"]
admin = ["admins"]

[[authorization]]
destination = "/queue/locked"
read = ["admins"]
write = ["admins"]
"#
    );
    let b = start(&config);
    let ops = basic("ops", "secret");
    let act = |method: &str, path: &str, body: Option<Value>| {
        http(
            &b,
            method,
            path,
            &[("Authorization", &ops), ("X-Brokk-CSRF", "1")],
            body,
        )
    };
    let sent = act(
        "POST",
        "/api/send",
        Some(json!({"destination": "/queue/open.a", "body": "x"})),
    );
    assert_eq!(sent.code, 200, "{}", sent.text);
    // No admin right on /queue/locked: it cannot be made, nor purged.
    let made = act(
        "POST",
        "/api/send",
        Some(json!({"destination": "/queue/locked", "body": "x"})),
    );
    assert_eq!(made.code, 403, "{}", made.text);
    assert!(made.json()["error"]
        .as_str()
        .unwrap()
        .contains("not authorized to create /queue/locked"));
    // No entry matches: denied.
    let other = act(
        "POST",
        "/api/send",
        Some(json!({"destination": "/queue/elsewhere", "body": "x"})),
    );
    assert_eq!(other.code, 403, "{}", other.text);
    let purge = act("POST", "/api/queues/locked/purge", None);
    assert_eq!(purge.code, 403, "{}", purge.text);
    assert_eq!(
        act("POST", "/api/queues/open.a/purge", None).json()["removed"],
        1
    );
}

#[test]
fn an_offline_durable_subscription_is_deleted_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let args = restartable(dir.path());
    let ops = basic("ops", "secret");
    let hdrs = [("Authorization", ops.as_str()), ("X-Brokk-CSRF", "1")];
    let path = "/api/subscribers?topic=%2Ftopic%2Fprices&client_id=desk&name=eu";
    let mut b = Broker::spawn(Some(USERS), &args, Some(dir.path()));
    let durable = |b: &Broker| {
        Client::connect(
            b.stomp,
            &[
                ("accept-version", "1.2"),
                ("login", "app"),
                ("passcode", "app"),
                ("client-id", "desk"),
            ],
        )
    };
    let mut sub = durable(&b);
    sub.subscribe(
        "s",
        "/topic/prices",
        "client-individual",
        &[("activemq.subscriptionName", "eu")],
    );
    // Held by a consumer: refused.
    let busy = http(&b, "DELETE", path, &hdrs, None);
    assert_eq!(busy.code, 409, "{}", busy.text);
    sub.disconnect();
    let mut p = app_client(&b);
    for i in 0..3 {
        p.send_sync("/topic/prices", &format!("{i}"), &[("persistent", "true")]);
    }
    let subs = http(
        &b,
        "GET",
        "/api/subscribers",
        &[("Authorization", &ops)],
        None,
    )
    .json();
    assert_eq!(subs[0]["online"], false, "{subs}");
    assert_eq!(subs[0]["pending"], 3, "{subs}");
    // A reader may not; a wrong name is 404; then the admin deletes it.
    let viewer = basic("viewer", "look");
    let denied = http(
        &b,
        "DELETE",
        path,
        &[("Authorization", &viewer), ("X-Brokk-CSRF", "1")],
        None,
    );
    assert_eq!(denied.code, 403);
    let wrong = http(
        &b,
        "DELETE",
        &path.replace("name=eu", "name=us"),
        &hdrs,
        None,
    );
    assert_eq!(wrong.code, 404, "{}", wrong.text);
    let gone = http(&b, "DELETE", path, &hdrs, None);
    assert_eq!(gone.code, 200, "{}", gone.text);
    assert_eq!(gone.json()["removed"], 3);
    drop(p);
    b.kill9();
    // After a crash it stays gone, and a new subscription of that name
    // starts empty.
    let b = Broker::spawn(Some(USERS), &args, Some(dir.path()));
    let subs = http(
        &b,
        "GET",
        "/api/subscribers",
        &[("Authorization", &ops)],
        None,
    )
    .json();
    assert_eq!(subs, json!([]), "deleted for good");
    let mut again = durable(&b);
    again.subscribe(
        "s",
        "/topic/prices",
        "client-individual",
        &[("activemq.subscriptionName", "eu")],
    );
    assert!(
        again.recv_timeout(Duration::from_millis(500)).is_none(),
        "no message of the deleted subscription"
    );
}
