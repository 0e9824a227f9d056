//! A standby's side of replication: connects to the master of the epoch it
//! follows, takes its snapshot and entries, applies what is committed to
//! its tables (a hot standby) and writes everything to its local copy.
//! Returns when the link ends, saying why: the election code decides what
//! that means.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::codec;
use super::log_file::LocalLog;
use super::state::{Entry, Replica};
use super::status::ReplStatus;
use super::wire::{self, Frame};
use crate::config::SyncMode;

#[derive(Debug, Clone)]
pub struct FollowConfig {
    pub cluster: String,
    pub node: String,
    pub epoch: u64,
    pub sync: SyncMode,
    pub timeout: Duration,
}

/// How a link ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// No connection could be made (refused, unreachable, timed out).
    Unreachable(String),
    /// The master answered that it leads another epoch or cluster.
    Refused(String),
    /// An established link broke or went silent.
    Lost(String),
    /// This broker's own local copy cannot be written: not the master's
    /// fault, and no reason to depose it.
    LocalFault(String),
}

/// Follows the master at `addr` until the link ends.
pub async fn follow(
    replica: &mut Replica,
    log: &LocalLog,
    addr: &str,
    cfg: &FollowConfig,
    status: &Arc<ReplStatus>,
) -> LinkEnd {
    let stream = match tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(addr)).await
    {
        Err(_) => return LinkEnd::Unreachable(format!("connect to {addr} timed out")),
        Ok(Err(e)) => return LinkEnd::Unreachable(format!("connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    // Frames are read by a task of their own and handed over whole:
    // reading in a `select!` beside the disk's progress would drop a frame
    // half read whenever the other branch won (`read_exact` is not
    // cancel-safe).
    let (frames_tx, mut frames) = mpsc::channel(1024);
    let timeout = cfg.timeout;
    let reader = tokio::spawn(async move {
        let mut read = tokio::io::BufReader::with_capacity(256 * 1024, read);
        // The master encodes the snapshot before it sends its first byte.
        let mut wait = timeout + Duration::from_secs(30);
        loop {
            let r = match wire::read_frame_timed(&mut read, wait, wire::MAX_FRAME).await {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(format!(
                    "the master was silent for {} ms",
                    timeout.as_millis()
                )),
                Err(e) => Err(e.to_string()),
                Ok(f) => Ok(f),
            };
            wait = timeout;
            let end = r.is_err();
            if frames_tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let (out, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(super::leader::write_frames(write, out_rx));
    let _ = out.send(wire::hello(cfg.epoch, &cfg.cluster, &cfg.node));
    status.set_epoch(cfg.epoch, Some(addr.to_string()));
    let end = run(replica, log, &mut frames, &out, cfg, status).await;
    reader.abort();
    writer.abort();
    end
}

type Incoming = Result<(Frame, bytes::Bytes), String>;

async fn run(
    replica: &mut Replica,
    log: &LocalLog,
    frames: &mut mpsc::Receiver<Incoming>,
    out: &mpsc::UnboundedSender<bytes::Bytes>,
    cfg: &FollowConfig,
    status: &Arc<ReplStatus>,
) -> LinkEnd {
    let mut synced = log.synced();
    let mut joined = false;
    let mut acked = 0u64;
    let mut last_ack = std::time::Instant::now();
    loop {
        tokio::select! {
            r = frames.recv() => {
                let (frame, raw) = match r {
                    None => return LinkEnd::Lost("the link's reader stopped".into()),
                    Some(Err(e)) => return LinkEnd::Lost(e),
                    Some(Ok(f)) => f,
                };
                match frame {
                    Frame::Refuse { reason } => return LinkEnd::Refused(reason),
                    Frame::Snapshot { pos, tables } => {
                        let t = match codec::decode_tables(&tables) {
                            Ok(t) => t,
                            Err(e) => return LinkEnd::Lost(format!("snapshot: {e}")),
                        };
                        info!(at = ?pos, messages = t.messages(), bytes = tables.len(), "snapshot from the master installed");
                        replica.install(t, pos);
                        log.install(pos, &tables);
                        synced = log.synced();
                        joined = true;
                        acked = 0;
                    }
                    Frame::Entry { pos, batches } if joined => {
                        let b = match wire::entry_batches(&batches) {
                            Ok(b) => b,
                            Err(e) => return LinkEnd::Lost(format!("entry {pos:?}: {e}")),
                        };
                        if let Err(e) = replica.push(Entry { pos, frame: raw.clone(), batches: b }) {
                            return LinkEnd::Lost(e.to_string());
                        }
                        log.append([(pos.index, raw)]);
                    }
                    Frame::Commit { commit } if joined => {
                        replica.apply_upto(commit);
                        status.set_position(replica.position(), commit);
                        if log.wants_compaction() {
                            log.compact(replica);
                        }
                        // A heartbeat is answered even when nothing
                        // changed, but not more often than a quarter of the
                        // timeout: under load the entries' acks say enough.
                        if last_ack.elapsed() >= cfg.timeout / 4 {
                            acked = 0;
                        }
                    }
                    f => return LinkEnd::Lost(format!("unexpected frame {f:?}")),
                }
                if !frames.is_empty() {
                    // More is here already: one acknowledgement per burst.
                    continue;
                }
            }
            r = synced.changed(), if cfg.sync == SyncMode::QuorumDisk => {
                if r.is_err() {
                    return LinkEnd::LocalFault("its writer stopped (see the error logged before)".into());
                }
            }
        }
        if !joined {
            continue;
        }
        let holds = match cfg.sync {
            SyncMode::QuorumDisk => replica.position().index.min(log.synced_index(&synced)),
            _ => replica.position().index,
        };
        if holds != acked || acked == 0 {
            acked = holds.max(1);
            last_ack = std::time::Instant::now();
            if out.send(wire::ack(holds)).is_err() {
                return LinkEnd::Lost("the link's writer stopped".into());
            }
        }
    }
}
