//! zk mode against the real 3-node ZooKeeper ensemble `ops/services.sh
//! start zookeeper` runs (the test command starts it): three brokers, each
//! with its own data directory, elected through ZooKeeper, replicating
//! over loopback. SIGKILLs under load, a cluster without a quorum, and the
//! killed brokers coming back.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::db::{assert_all_present, drain_at, Producer};
use common::free_addr;
use common::stomp_serving as serving;

const ZK: &str = "127.0.0.1:21811,127.0.0.1:21812,127.0.0.1:21813";

/// The ensemble is shared: tests that stop its nodes run alone (write),
/// the others side by side (read).
static ENSEMBLE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_ensemble() -> std::sync::RwLockReadGuard<'static, ()> {
    ENSEMBLE.read().unwrap_or_else(|p| p.into_inner())
}

fn own_ensemble() -> std::sync::RwLockWriteGuard<'static, ()> {
    ENSEMBLE.write().unwrap_or_else(|p| p.into_inner())
}

/// `ops/services.sh ACTION zookeeper-node N` (or `zookeeper` without N).
fn zk_service(action: &str, node: Option<u32>) {
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/services.sh"));
    cmd.arg(action);
    match node {
        Some(n) => cmd.args(["zookeeper-node", &n.to_string()]),
        None => cmd.arg("zookeeper"),
    };
    let out = cmd.output().expect("ops/services.sh runs");
    assert!(
        out.status.success(),
        "services.sh {action} zookeeper {node:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One broker's fixed addresses and data directory.
struct Node {
    stomp: String,
    admin: String,
    openwire: String,
    repl: String,
    dir: std::path::PathBuf,
}

/// A running broker: its output lines arrive on `lines`.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits for a line starting `brokk listening` or `brokk standby`.
    fn role(&mut self, secs: u64) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("brokk ") => return l,
                Ok(_) => {}
                Err(e) => panic!("no role line within {secs} s: {e}"),
            }
        }
    }

    #[allow(dead_code)]
    fn wait_master(&mut self, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "not master within {secs} s");
            if self
                .role(left.as_secs().max(1))
                .starts_with("brokk listening")
            {
                return;
            }
        }
    }

    fn kill9(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    path: String,
    nodes: Vec<Node>,
    sync: &'static str,
}

impl Cluster {
    fn new(sync: &'static str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let nodes = (0..3)
            .map(|i| Node {
                stomp: free_addr(),
                admin: free_addr(),
                openwire: free_addr(),
                repl: free_addr(),
                dir: tmp.path().join(format!("b{i}")),
            })
            .collect();
        let path = format!(
            "/brokk/test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        Cluster {
            _tmp: tmp,
            path,
            nodes,
            sync,
        }
    }

    fn start(&self, i: usize) -> Running {
        self.start_env(i, &[])
    }

    /// Broker `i` with `env` (fault switches).
    fn start_env(&self, i: usize, env: &[(&str, &str)]) -> Running {
        let n = &self.nodes[i];
        std::fs::create_dir_all(&n.dir).unwrap();
        let config = format!(
            "[listeners]\nstomp = \"{}\"\nadmin = \"{}\"\nopenwire = \"{}\"\n\
             [store]\nmode = \"zk\"\ndir = \"{}\"\nsync = \"{}\"\n\
             [ha]\nzk_address = \"{ZK}\"\nzk_path = \"{}\"\nhostname = \"127.0.0.1\"\n\
             replication_bind = \"{}\"\nzk_session_timeout_ms = 2000\nreplica_timeout_ms = 1000\n",
            n.stomp,
            n.admin,
            n.openwire,
            n.dir.join("data").display(),
            self.sync,
            self.path,
            n.repl
        );
        let cfg = n.dir.join("brokk.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokk"));
        if std::env::var_os("BROKK_LOG").is_none() {
            cmd.env("BROKK_LOG", "warn");
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .args(["serve", "--shards", "2", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("brokk runs");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    fn stomp(&self, i: usize) -> SocketAddr {
        self.nodes[i].stomp.parse().unwrap()
    }

    fn stomps(&self) -> Vec<SocketAddr> {
        (0..3).map(|i| self.stomp(i)).collect()
    }

    /// Which broker serves clients (fails after `secs`).
    fn master(&self, secs: u64) -> usize {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            for i in 0..3 {
                if serving(self.stomp(i)) {
                    return i;
                }
            }
            assert!(Instant::now() < end, "no master within {secs} s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts all three together (none serves before a quorum registered).
    fn start_all(&self) -> Vec<Running> {
        let mut r: Vec<Running> = (0..3).map(|i| self.start(i)).collect();
        for b in &mut r {
            b.role(60);
        }
        r
    }
}

/// SIGKILL the master under persistent load, five times: a standby takes
/// over each time, the killed broker comes back and follows, and every
/// receipted message is there at the end.
#[test]
fn the_master_killed_under_load_loses_nothing_and_comes_back_as_standby() {
    master_killed_under_load("quorum_mem", 5);
}

/// The same under `local_disk` (the master's own fdatasync before a
/// receipt) and `quorum_disk` (a quorum's), twice each.
#[test]
fn the_master_killed_under_load_loses_nothing_in_the_disk_sync_modes() {
    master_killed_under_load("local_disk", 2);
    master_killed_under_load("quorum_disk", 2);
}

fn master_killed_under_load(sync: &'static str, kills: usize) {
    let _zk = shared_ensemble();
    let c = Cluster::new(sync);
    let mut running = c.start_all();
    let producer = Producer::start_any(c.stomps());
    for _ in 0..kills {
        producer.wait_more(200);
        let m = c.master(30);
        running[m].kill9();
        let next = c.master(30);
        assert_ne!(next, m);
        producer.wait_more(50);
        running[m] = c.start(m);
        let line = running[m].role(60);
        assert!(line.starts_with("brokk standby"), "{line}");
    }
    producer.wait_more(100);
    let receipted = producer.finish();
    let got = drain_at(c.stomp(c.master(30)));
    assert_all_present(&receipted, &got);
}

/// With two of three brokers killed there is no master and no client port
/// anywhere; restarting one brings service back with nothing lost. Under
/// `quorum_disk`, so any two may die (under `quorum_mem` two crashes before
/// their flush can lose what only they held: documented).
#[test]
fn without_a_quorum_nobody_serves_and_a_returning_broker_restores_service() {
    let _zk = shared_ensemble();
    let c = Cluster::new("quorum_disk");
    let mut running = c.start_all();
    let producer = Producer::start_any(c.stomps());
    producer.wait_more(300);
    let m = c.master(30);
    let other = (m + 1) % 3;
    let left = (m + 2) % 3;
    running[other].kill9();
    running[m].kill9();
    // The survivor never serves alone.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(
            TcpStream::connect(c.stomp(left)).is_err(),
            "a lone broker opened its client port"
        );
        assert!(running[left].alive(), "the survivor exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    running[m] = c.start(m);
    let back = c.master(60);
    assert!(back == m || back == left, "{back}");
    producer.wait_more(100);
    let receipted = producer.finish();
    let got = drain_at(c.stomp(back));
    assert_all_present(&receipted, &got);
    drop(running);
}

/// A master that loses its standbys (both killed) stops answering and
/// exits (3) within the replica timeout: it cannot receipt without a
/// quorum.
#[test]
fn a_master_without_standbys_steps_down() {
    let _zk = shared_ensemble();
    let c = Cluster::new("quorum_mem");
    let mut running = c.start_all();
    let m = c.master(30);
    for (i, r) in running.iter_mut().enumerate() {
        if i != m {
            r.kill9();
        }
    }
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = running[m].child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(3), "exits as fenced");
            break;
        }
        assert!(Instant::now() < end, "the master kept running alone");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!serving(c.stomp(m)));
}

/// A configuration without the ensemble's address is refused naming the
/// key, exit 2.
#[test]
fn a_missing_zk_address_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.toml");
    std::fs::write(&cfg, "[store]\nmode = \"zk\"\n[ha]\nhostname = \"h\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ha.zk_address"), "{err}");
}

/// ZooKeeper losing any one of its three nodes (its leader included)
/// changes nothing: the same master keeps receipting, nobody steps down.
#[test]
fn zookeeper_losing_one_node_changes_nothing() {
    let _zk = own_ensemble();
    zk_service("start", None);
    let c = Cluster::new("quorum_mem");
    let mut running = c.start_all();
    let producer = Producer::start_any(c.stomps());
    producer.wait_more(100);
    let m = c.master(30);
    for n in 1..=3 {
        zk_service("stop", Some(n));
        producer.wait_more(200);
        zk_service("start", Some(n));
        producer.wait_more(100);
        assert_eq!(
            c.master(30),
            m,
            "the master changed while ZooKeeper lost node {n}"
        );
        for (i, r) in running.iter_mut().enumerate() {
            assert!(r.alive(), "broker {i} exited while ZooKeeper lost node {n}");
        }
    }
    let receipted = producer.finish();
    let got = drain_at(c.stomp(m));
    assert_all_present(&receipted, &got);
}

/// ZooKeeper losing its quorum: the master steps down (exit 3) once its
/// session is gone, nobody serves; when ZooKeeper returns (and the stopped
/// master is started again, as systemd does), service resumes with
/// nothing lost.
#[test]
fn zookeeper_losing_its_quorum_stops_the_master_until_it_returns() {
    let _zk = own_ensemble();
    zk_service("start", None);
    let c = Cluster::new("quorum_mem");
    let mut running = c.start_all();
    let producer = Producer::start_any(c.stomps());
    producer.wait_more(200);
    let m = c.master(30);
    zk_service("stop", Some(1));
    zk_service("stop", Some(2));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = running[m].child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the master kept serving without ZooKeeper"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3), "exits as fenced");
    for i in 0..3 {
        assert!(!serving(c.stomp(i)), "broker {i} serves without ZooKeeper");
    }
    zk_service("start", Some(1));
    zk_service("start", Some(2));
    running[m] = c.start(m);
    let back = c.master(60);
    producer.wait_more(100);
    let receipted = producer.finish();
    let got = drain_at(c.stomp(back));
    assert_all_present(&receipted, &got);
}

/// A master paused (SIGSTOP) past the replica timeout loses to a standby;
/// resumed, it finds the epoch moved on and exits (3) without receipting
/// anything more; nothing receipted is lost.
#[test]
fn a_paused_master_is_replaced_and_exits_when_resumed() {
    let _zk = shared_ensemble();
    let c = Cluster::new("quorum_mem");
    let mut running = c.start_all();
    let producer = Producer::start_any(c.stomps());
    producer.wait_more(200);
    let m = c.master(30);
    let pid = running[m].child.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let end = Instant::now() + Duration::from_secs(30);
    let next = loop {
        if let Some(i) = (0..3).filter(|i| *i != m).find(|i| serving(c.stomp(*i))) {
            break i;
        }
        assert!(
            Instant::now() < end,
            "no standby took over from a paused master"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    producer.wait_more(100);
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = running[m].child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the resumed master kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3), "exits as fenced");
    producer.wait_more(100);
    let receipted = producer.finish();
    let got = drain_at(c.stomp(next));
    assert_all_present(&receipted, &got);
}

/// Messages consumed while their batch is still on its way to the quorum
/// leave nothing behind: after a takeover the queue is empty (no phantom
/// row restored), and the new master's ids are all distinct (a phantom id
/// of u64::MAX once pushed every shard's ids past the shard byte, so two
/// shards issued the same ids and acknowledgements retired the wrong
/// messages).
#[test]
fn consumed_messages_leave_no_phantom_and_new_ids_stay_distinct_after_a_takeover() {
    let _zk = shared_ensemble();
    let c = Cluster::new("quorum_mem");
    let mut running = c.start_all();
    let m = c.master(30);
    let addr = c.stomp(m);
    let consumer = std::thread::spawn(move || {
        let mut cl = common::Client::connect(addr, &[("accept-version", "1.2")]);
        cl.subscribe("c", "/queue/t", "auto", &[]);
        let mut n = 0;
        while n < 3000 {
            match cl.recv_timeout(Duration::from_secs(10)) {
                Some(f) if f.command.as_str() == "MESSAGE" => n += 1,
                other => panic!("consumer got {other:?} after {n}"),
            }
        }
        // Auto acks are journaled as the messages go out and replicated a
        // moment later: DISCONNECT's receipt says they are durable, so a
        // SIGKILL after it must not bring any of them back. (Killing right
        // after the last MESSAGE may legitimately redeliver it: the
        // at-least-once window.)
        cl.disconnect();
    });
    let mut p = common::Client::connect(addr, &[("accept-version", "1.2")]);
    for i in 0..3000 {
        let r = i.to_string();
        if i % 100 == 99 {
            p.frame(
                "SEND",
                &[
                    ("destination", "/queue/t"),
                    ("persistent", "true"),
                    ("receipt", &r),
                ],
                b"x",
            );
            p.expect_receipt(&r);
        } else {
            p.frame(
                "SEND",
                &[("destination", "/queue/t"), ("persistent", "true")],
                b"x",
            );
        }
    }
    consumer.join().unwrap();
    drop(p);
    running[m].kill9();
    let next = c.master(30);
    let mut cl = common::Client::connect(c.stomp(next), &[("accept-version", "1.2")]);
    cl.subscribe("t", "/queue/t", "auto", &[]);
    if let Some(f) = cl.recv_timeout(Duration::from_secs(2)) {
        panic!("a consumed message came back after the takeover: {f:?}");
    }
    // New messages on both shards' destinations: ids all distinct.
    for q in 0..8 {
        for _ in 0..25 {
            cl.send_sync(&format!("/queue/n{q}"), "y", &[("persistent", "true")]);
        }
    }
    let mut ids = std::collections::HashSet::new();
    for q in 0..8 {
        cl.subscribe(&format!("n{q}"), &format!("/queue/n{q}"), "auto", &[]);
    }
    for _ in 0..200 {
        let f = cl.recv_timeout(Duration::from_secs(10)).expect("a message");
        let id = f.header_str("message-id").expect("message-id").to_string();
        assert!(!id.contains("18446744073709551615"), "a phantom id: {id}");
        assert!(ids.insert(id.clone()), "id {id} issued twice");
    }
}

/// A cross-shard transaction whose participant died once the decision was
/// replicated (`BROKK_FAULT_TX_CRASH=decided` kills the master's process)
/// is applied by the new master's takeover, and its topic SENDs reach only
/// the durable subscriptions whose selector takes them, across another
/// takeover too (as on files and databases: tests/transactions.rs,
/// tests/db_transactions.rs).
#[test]
fn a_commit_applied_by_a_takeover_keeps_to_durable_subscriptions_selectors() {
    let _zk = shared_ensemble();
    let c = Cluster::new("quorum_mem");
    let fault = [("BROKK_FAULT_TX_CRASH", "decided")];
    let mut running: Vec<Running> = (0..3).map(|i| c.start_env(i, &fault)).collect();
    for b in &mut running {
        b.role(60);
    }
    let m = c.master(30);
    let topics = [
        common::tx::topic_on(0, "sel"),
        common::tx::topic_on(1, "sel"),
    ];
    common::tx::commit_to_selective_subscriptions(c.stomp(m), &topics);
    let end = Instant::now() + Duration::from_secs(10);
    while running[m].alive() {
        assert!(
            Instant::now() < end,
            "the fault switch did not end the master"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Back as a standby (no fault switch: it may be master later).
    running[m] = c.start(m);
    let next = c.master(30);
    common::tx::assert_selectors_kept(c.stomp(next), &topics, false);
    running[next].kill9();
    let last = c.master(30);
    assert_ne!(last, next);
    common::tx::assert_selectors_kept(c.stomp(last), &topics, true);
    common::tx::assert_selective_consumed(c.stomp(last), &topics);
}
