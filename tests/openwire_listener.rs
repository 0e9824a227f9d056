//! The OpenWire listener end to end: ActiveMQ's own JMS client (Debian's
//! libactivemq-java 5.17, which ops/test.sh installs), unchanged, against
//! the real brokk binary. The Java program
//! (tests/openwire_java/OpenWireListener.java, compiled here with javac)
//! runs one case per process and prints `ok <case>` or `FAIL <why>`.

mod common;

use std::path::Path;
use std::process::Command as Process;
use std::sync::OnceLock;
use std::time::Duration;

use common::{body, Broker};

const USERS: &str = r#"
[auth]
allow_plaintext_passwords = true

[[users]]
login = "alice"
passcode = "secret"
"#;

/// Compiles the Java program once per test run; the classpath to run it.
fn classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let classes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openwire-listener-classes");
        common::java::compile("OpenWireListener.java", &classes)
    })
}

/// Runs one case of the Java program against `broker`; fails the test
/// unless it says `ok <case>` and exits 0. The program halts itself after
/// 60 s, so this cannot hang.
fn java_case(broker: &Broker, case: &str, extra: &[&str]) -> String {
    let url = format!("tcp://{}", broker.openwire);
    let out = Process::new("java")
        .args(["-cp", classpath(), "OpenWireListener", case, &url])
        .args(extra)
        .output()
        .expect("java runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.contains(&format!("ok {case}")),
        "Java case {case} failed ({}):\n{printed}",
        out.status
    );
    printed
}

/// Runs one case and checks that it printed `said`.
fn java_case_says(broker: &Broker, case: &str, said: &str) {
    let printed = java_case(broker, case, &[]);
    assert!(printed.contains(said), "{printed}");
}

/// A STOMP client of `b`, logged in as the Java program's user.
fn stomp_client(b: &Broker) -> common::Client {
    common::Client::connect(
        b.stomp,
        &[
            ("accept-version", "1.2"),
            ("login", "alice"),
            ("passcode", "secret"),
        ],
    )
}

fn broker() -> Broker {
    Broker::start_with_config(Some(USERS), &["--shards", "2"])
}

#[test]
fn persistent_queue_messages_arrive_in_order_with_auto_acknowledge() {
    let b = broker();
    java_case(&b, "queue", &[]);
}

#[test]
fn client_acknowledge_redelivers_what_a_closed_connection_did_not_acknowledge() {
    let b = broker();
    java_case(&b, "client-ack", &[]);
}

#[test]
fn topic_subscribers_each_get_every_message_and_bytes_stay_bytes() {
    let b = broker();
    java_case(&b, "topic", &[]);
}

#[test]
fn an_exclusive_consumer_takes_every_message_and_no_local_skips_its_own() {
    let b = broker();
    java_case(&b, "exclusive-no-local", &[]);
}

#[test]
fn priority_orders_delivery_expired_messages_never_arrive_and_dups_ok_receives() {
    let b = broker();
    java_case_says(
        &b,
        "priority-expiry-dups-ok",
        "priority, expiry and dups-ok as JMS says",
    );
}

#[test]
fn individual_acknowledge_settles_only_the_message_acknowledged() {
    let b = broker();
    java_case(&b, "individual-ack", &[]);
}

#[test]
fn consumer_selectors_pick_messages_and_a_bad_one_is_refused() {
    let b = broker();
    java_case(&b, "selector", &[]);
}

#[test]
fn local_transactions_commit_and_roll_back_sends_and_receives() {
    let b = broker();
    java_case_says(&b, "transacted", "transactions committed and rolled back");
}

#[test]
fn temporary_queues_carry_replies_across_connections_and_end_with_their_connection() {
    let b = broker();
    java_case_says(
        &b,
        "temporary",
        "temporary queues: request/reply and removal",
    );
}

#[test]
fn map_stream_and_object_messages_come_back_as_sent() {
    let b = broker();
    java_case_says(&b, "message-kinds", "map, stream and object messages");
}

#[test]
fn a_message_the_client_gives_up_on_goes_to_the_dead_letter_queue() {
    let b = broker();
    java_case_says(&b, "poison", "poisoned message dead-lettered");
}

/// With one shard the dead-letter queue and the queue share their owner,
/// and the dead-letter copy keeps its producer's origin: it is the broker's
/// copy, never taken for a resend of the original (which is then retired).
#[test]
fn a_poisoned_message_reaches_the_dead_letter_queue_on_one_shard() {
    let b = Broker::start_with_config(Some(USERS), &["--shards", "1"]);
    java_case_says(&b, "poison", "poisoned message dead-lettered");
}

/// A JMS consumer that takes one message and closes does not make its
/// prefetched messages count as redelivered (which, after
/// `max_redeliveries` such closes, sent messages nobody saw to the DLQ).
#[test]
fn a_consumer_closed_after_one_message_gives_back_its_prefetch_unseen() {
    let b = broker();
    java_case_says(
        &b,
        "close-after-one",
        "only what the application got counted as redelivered",
    );
}

/// A message the application gives up on by closing without acknowledging
/// it counts at each close, a consumer's or a whole connection's, and so
/// still reaches the dead-letter queue.
#[test]
fn a_message_given_up_on_at_each_close_reaches_the_dead_letter_queue() {
    let config = format!("{USERS}\n[broker]\nmax_redeliveries = 2\n");
    let b = Broker::start_with_config(Some(&config), &["--shards", "1"]);
    for how in ["consumer", "connection"] {
        let printed = java_case(&b, "poison-by-close", &[how]);
        assert!(printed.contains("dead-lettered"), "{printed}");
    }
}

#[test]
fn a_producer_window_is_given_back_with_producer_acks() {
    let b = broker();
    java_case_says(&b, "producer-window", "producer window given back");
}

#[test]
fn a_queue_browser_sees_what_waits_and_takes_nothing() {
    let b = broker();
    java_case_says(&b, "browse", "browsed without taking");
}

#[test]
fn prefetch_zero_consumers_pull_one_message_at_a_time() {
    let b = broker();
    java_case_says(&b, "pull", "prefetch 0 pulls one at a time");
}

#[test]
fn a_durable_subscriber_gets_what_was_published_while_away_until_unsubscribed() {
    let b = broker();
    java_case(&b, "durable", &[]);
}

#[test]
fn a_client_id_is_one_connections_at_a_time() {
    let b = broker();
    java_case_says(
        &b,
        "client-id",
        "second refused: client id 'only-one' is already connected",
    );
}

#[test]
fn a_wrong_password_fails_the_connection_with_jms_security_exception() {
    let b = broker();
    java_case_says(
        &b,
        "bad-password",
        "refused: javax.jms.JMSSecurityException: Authentication failed",
    );
}

#[test]
fn a_text_message_crosses_from_openwire_to_stomp() {
    let b = broker();
    java_case(&b, "send-to-stomp", &["ow.to-stomp"]);
    let mut c = stomp_client(&b);
    c.subscribe("s", "/queue/ow.to-stomp", "auto", &[]);
    let m = c
        .recv_timeout(Duration::from_secs(10))
        .expect("the OpenWire message within 10 s");
    assert_eq!(body(&m), "from openwire");
    assert_eq!(m.header_str("color"), Some("blue"), "{m:?}");
    assert_eq!(m.header_str("correlation-id"), Some("corr-ow"), "{m:?}");
    assert_eq!(m.header_str("type"), Some("greeting"), "{m:?}");
    assert_eq!(m.header_str("persistent"), Some("true"), "{m:?}");
}

#[test]
fn a_stomp_client_answers_on_a_jms_temporary_queue() {
    let b = broker();
    let url = format!("tcp://{}", b.openwire);
    let java = Process::new("java")
        .args([
            "-cp",
            classpath(),
            "OpenWireListener",
            "stomp-replies",
            &url,
        ])
        .arg("ow.stomp-requests")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("java runs");
    let mut c = stomp_client(&b);
    c.subscribe("s", "/queue/ow.stomp-requests", "auto", &[]);
    let ask = c
        .recv_timeout(Duration::from_secs(30))
        .expect("the JMS request within 30 s");
    assert_eq!(body(&ask), "question for stomp");
    let reply_to = ask
        .header_str("reply-to")
        .expect("a reply-to header")
        .to_string();
    assert!(reply_to.starts_with("/temp-queue/ID:"), "{reply_to}");
    // A JMS requester wants text: without it, a content-length (which
    // this client always sends) makes a BytesMessage, as with ActiveMQ.
    c.send_sync(&reply_to, "answer from stomp", &[("amq-msg-type", "text")]);
    // The program halts itself after 60 s, so this cannot hang.
    let out = java.wait_with_output().expect("java ends");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.contains("STOMP answered on a temporary queue"),
        "{printed}"
    );
}

#[test]
fn a_text_message_crosses_from_stomp_to_openwire() {
    let b = broker();
    let mut c = stomp_client(&b);
    // Without content-length, as a STOMP text sender writes it: ActiveMQ
    // makes that a TextMessage.
    c.write(
        b"SEND\ndestination:/queue/ow.from-stomp\ncolor:red\ncorrelation-id:corr-stomp\n\
          priority:7\npersistent:true\nreply-to:/queue/replies\nreceipt:r1\n\nfrom stomp\0",
    );
    c.expect_receipt("r1");
    c.send_sync("/queue/ow.from-stomp", "sized", &[]);
    c.send_sync(
        "/queue/ow.from-stomp",
        "forced text",
        &[("amq-msg-type", "text")],
    );
    java_case(&b, "receive-from-stomp", &["ow.from-stomp"]);
}

/// A master/standby pair in file mode and ActiveMQ's client with
/// `failover:(tcp://master,tcp://standby)`: the master is SIGKILLed
/// while eight producers send persistent messages; the client reconnects
/// to the new master, restores its connection and resends what was
/// unanswered, and every message arrives exactly once (a resend of one
/// the old master had stored is recognised by its producer id and
/// sequence, which recovery read back from the journal).
#[test]
fn a_failover_client_loses_and_duplicates_nothing_when_the_master_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (common::free_addr(), common::free_addr());
    let args = |ow: &str| common::data_args(dir.path(), &["--openwire", ow, "--shards", "2"]);
    let master = Broker::spawn(Some(USERS), &args(&a), Some(dir.path()));
    let standby = Broker::spawn_any(Some(USERS), &args(&b), Some(dir.path()));
    failover_under_load(master, standby, &a, &b);
}

/// The same on a MariaDB pair (the database mode): the new master
/// recognises resends by the producers' sequences it loads from the
/// tables, also of messages acknowledged before the crash.
#[test]
fn a_failover_client_loses_and_duplicates_nothing_on_a_mariadb_pair() {
    use common::db::{Engine, Node, TestDb};
    let db = TestDb::new(Engine::MariaDb);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let master = nodes[0].start(&db, dir.path());
    let standby = nodes[1].start(&db, dir.path());
    failover_under_load(master, standby, &nodes[0].openwire, &nodes[1].openwire);
}

/// Runs the Java failover case through `failover:(a,b)` and SIGKILLs
/// `master` once 1 000 messages are sent.
fn failover_under_load(mut master: Broker, mut standby: Broker, a: &str, b: &str) {
    use std::io::BufRead;
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    let url =
        format!("failover:(tcp://{a},tcp://{b})?randomize=false&initialReconnectDelay=10&maxReconnectDelay=100");
    let mut java = Process::new("java")
        .args(["-cp", classpath(), "OpenWireListener", "failover", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("java runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = java.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // The program halts itself after 60 s, so its output ends.
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if !killed && line == "sent 1000" {
            master.kill9();
            killed = true;
        }
        printed.push(line);
    }
    let printed = printed.join("\n");
    let status = java.wait().expect("java ends");
    assert!(killed, "the producers never got to 1000:\n{printed}");
    assert!(
        status.success() && printed.contains("ok failover"),
        "{printed}\n{}",
        {
            let mut e = String::new();
            let _ = std::io::Read::read_to_string(&mut java.stderr.take().unwrap(), &mut e);
            e
        }
    );
    // It took over (its start line is already out), and holds nothing
    // more: no copy waits behind what the client received.
    standby.wait_for_master();
    let left = standby.destination("/queue/ow.failover");
    assert!(left.as_ref().is_none_or(|d| d["pending"] == 0), "{left:?}");
}
