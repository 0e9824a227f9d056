//! A full disk pauses persistent producers; it does not stop the broker.
//! Real broker processes on a small ext4 file system that each test makes
//! (a loop-mounted image) and always unmounts and removes again.

mod common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brokk::protocol::stomp::Frame;
use common::{body, Broker, Client};

const SEGMENT: u64 = 1 << 20;
const BODY: usize = 16 * 1024;
/// Outstanding receipts per producer: enough to keep the journal busy, far
/// less than a segment, and far less than the socket buffers (a paused
/// producer's writes must not block the test).
const WINDOW: usize = 8;
const QUEUE: &str = "/queue/fill";
/// `store.limit_bytes` stays at its default: the start-up cap is exercised.
const CONFIG: &str = "[store]\nsegment_size_bytes = 1048576\n";

/// A small ext4 file system on a loop device, unmounted and removed on drop
/// (a failing test included).
struct SmallFs {
    mnt: PathBuf,
    bytes: u64,
    mounted: bool,
    /// Holds the image and the mount point; outside the small file system,
    /// so the broker's config file goes here too.
    root: tempfile::TempDir,
}

impl SmallFs {
    /// Makes and mounts an ext4 file system of `mib` MiB, or says why it
    /// cannot.
    fn new(mib: u64) -> Result<SmallFs, String> {
        // -m 0: no blocks reserved for root (the broker runs as root here);
        // 4 KiB blocks like a real volume.
        SmallFs::make(mib, "mkfs.ext4", &["-q", "-F", "-m", "0", "-b", "4096"])
    }

    fn make(mib: u64, mkfs: &str, mkfs_args: &[&str]) -> Result<SmallFs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a loop device".into());
        }
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = root.path().join("fs.img");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let bytes = mib << 20;
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("cannot make the image: {e}"))?;
        run(mkfs, mkfs_args, &img)?;
        let mut fs = SmallFs {
            mnt,
            bytes,
            mounted: false,
            root,
        };
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&fs.mnt)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -o loop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        fs.mounted = true;
        Ok(fs)
    }

    /// Gives the space of [`SmallFs::fill_leaving`]'s file back, as an
    /// operator clearing a full volume would.
    fn free_ballast(&self) {
        std::fs::remove_file(self.mnt.join("ballast")).unwrap();
        // Copy-on-write file systems count freed space at the next commit.
        run("sync", &["-f"], &self.mnt).unwrap();
    }

    fn data(&self) -> PathBuf {
        self.mnt.join("data")
    }

    /// Fills the file system with a file of zeros until only about `leave`
    /// bytes are free (or none: btrfs reports more free space than it can
    /// give): something other than the broker took the space.
    fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mnt.join("ballast")).unwrap();
        let zeros = vec![0u8; 1 << 20];
        loop {
            let avail = brokk::store::journal::available_bytes(&self.mnt).unwrap();
            if avail <= leave {
                break;
            }
            let n = (avail - leave).min(zeros.len() as u64).div_ceil(4096) * 4096;
            match f
                .write_all(&zeros[..n as usize])
                .and_then(|()| f.sync_all())
            {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("cannot fill the file system: {e}"),
            }
        }
    }
}

fn run(cmd: &str, args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // The broker is gone by now (dropped first), but the kernel may
        // still be closing its files: retry, then detach lazily so the
        // image can be removed either way.
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// The file system, or a skip message when this machine cannot mount one.
fn small_fs(test: &str) -> Option<SmallFs> {
    match SmallFs::new(64) {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// A 128 MiB btrfs volume (copy-on-write: even overwrites allocate), or a
/// skip message when this machine cannot mount one.
fn small_btrfs(test: &str) -> Option<SmallFs> {
    match SmallFs::make(128, "mkfs.btrfs", &["-q", "-f", "--mixed"]) {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn start(fs: &SmallFs, extra_config: &str) -> Broker {
    let args: Vec<String> = vec![
        "--data".into(),
        fs.data().display().to_string(),
        "--shards".into(),
        "2".into(),
    ];
    let config = format!("{CONFIG}{extra_config}");
    Broker::spawn(Some(&config), &args, Some(fs.root.path()))
}

fn assert_alive(b: &mut Broker) {
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "the broker exited at a full disk"
    );
}

fn body_of(i: usize) -> Vec<u8> {
    let mut b = format!("{i}:").into_bytes();
    b.resize(BODY, b'x');
    b
}

fn id_of(m: &Frame) -> usize {
    let b = body(m);
    b.split_once(':').unwrap().0.parse().unwrap()
}

fn send(p: &mut Client, i: usize) {
    let receipt = format!("r{i}");
    p.frame(
        "SEND",
        &[
            ("destination", QUEUE),
            ("persistent", "true"),
            ("receipt", &receipt),
        ],
        &body_of(i),
    );
}

/// The message a RECEIPT from `send` confirms.
fn receipt_for(f: &Frame) -> usize {
    assert_eq!(f.command.as_str(), "RECEIPT", "{f:?}");
    f.header_str("receipt-id").unwrap()[1..].parse().unwrap()
}

/// One producer, persistent SENDs with receipts, WINDOW outstanding.
struct Producer {
    c: Client,
    next: usize,
    outstanding: VecDeque<usize>,
    receipted: BTreeSet<usize>,
}

impl Producer {
    fn new(b: &Broker) -> Producer {
        Producer {
            c: b.client(),
            next: 0,
            outstanding: VecDeque::new(),
            receipted: BTreeSet::new(),
        }
    }

    /// Sends until the broker says the store is full and a SEND's receipt
    /// is then overdue: the producer is paused.
    fn fill(&mut self, b: &mut Broker) {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < end, "the store never reported full");
            while self.outstanding.len() < WINDOW {
                send(&mut self.c, self.next);
                self.outstanding.push_back(self.next);
                self.next += 1;
            }
            match self.c.recv_timeout(Duration::from_millis(200)) {
                Some(f) => self.got(&f),
                None => {
                    assert_alive(b);
                    if b.status()["store_full"] == true {
                        return;
                    }
                }
            }
        }
    }

    fn got(&mut self, f: &Frame) {
        let i = receipt_for(f);
        self.outstanding.retain(|&o| o != i);
        self.receipted.insert(i);
    }

    /// Waits for the receipt of message `i`, keeping the others that come.
    fn wait_receipt(&mut self, i: usize) {
        while !self.receipted.contains(&i) {
            let f = self
                .c
                .recv()
                .unwrap_or_else(|| panic!("no RECEIPT for message {i}"));
            self.got(&f);
        }
    }
}

/// Checks that the producer stays paused: a SEND made after the store
/// reported full gets no RECEIPT while the store stays full.
fn assert_paused(b: &Broker, p: &mut Producer) -> usize {
    assert_eq!(b.status()["store_full"], true);
    let probe = p.next;
    send(&mut p.c, probe);
    p.outstanding.push_back(probe);
    p.next += 1;
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        // Receipts of SENDs the broker took before it paused may come.
        let Some(f) = p.c.recv_timeout(left) else {
            break;
        };
        p.got(&f);
        assert!(
            !p.receipted.contains(&probe),
            "a SEND was receipted while the store was full"
        );
    }
    assert_eq!(
        b.status()["store_full"],
        true,
        "the store stopped being full by itself"
    );
    probe
}

/// Receives `n` messages on a client-individual subscription, acknowledging
/// each one for which `ack` holds; the last acknowledgement carries a
/// receipt, so all of them are durable once it comes.
fn consume(c: &mut Client, n: usize, ack: impl Fn(usize) -> bool) -> (Vec<usize>, BTreeSet<usize>) {
    let mut got = Vec::new();
    let mut acked = BTreeSet::new();
    let mut last_ack = None;
    for _ in 0..n {
        let m = c.expect_message();
        let i = id_of(&m);
        got.push(i);
        if ack(i) {
            if let Some(prev) = last_ack.replace(m) {
                c.ack(&prev);
            }
            acked.insert(i);
        }
    }
    if let Some(m) = last_ack {
        let id = m.header_str("ack").unwrap().to_string();
        c.frame("ACK", &[("id", &id), ("receipt", "acked")], b"");
        c.expect_receipt("acked");
    }
    (got, acked)
}

fn pending(b: &Broker) -> usize {
    b.destination(QUEUE)
        .and_then(|d| d["pending"].as_u64())
        .unwrap_or(0) as usize
}

/// After a SIGKILL and a restart on the still nearly full file system:
/// every receipted message that was not acknowledged is there exactly once,
/// and no acknowledged one.
fn check_after_restart(fs: &SmallFs, receipted: &BTreeSet<usize>, acked: &BTreeSet<usize>) {
    let b = start(fs, "");
    let n = pending(&b);
    let mut c = b.client();
    c.subscribe("after", QUEUE, "client-individual", &[]);
    let (got, _) = consume(&mut c, n, |_| true);
    let mut count: HashMap<usize, usize> = HashMap::new();
    for i in &got {
        *count.entry(*i).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, &k)| k > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let back: Vec<_> = got.iter().filter(|i| acked.contains(i)).collect();
    assert!(back.is_empty(), "acknowledged messages came back: {back:?}");
    let lost: Vec<_> = receipted
        .iter()
        .filter(|i| !acked.contains(i) && !count.contains_key(i))
        .collect();
    assert!(lost.is_empty(), "receipted messages lost: {lost:?}");
    assert_eq!(pending(&b), 0);
}

/// The default store limit (8 GiB) is more than a 64 MiB file system: it is
/// capped at start, producers pause at the cap, consumers free segments
/// and producers resume; nothing receipted is lost across a SIGKILL.
#[test]
fn store_limit_is_capped_to_the_file_system_and_producers_pause_there() {
    let Some(fs) = small_fs("store_limit_is_capped_to_the_file_system_and_producers_pause_there")
    else {
        return;
    };
    let mut b = start(&fs, "");
    let limit = b.status()["store_limit_bytes"].as_u64().unwrap();
    assert!(
        limit < fs.bytes && limit >= 16 * SEGMENT,
        "limit {limit} not capped to the {} byte file system",
        fs.bytes
    );
    let mut p = Producer::new(&b);
    p.fill(&mut b);
    let s = b.status();
    assert!(
        s["store_used_bytes"].as_u64().unwrap() >= limit,
        "paused before the capped limit was reached (the cap is too generous?): {s}"
    );
    let probe = assert_paused(&b, &mut p);
    assert_alive(&mut b);

    // Consumers are served while producers wait; acknowledging the older
    // half frees segments.
    let mut c = b.client();
    c.subscribe("s", QUEUE, "client-individual", &[]);
    let half = p.receipted.len() / 2;
    let (_, acked) = consume(&mut c, half, |_| true);
    b.wait_until("the store to have room again", |s| s["store_full"] == false);
    p.wait_receipt(probe);
    assert_alive(&mut b);

    b.kill9();
    check_after_restart(&fs, &p.receipted, &acked);
}

/// Something else fills the file system after the broker started (so the
/// limit, capped at start, is no longer reachable): making the next segment
/// fails with ENOSPC, producers pause, the broker keeps running and serving
/// consumers, a freed segment is reused and producers resume.
#[test]
fn enospc_making_a_segment_pauses_producers_until_a_segment_is_freed() {
    let Some(fs) = small_fs("enospc_making_a_segment_pauses_producers_until_a_segment_is_freed")
    else {
        return;
    };
    let mut b = start(&fs, "");
    // Each shard has its active segment, a spare and the reserve; leave
    // less than one more segment.
    fs.fill_leaving(SEGMENT / 2);
    let mut p = Producer::new(&b);
    p.fill(&mut b);
    let s = b.status();
    assert_eq!(s["store_disk_full"], true, "{s}");
    assert!(s["store_used_bytes"].as_u64() < s["store_limit_bytes"].as_u64());
    let probe = assert_paused(&b, &mut p);
    assert_alive(&mut b);

    // Everything but the newest message acknowledged: the newest is in the
    // segment rolled into, so every older segment is freed.
    let mut c = b.client();
    c.subscribe("s", QUEUE, "client-individual", &[]);
    let n = pending(&b);
    let newest = *p.receipted.iter().max().unwrap();
    let (got, acked) = consume(&mut c, n, |i| i != newest);
    assert_eq!(got.len(), n);
    b.wait_until("a free segment", |s| s["store_full"] == false);
    p.wait_receipt(probe);
    assert_alive(&mut b);

    b.kill9();
    check_after_restart(&fs, &p.receipted, &acked);
}

/// With `limits.send_fail_if_no_space`, a persistent SEND at a full disk
/// gets an ERROR instead of waiting; non-persistent SENDs and consumers
/// carry on.
#[test]
fn send_fail_if_no_space_answers_an_error_at_a_full_disk() {
    let Some(fs) = small_fs("send_fail_if_no_space_answers_an_error_at_a_full_disk") else {
        return;
    };
    let mut b = start(&fs, "[limits]\nsend_fail_if_no_space = true\n");
    fs.fill_leaving(SEGMENT / 2);
    let mut p = b.client();
    let mut receipted = 0;
    let error = loop {
        assert!(receipted < 1000, "no ERROR after {receipted} SENDs");
        send(&mut p, receipted);
        let f = p.recv().expect("a RECEIPT or an ERROR");
        if f.command.as_str() == "ERROR" {
            break f;
        }
        assert_eq!(receipt_for(&f), receipted);
        receipted += 1;
    };
    assert_eq!(
        error.header_str("receipt-id"),
        Some(format!("r{receipted}").as_str())
    );
    assert!(
        error
            .header_str("message")
            .unwrap()
            .contains("out of space"),
        "{error:?}"
    );
    p.expect_closed_by_peer();
    assert_alive(&mut b);
    let s = b.status();
    assert_eq!(s["store_disk_full"], true, "{s}");

    // Still full: the next persistent SEND is refused at once; a
    // non-persistent one (never journaled) is taken.
    let mut q = b.client();
    q.frame(
        "SEND",
        &[
            ("destination", QUEUE),
            ("persistent", "true"),
            ("receipt", "x"),
        ],
        b"refused",
    );
    let e = q.expect_error();
    assert_eq!(e.header_str("receipt-id"), Some("x"));
    let transient = 1_000_000;
    let mut q = b.client();
    q.frame(
        "SEND",
        &[("destination", QUEUE), ("receipt", "t")],
        &body_of(transient),
    );
    q.expect_receipt("t");

    // Consumers get everything receipted.
    let mut c = b.client();
    c.subscribe("s", QUEUE, "client-individual", &[]);
    let (got, _) = consume(&mut c, receipted + 1, |_| true);
    let want: BTreeSet<usize> = (0..receipted).chain([transient]).collect();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    assert_alive(&mut b);
}

/// A message body of 400 KiB: two fit in a 1 MiB segment, not three.
fn big(i: usize) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    v.resize(400 * 1024, b'x');
    v
}

/// SENDs `ids` as big persistent messages in transaction `tx`, each
/// receipted (a transaction's SENDs are journaled at its COMMIT).
fn send_in_tx(p: &mut Client, tx: &str, ids: std::ops::Range<usize>) {
    p.frame("BEGIN", &[("transaction", tx)], b"");
    for i in ids {
        let receipt = format!("s{i}");
        p.frame(
            "SEND",
            &[
                ("destination", QUEUE),
                ("persistent", "true"),
                ("transaction", tx),
                ("receipt", &receipt),
            ],
            &big(i),
        );
        p.expect_receipt(&receipt);
    }
}

/// Segment files of every shard.
fn segment_files(fs: &SmallFs) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    for shard in std::fs::read_dir(fs.data()).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "log") {
                files.insert(f);
            }
        }
    }
    files
}

/// Records that find no segment at all wait in memory, unreceipted. A
/// COMMIT is not flow-controlled (its SENDs were accepted earlier), so
/// committing more than the journal has room for at a full disk rolls past
/// the last segment, the reserve included: m0 m1 | m2 m3 (spare) | m4 m5
/// (reserve) | m6 (no file). The COMMIT's RECEIPT waits, and so does
/// everything the shard appends after m6 (the consumer's acknowledgements
/// of m0 and m1 too: the segment they free is overwritten only once they
/// are durable, and they are behind m6). Once
/// space is freed outside the broker, a file is made, the records are
/// written, the RECEIPTs come, and nothing is lost.
#[test]
fn records_with_no_segment_wait_unreceipted_until_space_is_freed() {
    let Some(fs) = small_fs("records_with_no_segment_wait_unreceipted_until_space_is_freed") else {
        return;
    };
    let mut b = start(&fs, "");
    let mut p = b.client();
    send_in_tx(&mut p, "tx", 0..7);
    fs.fill_leaving(SEGMENT / 2);
    p.frame(
        "COMMIT",
        &[("transaction", "tx"), ("receipt", "commit")],
        b"",
    );
    b.wait_until("the journal to find the disk full", |s| {
        s["store_disk_full"] == true
    });
    assert!(
        p.recv_timeout(Duration::from_secs(2)).is_none(),
        "COMMIT receipted while its last SEND had no segment to go to"
    );
    assert_alive(&mut b);

    // Consumers are served meanwhile. (No receipt on SUBSCRIBE: any
    // receipt from that shard means everything it appended before is
    // durable, so it waits like the COMMIT's.)
    let mut c = b.client();
    c.frame(
        "SUBSCRIBE",
        &[
            ("id", "s"),
            ("destination", QUEUE),
            ("ack", "client-individual"),
        ],
        b"",
    );
    let m0 = c.expect_message();
    let m1 = c.expect_message();
    assert_eq!((id_of(&m0), id_of(&m1)), (0, 1));
    c.ack(&m0);
    let id = m1.header_str("ack").unwrap().to_string();
    c.frame("ACK", &[("id", &id), ("receipt", "acked")], b"");
    assert_alive(&mut b);

    fs.free_ballast();
    p.expect_receipt("commit");
    c.expect_receipt("acked");
    b.wait_until("room after the ballast is gone", |s| {
        s["store_full"] == false
    });
    assert_alive(&mut b);

    b.kill9();
    check_after_restart(&fs, &(0..7).collect(), &[0, 1].into_iter().collect());
}

/// A segment started with no file to go to gets the file of a segment
/// freed before it, once a durable round says that one is free. a0 a1 fill
/// the first segment and are acknowledged (durably) while it is still
/// active; the COMMIT of b0..b5 closes it (b0 b1 go to the spare, which
/// frees the first segment as of b0; b2 b3 to the reserve) and rolls past
/// the reserve with no room for a new file: b4 waits until b0..b3 are
/// durable, then goes into the first segment's file. No new file is made,
/// the RECEIPT comes, and nothing is lost.
#[test]
fn a_segment_with_no_file_reuses_one_freed_before_it() {
    let Some(fs) = small_fs("a_segment_with_no_file_reuses_one_freed_before_it") else {
        return;
    };
    let mut b = start(&fs, "");
    let mut p = b.client();
    for i in 0..2 {
        let receipt = format!("a{i}");
        p.frame(
            "SEND",
            &[
                ("destination", QUEUE),
                ("persistent", "true"),
                ("receipt", &receipt),
            ],
            &big(i),
        );
        p.expect_receipt(&receipt);
    }
    let mut c = b.client();
    c.subscribe("s", QUEUE, "client-individual", &[]);
    let a0 = c.expect_message();
    let a1 = c.expect_message();
    assert_eq!((id_of(&a0), id_of(&a1)), (0, 1));
    send_in_tx(&mut p, "tx", 2..8);
    fs.fill_leaving(SEGMENT / 2);
    let files = segment_files(&fs);
    // Durable before the COMMIT: the first segment's content is retired by
    // records written before anything waits.
    c.ack(&a0);
    let id = a1.header_str("ack").unwrap().to_string();
    c.frame("ACK", &[("id", &id), ("receipt", "acked")], b"");
    c.expect_receipt("acked");
    p.frame(
        "COMMIT",
        &[("transaction", "tx"), ("receipt", "commit")],
        b"",
    );
    p.expect_receipt("commit");
    let s = b.status();
    assert_eq!(
        s["store_disk_full"], true,
        "no spare and no room for one: {s}"
    );
    assert_eq!(
        segment_files(&fs),
        files,
        "a segment file was made or removed: the freed segment was not reused"
    );
    assert_alive(&mut b);

    b.kill9();
    check_after_restart(&fs, &(0..8).collect(), &[0, 1].into_iter().collect());
}

/// On a copy-on-write file system (btrfs) even a write into a preallocated
/// segment allocates, so a journal write itself can fail with ENOSPC: its
/// records are kept, producers pause, receipts wait, and once space is
/// freed (here: the file that filled the volume is removed) the write is
/// retried, the RECEIPTs come and nothing is lost.
#[test]
fn enospc_on_a_journal_write_keeps_the_records_until_space_is_freed() {
    let Some(fs) = small_btrfs("enospc_on_a_journal_write_keeps_the_records_until_space_is_freed")
    else {
        return;
    };
    let mut b = start(&fs, "");
    fs.fill_leaving(SEGMENT / 2);
    let mut p = Producer::new(&b);
    p.fill(&mut b);
    let s = b.status();
    assert_eq!(s["store_disk_full"], true, "{s}");
    let probe = assert_paused(&b, &mut p);
    assert_alive(&mut b);

    fs.free_ballast();
    b.wait_until("room after the ballast is gone", |s| {
        s["store_full"] == false
    });
    p.wait_receipt(probe);
    assert_alive(&mut b);

    b.kill9();
    check_after_restart(&fs, &p.receipted, &BTreeSet::new());
}

/// A start on a full copy-on-write file system (btrfs allocates even when
/// it overwrites a preallocated segment, so the start's own journal writes
/// find no space) waits for space instead of exiting: a standby on the same
/// volume would fail the same way, over and over. Once space is freed the
/// broker serves, and nothing receipted before the crash is lost.
#[test]
fn a_start_on_a_full_btrfs_volume_waits_for_space() {
    let Some(fs) = small_btrfs("a_start_on_a_full_btrfs_volume_waits_for_space") else {
        return;
    };
    let mut b = start(&fs, "");
    let mut p = Producer::new(&b);
    for i in 0..32 {
        send(&mut p.c, i);
        p.outstanding.push_back(i);
    }
    p.wait_receipt(31);
    assert_eq!(p.receipted.len(), 32);
    b.kill9();
    fs.fill_leaving(0);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let fs = &fs;
        scope.spawn(move || {
            // Panics (and so drops `tx`) if the broker exits instead of
            // serving.
            let b = start(fs, "");
            let _ = tx.send(b);
        });
        let early = rx.recv_timeout(Duration::from_secs(3));
        assert!(
            !matches!(early, Err(std::sync::mpsc::RecvTimeoutError::Disconnected)),
            "the broker exited at start on a full file system"
        );
        fs.free_ballast();
        let b = match early {
            Ok(b) => b,
            Err(_) => rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the broker serves once space is freed"),
        };
        drop(b);
    });
    check_after_restart(&fs, &p.receipted, &BTreeSet::new());
}
