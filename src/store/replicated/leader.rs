//! The master's side of replication, on the side runtime: takes the
//! shards' batches (the database modes' writer lanes, see
//! `store::sql::writer::WriteRequest`), makes one log entry of whatever
//! queued up meanwhile (group commit: a wake-up per entry, never per
//! message), streams it to every standby and to the local copy, and
//! answers the shards once a quorum holds it.
//!
//! A standby that connects says which epoch it follows (HELLO); it gets
//! the tables as of the commit point (SNAPSHOT), the entries after it,
//! then every new entry. It acknowledges what it holds (ACK), which is
//! also its heartbeat; COMMIT frames carry the commit point and are the
//! master's heartbeat.
//!
//! The master stops (and its process exits, see `server`) when it cannot
//! reach a quorum for `replica_timeout`: a standby that stopped following
//! it may be electing a successor, which must never find this master still
//! receipting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::codec;
use super::log_file::LocalLog;
use super::state::{Entry, Replica};
use super::status::ReplStatus;
use super::wire::{self, Frame, Pos};
use crate::config::SyncMode;
use crate::store::sql::writer::WriteRequest;
use crate::store::sql::Loaded;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub cluster: String,
    pub epoch: u64,
    /// Brokers (this one included) that must hold an entry.
    pub quorum: usize,
    pub sync: SyncMode,
    pub replica_timeout: Duration,
    /// How long the standbys have to join and hold the epoch's first
    /// entry before this master gives up.
    pub takeover_timeout: Duration,
}

enum Event {
    Hello {
        id: u64,
        epoch: u64,
        cluster: String,
        node: String,
        out: mpsc::UnboundedSender<Bytes>,
    },
    Ack {
        id: u64,
        index: u64,
    },
    Gone {
        id: u64,
        why: String,
    },
}

struct Follower {
    node: String,
    out: mpsc::UnboundedSender<Bytes>,
    acked: u64,
    heard: Instant,
}

/// What connects a leader to the rest of the process.
pub struct LeaderIo {
    /// The shards' batches.
    pub requests: flume::Receiver<WriteRequest>,
    /// Gets the tables once a quorum holds the epoch's first entry.
    pub ready: tokio::sync::oneshot::Sender<Loaded>,
    pub status: Arc<ReplStatus>,
    /// Why to stop (ZooKeeper says another epoch began).
    pub stop: mpsc::UnboundedReceiver<String>,
}

/// Leads epoch `cfg.epoch` until it cannot; returns why. `ready` gets the
/// tables once the epoch's first entry (its marker) is committed: from
/// then on what this node holds is the cluster's, and it may serve.
pub async fn lead(
    mut replica: Replica,
    log: LocalLog,
    listener: tokio::net::TcpListener,
    cfg: LeaderConfig,
    io: LeaderIo,
) -> String {
    let LeaderIo {
        requests,
        ready,
        status,
        mut stop,
    } = io;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let accept = tokio::spawn(accept_loop(listener, events_tx, cfg.replica_timeout));
    let why = Leader {
        cfg,
        followers: HashMap::new(),
        waiting: VecDeque::new(),
        commit: 0,
        marker: 0,
        ready: Some(ready),
        started: Instant::now(),
        stalled_since: None,
        short_since: None,
        status,
        commit_sent: Instant::now(),
    }
    .run(&mut replica, &log, &requests, &mut events, &mut stop)
    .await;
    accept.abort();
    // Our disk as complete as our memory before the process goes: under
    // `quorum_mem` a quorum counted on this node holding what it
    // acknowledged, and a restarted node stands with what its disk holds.
    let held = replica.position().index;
    if !log.flush(held, Duration::from_secs(2)).await {
        warn!(
            held,
            "the local copy was not synced in 2 s before stepping down"
        );
    }
    why
}

struct Leader {
    cfg: LeaderConfig,
    followers: HashMap<u64, Follower>,
    /// Entries not yet committed and the shards waiting on each.
    waiting: VecDeque<(u64, Vec<flume::Sender<()>>)>,
    commit: u64,
    /// The epoch's first entry: nothing before it commits by itself.
    marker: u64,
    ready: Option<tokio::sync::oneshot::Sender<Loaded>>,
    started: Instant,
    /// Since when entries have waited without the commit point moving.
    stalled_since: Option<Instant>,
    /// Since when fewer standbys than a quorum needs are connected.
    short_since: Option<Instant>,
    status: Arc<ReplStatus>,
    /// When the commit point last went to the standbys.
    commit_sent: Instant,
}

/// How often at most the commit point goes to the standbys (see
/// `advance`).
const COMMIT_EVERY: Duration = Duration::from_millis(2);

impl Leader {
    async fn run(
        &mut self,
        replica: &mut Replica,
        log: &LocalLog,
        requests: &flume::Receiver<WriteRequest>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: &mut mpsc::UnboundedReceiver<String>,
    ) -> String {
        // Everything held is the cluster's now; the marker commits it.
        replica.apply_all();
        self.commit = replica.applied().index;
        let marker = Entry::make(
            Pos {
                epoch: self.cfg.epoch,
                index: replica.position().index + 1,
            },
            Vec::new(),
        );
        self.marker = marker.pos.index;
        log.append([(marker.pos.index, marker.frame.clone())]);
        if let Err(e) = replica.push(marker) {
            return format!("cannot begin epoch {}: {e}", self.cfg.epoch);
        }
        self.status.set_position(replica.position(), self.commit);
        info!(
            epoch = self.cfg.epoch,
            marker = self.marker,
            "leading: waiting for a quorum to hold the epoch's first entry"
        );
        let mut synced = log.synced();
        let beat = self.cfg.replica_timeout / 4;
        let mut ticker = tokio::time::interval(beat.max(Duration::from_millis(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = requests.recv_async(), if self.ready.is_none() => {
                    let Ok(first) = r else {
                        return "the shards stopped".into();
                    };
                    let mut reqs = vec![first];
                    reqs.extend(requests.try_iter());
                    self.append(replica, log, reqs);
                }
                e = events.recv() => {
                    let Some(e) = e else {
                        return "the replication listener stopped".into();
                    };
                    self.event(replica, e);
                }
                why = stop.recv() => {
                    return why.unwrap_or_else(|| "stopped".into());
                }
                r = synced.changed(), if self.cfg.sync != SyncMode::QuorumMem => {
                    if r.is_err() {
                        return "the local copy of the replicated log cannot be written (see the error logged before)".into();
                    }
                }
                _ = ticker.tick() => {
                    self.send_commit();
                    if let Some(why) = self.check_quorum(replica) {
                        return why;
                    }
                }
            }
            let own = match self.cfg.sync {
                SyncMode::QuorumMem => replica.position().index,
                _ => log.synced_index(&synced),
            };
            self.advance(replica, own);
            if log.wants_compaction() {
                log.compact(replica);
            }
        }
    }

    fn append(&mut self, replica: &mut Replica, log: &LocalLog, reqs: Vec<WriteRequest>) {
        let pos = Pos {
            epoch: self.cfg.epoch,
            index: replica.position().index + 1,
        };
        let mut batches = Vec::with_capacity(reqs.len());
        let mut replies = Vec::with_capacity(reqs.len());
        for mut r in reqs {
            // Rows retired before their batch left are tombstones (id -1)
            // in the shard's batch: they go out as nothing, as the
            // database writer drops them too.
            crate::store::sql::shard_store::compact(&mut r.batch);
            batches.push(r.batch);
            replies.push(r.reply);
        }
        let e = Entry::make(pos, batches);
        let frame = e.frame.clone();
        replica.push(e).expect("the next index of our own epoch");
        log.append([(pos.index, frame.clone())]);
        for f in self.followers.values() {
            let _ = f.out.send(frame.clone());
        }
        self.waiting.push_back((pos.index, replies));
        if self.stalled_since.is_none() {
            self.stalled_since = Some(Instant::now());
        }
    }

    fn event(&mut self, replica: &Replica, e: Event) {
        match e {
            Event::Hello {
                id,
                epoch,
                cluster,
                node,
                out,
            } => {
                if cluster != self.cfg.cluster || epoch != self.cfg.epoch {
                    let why = format!(
                        "this master leads cluster '{}' epoch {}, not '{cluster}' epoch {epoch}",
                        self.cfg.cluster, self.cfg.epoch
                    );
                    let _ = out.send(wire::refuse(&why));
                    return;
                }
                // The tables as of the commit point, then what is held
                // after it: the standby's log is then a prefix of ours.
                let mut t = Vec::new();
                codec::encode_tables(&replica.tables, &mut t);
                if t.len() + 64 > wire::MAX_FRAME {
                    // A snapshot is one frame; the standby keeps trying
                    // while this master serves on with the others.
                    warn!(standby = %node, bytes = t.len(), "the tables are too large for one snapshot frame (2 GiB); standby not joined");
                    let _ = out.send(wire::refuse(
                        "the master's tables are larger than one snapshot frame",
                    ));
                    return;
                }
                let _ = out.send(wire::snapshot(replica.applied(), &t));
                for p in replica.pending() {
                    let _ = out.send(p.frame.clone());
                }
                let _ = out.send(wire::commit(self.commit));
                info!(standby = %node, snapshot_bytes = t.len(), at = ?replica.applied(), "standby joined");
                // One link per node: a standby that reconnected counts once.
                self.followers.retain(|_, f| f.node != node);
                // It answers once it read and applied the snapshot: a
                // second per 16 MiB of it is not silence.
                let grace = Duration::from_secs_f64(t.len() as f64 / (16u64 << 20) as f64);
                self.followers.insert(
                    id,
                    Follower {
                        node,
                        out,
                        acked: 0,
                        heard: Instant::now() + grace,
                    },
                );
            }
            Event::Ack { id, index } => {
                if let Some(f) = self.followers.get_mut(&id) {
                    f.acked = f.acked.max(index);
                    f.heard = Instant::now();
                }
            }
            Event::Gone { id, why } => match self.followers.remove(&id) {
                Some(f) => warn!(standby = %f.node, reason = %why, "standby left"),
                None => info!(reason = %why, "a replication connection closed before it joined"),
            },
        }
        self.status.set_followers(
            self.followers
                .values()
                .map(|f| (f.node.clone(), f.acked, f.heard))
                .collect(),
        );
    }

    fn send_commit(&mut self) {
        let c = wire::commit(self.commit);
        for f in self.followers.values() {
            let _ = f.out.send(c.clone());
        }
        self.commit_sent = Instant::now();
    }

    /// Moves the commit point to what a quorum holds.
    fn advance(&mut self, replica: &mut Replica, own: u64) {
        let mut held: Vec<u64> = self.followers.values().map(|f| f.acked).collect();
        held.push(own);
        if held.len() < self.cfg.quorum {
            return;
        }
        held.sort_unstable_by(|a, b| b.cmp(a));
        let mut c = held[self.cfg.quorum - 1].min(replica.position().index);
        if self.cfg.sync == SyncMode::LocalDisk {
            c = c.min(own);
        }
        if c <= self.commit || c < self.marker {
            return;
        }
        self.commit = c;
        replica.apply_upto(c);
        while self.waiting.front().is_some_and(|(i, _)| *i <= c) {
            let (_, replies) = self.waiting.pop_front().expect("checked");
            for r in replies {
                let _ = r.send(());
            }
        }
        self.stalled_since = (!self.waiting.is_empty()).then(Instant::now);
        // Standbys apply what is committed; they need not hear of every
        // step (a takeover applies all a standby holds anyway), so the
        // commit point goes out at most every COMMIT_EVERY, and with each
        // heartbeat.
        if self.commit_sent.elapsed() >= COMMIT_EVERY {
            self.send_commit();
        }
        self.status.set_position(replica.position(), c);
        if let Some(ready) = self.ready.take() {
            info!(
                epoch = self.cfg.epoch,
                took_ms = self.started.elapsed().as_millis() as u64,
                "a quorum holds the epoch's first entry"
            );
            let _ = ready.send(replica.tables.to_loaded());
        }
    }

    /// Why this master must stop, if it must.
    fn check_quorum(&mut self, replica: &Replica) -> Option<String> {
        let now = Instant::now();
        let limit = self.cfg.replica_timeout;
        self.followers.retain(|_, f| {
            let alive = now.duration_since(f.heard) < limit;
            if !alive {
                warn!(standby = %f.node, "standby silent for the replica timeout; dropped");
            }
            alive
        });
        if self.ready.is_some() {
            return (self.started.elapsed() > self.cfg.takeover_timeout).then(|| {
                format!(
                    "no quorum ({} brokers) held the epoch's first entry within {} ms",
                    self.cfg.quorum,
                    self.cfg.takeover_timeout.as_millis()
                )
            });
        }
        if self.followers.len() + 1 < self.cfg.quorum {
            let since = *self.short_since.get_or_insert(now);
            if now.duration_since(since) >= limit {
                return Some(format!(
                    "{} standby(s) connected, a quorum of {} needs {}, for {} ms",
                    self.followers.len(),
                    self.cfg.quorum,
                    self.cfg.quorum - 1,
                    limit.as_millis()
                ));
            }
        } else {
            self.short_since = None;
        }
        if let Some(since) = self.stalled_since {
            if now.duration_since(since) >= limit {
                return Some(format!(
                    "entries up to {} waited {} ms for a quorum (commit point {})",
                    replica.position().index,
                    limit.as_millis(),
                    self.commit
                ));
            }
        }
        None
    }
}

/// The largest first frame of a connection (a HELLO): a peer not yet
/// known cannot make the master reserve more.
const HELLO_MAX: usize = 64 * 1024;

/// How long a standby may take over its snapshot before its first ACK, as
/// far as its link's reader cares (the master's `heard` check is sized to
/// the snapshot).
const SNAPSHOT_GRACE: Duration = Duration::from_secs(120);

async fn accept_loop(
    listener: tokio::net::TcpListener,
    events: mpsc::UnboundedSender<Event>,
    timeout: Duration,
) {
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let events = events.clone();
        tokio::spawn(async move {
            let why = serve_follower(id, stream, &events, timeout).await;
            let _ = events.send(Event::Gone {
                id,
                why: format!("{peer}: {why}"),
            });
        });
    }
}

/// One standby's link: its reader here, its writer a task of its own.
async fn serve_follower(
    id: u64,
    stream: tokio::net::TcpStream,
    events: &mpsc::UnboundedSender<Event>,
    timeout: Duration,
) -> String {
    let (read, write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(write, out_rx));
    let mut max = HELLO_MAX;
    let mut wait = timeout;
    let why = loop {
        let frame = match wire::read_frame_timed(&mut read, wait, max).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                break format!("silent for {} ms", wait.as_millis())
            }
            Err(e) => break e.to_string(),
            Ok((f, _)) => f,
        };
        // The first answer to HELLO comes after the whole snapshot was
        // read and applied; the master's own check (`heard`) times that.
        wait = if max == HELLO_MAX {
            timeout + SNAPSHOT_GRACE
        } else {
            timeout
        };
        let ev = match frame {
            Frame::Hello {
                epoch,
                cluster,
                node,
            } if max == HELLO_MAX => Event::Hello {
                id,
                epoch,
                cluster,
                node,
                out: out_tx.clone(),
            },
            Frame::Ack { index } if max < HELLO_MAX => Event::Ack { id, index },
            f => break format!("unexpected frame {f:?}"),
        };
        // After HELLO a standby sends only acknowledgements.
        max = 64;
        if events.send(ev).is_err() {
            break "the master stopped".into();
        }
    };
    drop(out_tx);
    writer.abort();
    why
}

/// Writes what is queued for one peer, as many frames per write as are
/// queued, straight from the frames' buffers (writev: an entry is shared by
/// every standby and the local copy, and never copied for a socket).
pub async fn write_frames(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    use bytes::Buf;
    const MAX_SLICES: usize = 64;
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(b) => queue.push_back(b),
                None => return,
            }
        }
        while queue.len() < MAX_SLICES {
            match rx.try_recv() {
                Ok(b) => queue.push_back(b),
                Err(_) => break,
            }
        }
        let slices: Vec<std::io::IoSlice<'_>> = queue
            .iter()
            .take(MAX_SLICES)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = match write.write_vectored(&slices).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while n > 0 {
            let front = queue.front_mut().expect("written bytes were queued");
            if n >= front.len() {
                n -= front.len();
                queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}
