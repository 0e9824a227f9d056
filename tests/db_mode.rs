//! The database modes against real MariaDB and PostgreSQL servers (started
//! by `ops/services.sh`, which the test command runs first): a master/standby
//! pair on one database, SIGKILLs under load, a master cut off from the
//! database, a wrong password, and ActiveMQ's table layout. Each test makes
//! its own database and drops it afterwards.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::blackhole::Blackhole;
use common::db::{
    assert_all_present, assert_tables_empty, drain, is_standby, Consumer, Engine, Node, Producer,
    TestDb,
};
use common::{body, frame_bytes, Broker, Client, Rng};

/// Every table that holds a row for a pending message (or one of its
/// side rows): empty once everything is consumed.
const MESSAGE_TABLES: [&str; 5] = [
    "ACTIVEMQ_MSGS",
    "BROKK_TOPIC_ACKS",
    "BROKK_REDELIVERIES",
    "BROKK_TX_ACKS",
    "BROKK_TX",
];

/// A fresh database and a master/standby pair on it.
fn pair(engine: Engine) -> (TestDb, tempfile::TempDir, [Node; 2], Broker, Broker) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let a = nodes[0].start(&db, dir.path());
    assert!(!is_standby(&a), "{}", a.role_line);
    let b = nodes[1].start(&db, dir.path());
    assert!(is_standby(&b), "the second waits: {}", b.role_line);
    (db, dir, nodes, a, b)
}

/// SIGKILL the master under persistent load, twenty times, at random
/// points of its batches (after a random number of receipts): the standby
/// takes over each time, the killed broker comes back as standby, every
/// receipted message is there at the end, and once everything is consumed
/// no row is left in any table (no orphans).
fn kills_under_load(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let mut brokers = [Some(nodes[0].start(&db, dir.path())), None];
    assert!(!is_standby(brokers[0].as_ref().unwrap()));
    brokers[1] = Some(nodes[1].start(&db, dir.path()));
    assert!(is_standby(brokers[1].as_ref().unwrap()), "the second waits");
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    let mut rng = Rng::seeded();
    let master = kill_masters(&db, dir.path(), &nodes, &mut brokers, "", 20, || {
        producer.wait_more(1 + rng.below(150) as usize)
    });
    producer.wait_more(100);
    let receipted = producer.finish();
    let got = drain(brokers[master].as_ref().unwrap());
    assert_all_present(&receipted, &got);
    assert_tables_empty(&db, &MESSAGE_TABLES);
}

/// With `store.overlap = "always"`: four producers and a consumer that
/// acknowledges as it goes, so that a transaction's deletes name rows the
/// one before it inserted while that one is still committing. SIGKILL the
/// master ten times at random points: nothing receipted lost, no row left
/// once everything is consumed (a delete that ran before its insert
/// committed would leave one), and the last master's transactions did
/// overlap.
fn kills_under_overlapped_load(engine: Engine) {
    const OVERLAP: &str = "overlap = \"always\"\n";
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let mut brokers = [
        Some(nodes[0].start_env(&db, dir.path(), OVERLAP, &[])),
        None,
    ];
    assert!(!is_standby(brokers[0].as_ref().unwrap()));
    brokers[1] = Some(nodes[1].start_env(&db, dir.path(), OVERLAP, &[]));
    assert!(is_standby(brokers[1].as_ref().unwrap()), "the second waits");
    let addrs = [nodes[0].addr(), nodes[1].addr()];
    let producers: Vec<Producer> = (0..4)
        .map(|i| Producer::start_from(addrs.to_vec(), i * 1_000_000))
        .collect();
    let consumer = Consumer::start(addrs);
    let mut rng = Rng::seeded();
    let master = kill_masters(&db, dir.path(), &nodes, &mut brokers, OVERLAP, 10, || {
        producers[0].wait_more(1 + rng.below(150) as usize)
    });
    producers[0].wait_more(300);
    let last = brokers[master].as_ref().unwrap();
    assert!(
        metric(last, "brokk_db_overlapped_transactions_total") > 0.0,
        "no transaction began while another committed"
    );
    let receipted: Vec<u64> = producers.into_iter().flat_map(Producer::finish).collect();
    let mut got = consumer.finish();
    got.extend(drain(last));
    assert_all_present(&receipted, &got);
    assert_tables_empty(&db, &MESSAGE_TABLES);
}

/// SIGKILLs the master (`brokers[0]` first) `rounds` times, each after
/// `before_each`: the standby takes over each time, and the killed broker
/// comes back (with `config`) as standby. Returns which one is master.
fn kill_masters(
    db: &TestDb,
    dir: &std::path::Path,
    nodes: &[Node; 2],
    brokers: &mut [Option<Broker>; 2],
    config: &str,
    rounds: usize,
    mut before_each: impl FnMut(),
) -> usize {
    let mut master = 0;
    for _ in 0..rounds {
        before_each();
        brokers[master].as_mut().unwrap().kill9();
        let standby = 1 - master;
        brokers[standby].as_mut().unwrap().wait_for_master();
        let back = nodes[master].start_env(db, dir, config, &[]);
        assert!(is_standby(&back), "{}", back.role_line);
        brokers[master] = Some(back);
        master = standby;
    }
    master
}

/// With `store.overlap = "always"` and every seventh COMMIT failing
/// (`BROKK_FAULT_COMMIT_FAILS_EVERY`, rolled back and reported as a failed
/// COMMIT, outcome unknown): a transaction that began while the failed one
/// committed rolls back, the failed one goes again on its own, then the
/// next. Under four producers and a live consumer: progress goes on (a wait
/// with a deadline), nothing receipted is lost, no row is left.
fn failed_commits_under_overlapped_load(engine: Engine) {
    let db = TestDb::new(engine);
    overlapped_faulty_load(&db, "", ("BROKK_FAULT_COMMIT_FAILS_EVERY", "7"), 800, |b| {
        assert!(
            metric(b, "brokk_db_write_failures_total") > 0.0,
            "no COMMIT failed"
        )
    });
    assert_tables_empty(&db, &MESSAGE_TABLES);
}

/// With `store.overlap = "always"`, a one-second lease and every fifth
/// transaction's COMMIT held back 1.2 s (`BROKK_FAULT_SLOW_COMMIT_EVERY`):
/// the transaction that began meanwhile judges the lease as it is when it
/// commits, renewed since, and the master keeps serving. (On MariaDB a
/// read in that transaction once showed the lease row as of its start:
/// expired by then, so the master took itself for fenced and exited.)
fn a_slow_commit_before_does_not_fence_a_healthy_master(engine: Engine) {
    let db = TestDb::new(engine);
    overlapped_faulty_load(
        &db,
        "[ha]\nlease_ms = 1000\n",
        ("BROKK_FAULT_SLOW_COMMIT_EVERY", "5:1200"),
        60,
        // Still the master, still answering (a fenced one exits).
        |b| assert!(metric(b, "brokk_db_transactions_total") > 0.0),
    );
}

/// One broker with `store.overlap = "always"`, `config` and the fault
/// switch `fault`, under four producers and a live consumer until
/// `receipts` more are receipted (a wait with a deadline: progress goes
/// on): transactions overlapped, `check` holds, and nothing receipted is
/// lost.
fn overlapped_faulty_load(
    db: &TestDb,
    config: &str,
    fault: (&str, &str),
    receipts: usize,
    check: impl Fn(&Broker),
) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let b = node.start_env(
        db,
        dir.path(),
        &format!("overlap = \"always\"\n{config}"),
        &[fault],
    );
    let addrs = [node.addr(), node.addr()];
    let producers: Vec<Producer> = (0..4)
        .map(|i| Producer::start_from(addrs.to_vec(), i * 1_000_000))
        .collect();
    let consumer = Consumer::start(addrs);
    producers[0].wait_more(receipts);
    assert!(
        metric(&b, "brokk_db_overlapped_transactions_total") > 0.0,
        "no transaction began while another committed"
    );
    check(&b);
    let receipted: Vec<u64> = producers.into_iter().flat_map(Producer::finish).collect();
    let mut got = consumer.finish();
    got.extend(drain(&b));
    assert_all_present(&receipted, &got);
}

/// One figure of `b`'s `/metrics`.
fn metric(b: &Broker, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(b.admin).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing: {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The master loses its database connections (ended from the server side)
/// while the standby waits: the standby takes the lease, the old master
/// stops serving (exit 3), and nothing receipted is lost.
fn cut_off_master(engine: Engine) {
    let (db, _dir, nodes, mut a, mut b) = pair(engine);
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    producer.wait_more(200);
    assert!(db.kill_sessions_of(a.pid()) > 0, "the master has sessions");
    b.wait_for_master();
    let status = a.wait_exit(30);
    assert_eq!(status.code(), Some(3), "the old master stops, fenced");
    producer.wait_more(200);
    let receipted = producer.finish();
    assert_all_present(&receipted, &drain(&b));
}

/// The master is cut off from the database silently (a firewall dropping
/// its packets: no error, no close) while its clients still reach it: it
/// stops serving once its lease has run out (exit 3) without a word from
/// the database, the standby ends its database sessions and takes over,
/// and nothing receipted is lost.
fn silently_cut_off_master(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let hole = Blackhole::start(db.server_addr());
    let nodes = [Node::new(), Node::new()];
    let mut a = nodes[0].start_at(&db, &db.url_at(hole.addr), dir.path());
    assert!(!is_standby(&a), "{}", a.role_line);
    let mut b = nodes[1].start(&db, dir.path());
    assert!(is_standby(&b), "{}", b.role_line);
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    producer.wait_more(200);
    hole.freeze();
    b.wait_for_master_within(30);
    let status = a.wait_exit(30);
    assert_eq!(
        status.code(),
        Some(3),
        "the old master stops, its lease run out"
    );
    producer.wait_more(200);
    let receipted = producer.finish();
    assert_all_present(&receipted, &drain(&b));
}

/// A durable subscriber's connection to `b`.
fn durable(b: &Broker, client: &str) -> Client {
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", client)]);
    c.subscribe(
        "d",
        "/topic/t",
        "client-individual",
        &[("activemq.subscriptionName", "sub")],
    );
    c
}

/// Transactions survive a failover as committed: a durable subscriber's
/// acknowledgement made in a transaction stays made (the other subscriber
/// still gets the message), SENDs committed across shards are all there,
/// an uncommitted transaction leaves nothing, and once everything is
/// consumed no transaction row is left.
fn transactions_across_a_failover(engine: Engine) {
    let (db, _dir, _nodes, mut a, mut b) = pair(engine);
    let sub_x = durable(&a, "x");
    let mut sub_y = durable(&a, "y");
    let mut p = a.client();
    p.send_sync("/topic/t", "m1", &[("persistent", "true")]);
    let m1 = sub_y.expect_message();
    assert_eq!(body(&m1), "m1");
    let id = m1.header_str("ack").unwrap().to_string();
    sub_y.frame("BEGIN", &[("transaction", "t1")], b"");
    sub_y.frame("ACK", &[("id", &id), ("transaction", "t1")], b"");
    sub_y.frame("COMMIT", &[("transaction", "t1"), ("receipt", "c1")], b"");
    sub_y.expect_receipt("c1");
    // SENDs to eight queues (both shards) in one transaction.
    p.frame("BEGIN", &[("transaction", "t2")], b"");
    for q in 0..8 {
        let dest = format!("/queue/tx{q}");
        p.frame(
            "SEND",
            &[
                ("destination", &dest),
                ("persistent", "true"),
                ("transaction", "t2"),
            ],
            b"committed",
        );
    }
    p.frame("COMMIT", &[("transaction", "t2"), ("receipt", "c2")], b"");
    p.expect_receipt("c2");
    // Never committed.
    p.frame("BEGIN", &[("transaction", "t3")], b"");
    p.send_sync(
        "/queue/tx0",
        "uncommitted",
        &[("persistent", "true"), ("transaction", "t3")],
    );
    drop((sub_x, sub_y));
    a.kill9();
    b.wait_for_master();
    // y acknowledged m1 in a committed transaction: its first message now
    // is the next one; x still has m1.
    let mut sub_x = durable(&b, "x");
    let mut sub_y = durable(&b, "y");
    let mut p = b.client();
    p.send_sync("/topic/t", "m2", &[("persistent", "true")]);
    let first = sub_y.expect_message();
    assert_eq!(
        body(&first),
        "m2",
        "an acknowledgement committed before the failover was lost"
    );
    sub_y.ack(&first);
    for want in ["m1", "m2"] {
        let m = sub_x.expect_message();
        assert_eq!(body(&m), want);
        sub_x.ack(&m);
    }
    for q in 0..8 {
        let mut c = b.client();
        c.subscribe("s", &format!("/queue/tx{q}"), "client-individual", &[]);
        let m = c.expect_message();
        assert_eq!(body(&m), "committed", "queue tx{q}");
        c.ack(&m);
        assert!(
            c.recv_timeout(Duration::from_millis(300)).is_none(),
            "queue tx{q}: more than the committed message (the uncommitted one?)"
        );
        c.disconnect();
    }
    sub_x.disconnect();
    sub_y.disconnect();
    let end = Instant::now() + Duration::from_secs(10);
    for table in [
        "ACTIVEMQ_MSGS",
        "BROKK_TOPIC_ACKS",
        "BROKK_TX_ACKS",
        "BROKK_TX",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        db.wait_for(&sql, "0", end, &format!("{table}: rows left"));
    }
}

/// A durable subscription made after a topic message was stored (held by
/// an earlier subscription) does not get that message after a failover.
fn a_late_subscription_gets_no_earlier_message(engine: Engine) {
    let (_db, _dir, _nodes, mut a, mut b) = pair(engine);
    let early = durable(&a, "early");
    let mut p = a.client();
    p.send_sync("/topic/t", "m1", &[("persistent", "true")]);
    let late = durable(&a, "late");
    // Made durable: the subscription exists once its SUBSCRIBE's receipt
    // came (durable() waits for it).
    drop((early, late, p));
    a.kill9();
    b.wait_for_master();
    let mut late = durable(&b, "late");
    let mut p = b.client();
    p.send_sync("/topic/t", "m2", &[("persistent", "true")]);
    let first = late.expect_message();
    assert_eq!(
        body(&first),
        "m2",
        "a message sent before the subscription existed"
    );
    let mut early = durable(&b, "early");
    assert_eq!(body(&early.expect_message()), "m1");
}

/// The longest names the protocol accepts fit every column: a durable
/// subscriber with a 250-byte client id and name takes a message and leaves
/// without acknowledging it (a redelivery count is stored under both
/// names), and the broker goes on writing.
fn the_longest_names_fit_the_tables(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let b = Node::new().start(&db, dir.path());
    let client = "c".repeat(250);
    let name = "n".repeat(250);
    let mut c = Client::connect(
        b.stomp,
        &[("accept-version", "1.2"), ("client-id", &client)],
    );
    c.subscribe(
        "d",
        "/topic/long",
        "client-individual",
        &[("activemq.subscriptionName", &name)],
    );
    let mut p = b.client();
    p.send_sync("/topic/long", "m", &[("persistent", "true")]);
    assert_eq!(body(&c.expect_message()), "m");
    drop(c);
    // The broker notices the close and stores the redelivery count.
    db.wait_for(
        "SELECT COUNT(*) FROM BROKK_REDELIVERIES",
        "1",
        Instant::now() + Duration::from_secs(10),
        "the redelivery count was never stored",
    );
    // Writes go on, on the topic's shard (its lane would be stuck if that
    // row had failed): a receipt needs the next batch committed.
    p.send_sync("/topic/long", "m2", &[("persistent", "true")]);
}

/// A queue message delivered and left unacknowledged has a redelivery
/// count row, which its acknowledgement deletes with it, whether the count
/// was written by this master or found in the tables at takeover. (Most
/// messages have no side row and their acknowledgement deletes only from
/// `ACTIVEMQ_MSGS`: the broker must know which have one.)
fn a_redelivery_count_goes_with_its_message(engine: Engine) {
    let (db, _dir, _nodes, mut a, mut b) = pair(engine);
    let q = "/queue/redelivered";
    let rows = |table: &str, n: &str, what: &str| {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        db.wait_for(&sql, n, Instant::now() + Duration::from_secs(10), what);
    };
    let next = |broker: &Broker, expected: &str| {
        let mut c = broker.client();
        c.subscribe("s", q, "client-individual", &[]);
        let m = c.expect_message();
        assert_eq!(body(&m), expected);
        (c, m)
    };
    // Left unacknowledged: the broker notices the close and stores the
    // count.
    let leave = |broker: &Broker, expected: &str| drop(next(broker, expected));
    let take = |broker: &Broker, expected: &str| {
        let (mut c, m) = next(broker, expected);
        c.ack(&m);
        c.disconnect();
    };
    a.client().send_sync(q, "m1", &[("persistent", "true")]);
    leave(&a, "m1");
    rows("BROKK_REDELIVERIES", "1", "m1's count, by the first master");
    a.kill9();
    b.wait_for_master();
    // Acknowledged at its first delivery by the new master: only the
    // tables said it had a count.
    take(&b, "m1");
    rows("ACTIVEMQ_MSGS", "0", "an acknowledged message left");
    rows(
        "BROKK_REDELIVERIES",
        "0",
        "the count found at takeover left",
    );
    b.client().send_sync(q, "m2", &[("persistent", "true")]);
    leave(&b, "m2");
    rows("BROKK_REDELIVERIES", "1", "m2's count, by the new master");
    take(&b, "m2");
    rows("ACTIVEMQ_MSGS", "0", "an acknowledged message left");
    rows(
        "BROKK_REDELIVERIES",
        "0",
        "the count this master wrote left",
    );
}

/// ActiveMQ's JDBC tables, with its column names, made at first start.
fn activemq_tables(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let b = Node::new().start(&db, dir.path());
    assert!(!is_standby(&b));
    let cols = |table: &str| -> Vec<String> {
        let q = match engine {
            Engine::MariaDb => format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION",
                db.name
            ),
            Engine::Postgres => format!(
                "SELECT upper(column_name) FROM information_schema.columns WHERE table_catalog = '{}' AND table_name = lower('{table}') ORDER BY ordinal_position",
                db.name
            ),
        };
        db.sql(&q).lines().map(|s| s.to_uppercase()).collect()
    };
    assert_eq!(
        cols("ACTIVEMQ_MSGS"),
        [
            "ID",
            "CONTAINER",
            "MSGID_PROD",
            "MSGID_SEQ",
            "EXPIRATION",
            "MSG",
            "PRIORITY",
            "XID"
        ]
    );
    assert_eq!(
        cols("ACTIVEMQ_ACKS"),
        [
            "CONTAINER",
            "SUB_DEST",
            "CLIENT_ID",
            "SUB_NAME",
            "SELECTOR",
            "LAST_ACKED_ID",
            "PRIORITY",
            "XID"
        ]
    );
    assert_eq!(cols("ACTIVEMQ_LOCK"), ["ID", "TIME", "BROKER_NAME"]);
    // Operators' queries keep working: a message per row, by container.
    let mut c = b.client();
    c.send_sync("/queue/orders", "x", &[("persistent", "true")]);
    let rows = db.sql("SELECT CONTAINER, COUNT(*) FROM ACTIVEMQ_MSGS GROUP BY CONTAINER");
    assert_eq!(rows.trim(), "queue://orders\t1");
}

/// A wrong password at start: a clear error naming `store.url`, exit 2.
fn wrong_password(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let config = db.config("").replace("brokk:brokk@", "brokk:wrong@");
    let out = serve_once(dir.path(), &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store.url"), "{err}");
    assert!(!err.contains("wrong"), "the password is not printed: {err}");
}

/// `store.create_tables = false` on a database without Brokk's tables: the
/// start is refused (exit 2), naming the setting and what is missing.
fn tables_missing_without_create_tables(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let out = serve_once(dir.path(), &db.config("create_tables = false\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store.create_tables"), "{err}");
    assert!(err.contains("BROKK_FENCE"), "{err}");
}

/// Runs `brokk serve` with `config` until it exits by itself.
fn serve_once(dir: &std::path::Path, config: &str) -> std::process::Output {
    let path = dir.join("brokk.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args([
            "serve",
            "--stomp",
            "127.0.0.1:0",
            "--openwire",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&path)
        .env("BROKK_LOG", "error")
        .output()
        .unwrap()
}

/// MariaDB takes statements up to `max_allowed_packet` (16 MiB here): a
/// larger frame is refused at the door with an ERROR (the frame limit is
/// capped at start), never retried against the database for ever.
#[test]
fn frames_larger_than_mariadbs_packet_limit_are_refused() {
    let db = TestDb::new(Engine::MariaDb);
    let dir = tempfile::tempdir().unwrap();
    let b = Node::new().start(&db, dir.path());
    assert!(!is_standby(&b));
    let mut c = b.client();
    // Written beside: the broker answers and closes before it is all sent.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = format!(
            "SEND\ndestination:/queue/big\npersistent:true\nreceipt:1\ncontent-length:{}\n\n",
            17 << 20
        )
        .into_bytes();
        f.resize(f.len() + (17 << 20), b'x');
        f.push(0);
        let _ = w.write_all(&f);
    });
    let e = c.expect_error();
    let _ = writer.join();
    assert!(e.header_str("message").unwrap().contains("frame"), "{e:?}");
    let mut c = b.client();
    c.send_sync("/queue/big", "small", &[("persistent", "true")]);
}

/// The console's Send is held to the same limit: a message MariaDB would
/// refuse is refused with 413, and the shard's writes go on (a row the
/// database refuses would be retried for ever, holding every later receipt
/// of its shard back).
#[test]
fn console_sends_larger_than_mariadbs_packet_limit_are_refused() {
    let db = TestDb::new(Engine::MariaDb);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let users = "[auth]\nallow_plaintext_passwords = true\n\n\
                 [[users]]\nlogin = \"ops\"\npasscode = \"secret\"\ngroups = [\"admins\"]\n";
    let b = node.start_env(&db, dir.path(), users, &[]);
    assert!(!is_standby(&b));
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:secret")
    );
    let send = |body: &str| {
        let r = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build()
            .post(&format!("http://{}/api/send", node.admin))
            .set("Authorization", &auth)
            .set("X-Brokk-CSRF", "1")
            .send_json(serde_json::json!({
                "destination": "/queue/big", "body": body, "persistent": true
            }));
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("POST /api/send: {e}"),
        }
    };
    let (code, text) = send(&"x".repeat(17 << 20));
    assert_eq!(code, 413, "{text}");
    assert!(text.contains("limit"), "{text}");
    let (code, text) = send("small");
    assert_eq!(code, 200, "{text}");
    db.wait_for(
        "SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE CONTAINER = 'queue://big'",
        "1",
        Instant::now() + Duration::from_secs(30),
        "the small message stored after the refused one",
    );
}

/// A PostgreSQL standby sweeps `ACTIVEMQ_MSGS`'s primary key while it
/// waits (`store::sql::sweep`). PostgreSQL keeps a consumed message's index
/// entry until vacuum, and the first index scan to meet it visits the heap
/// to find the row dead; without the sweep the takeover's read was that
/// scan, over every message consumed since the last vacuum. Checked by the
/// buffers the takeover's first page touches (autovacuum off for the
/// table, so only the standby can have marked the entries, or removed them
/// with its own vacuum), then the standby takes over and delivers what was
/// pending.
#[test]
fn a_postgres_standby_keeps_the_message_index_swept() {
    let (db, _dir, _nodes, mut a, b) = pair(Engine::Postgres);
    db.sql("ALTER TABLE ACTIVEMQ_MSGS SET (autovacuum_enabled = off)");
    send_and_consume(&a, "/queue/swept", 10_000);
    let mut p = a.client();
    for i in 0..10 {
        p.send_sync("/queue/left", &format!("{i}"), &[("persistent", "true")]);
    }
    // A sweep step (not the standby's vacuum, on the same session) that
    // began well after the last DELETE committed, and ended: by then no open snapshot predates the DELETEs (the standby
    // waits for the session lock in statements of at most 250 ms), so the
    // step could mark every consumed row's entry. pg_stat_activity is
    // live (the statistics views lag by up to 10 s).
    let committed = db.sql("SELECT clock_timestamp()").trim().to_string();
    db.wait_for(
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'brokk-standby-sweep' \
             AND state = 'idle' AND query LIKE 'SELECT max(ID)%' \
             AND query_start > '{committed}'::timestamptz + interval '1 second'"
        ),
        "1",
        Instant::now() + Duration::from_secs(60),
        "no sweep step of the standby within 60 s",
    );
    // The takeover's first page (`store::sql::load`), as it runs it.
    let plan: serde_json::Value = serde_json::from_str(&db.sql(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT ID, CONTAINER, EXPIRATION, PRIORITY, XID, MSG \
         FROM ACTIVEMQ_MSGS WHERE ID > -9223372036854775808 ORDER BY ID LIMIT 16",
    ))
    .expect("EXPLAIN's JSON");
    let top = &plan[0]["Plan"];
    let buffers =
        top["Shared Hit Blocks"].as_u64().unwrap() + top["Shared Read Blocks"].as_u64().unwrap();
    // Unswept, each heap page of the consumed rows is visited (about
    // 1 400 for 10 000 rows of 1 KiB); swept, only the index's pages and
    // the live rows' are.
    assert!(
        buffers < 200,
        "the takeover's first page touched {buffers} buffers: the consumed rows' index entries were not swept ({top})"
    );
    drop(p);
    a.kill9();
    let mut b = b;
    b.wait_for_master();
    let mut c = b.client();
    c.subscribe("l", "/queue/left", "auto", &[]);
    let got: Vec<String> = (0..10).map(|_| body(&c.expect_message())).collect();
    assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// Sends `n` persistent 1 KiB messages to `queue` through `b` and consumes
/// them all; returns once every DELETE of the consumed rows is committed.
fn send_and_consume(b: &Broker, queue: &str, n: usize) {
    let payload = "x".repeat(1024);
    let mut p = b.client();
    for i in 0..n {
        let headers = [("destination", queue), ("persistent", "true")];
        if i % 500 == 499 {
            p.send_sync(queue, &payload, &[("persistent", "true")]);
        } else {
            p.frame("SEND", &headers, payload.as_bytes());
        }
    }
    p.send_sync(queue, &payload, &[("persistent", "true")]);
    let mut c = b.client();
    c.subscribe("s", queue, "auto", &[]);
    for got in 0..=n {
        match c.recv_timeout(Duration::from_secs(10)) {
            Some(f) if f.command.as_str() == "MESSAGE" => {}
            other => panic!("message {got} of {}: {other:?}", n + 1),
        }
    }
    // Its receipt: every DELETE of the consumed rows is committed.
    c.disconnect();
}

/// A PostgreSQL standby also vacuums `ACTIVEMQ_MSGS` while it waits
/// (`store::sql::sweep`): autovacuum visits a database at most once a
/// minute and falls behind, and until a vacuum every scan from the start
/// of the key (the sweep's steps, the takeover's read) steps over the
/// entry of every message consumed since the last one. Seen in the table's
/// statistics, with autovacuum off for it so that only the standby's
/// vacuums count: one ran, and left no dead row of what was consumed.
#[test]
fn a_postgres_standby_vacuums_the_messages_table() {
    let (db, _dir, _nodes, a, _b) = pair(Engine::Postgres);
    db.sql("ALTER TABLE ACTIVEMQ_MSGS SET (autovacuum_enabled = off)");
    send_and_consume(&a, "/queue/vacuumed", 2_000);
    db.wait_for(
        "SELECT vacuum_count > 0 AND autovacuum_count = 0 AND n_dead_tup = 0 \
         FROM pg_stat_user_tables WHERE relname = 'activemq_msgs'",
        "t",
        Instant::now() + Duration::from_secs(60),
        "the standby did not vacuum ACTIVEMQ_MSGS within 60 s",
    );
    // The master served throughout.
    let mut p = a.client();
    p.send_sync("/queue/vacuumed", "after", &[("persistent", "true")]);
}

/// Every connection a broker holds to the database, master's and
/// standby's, has TCP keepalive after 10 s idle (not the kernel's two hours,
/// or none): one that a firewall or NAT dropped silently while a standby
/// waited is noticed and replaced before a takeover sends a query on it.
/// Seen in the kernel's timers (`ss -o`), per connection.
fn database_connections_keep_alive(engine: Engine) {
    let (_db, _dir, _nodes, a, b) = pair(engine);
    for broker in [&a, &b] {
        let pid = broker.pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Local port -> seconds left before the next probe, as last seen.
        let mut timers = std::collections::HashMap::new();
        loop {
            let out = Command::new("ss")
                .args(["-tnopH"])
                .output()
                .expect("ss runs");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(peer)) = (f.get(3), f.get(4)) else {
                    continue;
                };
                if !line.contains(&format!("pid={pid},"))
                    || !(peer.ends_with(":3306") || peer.ends_with(":5432"))
                {
                    continue;
                }
                if let Some(left) = keepalive_left(line) {
                    timers.insert(local.to_string(), left);
                }
            }
            // Over TCP at least the lease's two (the pools may use a unix
            // socket on this machine, which needs no keepalive).
            let ports = common::db::client_ports(pid);
            let all = ports.len() >= 2
                && ports
                    .iter()
                    .all(|p| timers.keys().any(|l| l.ends_with(&format!(":{p}"))));
            if all {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker {pid}: connections {ports:?}, keepalive timers seen {timers:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for (local, left) in &timers {
            assert!(
                *left <= 10.5,
                "broker {pid}, connection {local}: next keepalive probe in {left} s"
            );
        }
    }
}

/// Seconds left on an `ss -o` keepalive timer (iproute2 6.1, Debian 12:
/// `timer:(keepalive,9.532sec,0)`, `...,950ms,0)`, `...,119min,0)`), if
/// the line has one.
fn keepalive_left(line: &str) -> Option<f64> {
    let t = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    let mut secs = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..n].parse().ok()?;
        let unit_end = rest[n..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| n + i);
        secs += value
            * match &rest[n..unit_end] {
                "ms" => 0.001,
                "sec" => 1.0,
                "min" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = &rest[unit_end..];
    }
    Some(secs)
}

/// `/metrics` carries the writer's figures in the database modes.
fn metrics_show_the_database_writer(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let b = Node::new().start(&db, dir.path());
    let mut p = b.client();
    for i in 0..5 {
        p.send_sync("/queue/metered", &format!("{i}"), &[("persistent", "true")]);
    }
    let value = |name: &str| metric(&b, name);
    assert!(value("brokk_db_transactions_total") >= 1.0);
    assert!(
        value("brokk_db_rows_total") >= 5.0,
        "five SEND rows at least"
    );
    assert!(value("brokk_db_commit_seconds_total") > 0.0);
    assert_eq!(value("brokk_db_unavailable_lanes"), 0.0);
}

/// Durable subscriptions' selectors are kept in `ACTIVEMQ_ACKS.SELECTOR`
/// and filter again after a SIGKILL; a message stored for one durable
/// subscription and passed over by the other leaves no row behind once
/// consumed.
fn a_durable_selector_is_kept_in_activemq_acks(engine: Engine) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new();
    let mut b = node.start(&db, dir.path());
    let t = "/topic/orders";
    let subs = [("big", "amount > 100"), ("small", "amount <= 100")];
    // Each subscription's connection; SUBSCRIBE returns what was waiting.
    let subscribe = |b: &Broker, name: &str, selector: &str| {
        let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", name)]);
        let h = [
            ("id", "d"),
            ("destination", t),
            ("ack", "client-individual"),
            ("activemq.subscriptionName", name),
            ("selector", selector),
        ];
        let got = c.messages_before_receipt("SUBSCRIBE", &h, "sub");
        (c, got)
    };
    for (name, selector) in subs {
        subscribe(&b, name, selector).0.disconnect();
    }
    let mut p = b.client();
    for (name, amount) in [("a", "50"), ("b", "500")] {
        p.send_sync(t, name, &[("amount", amount), ("persistent", "true")]);
    }
    for (name, selector) in subs {
        let q = format!("SELECT SELECTOR FROM ACTIVEMQ_ACKS WHERE SUB_NAME = '{name}'");
        assert_eq!(db.sql(&q).trim(), selector);
    }
    b.kill9();
    let b = node.start(&db, dir.path());
    assert!(!is_standby(&b), "{}", b.role_line);
    let mut p = b.client();
    for (name, amount) in [("c", "7"), ("d", "1000")] {
        p.send_sync(t, name, &[("amount", amount), ("persistent", "true")]);
    }
    for ((name, selector), expected) in subs.into_iter().zip([["b", "d"], ["a", "c"]]) {
        let (mut c, got) = subscribe(&b, name, selector);
        assert_eq!(got.iter().map(body).collect::<Vec<_>>(), expected, "{name}");
        for m in &got {
            c.ack(m);
        }
        c.disconnect();
    }
    assert_tables_empty(&db, &["ACTIVEMQ_MSGS", "BROKK_TOPIC_ACKS"]);
}

/// How a consumer asks for the receipt that must cover its earlier ACKs.
#[derive(Clone, Copy, Debug)]
enum Covering {
    /// On its last ACK.
    LastAck,
    /// On a COMMIT of a transaction sending to the same queue.
    Commit,
    /// On its DISCONNECT.
    Disconnect,
}

/// A consumer acknowledges every message of a queue one by one without a
/// receipt, then asks for one (see `Covering`). The broker writes an
/// acknowledgement no receipt waits for without holding later receipts
/// back; a receipt the connection asks for still covers every earlier one
/// of its own. Checked while other sessions hold rows locked, so that
/// their deletes cannot commit before they let go: once the receipt is
/// in, every acknowledged row is gone (the receipt waited), and after a
/// SIGKILL the new master redelivers none of them.
fn a_receipt_covers_the_acks_before_it(engine: Engine) {
    let (db, _dir, _nodes, mut a, mut b) = pair(engine);
    // The deletes go oldest first, at most 256 a transaction: with 300,
    // the locked ones wait behind others; with 1000, behind the batches
    // that carry the COMMIT's records; with 5, all are in the batch in
    // flight when the DISCONNECT comes (waited for).
    let cases = [
        (Covering::LastAck, 300),
        (Covering::Commit, 1000),
        (Covering::Disconnect, 5),
    ];
    for (how, n) in cases {
        let q = format!("/queue/acked-{how:?}");
        let container = format!("CONTAINER = 'queue://acked-{how:?}'");
        let rows = format!("SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE {container}");
        let mut p = a.client();
        for i in 0..n {
            p.frame(
                "SEND",
                &[("destination", &q), ("persistent", "true")],
                i.to_string().as_bytes(),
            );
        }
        p.send_sync(&q, "last", &[("persistent", "true")]);
        let mut c = a.client();
        c.subscribe(
            "s",
            &q,
            "client-individual",
            &[("activemq.prefetchSize", "2000")],
        );
        let acks: Vec<String> = (0..=n)
            .map(|i| {
                let m = c.expect_message();
                let expected = if i < n { i.to_string() } else { "last".into() };
                assert_eq!(body(&m), expected);
                m.header_str("ack").unwrap().to_string()
            })
            .collect();
        // The oldest row for a second: the first batch of deletes waits
        // while the broker reads the rest. The newest hundred for three:
        // what is still to be deleted then waits again. By primary key, so
        // that each session locks those rows and no others.
        let id_at = |order: &str, offset: usize| {
            db.sql(&format!(
                "SELECT ID FROM ACTIVEMQ_MSGS WHERE {container} ORDER BY ID {order} LIMIT 1 OFFSET {offset}"
            ))
            .trim()
            .to_string()
        };
        let (first, hundredth) = (id_at("ASC", 0), id_at("DESC", 99.min(n)));
        let oldest = db.hold_rows_locked(
            &format!("SELECT ID FROM ACTIVEMQ_MSGS WHERE ID = {first}"),
            Duration::from_secs(1),
        );
        let newest = db.hold_rows_locked(
            &format!("SELECT ID FROM ACTIVEMQ_MSGS WHERE ID >= {hundredth}"),
            Duration::from_secs(3),
        );
        // In one write, so that the broker reads them at once: few of the
        // deletes can have been written before the receipt is asked for.
        let (last, before) = acks.split_last().unwrap();
        let mut out: Vec<u8> = before
            .iter()
            .flat_map(|id| frame_bytes("ACK", &[("id", id)], b""))
            .collect();
        let left = match how {
            Covering::LastAck => {
                out.extend(frame_bytes("ACK", &[("id", last), ("receipt", "r")], b""));
                c.write(&out);
                c.expect_receipt("r");
                0
            }
            Covering::Commit => {
                let t = [("transaction", "t")];
                out.extend(frame_bytes("ACK", &[("id", last)], b""));
                out.extend(frame_bytes("BEGIN", &t, b""));
                let send = [("destination", q.as_str()), ("persistent", "true"), t[0]];
                out.extend(frame_bytes("SEND", &send, b"committed"));
                out.extend(frame_bytes("COMMIT", &[t[0], ("receipt", "r")], b""));
                c.write(&out);
                c.expect_receipt("r");
                1
            }
            Covering::Disconnect => {
                out.extend(frame_bytes("ACK", &[("id", last)], b""));
                c.write(&out);
                db.wait_for_blocked_delete("ACTIVEMQ_MSGS");
                c.disconnect();
                0
            }
        };
        assert_eq!(
            db.sql(&rows).trim(),
            left.to_string(),
            "{how:?}: rows of acknowledged messages after the receipt"
        );
        oldest.wait();
        newest.wait();
    }
    a.kill9();
    b.wait_for_master();
    for (how, _) in cases {
        let mut c = b.client();
        c.subscribe(
            "s",
            &format!("/queue/acked-{how:?}"),
            "client-individual",
            &[],
        );
        if let Covering::Commit = how {
            assert_eq!(body(&c.expect_message()), "committed");
        }
        if let Some(f) = c.recv_timeout(Duration::from_millis(1000)) {
            panic!("{how:?}: an acknowledged message came back after the failover: {f:?}");
        }
    }
}

/// A row the new master cannot read (here a `MSG` of another layout, as
/// ActiveMQ writes) is left in the table, and no id the broker issues
/// afterwards is at or below it: an id issued again would make the new
/// message's INSERT a duplicate the database ignores (receipted, never
/// stored).
fn a_row_it_cannot_read_is_left_and_its_id_never_reused(engine: Engine) {
    let (db, _dir, _nodes, mut a, mut b) = pair(engine);
    a.client()
        .send_sync("/queue/before", "m", &[("persistent", "true")]);
    let counter = |id: &str| id.trim().parse::<u64>().unwrap() & ((1 << 56) - 1);
    let first: u64 = db
        .sql("SELECT MAX(ID) FROM ACTIVEMQ_MSGS")
        .trim()
        .parse()
        .unwrap();
    // Far ahead of the clock the broker's ids start from.
    let foreign = first + (1 << 40);
    let blob = match engine {
        Engine::MariaDb => "X'00'",
        Engine::Postgres => "'\\x00'::bytea",
    };
    // And one whose id no clock reaches: it must not pin the ids at the
    // counter's top (they would spill into the next shard's).
    let absurd: u64 = (1 << 56) - 1;
    for id in [foreign, absurd] {
        db.sql(&format!(
            "INSERT INTO ACTIVEMQ_MSGS (ID, CONTAINER, MSGID_PROD, MSGID_SEQ, EXPIRATION, MSG, PRIORITY) \
             VALUES ({id}, 'queue://foreign', NULL, NULL, 0, {blob}, 0)"
        ));
    }
    a.kill9();
    b.wait_for_master();
    b.client()
        .send_sync("/queue/after", "m", &[("persistent", "true")]);
    let after = db.sql("SELECT ID FROM ACTIVEMQ_MSGS WHERE CONTAINER = 'queue://after'");
    assert!(
        counter(&after) > counter(&foreign.to_string()),
        "a new id {after} at or below the unread row's {foreign}"
    );
    assert!(
        counter(&after) < 1 << 55,
        "a new id {after} pinned at the absurd row's"
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE CONTAINER = 'queue://foreign'")
            .trim(),
        "2",
        "the rows it cannot read stay"
    );
}

/// A row under the id the master issues next, written by another program
/// while it serves (an operator's `MAX(ID) + 1`, a second broker on the
/// same tables): the master must not receipt a message it could not store.
/// It sends no RECEIPT, stops (exit 3), and the standby takes over with
/// ids above that row, where the message sent again is stored.
fn a_row_under_the_next_id_stops_the_master_without_a_receipt(engine: Engine) {
    let (db, _dir, _nodes, mut a, mut b) = pair(engine);
    let mut c = a.client();
    c.send_sync("/queue/clash", "first", &[("persistent", "true")]);
    let last: u64 = db
        .sql("SELECT MAX(ID) FROM ACTIVEMQ_MSGS")
        .trim()
        .parse()
        .unwrap();
    let blob = match engine {
        Engine::MariaDb => "X'00'",
        Engine::Postgres => "'\\x00'::bytea",
    };
    for id in last + 1..=last + 3 {
        db.sql(&format!(
            "INSERT INTO ACTIVEMQ_MSGS (ID, CONTAINER, MSGID_PROD, MSGID_SEQ, EXPIRATION, MSG, PRIORITY) \
             VALUES ({id}, 'queue://foreign', NULL, NULL, 0, {blob}, 0)"
        ));
    }
    c.frame(
        "SEND",
        &[
            ("destination", "/queue/clash"),
            ("persistent", "true"),
            ("receipt", "second"),
        ],
        b"second",
    );
    c.expect_closed_by_peer();
    assert_eq!(a.wait_exit(30).code(), Some(3), "the master stops");
    b.wait_for_master();
    b.client()
        .send_sync("/queue/clash", "second", &[("persistent", "true")]);
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE CONTAINER = 'queue://clash'")
            .trim(),
        "2"
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM ACTIVEMQ_MSGS WHERE CONTAINER = 'queue://foreign'")
            .trim(),
        "3",
        "the other program's rows stay"
    );
    let mut r = b.client();
    r.subscribe("s", "/queue/clash", "auto", &[]);
    for want in ["first", "second"] {
        let m = r.expect_message();
        assert_eq!(body(&m), want);
    }
}

/// A master paused past its lease (SIGSTOP) while a standby takes over,
/// then continued, answers nothing more: a SEND with a receipt written
/// while it was stopped gets no RECEIPT (not even a non-persistent one,
/// which needs no commit), and the broker exits 3 once its keeper finds
/// the lease taken.
fn a_master_continued_after_its_lease_answers_nothing(engine: Engine) {
    let (_db, _dir, _nodes, mut a, mut b) = pair(engine);
    let mut c = a.client();
    c.send_sync("/queue/paused", "before", &[]);
    common::signal(&a, libc::SIGSTOP);
    b.wait_for_master_within(30);
    c.frame(
        "SEND",
        &[("destination", "/queue/paused"), ("receipt", "after")],
        b"after",
    );
    common::signal(&a, libc::SIGCONT);
    c.expect_closed_by_peer();
    assert_eq!(a.wait_exit(30).code(), Some(3), "the old master stops");
}

crate::on_both!(
    a_row_under_the_next_id_stops_the_master_without_a_receipt,
    a_master_continued_after_its_lease_answers_nothing,
    a_row_it_cannot_read_is_left_and_its_id_never_reused,
    kills_under_load,
    kills_under_overlapped_load,
    failed_commits_under_overlapped_load,
    a_slow_commit_before_does_not_fence_a_healthy_master,
    a_receipt_covers_the_acks_before_it,
    cut_off_master,
    silently_cut_off_master,
    transactions_across_a_failover,
    a_late_subscription_gets_no_earlier_message,
    the_longest_names_fit_the_tables,
    a_redelivery_count_goes_with_its_message,
    activemq_tables,
    wrong_password,
    tables_missing_without_create_tables,
    metrics_show_the_database_writer,
    a_durable_selector_is_kept_in_activemq_acks,
    database_connections_keep_alive
);
