//! Queues larger than memory: with a small `limits.memory_limit_bytes`,
//! persistent messages page out to the spool and come back in order.

mod common;

use std::time::{Duration, Instant};

use std::collections::HashSet;

use common::db::{Engine, TestDb};
use common::{body, Broker, Client};

const MIB: usize = 1024 * 1024;
const MEMORY_LIMIT: usize = 16 * MIB;
/// What the broker needs besides held messages, whatever the backlog:
/// executors and io_uring rings (~25 MiB idle), connection and journal
/// write buffers under load (the producer keeps up to 256 x 32 KiB
/// unanswered, copied once into a journal round), spool read and write
/// buffers, allocator slack, the references to paged messages (about
/// 100 bytes each: 7 MiB for this backlog), and per paging shard the
/// journal's reads ahead (at most 32 MiB parked and 16 MiB of pooled
/// buffers, see `store::journal::read_ahead`). Measured here: 91-178 MiB
/// peak for a 2 GiB backlog (the same run's producing peak varied as
/// much: allocator slack left by 32 KiB messages freed on other threads).
const FIXED_OVERHEAD: usize = 224 * MIB;

/// Backlog size: 1 GiB (four times the memory bound below, so a broker
/// that held its backlog would fail the RSS check many times over), or
/// `BROKK_PAGING_TEST_MIB` (a quick run while developing). Less when the
/// disk has less room: a third of the free space, since a database test
/// holds the backlog about twice (the table with its logs, and the spool),
/// and a disk that fills holds the producer back for good (the file
/// store's limit) or stalls the database server (MariaDB waits for space).
/// Never less than twice the bound, below which the check says nothing.
fn backlog_bytes() -> usize {
    if let Some(mib) = std::env::var("BROKK_PAGING_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return mib * MIB;
    }
    let floor = 2 * (MEMORY_LIMIT + FIXED_OVERHEAD);
    let room = free_disk_bytes() / 3;
    assert!(
        room >= floor,
        "the paging tests need {} MiB free on disk (three times a {} MiB backlog); {} MiB are free",
        3 * floor / MIB,
        floor / MIB,
        free_disk_bytes() / MIB
    );
    (1024 * MIB).min(room)
}

/// Free space where the tests write: the temporary directory (journals,
/// spools) and the test database servers' data directory, the smaller.
fn free_disk_bytes() -> usize {
    let mut dirs = vec![std::env::temp_dir()];
    let services = std::path::PathBuf::from(
        std::env::var("BROKK_SERVICES_DIR").unwrap_or_else(|_| "/var/lib/brokk-services".into()),
    );
    if services.is_dir() {
        dirs.push(services);
    }
    dirs.iter()
        .map(|d| {
            brokk::store::journal::available_bytes(d)
                .unwrap_or_else(|e| panic!("free space under {d:?}: {e}")) as usize
        })
        .min()
        .unwrap_or(0)
}

/// The tests here write gigabytes each (journal, spool, tables); side by
/// side on a small machine they only slow each other down, and a database
/// that waits on the disk for seconds makes its master miss lease renewals.
/// One at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> String {
    format!("[limits]\nmemory_limit_bytes = {MEMORY_LIMIT}\n")
}

fn rss_bytes(pid: i32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

const PRIORITIES: [u8; 3] = [0, 4, 9];

fn message_body(seq: usize, priority: u8, size: usize) -> Vec<u8> {
    let mut b = format!("{priority}:{seq:09}:").into_bytes();
    b.resize(size, b'x');
    b
}

/// Sends `count` persistent messages of `size` bytes, priorities cycling
/// through [`PRIORITIES`], a receipt every 256 (so the producer never has
/// more than that unanswered). Returns the highest RSS seen.
fn produce(b: &Broker, dest: &str, count: usize, size: usize) -> usize {
    produce_as(b, dest, count, size, &[])
}

fn produce_as(b: &Broker, dest: &str, count: usize, size: usize, login: &[(&str, &str)]) -> usize {
    let mut headers = vec![("accept-version", "1.2")];
    headers.extend_from_slice(login);
    let mut c = Client::connect(b.stomp, &headers);
    let mut peak = 0;
    for seq in 0..count {
        let p = PRIORITIES[seq % PRIORITIES.len()];
        let prio = p.to_string();
        let receipt = format!("r{seq}");
        let mut h = vec![
            ("destination", dest),
            ("persistent", "true"),
            ("priority", &*prio),
        ];
        let last = seq % 256 == 255 || seq + 1 == count;
        if last {
            h.push(("receipt", &receipt));
        }
        c.frame("SEND", &h, &message_body(seq, p, size));
        if last {
            c.expect_receipt(&receipt);
            peak = peak.max(rss_bytes(b.pid()));
        }
    }
    c.disconnect();
    peak
}

/// Sends `count` persistent messages of `size` bytes at the default
/// priority (4), with `extra` headers; the last one's receipt is awaited.
fn send_at_default_priority(
    c: &mut Client,
    dest: &str,
    count: usize,
    size: usize,
    extra: &[(&str, &str)],
) {
    for seq in 0..count {
        let mut h = vec![("destination", dest), ("persistent", "true")];
        h.extend_from_slice(extra);
        if seq + 1 == count {
            h.push(("receipt", "last"));
        }
        c.frame("SEND", &h, &message_body(seq, 4, size));
    }
    c.expect_receipt("last");
}

/// Receives everything, acknowledging as it goes, and checks the order:
/// all of priority 9 in send order, then 4, then 0.
fn drain_in_priority_order(c: &mut Client, count: usize, pid: Option<i32>) -> usize {
    drain_in_priority_order_acking(c, count, pid, 64)
}

/// [`drain_in_priority_order`], acknowledging every `ack_every` messages.
fn drain_in_priority_order_acking(
    c: &mut Client,
    count: usize,
    pid: Option<i32>,
    ack_every: usize,
) -> usize {
    let mut expected: Vec<(u8, usize)> = (0..count)
        .map(|seq| (PRIORITIES[seq % PRIORITIES.len()], seq))
        .collect();
    expected.sort_by_key(|&(p, seq)| (std::cmp::Reverse(p), seq));
    let mut peak = 0;
    for (i, &(p, seq)) in expected.iter().enumerate() {
        let m = c
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("message {i} of {count} did not arrive"));
        assert_eq!(m.command.as_str(), "MESSAGE", "got {m:?}");
        let text = body(&m);
        let want = format!("{p}:{seq:09}:");
        assert!(
            text.starts_with(&want),
            "message {i}: expected {want}..., got {}",
            &text[..text.len().min(20)]
        );
        if i % ack_every == ack_every - 1 || i + 1 == count {
            c.ack(&m);
            if let Some(pid) = pid {
                peak = peak.max(rss_bytes(pid));
            }
        }
    }
    peak
}

/// Produces a backlog of `count` x `size` B to a queue nobody consumes,
/// checks that most of it is paged (and, given `stored`, that the store
/// holds all of it), drains it in priority order, and checks the broker's
/// RSS.
fn backlog_round_trip(b: &Broker, count: usize, size: usize, stored: Option<&dyn Fn() -> usize>) {
    let idle = rss_bytes(b.pid());
    let started = Instant::now();
    // No consumer: without paging the producer would be paused at 16 MiB
    // for good, and this would never return.
    let produce_peak = produce(b, "/queue/backlog", count, size);
    eprintln!(
        "produced {count} x {size} B in {:?}; RSS idle {} MiB, peak while producing {} MiB",
        started.elapsed(),
        idle / MIB,
        produce_peak / MIB
    );
    let d = b.destination("/queue/backlog").expect("the queue exists");
    assert_eq!(d["pending"], count as u64);
    let paged = d["paged"].as_u64().unwrap();
    assert!(
        paged as usize > count - MEMORY_LIMIT / size,
        "most of the backlog is paged out: {d}"
    );
    match stored {
        Some(stored) => assert_eq!(stored(), count, "the store holds every message"),
        None => {
            // File mode: a paged message is read back from its own journal
            // record; paging writes no second copy anywhere.
            let spool = b.data_dir().expect("a data directory").join("spool");
            assert!(spool.is_dir(), "{spool:?} is where a spool would write");
            assert_eq!(bytes_under(&spool), 0, "nothing written to {spool:?}");
        }
    }
    let mut c = b.client();
    c.subscribe(
        "s",
        "/queue/backlog",
        "client",
        &[("activemq.prefetchSize", "64")],
    );
    let drain_peak = drain_in_priority_order(&mut c, count, Some(b.pid()));
    eprintln!("drained; RSS peak while draining {} MiB", drain_peak / MIB);
    b.wait_until("the queue is empty", |s| {
        s["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["destination"] == "/queue/backlog" && d["pending"] == 0)
    });
    assert_rss_bounded(
        "RSS stays under the memory limit plus a fixed overhead",
        [("producing", produce_peak), ("draining", drain_peak)],
    );
}

/// Bytes of the files under `dir` (0 if it does not exist).
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Each peak stays under [`MEMORY_LIMIT`] + [`FIXED_OVERHEAD`].
fn assert_rss_bounded(what: &str, peaks: [(&str, usize); 2]) {
    let bound = MEMORY_LIMIT + FIXED_OVERHEAD;
    assert!(
        peaks.iter().all(|&(_, p)| p < bound),
        "{what} ({} MiB): {} {} MiB, {} {} MiB",
        bound / MIB,
        peaks[0].0,
        peaks[0].1 / MIB,
        peaks[1].0,
        peaks[1].1 / MIB
    );
}

#[test]
fn a_backlog_larger_than_memory_is_kept_and_drained_in_priority_order() {
    let _serial = one_at_a_time();
    let size = 32 * 1024;
    let count = backlog_bytes() / size;
    let b = Broker::start_with_config(Some(&config()), &[]);
    backlog_round_trip(&b, count, size, None);
}

#[test]
fn an_offline_durable_subscription_gets_a_topic_backlog_larger_than_memory() {
    let _serial = one_at_a_time();
    let size = 32 * 1024;
    let count = backlog_bytes() / 2 / size;
    let b = Broker::start_with_config(Some(&config()), &[]);
    let sub = |c: &mut Client| {
        c.subscribe(
            "d",
            "/topic/feed",
            "client",
            &[
                ("activemq.subscriptionName", "away"),
                // A consumer that acknowledges rarely (every 500): paging
                // in must not wait for its acknowledgements.
                ("activemq.prefetchSize", "1000"),
            ],
        );
    };
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c1")]);
    sub(&mut c);
    c.disconnect();
    produce(&b, "/topic/feed", count, size);
    let s = b.status();
    let subs = s["destinations"].as_array().unwrap();
    let t = subs
        .iter()
        .find(|d| d["destination"] == "/topic/feed")
        .expect("the topic");
    assert_eq!(t["pending"], count as u64, "{t}");
    assert!(t["paged"].as_u64().unwrap() > 0, "{t}");
    let mut c = Client::connect(b.stomp, &[("accept-version", "1.2"), ("client-id", "c1")]);
    sub(&mut c);
    drain_in_priority_order_acking(&mut c, count, None, 500);
}

#[test]
fn purge_and_browse_reach_paged_messages() {
    let _serial = one_at_a_time();
    let size = 64 * 1024;
    let count = 3 * MEMORY_LIMIT / size;
    let users = "[auth]\nallow_plaintext_passwords = true\n\n[[users]]\nlogin = \"ops\"\npasscode = \"secret\"\ngroups = [\"admins\"]\n";
    let b = Broker::start_with_config(Some(&format!("{}{users}", config())), &[]);
    produce_as(
        &b,
        "/queue/pp",
        count,
        size,
        &[("login", "ops"), ("passcode", "secret")],
    );
    let d = b.destination("/queue/pp").unwrap();
    assert!(d["paged"].as_u64().unwrap() > 0, "{d}");
    // Browsing shows the head in dispatch order: priority 9 first, even
    // when those are paged.
    let admin = brokk::admin::client::AdminClient::new(
        &format!("http://{}", b.admin),
        Some("ops"),
        Some("secret"),
    );
    let browsed = admin.browse("pp", 5).unwrap();
    let first: Vec<String> = browsed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body_preview"].as_str().unwrap()[..12].to_string())
        .collect();
    assert_eq!(
        first,
        (0..5)
            .map(|i| format!("9:{:09}:", 2 + 3 * i))
            .collect::<Vec<_>>()
    );
    let purged = admin.purge("pp").unwrap();
    assert_eq!(purged["removed"], count as u64, "{purged}");
    let d = b.destination("/queue/pp").unwrap();
    assert_eq!(
        (d["pending"].as_u64(), d["paged"].as_u64()),
        (Some(0), Some(0))
    );
}

/// On a broker that just took over: checks that its backlog is paged and
/// subscribes to it; returns how many messages it holds.
fn subscribe_to_taken_over_backlog(b: &Broker) -> (usize, Client) {
    let d = b.destination("/queue/backlog").expect("the queue survives");
    assert!(
        d["paged"].as_u64().unwrap() > 0,
        "the taken-over backlog is paged: {d}"
    );
    let mut c = b.client();
    c.subscribe(
        "s",
        "/queue/backlog",
        "client",
        &[("activemq.prefetchSize", "64")],
    );
    (d["pending"].as_u64().unwrap() as usize, c)
}

/// The seq numbers in the bodies of messages received (acknowledging each
/// 64th and the last), until `n` arrived.
fn receive_seqs(c: &mut Client, n: usize) -> Vec<usize> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let m = c
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("message {i} of {n} did not arrive"));
        assert_eq!(m.command.as_str(), "MESSAGE", "got {m:?}");
        let text = body(&m);
        let seq: usize = text.split(':').nth(1).unwrap().parse().unwrap();
        got.push(seq);
        if i + 1 == n {
            // The last acknowledgement is receipted: applied before this
            // returns.
            let id = m.header_str("ack").unwrap().to_string();
            c.frame("ACK", &[("id", &id), ("receipt", "acked")], b"");
            c.expect_receipt("acked");
        } else if i % 64 == 63 {
            c.ack(&m);
        }
    }
    got
}

#[test]
fn the_standby_takes_over_a_backlog_larger_than_memory_mid_drain() {
    let _serial = one_at_a_time();
    let size = 32 * 1024;
    let count = backlog_bytes() / size;
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--data".into(),
        dir.path().join("data").display().to_string(),
    ];
    let mut master = Broker::spawn(Some(&config()), &args, Some(dir.path()));
    produce(&master, "/queue/backlog", count, size);
    let mut standby = Broker::spawn_any(Some(&config()), &args, Some(dir.path()));
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    // Drain part of it, acknowledged (the acknowledgement is receipted).
    let mut c = master.client();
    c.subscribe(
        "s",
        "/queue/backlog",
        "client",
        &[("activemq.prefetchSize", "64")],
    );
    let first = receive_seqs(&mut c, count / 3);
    master.kill9();
    standby.wait_for_master();
    let after_takeover = rss_bytes(standby.pid());
    let (left, mut c) = subscribe_to_taken_over_backlog(&standby);
    assert_eq!(
        left,
        count - first.len(),
        "what was acknowledged (receipted) stays gone, the rest is all there"
    );
    let rest = receive_seqs(&mut c, left);
    let drain_peak = rss_bytes(standby.pid());
    let all: HashSet<usize> = first.iter().chain(&rest).copied().collect();
    assert_eq!(all.len(), count, "every receipted message arrived");
    assert_rss_bounded(
        "the standby takes over within bounded memory",
        [
            ("after takeover", after_takeover),
            ("after draining", drain_peak),
        ],
    );
}

/// The database modes page the same way: the rows are the store, the
/// spool holds the bodies past each queue's window.
#[test]
fn a_mariadb_backlog_larger_than_memory_is_kept_and_drained_in_priority_order() {
    let _serial = one_at_a_time();
    let size = 32 * 1024;
    let count = backlog_bytes() / size;
    let db = TestDb::new(Engine::MariaDb);
    // A long lease: this is about paging, and a database busy writing
    // gigabytes may stall a renewal for seconds on a small test machine.
    let b = Broker::start_with_config(
        Some(&format!(
            "{}{}[ha]\nlease_ms = 15000\n",
            db.config(""),
            config()
        )),
        &[],
    );
    let rows = || -> usize {
        db.sql("SELECT COUNT(*) FROM ACTIVEMQ_MSGS")
            .trim()
            .parse()
            .unwrap()
    };
    backlog_round_trip(&b, count, size, Some(&rows));
}

/// Paged messages expire like any other: with nobody consuming, the sweep
/// reads them back and moves them to the dead-letter queue.
#[test]
fn paged_messages_expire_to_the_dead_letter_queue_without_a_consumer() {
    let _serial = one_at_a_time();
    let size = 64 * 1024;
    let count = 3 * MEMORY_LIMIT / size;
    let b = Broker::start_with_config(Some(&config()), &[]);
    let mut c = b.client();
    let expires = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3000)
        .to_string();
    send_at_default_priority(
        &mut c,
        "/queue/short",
        count,
        size,
        &[("expires", &expires)],
    );
    let d = b.destination("/queue/short").unwrap();
    assert!(d["paged"].as_u64().unwrap() > 0, "{d}");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = b.status();
        let find = |name: &str| {
            s["destinations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["destination"] == name)
                .cloned()
        };
        let left = find("/queue/short").map_or(0, |d| d["pending"].as_u64().unwrap());
        let dead = find("/queue/ActiveMQ.DLQ").map_or(0, |d| d["pending"].as_u64().unwrap());
        if left == 0 && dead == count as u64 {
            break;
        }
        assert!(
            Instant::now() < end,
            "expired messages did not all move to the DLQ: {left} left, {dead} dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A transaction's SEND joins the queue behind the paged messages of its
/// priority, like a plain one.
#[test]
fn a_committed_transaction_send_lands_behind_paged_messages() {
    let _serial = one_at_a_time();
    let size = 64 * 1024;
    let count = 3 * MEMORY_LIMIT / size;
    let b = Broker::start_with_config(Some(&config()), &[]);
    let mut c = b.client();
    send_at_default_priority(&mut c, "/queue/tx", count, size, &[]);
    assert!(
        b.destination("/queue/tx").unwrap()["paged"]
            .as_u64()
            .unwrap()
            > 0
    );
    c.frame("BEGIN", &[("transaction", "t1")], b"");
    c.frame(
        "SEND",
        &[
            ("destination", "/queue/tx"),
            ("persistent", "true"),
            ("transaction", "t1"),
        ],
        &message_body(count, 4, size),
    );
    c.frame(
        "COMMIT",
        &[("transaction", "t1"), ("receipt", "committed")],
        b"",
    );
    c.expect_receipt("committed");
    let mut r = b.client();
    r.subscribe(
        "s",
        "/queue/tx",
        "client",
        &[("activemq.prefetchSize", "64")],
    );
    let got = receive_seqs(&mut r, count + 1);
    assert_eq!(got, (0..=count).collect::<Vec<_>>(), "arrival order kept");
}

/// The database modes take over a table many times larger than memory: the
/// loader spills bodies past the paging point to a file and the queues page
/// them, so the standby's memory stays bounded.
#[test]
fn a_mariadb_standby_takes_over_a_table_larger_than_memory() {
    let _serial = one_at_a_time();
    let size = 32 * 1024;
    let count = backlog_bytes() / 2 / size;
    let db = TestDb::new(Engine::MariaDb);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{}{}[ha]\nlease_ms = 15000\n", db.config(""), config());
    let node = |n: &str| -> Vec<String> {
        vec![
            "--data".into(),
            dir.path().join(n).display().to_string(),
            "--stomp".into(),
            common::free_addr(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--openwire".into(),
            "127.0.0.1:0".into(),
        ]
    };
    let (a, b) = (node("a"), node("b"));
    let mut master = Broker::spawn(Some(&cfg), &a, Some(dir.path()));
    produce(&master, "/queue/backlog", count, size);
    let mut standby = Broker::spawn_any(Some(&cfg), &b, Some(dir.path()));
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    master.kill9();
    standby.wait_for_master();
    let after_takeover = rss_bytes(standby.pid());
    let (left, mut c) = subscribe_to_taken_over_backlog(&standby);
    assert_eq!(left, count, "every message is there");
    let drain_peak = drain_in_priority_order(&mut c, count, Some(standby.pid()));
    assert_rss_bounded(
        "the standby takes over within bounded memory",
        [("after takeover", after_takeover), ("draining", drain_peak)],
    );
}
