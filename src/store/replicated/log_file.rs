//! A node's local copy of the replicated log, in its own data directory:
//! `snapshot` (the tables as of an entry) and `log` (the entries after
//! it). Written by a thread of its own, so that neither the replication
//! link nor the shards wait on the disk: under `quorum_mem` the copy
//! trails a little (written and fdatasynced in batches); under
//! `quorum_disk` a standby acknowledges only what [`LocalLog::synced`]
//! reached.
//!
//! Both files start with a HISTORY frame. A master's snapshot installed on
//! a standby starts a new history (its log before may differ from the
//! master's); compaction keeps the history. A log is read only after the
//! snapshot of the same history, so no crash between the steps below can
//! splice two histories:
//! - install: the snapshot is written beside (`snapshot.new`), synced and
//!   renamed in, then the log is emptied and restarted (a crash in between
//!   leaves the new snapshot and a log of another history, ignored);
//! - compaction: `log.new` (the entries after the snapshot) is written and
//!   synced, the snapshot renamed in, then the log (a crash in between
//!   leaves a log that repeats what the snapshot holds, skipped).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, warn};

use super::codec;
use super::state::{Entry, Replica};
use super::wire::{self, Frame, Pos};

/// How often at most a lazily synced copy syncs.
const LAZY_SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Past this many bytes of log (and twice the last snapshot) the log is
/// compacted into a new snapshot.
const COMPACT_AT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); it is a copy of the cluster's log: remove the directory to have this broker fetch the master's")]
    Damaged { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

enum Cmd {
    Append(Vec<(u64, Bytes)>),
    /// Answered once everything before it is written and synced.
    Barrier(std::sync::mpsc::Sender<()>),
    /// A master's snapshot replaces everything: a new history.
    Install {
        snapshot: Bytes,
        index: u64,
        history: u64,
        generation: u64,
    },
    /// Our own tables as of `index`, and the entries after it.
    Compact {
        snapshot: Bytes,
        index: u64,
        tail: Vec<(u64, Bytes)>,
    },
}

/// How far the copy is synced: (generation, index). The generation
/// changes with each installed snapshot, so that an index synced in the
/// history it replaced is never taken for one of the new.
pub type Synced = tokio::sync::watch::Receiver<(u64, u64)>;

/// The writer of the local copy.
pub struct LocalLog {
    tx: std::sync::mpsc::Sender<Cmd>,
    synced: Synced,
    generation: AtomicU64,
    log_bytes: Arc<AtomicU64>,
    snapshot_bytes: Arc<AtomicU64>,
}

/// A fresh history id: another node's or an earlier one's never matches.
fn new_history() -> u64 {
    let mut b = [0u8; 8];
    if getrandom_fill(&mut b) {
        u64::from_le_bytes(b) | 1
    } else {
        crate::ha::fence::now_ns() ^ u64::from(std::process::id()) << 40 | 1
    }
}

fn getrandom_fill(b: &mut [u8]) -> bool {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(b).is_ok()
}

/// A file's frames after its HISTORY frame (id 0: none), each with the
/// offset just past it, and the file's bytes.
struct FileFrames {
    history: u64,
    frames: Vec<(Frame, usize)>,
    buf: Bytes,
}

/// Reads a file's whole frames (None: no file).
fn read_file(path: &Path) -> Result<Option<FileFrames>, LogError> {
    let buf = match std::fs::read(path) {
        Ok(b) => Bytes::from(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let (frames, _) = wire::split_frames(&buf);
    let mut it = frames.into_iter();
    let Some((Frame::History { id }, _)) = it.next() else {
        return Ok(Some(FileFrames {
            history: 0,
            frames: Vec::new(),
            buf,
        }));
    };
    Ok(Some(FileFrames {
        history: id,
        frames: it.collect(),
        buf,
    }))
}

impl LocalLog {
    /// Reads the copy in `dir` (made if absent) and starts its writer.
    /// `lazy_sync`: nothing waits on its syncs (`quorum_mem`), so it
    /// gathers writes for a few milliseconds into one sync.
    pub fn open(dir: &Path, lazy_sync: bool) -> Result<(LocalLog, Replica), LogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let snap_path = dir.join("snapshot");
        let mut replica = Replica::default();
        let mut snapshot_bytes = 0;
        let mut history = None;
        if let Some(FileFrames {
            history: id,
            frames,
            buf,
        }) = read_file(&snap_path)?
        {
            snapshot_bytes = buf.len() as u64;
            let damaged = |reason: String| LogError::Damaged {
                path: snap_path.clone(),
                reason,
            };
            match frames.into_iter().next() {
                Some((Frame::Snapshot { pos, tables }, _)) if id != 0 => {
                    let tables =
                        codec::decode_tables(&tables).map_err(|e| damaged(e.to_string()))?;
                    replica = Replica::from_snapshot(tables, pos);
                    history = Some(id);
                }
                _ => return Err(damaged("no history and snapshot frames".into())),
            }
        }
        let log_path = dir.join("log");
        let mut keep = 0;
        let mut log_len = 0;
        let mut log_history = None;
        if let Some(FileFrames {
            history: id,
            frames,
            buf,
        }) = read_file(&log_path)?
        {
            log_len = buf.len();
            // A log of another history than the snapshot's (a crash while
            // a master's snapshot was installed) is not ours to read.
            if id != 0 && (history.is_none() || history == Some(id)) {
                log_history = Some(id);
                keep = wire::history(id).len();
                for (f, end) in frames {
                    let Frame::Entry { pos, batches } = f else {
                        break;
                    };
                    if pos.index <= replica.position().index {
                        keep = end;
                        continue;
                    }
                    let Ok(b) = wire::entry_batches(&batches) else {
                        break;
                    };
                    let frame = buf.slice(keep..end);
                    if replica
                        .push(Entry {
                            pos,
                            frame,
                            batches: b,
                        })
                        .is_err()
                    {
                        break;
                    }
                    keep = end;
                }
            }
        }
        if keep < log_len {
            warn!(
                path = %log_path.display(),
                kept = keep,
                dropped = log_len - keep,
                "the local log ends in a torn or damaged frame, or belongs to another history; cutting it there"
            );
        }
        let history = history.or(log_history).unwrap_or_else(new_history);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        file.set_len(keep as u64).map_err(io(&log_path))?;
        // What was read may still sit in the page cache only (a SIGKILL
        // does not flush it): it counts as synced below, so sync it now.
        file.sync_data().map_err(io(&log_path))?;
        if keep == 0 {
            file.write_all(&wire::history(history))
                .and_then(|_| file.sync_data())
                .map_err(io(&log_path))?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (synced_tx, synced) = tokio::sync::watch::channel((0, replica.position().index));
        let log_bytes = Arc::new(AtomicU64::new(keep as u64));
        let snapshot_bytes = Arc::new(AtomicU64::new(snapshot_bytes));
        let writer = Writer {
            lazy_sync: lazy_sync.then_some(LAZY_SYNC_EVERY),
            dir: dir.to_path_buf(),
            file,
            history,
            generation: 0,
            synced: synced_tx,
            log_bytes: log_bytes.clone(),
            snapshot_bytes: snapshot_bytes.clone(),
        };
        *EXIT_FLUSH.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        std::thread::Builder::new()
            .name("brokk-replog".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        Ok((
            LocalLog {
                tx,
                synced,
                generation: AtomicU64::new(0),
                log_bytes,
                snapshot_bytes,
            },
            replica,
        ))
    }

    /// Writes entries (in index order, following what was written).
    pub fn append(&self, entries: impl IntoIterator<Item = (u64, Bytes)>) {
        let v: Vec<_> = entries.into_iter().collect();
        if !v.is_empty() {
            let _ = self.tx.send(Cmd::Append(v));
        }
    }

    /// Replaces the copy with a master's snapshot.
    pub fn install(&self, pos: Pos, tables: &[u8]) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.tx.send(Cmd::Install {
            snapshot: wire::snapshot(pos, tables),
            index: pos.index,
            history: new_history(),
            generation,
        });
    }

    /// Whether the log has grown enough to be folded into a snapshot.
    pub fn wants_compaction(&self) -> bool {
        let log = self.log_bytes.load(Ordering::Relaxed);
        log > COMPACT_AT_BYTES && log > 2 * self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Folds the log into a snapshot of `replica` (its tables as of its
    /// applied entry, then the entries it holds after that).
    pub fn compact(&self, replica: &Replica) {
        let mut t = Vec::new();
        codec::encode_tables(&replica.tables, &mut t);
        let pos = replica.applied();
        if t.len() + 64 > wire::MAX_FRAME {
            // A snapshot is one frame: the log grows on instead.
            self.snapshot_bytes.store(t.len() as u64, Ordering::Relaxed);
            warn!(bytes = t.len(), "the tables are too large for one snapshot frame (2 GiB); the local log is not compacted");
            return;
        }
        // Counted now, so the next check does not ask again meanwhile.
        self.snapshot_bytes.store(t.len() as u64, Ordering::Relaxed);
        self.log_bytes.store(0, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Compact {
            snapshot: wire::snapshot(pos, &t),
            index: pos.index,
            tail: replica
                .pending()
                .map(|e| (e.pos.index, e.frame.clone()))
                .collect(),
        });
    }

    /// How far the copy is written and fdatasynced (read it with
    /// [`LocalLog::synced_index`]).
    pub fn synced(&self) -> Synced {
        self.synced.clone()
    }

    /// The last index synced in the current history (0: none yet).
    pub fn synced_index(&self, synced: &Synced) -> u64 {
        let (generation, index) = *synced.borrow();
        if generation == self.generation.load(Ordering::SeqCst) {
            index
        } else {
            0
        }
    }

    /// Waits (at most `limit`) until everything up to `index` is synced:
    /// a master stepping down under `quorum_mem` leaves its disk as
    /// complete as its memory was.
    pub async fn flush(&self, index: u64, limit: std::time::Duration) -> bool {
        let mut s = self.synced();
        let generation = self.generation.load(Ordering::SeqCst);
        tokio::time::timeout(limit, s.wait_for(|(g, i)| *g == generation && *i >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The writer of this process's copy, for [`flush_before_exit`].
static EXIT_FLUSH: std::sync::Mutex<Option<std::sync::mpsc::Sender<Cmd>>> =
    std::sync::Mutex::new(None);

/// On a clean stop: waits (at most `limit`) until what was handed to the
/// local copy is written and synced, so that a broker restarted from its
/// disk holds what it acknowledged (a rolling restart under `quorum_mem`).
/// A no-op in other modes.
pub fn flush_before_exit(limit: std::time::Duration) -> bool {
    let tx = EXIT_FLUSH.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(tx) = tx else {
        return true;
    };
    let (done, wait) = std::sync::mpsc::channel();
    tx.send(Cmd::Barrier(done)).is_ok() && wait.recv_timeout(limit).is_ok()
}

struct Writer {
    /// Some: syncs at most this often (nobody waits on them).
    lazy_sync: Option<std::time::Duration>,
    dir: PathBuf,
    file: File,
    history: u64,
    generation: u64,
    synced: tokio::sync::watch::Sender<(u64, u64)>,
    log_bytes: Arc<AtomicU64>,
    snapshot_bytes: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut cmds = vec![first];
            cmds.extend(rx.try_iter());
            if let Some(every) = self.lazy_sync {
                // Nobody waits on this copy's syncs (quorum_mem): gather
                // what comes within `every` into one write and one sync.
                let until = std::time::Instant::now() + every;
                while !cmds.iter().any(|c| matches!(c, Cmd::Barrier(_))) {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(c) => cmds.push(c),
                        Err(_) => break,
                    }
                }
            }
            if let Err(e) = self.write(cmds) {
                // The copy is behind from here on; this node still holds
                // the log in memory and the quorum holds it too. A standby
                // that acknowledges synced entries (quorum_disk) stops
                // acknowledging, which the master sees.
                error!(error = %e, "cannot write the local copy of the replicated log; it stops here");
                return;
            }
        }
    }

    fn write(&mut self, cmds: Vec<Cmd>) -> Result<(), LogError> {
        let log_path = self.dir.join("log");
        let mut last = None;
        let mut barriers = Vec::new();
        for c in cmds {
            match c {
                Cmd::Barrier(done) => barriers.push(done),
                Cmd::Append(v) => {
                    for (index, frame) in v {
                        self.file.write_all(&frame).map_err(io(&log_path))?;
                        self.log_bytes
                            .fetch_add(frame.len() as u64, Ordering::Relaxed);
                        last = Some(index);
                    }
                }
                Cmd::Install {
                    snapshot,
                    index,
                    history,
                    generation,
                } => {
                    // Whatever was appended before belongs to the old
                    // history: synced first, reported under the old
                    // generation.
                    self.file.sync_data().map_err(io(&log_path))?;
                    if let Some(i) = last.take() {
                        self.synced.send_replace((self.generation, i));
                    }
                    self.put_snapshot(history, &snapshot)?;
                    self.history = history;
                    self.generation = generation;
                    self.file.set_len(0).map_err(io(&log_path))?;
                    self.file
                        .write_all(&wire::history(history))
                        .map_err(io(&log_path))?;
                    self.log_bytes.store(0, Ordering::Relaxed);
                    last = Some(index);
                }
                Cmd::Compact {
                    snapshot,
                    index,
                    tail,
                } => {
                    self.file.sync_data().map_err(io(&log_path))?;
                    let new = self.dir.join("log.new");
                    let mut f = File::create(&new).map_err(io(&new))?;
                    f.write_all(&wire::history(self.history))
                        .map_err(io(&new))?;
                    let mut bytes = 0;
                    let mut end = index;
                    for (i, frame) in &tail {
                        f.write_all(frame).map_err(io(&new))?;
                        bytes += frame.len() as u64;
                        end = *i;
                    }
                    f.sync_data().map_err(io(&new))?;
                    self.put_snapshot(self.history, &snapshot)?;
                    std::fs::rename(&new, &log_path).map_err(io(&log_path))?;
                    sync_dir(&self.dir)?;
                    self.file = OpenOptions::new()
                        .append(true)
                        .open(&log_path)
                        .map_err(io(&log_path))?;
                    self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
                    last = Some(last.map_or(end, |l: u64| l.max(end)));
                }
            }
        }
        self.file.sync_data().map_err(io(&log_path))?;
        if let Some(i) = last {
            self.synced.send_replace((self.generation, i));
        }
        for b in barriers {
            let _ = b.send(());
        }
        Ok(())
    }

    fn put_snapshot(&self, history: u64, frame: &[u8]) -> Result<(), LogError> {
        let new = self.dir.join("snapshot.new");
        let mut f = File::create(&new).map_err(io(&new))?;
        f.write_all(&wire::history(history))
            .and_then(|_| f.write_all(frame))
            .map_err(io(&new))?;
        f.sync_data().map_err(io(&new))?;
        let path = self.dir.join("snapshot");
        std::fs::rename(&new, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.snapshot_bytes
            .store(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::{Batch, MsgRow};

    fn send(id: i64) -> Batch {
        Batch {
            inserts: vec![MsgRow {
                id,
                container: "queue://q".into(),
                expiration: 0,
                priority: 4,
                xid: None,
                msg: Bytes::from(vec![id as u8; 10]),
            }],
            ..Batch::default()
        }
    }

    async fn wait_synced(log: &LocalLog, index: u64) {
        let mut s = log.synced();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.wait_for(|(_, i)| *i >= index),
        )
        .await
        .expect("synced within 10 s")
        .expect("writer alive");
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let (log, mut r) = LocalLog::open(dir.path(), false).unwrap();
            for i in 1..=3 {
                let e = Entry::make(Pos { epoch: 1, index: i }, vec![send(i as i64)]);
                log.append([(i, e.frame.clone())]);
                r.push(e).unwrap();
            }
            wait_synced(&log, 3).await;
        });
        // A torn fourth frame.
        let torn = Entry::make(Pos { epoch: 1, index: 4 }, vec![send(4)]).frame;
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        f.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(f);
        let (_log, mut r) = LocalLog::open(dir.path(), false).unwrap();
        assert_eq!(r.position(), Pos { epoch: 1, index: 3 });
        r.apply_all();
        assert_eq!(r.tables.messages(), 3);
    }

    #[test]
    fn a_compacted_log_and_an_installed_snapshot_read_back() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let (log, mut r) = LocalLog::open(dir.path(), false).unwrap();
            for i in 1..=4 {
                let e = Entry::make(Pos { epoch: 1, index: i }, vec![send(i as i64)]);
                log.append([(i, e.frame.clone())]);
                r.push(e).unwrap();
            }
            r.apply_upto(2);
            log.compact(&r);
            wait_synced(&log, 4).await;
            // The appends alone may have synced index 4 before the writer
            // took the compaction: wait for it too (a barrier is answered
            // after everything sent before it is written).
            let (done, written) = std::sync::mpsc::channel();
            log.tx.send(Cmd::Barrier(done)).unwrap();
            written
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("compacted within 10 s");
        });
        let (log, mut r) = LocalLog::open(dir.path(), false).unwrap();
        assert_eq!(r.applied(), Pos { epoch: 1, index: 2 });
        assert_eq!(r.position(), Pos { epoch: 1, index: 4 });
        r.apply_all();
        assert_eq!(r.tables.messages(), 4);
        // A master's snapshot of another history replaces all of it.
        rt().block_on(async {
            let mut t = Vec::new();
            let mut other = Replica::default();
            other
                .push(Entry::make(Pos { epoch: 2, index: 1 }, vec![send(9)]))
                .unwrap();
            other.apply_all();
            codec::encode_tables(&other.tables, &mut t);
            log.install(Pos { epoch: 2, index: 1 }, &t);
            // The synced index goes back to the snapshot's.
            assert!(
                log.flush(1, std::time::Duration::from_secs(10)).await,
                "installed within 10 s"
            );
        });
        drop(log);
        let (_log, r) = LocalLog::open(dir.path(), false).unwrap();
        assert_eq!(r.position(), Pos { epoch: 2, index: 1 });
        assert_eq!(r.tables.messages(), 1);
    }

    #[test]
    fn a_log_of_another_history_than_the_snapshot_is_not_read() {
        // A crash while a master's snapshot was installed: the new
        // snapshot is in, the log still holds the history it replaced.
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replica::default();
        r.push(Entry::make(Pos { epoch: 3, index: 1 }, vec![send(1)]))
            .unwrap();
        r.apply_all();
        let mut t = Vec::new();
        codec::encode_tables(&r.tables, &mut t);
        let mut snap = wire::history(7).to_vec();
        snap.extend_from_slice(&wire::snapshot(Pos { epoch: 3, index: 1 }, &t));
        std::fs::write(dir.path().join("snapshot"), snap).unwrap();
        let mut log = wire::history(6).to_vec();
        log.extend_from_slice(&Entry::make(Pos { epoch: 2, index: 2 }, vec![send(2)]).frame);
        std::fs::write(dir.path().join("log"), log).unwrap();
        let (_log, r) = LocalLog::open(dir.path(), false).unwrap();
        assert_eq!(r.position(), Pos { epoch: 3, index: 1 });
        assert_eq!(r.tables.messages(), 1);
    }
}
