//! Fencing in shared-file mode, with real processes, real files and real
//! SIGSTOP/SIGCONT/SIGKILL: a master that lost its lock without noticing
//! (simulated by removing the lock file while it is paused, as an expired
//! NFS lock would be lost) sends no RECEIPT once resumed and exits with
//! code 3; every receipted message survives on the new master.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use brokk::protocol::stomp::{parse, Limits, Parsed, Version};
use bytes::BytesMut;
use common::{body, proc_stat, signal, Broker};

/// Exit code of a fenced broker (`brokk::server::EXIT_FENCED`).
const FENCED: i32 = 3;

/// Small segments, so that the load rolls segments and makes spares (the
/// writes a fenced master must not make either) during the test.
const CONFIG: &str = "[store]\nsegment_size_bytes = 1048576\nlimit_bytes = 268435456\n";

/// The master that will be paused: a 1 s fencing interval, and the answer
/// of every mastership check 300 ms late (the test-only fault switch; as
/// from a slow NFS server). So once resumed, wherever the pause hit its
/// keep-alive thread, it acts on a verdict at least 300 ms after the
/// resume, and in the meantime its shards are free to run: they must hold.
/// (A pause between a check and its late answer also tests that a check
/// counts from its start: that good answer renews nothing after the resume.)
const SLOW_CHECKS: &str = "[store]\nsegment_size_bytes = 1048576\nlimit_bytes = 268435456\n[ha]\nlock_keepalive_ms = 1000\n";

fn args(dir: &std::path::Path) -> Vec<String> {
    [
        "--data",
        &dir.join("data").display().to_string(),
        "--shards",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_on(dir: &std::path::Path) -> Broker {
    Broker::spawn(Some(CONFIG), &args(dir), Some(dir))
}

/// A master whose mastership checks are slow (see [`SLOW_CHECKS`]).
fn start_slow_checking_on(dir: &std::path::Path) -> Broker {
    let b = Broker::spawn_env(
        Some(SLOW_CHECKS),
        &args(dir),
        Some(dir),
        &[("BROKK_FAULT_CHECK_DELAY_MS", "300")],
    );
    assert!(
        b.role_line.starts_with("brokk listening"),
        "{}",
        b.role_line
    );
    b
}

/// Why a producer stopped.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The broker closed the connection (or it broke).
    Closed,
    /// Asked to stop, and every SEND it made was answered.
    Done,
    /// Neither within the test's deadline.
    Deadline,
}

/// A persistent producer with up to `window` SENDs awaiting their receipt,
/// on its own thread and its own blocking socket, recording every RECEIPT
/// with the time it was read.
struct Producer {
    receipts: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Ended>,
}

impl Producer {
    fn start(addr: SocketAddr, queue: &'static str, first: u64, window: u64) -> Producer {
        let receipts: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (receipts, stop) = (receipts.clone(), stop.clone());
            std::thread::spawn(move || produce(addr, queue, first, window, &receipts, &stop))
        };
        Producer {
            receipts,
            stop,
            thread,
        }
    }

    fn count(&self) -> usize {
        self.receipts.lock().unwrap().len()
    }

    /// Stops sending, waits for the outstanding receipts (or the end).
    fn finish(self) -> (Ended, Vec<(u64, Instant)>) {
        self.stop.store(true, Ordering::Relaxed);
        let ended = self.thread.join().unwrap();
        let r = self.receipts.lock().unwrap().clone();
        (ended, r)
    }
}

fn produce(
    addr: SocketAddr,
    queue: &str,
    first: u64,
    window: u64,
    receipts: &Mutex<Vec<(u64, Instant)>>,
    stop: &AtomicBool,
) -> Ended {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = BytesMut::new();
    let mut connected = false;
    let (mut next, mut outstanding) = (first, 0u64);
    let payload = vec![b'x'; 1000];
    loop {
        if Instant::now() > deadline {
            return Ended::Deadline;
        }
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && outstanding == 0 {
            return Ended::Done;
        }
        while connected && !stopping && outstanding < window {
            let mut f = format!(
                "SEND\ndestination:{queue}\npersistent:true\nreceipt:{next}\ncontent-length:{}\n\n{next}:",
                payload.len() + next.to_string().len() + 1
            )
            .into_bytes();
            f.extend_from_slice(&payload);
            f.push(0);
            if s.write_all(&f).is_err() {
                return Ended::Closed;
            }
            next += 1;
            outstanding += 1;
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) => return Ended::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return Ended::Closed,
        }
        let at = Instant::now();
        while let Some(p) = parse(&mut buf, Version::V1_2, &Limits::default()).unwrap() {
            let Parsed::Frame(f) = p else { continue };
            match f.command.as_str() {
                "CONNECTED" => connected = true,
                "RECEIPT" => {
                    let id: u64 = f.header_str("receipt-id").unwrap().parse().unwrap();
                    receipts.lock().unwrap().push((id, at));
                    outstanding -= 1;
                }
                other => panic!("producer got {other}: {f:?}"),
            }
        }
    }
}

/// Waits until the producer has had `n` receipts (fails after 30 s).
fn wait_for_receipts(p: &Producer, n: usize) {
    let end = Instant::now() + Duration::from_secs(30);
    while p.count() < n {
        assert!(
            Instant::now() < end && !p.thread.is_finished(),
            "the producer stopped at {} receipts",
            p.count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Drains a queue until it is quiet; returns the message ids received.
fn drain(b: &Broker, queue: &str) -> HashSet<u64> {
    let mut c = b.client();
    c.subscribe(
        "drain",
        queue,
        "client-individual",
        &[("activemq.prefetchSize", "1000")],
    );
    let mut got = HashSet::new();
    while let Some(m) = c.recv_timeout(Duration::from_millis(1000)) {
        assert_eq!(m.command.as_str(), "MESSAGE");
        let text = body(&m);
        let id = text.split(':').next().unwrap().parse().unwrap();
        got.insert(id);
        c.ack(&m);
    }
    c.disconnect();
    got
}

fn assert_all_present(what: &str, receipted: &[u64], got: &HashSet<u64>) {
    let lost: Vec<u64> = receipted
        .iter()
        .copied()
        .filter(|id| !got.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} messages receipted {what} are missing: {:?}",
        lost.len(),
        receipted.len(),
        &lost[..lost.len().min(20)]
    );
}

#[test]
fn a_paused_master_replaced_while_stopped_sends_no_receipt_after_resuming_and_exits_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut old = start_slow_checking_on(dir.path());
    let old_producer = Producer::start(old.stomp, "/queue/fence", 0, 32);
    wait_for_receipts(&old_producer, 2000);

    // Paused under load: SENDs and syncs are in flight.
    signal(&old, libc::SIGSTOP);
    // Receipts written before the stop are in the socket; let them arrive.
    let mut seen = old_producer.count();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = old_producer.count();
        if now == seen {
            break;
        }
        seen = now;
    }
    let receipted_before = old_producer.count();

    // The lock is lost without the paused master knowing (an expired NFS
    // lock): a second broker takes it, raises the epoch, waits (2 s: the
    // old master's recorded takeover wait, longer than its own), recovers.
    std::fs::remove_file(data.join("lock")).unwrap();
    let new = start_on(dir.path());
    assert_eq!(new.status()["role"], "master");
    let epoch = std::fs::read_to_string(data.join("epoch")).unwrap();
    assert!(epoch.contains("\nepoch 2\n"), "{epoch}");
    assert!(epoch.contains("\ntakeover_wait_ms 100\n"), "{epoch}");
    // The new master serves, and writes to the journal, while the old one
    // comes back.
    let new_producer = Producer::start(new.stomp, "/queue/fence", 1_000_000, 32);
    wait_for_receipts(&new_producer, 500);

    let resumed = Instant::now();
    signal(&old, libc::SIGCONT);
    let status = old.wait_exit(10);
    assert_eq!(
        status.code(),
        Some(FENCED),
        "the old master must exit fenced: {status:?}"
    );
    // Read its socket until it closed: not one RECEIPT after the resume.
    let (ended, old_receipts) = old_producer.finish();
    assert_eq!(ended, Ended::Closed);
    let late: Vec<u64> = old_receipts
        .iter()
        .filter(|(_, at)| *at >= resumed)
        .map(|r| r.0)
        .collect();
    assert!(
        late.is_empty(),
        "the fenced master sent {} RECEIPTs after it resumed: {:?}",
        late.len(),
        &late[..late.len().min(20)]
    );
    assert_eq!(old_receipts.len(), receipted_before);

    // Keep the new master busy a little longer after the old one is gone,
    // then check every receipted message is there.
    wait_for_receipts(&new_producer, new_producer.count() + 500);
    let (ended, new_receipts) = new_producer.finish();
    assert_eq!(ended, Ended::Done);
    let old_ids: Vec<u64> = old_receipts.iter().map(|r| r.0).collect();
    let new_ids: Vec<u64> = new_receipts.iter().map(|r| r.0).collect();
    let got = drain(&new, "/queue/fence");
    assert_all_present("by the old master", &old_ids, &got);
    assert_all_present("by the new master", &new_ids, &got);
}

#[test]
fn the_new_masters_journal_is_intact_after_the_old_master_resumed() {
    // As above, but what the new master wrote while the old one resumed is
    // read back by a third broker from the files alone: nothing the fenced
    // master did after its resume damaged the new master's segments.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut old = start_slow_checking_on(dir.path());
    let old_producer = Producer::start(old.stomp, "/queue/before", 0, 32);
    wait_for_receipts(&old_producer, 2000);
    signal(&old, libc::SIGSTOP);
    std::fs::remove_file(data.join("lock")).unwrap();
    let mut new = start_on(dir.path());
    let new_producer = Producer::start(new.stomp, "/queue/after", 1_000_000, 32);
    wait_for_receipts(&new_producer, 500);
    signal(&old, libc::SIGCONT);
    let status = old.wait_exit(10);
    assert_eq!(status.code(), Some(FENCED), "{status:?}");
    let (_, old_receipts) = old_producer.finish();
    // Segments rolled and spares made by the new master after the resume.
    wait_for_receipts(&new_producer, new_producer.count() + 3000);
    let (ended, new_receipts) = new_producer.finish();
    assert_eq!(ended, Ended::Done);
    new.kill9();

    let third = start_on(dir.path());
    let old_ids: Vec<u64> = old_receipts.iter().map(|r| r.0).collect();
    let new_ids: Vec<u64> = new_receipts.iter().map(|r| r.0).collect();
    assert_all_present(
        "by the old master",
        &old_ids,
        &drain(&third, "/queue/before"),
    );
    assert_all_present(
        "by the new master",
        &new_ids,
        &drain(&third, "/queue/after"),
    );
}

#[test]
fn a_running_master_whose_epoch_was_raised_exits_fenced_and_loses_nothing() {
    // The lock file stays as it is (an NFS server that handed the lock to
    // another client after the lease expired): only the epoch tells.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut old = start_on(dir.path());
    let producer = Producer::start(old.stomp, "/queue/epoch", 0, 32);
    wait_for_receipts(&producer, 1000);
    // Another broker's raise, as it would write it (atomically).
    let current = std::fs::read_to_string(data.join("epoch")).unwrap();
    assert!(current.contains("\nepoch 1\n"), "{current}");
    let raised = current
        .replace("\nepoch 1\n", "\nepoch 2\n")
        .lines()
        .map(|l| {
            if l.starts_with("owner ") {
                "owner another-broker".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(data.join("epoch.test"), raised).unwrap();
    std::fs::rename(data.join("epoch.test"), data.join("epoch")).unwrap();
    let status = old.wait_exit(10);
    assert_eq!(status.code(), Some(FENCED), "{status:?}");
    let (ended, receipts) = producer.finish();
    assert_eq!(ended, Ended::Closed);
    // The lock went with the process: a new master recovers everything.
    let new = start_on(dir.path());
    let epoch = std::fs::read_to_string(data.join("epoch")).unwrap();
    assert!(epoch.contains("\nepoch 3\n"), "{epoch}");
    let ids: Vec<u64> = receipts.iter().map(|r| r.0).collect();
    assert_all_present(
        "before the epoch was raised",
        &ids,
        &drain(&new, "/queue/epoch"),
    );
}

#[test]
fn a_standby_that_waited_on_a_replaced_lock_file_stays_standby() {
    // A standby blocks on the lock of the file it opened. If that file is
    // removed and another broker becomes master on a new one, the standby
    // gets the old file's lock when the old master dies: it must wait on
    // the new file instead of taking over (and fencing the live master).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args: Vec<String> = ["--data", &data.display().to_string(), "--shards", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut first = Broker::spawn(Some(CONFIG), &args, Some(dir.path()));
    let mut standby = Broker::spawn_any(Some(CONFIG), &args, Some(dir.path()));
    assert!(
        standby.role_line.starts_with("brokk standby"),
        "{}",
        standby.role_line
    );
    // Blocked on the old file's lock (not about to open the path, which
    // would make and take a new file once the old one is gone).
    wait_blocked_on_a_lock(&standby);
    // Paused, so that it does not notice the removal and exit (which
    // would let the standby take the new file before the second broker).
    signal(&first, libc::SIGSTOP);
    std::fs::remove_file(data.join("lock")).unwrap();
    let mut second = Broker::spawn(Some(CONFIG), &args, Some(dir.path()));
    let mut p = second.client();
    p.send_sync("/queue/live", "1", &[("persistent", "true")]);
    first.kill9();
    // Long enough for a wrong takeover: its raise, and our master's exit.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the live master was fenced by a standby holding a stale lock"
    );
    assert_eq!(second.status()["role"], "master");
    assert_eq!(standby.status()["role"], "standby");
    p.send_sync("/queue/live", "2", &[("persistent", "true")]);
    // It takes over from the live master once that one dies.
    second.kill9();
    standby.wait_for_master();
    let got = drain(&standby, "/queue/live");
    assert_eq!(got, HashSet::from([1, 2]));
}

/// Waits until `b` waits in the kernel for a POSIX lock (a `->` line with
/// its pid in /proc/locks); fails after 10 s.
fn wait_blocked_on_a_lock(b: &Broker) {
    let pid = b.pid().to_string();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let blocked = locks.lines().any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some("->") && f.nth(3) == Some(pid.as_str())
        });
        if blocked {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "the standby never blocked on the lock:\n{locks}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pid` exists and is not a zombie.
fn is_live(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|p| p.state != 'Z')
}

/// The live `brokk-keeper` child of `pid` (`ha::keeper`), if any: a
/// zombie counts as gone (it has exited; its memory is free).
fn keeper_of(pid: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let k: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let p = proc_stat(k)?;
        (p.comm == "brokk-keeper" && p.state != 'Z' && p.ppid == pid).then_some(k)
    })
}

/// Waits until `pid` has no live keeper; fails after 10 s.
fn wait_keeper_gone(pid: i32, keeper: i32) {
    let end = Instant::now() + Duration::from_secs(10);
    while keeper_of(pid).is_some() || is_live(keeper) {
        assert!(
            Instant::now() < end,
            "the keeper {keeper} of broker {pid} outlived it by 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_masters_keeper_holds_no_lock_or_socket_and_never_outlives_it() {
    // The keeper shares the broker's memory so that a killed master's lock
    // and connections close before that memory is freed. It must hold
    // none of them itself (a standby would wait on a dead master's lock
    // for ever), and it must go when the broker goes, killed or stopped.
    let dir = tempfile::tempdir().unwrap();
    let mut master = start_on(dir.path());
    let mut standby = Broker::spawn_any(Some(CONFIG), &args(dir.path()), Some(dir.path()));
    let mut p = master.client();
    p.send_sync("/queue/kept", "1", &[("persistent", "true")]);
    let keeper = keeper_of(master.pid()).expect("the master has a keeper");
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{keeper}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        fds,
        ["anon_inode:[pidfd]"],
        "the keeper holds only its pidfd"
    );
    // SIGKILL: the standby gets the lock, the keeper goes.
    let pid = master.pid();
    master.kill9();
    standby.wait_for_master_within(10);
    wait_keeper_gone(pid, keeper);
    assert_eq!(drain(&standby, "/queue/kept"), HashSet::from([1]));
    // A clean stop takes its keeper along too.
    let keeper = keeper_of(standby.pid()).expect("the new master has a keeper");
    let pid = standby.pid();
    assert!(standby.terminate().success());
    wait_keeper_gone(pid, keeper);
}
