//! The `file` store: one append-only journal per shard, in fixed-size
//! segments that are preallocated (zero-filled, so fdatasync does not pay for
//! block allocation) and reused once everything in them is acknowledged.
//!
//! Writes are O_DIRECT, 4 KiB-aligned, through glommio's `DmaFile`. Group
//! commit: [`Journal::append`] only encodes into memory; the flusher task
//! writes everything appended since the last flush in one write and one
//! fdatasync, then advances [`Journal::durable`]. Callers wait for the
//! sequence number their append returned.
//!
//! Segment file: a 4 KiB header block (magic, generation, CRC) then records
//! (see [`record`]). The generation orders segments; records carry its low
//! bits so the stale records of a reused segment read as end-of-data.

pub mod recovery;
mod segment_read;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use glommio::io::DmaFile;
use thiserror::Error;

use super::record::{self, RecordRef, StoredSub};
use crate::idmap::IdMap;

pub const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"BRKJNL01";

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt in {path} at offset {offset}: {reason} (set store.skip_corrupt = true to skip damaged records)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn glommio_err(path: &Path, e: glommio::GlommioError<()>) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// This shard's journal directory.
    pub dir: PathBuf,
    pub segment_size_bytes: u64,
}

/// Bytes of segments holding data across all shards (spares not counted),
/// for store-limit flow control.
#[derive(Debug, Default)]
pub struct StoreUsage {
    pub used_bytes: AtomicU64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// 0 = no valid header (fresh or never used).
    generation: u64,
    /// Sends in this segment not yet acknowledged by every holder.
    live: usize,
    file: Option<Rc<DmaFile>>,
}

/// Appended bytes waiting for the flusher, for one segment.
#[derive(Debug)]
struct Chunk {
    segment: usize,
    /// Write the header block first (segment just started).
    fresh: bool,
    bytes: Vec<u8>,
}

pub struct Journal {
    cfg: JournalConfig,
    usage: Arc<StoreUsage>,
    segments: Vec<Segment>,
    /// Segments holding data, oldest generation first; the last is active.
    in_use: VecDeque<usize>,
    /// Reusable segments, oldest generation first (reuse order matters: see
    /// `release_dead_segments`).
    free: VecDeque<usize>,
    next_generation: u64,
    /// Logical end of data in the active segment, including pending bytes.
    active_len: u64,
    /// Bytes of the active segment's partial last block already on disk.
    tail: Vec<u8>,
    /// Where the flusher writes next in the active segment.
    written_len: u64,
    pending: Vec<Chunk>,
    appended: u64,
    durable: u64,
    /// Message id -> (segment, holders left).
    holders: IdMap<(usize, u32)>,
    next_file_number: u64,
    /// Durable subscriptions per topic: written again at the head of every
    /// new segment, so that no older segment is needed to know them.
    durables: HashMap<Arc<str>, HashSet<StoredSub>>,
    /// A spare segment is being made in the background.
    making_spare: bool,
}

impl Journal {
    pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
        dir.join(format!("seg-{number:06}.log"))
    }

    /// Sequence number of the last append; durable once `durable() >= it`.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Encodes a record for the next flush. `holders`: for a SEND, how many
    /// acknowledgements retire it (1 for a queue, the durable subscriber
    /// count for a topic); 0 for other records.
    pub fn append(&mut self, rec: &RecordRef<'_>, holders: u32) -> u64 {
        let mut size = self.encode_pending(rec);
        if self.active_len + size > self.cfg.segment_size_bytes && self.active_len > BLOCK {
            // Does not fit: take it back out and start the next segment.
            if let Some(c) = self.pending.last_mut() {
                c.bytes.truncate(c.bytes.len() - size as usize);
            }
            self.roll();
            size = self.encode_pending(rec);
        }
        let active = self.active();
        match rec {
            RecordRef::Send { id, .. } if holders > 0 => {
                self.holders.insert(*id, (active, holders));
                self.segments[active].live += 1;
            }
            RecordRef::DurableAdd { topic, sub } => {
                self.durables
                    .entry(Arc::from(*topic))
                    .or_default()
                    .insert((*sub).clone());
            }
            RecordRef::DurableRemove { topic, sub } => {
                if let Some(s) = self.durables.get_mut(*topic) {
                    s.remove(*sub);
                    if s.is_empty() {
                        self.durables.remove(*topic);
                    }
                }
            }
            _ => {}
        }
        self.active_len += size;
        self.appended += 1;
        self.appended
    }

    /// Encodes straight into the active segment's pending chunk (no
    /// per-record buffer); returns the encoded size.
    fn encode_pending(&mut self, rec: &RecordRef<'_>) -> u64 {
        let active = self.active();
        let gen = self.segments[active].generation;
        if !matches!(self.pending.last(), Some(c) if c.segment == active) {
            self.pending.push(Chunk {
                segment: active,
                fresh: false,
                bytes: Vec::with_capacity(64 * 1024),
            });
        }
        let chunk = self.pending.last_mut().expect("pushed above");
        let before = chunk.bytes.len();
        record::encode(rec, gen, &mut chunk.bytes);
        (chunk.bytes.len() - before) as u64
    }

    fn active(&self) -> usize {
        *self
            .in_use
            .back()
            .expect("a journal always has an active segment")
    }

    /// Starts the next segment: the oldest free one, or a new file.
    fn roll(&mut self) {
        let next = match self.free.pop_front() {
            Some(i) => i,
            None => {
                let index = self.segments.len();
                let number = self.next_file_number;
                self.next_file_number += 1;
                self.segments.push(Segment {
                    path: Journal::segment_path(&self.cfg.dir, number),
                    generation: 0,
                    live: 0,
                    file: None,
                });
                index
            }
        };
        // Counted while it holds data; spares are not counted.
        self.usage
            .used_bytes
            .fetch_add(self.cfg.segment_size_bytes, Ordering::Relaxed);
        self.segments[next].generation = self.next_generation;
        self.next_generation += 1;
        self.in_use.push_back(next);
        self.active_len = BLOCK;
        self.pending.push(Chunk {
            segment: next,
            fresh: true,
            bytes: Vec::new(),
        });
        // The snapshot goes first: every later record in this segment (a
        // topic SEND in particular) is read back knowing its subscribers.
        let gen = self.segments[next].generation;
        let chunk = self.pending.last_mut().expect("pushed above");
        for (topic, subs) in &self.durables {
            for sub in subs {
                record::encode(&RecordRef::DurableAdd { topic, sub }, gen, &mut chunk.bytes);
            }
        }
        self.active_len += chunk.bytes.len() as u64;
    }

    /// One holder of message `id` let go of it (ack, dead-letter, expiry).
    pub fn release(&mut self, id: u64) {
        let Some((seg, left)) = self.holders.get_mut(&id) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            let seg = *seg;
            self.holders.remove(&id);
            self.segments[seg].live -= 1;
            self.release_dead_segments();
        }
    }

    /// Frees segments from the oldest while they hold nothing live. Oldest
    /// first, and reused oldest first, so a record that retires an older one
    /// (an ACK) is never gone while the record it retires is still readable.
    fn release_dead_segments(&mut self) {
        while self.in_use.len() > 1 {
            let oldest = self.in_use[0];
            if self.segments[oldest].live > 0 {
                break;
            }
            self.in_use.pop_front();
            self.free.push_back(oldest);
            self.usage
                .used_bytes
                .fetch_sub(self.cfg.segment_size_bytes, Ordering::Relaxed);
        }
    }
}

/// Writes a segment header block into `block` (BLOCK bytes).
fn put_header(block: &mut [u8], generation: u64) {
    block[..BLOCK as usize].fill(0);
    block[..8].copy_from_slice(MAGIC);
    block[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&block[..16]);
    block[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// The generation in a header block, if it is one.
pub fn read_header(block: &[u8]) -> Option<u64> {
    if block.len() < 20 || &block[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(block[16..20].try_into().ok()?);
    if crc32c::crc32c(&block[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(block[8..16].try_into().ok()?))
}

/// Creates a zero-filled segment file of `size` bytes: every block written
/// once, so later writes and fdatasyncs do not allocate.
async fn create_segment(path: &Path, size: u64, pace: Pace) -> Result<Rc<DmaFile>, JournalError> {
    let file = DmaFile::create(path)
        .await
        .map_err(|e| glommio_err(path, e))?;
    let chunk: u64 = match pace {
        Pace::Now => 1 << 20,
        Pace::Background => 256 << 10,
    };
    let mut pos = 0;
    while pos < size {
        let n = chunk.min(size - pos);
        let mut buf = file.alloc_dma_buffer(n as usize);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, pos)
            .await
            .map_err(|e| glommio_err(path, e))?;
        pos += n;
        if pace == Pace::Background {
            // Leave the disk to the journal's own writes and fdatasyncs:
            // a spare made at full speed stalls receipts for tens of ms.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    file.fdatasync().await.map_err(|e| glommio_err(path, e))?;
    // The file's name must be durable too, or a crash could leave records
    // acknowledged in a segment the directory does not list.
    if let Some(dir) = path.parent() {
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(|e| glommio_err(dir, e))?;
        d.sync().await.map_err(|e| glommio_err(dir, e))?;
        let _ = d.close().await;
    }
    Ok(Rc::new(file))
}

/// Makes the entries of directory `dir` durable (files created or removed
/// in it), for the synchronous start-up paths.
pub fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How hard to push the disk when zero-filling a new segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// A write is waiting for this segment.
    Now,
    /// A spare made ahead of need, beside live traffic.
    Background,
}

async fn open_segment(path: &Path) -> Result<Rc<DmaFile>, JournalError> {
    glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map(Rc::new)
        .map_err(|e| glommio_err(path, e))
}

/// Writes everything pending, fdatasyncs, and advances `durable`: one group
/// commit, start to end.
pub async fn flush(journal: &std::cell::RefCell<Journal>) -> Result<(), JournalError> {
    let written = write_pending(journal).await?;
    sync(journal, written).await
}

/// What one round of [`write_pending`] wrote: durable once [`sync`]ed.
#[must_use = "written records are durable only after sync"]
pub struct Written {
    files: Vec<Rc<DmaFile>>,
    upto: u64,
}

/// Makes a written round durable (fdatasync of every file it touched) and
/// advances [`Journal::durable`] to cover it. The flusher may run this
/// while it writes the next round: that round's bytes are on disk only
/// after their own sync, but they need not wait for this one to start.
pub async fn sync(
    journal: &std::cell::RefCell<Journal>,
    written: Written,
) -> Result<(), JournalError> {
    for f in written.files {
        f.fdatasync()
            .await
            .map_err(|e| glommio_err(Path::new("segment"), e))?;
    }
    let mut j = journal.borrow_mut();
    j.durable = j.durable.max(written.upto);
    Ok(())
}

/// Writes everything appended since the last round, without waiting for
/// durability: the first half of a group commit.
pub async fn write_pending(journal: &std::cell::RefCell<Journal>) -> Result<Written, JournalError> {
    let (chunks, upto) = {
        let mut j = journal.borrow_mut();
        (std::mem::take(&mut j.pending), j.appended)
    };
    let mut touched: Vec<Rc<DmaFile>> = Vec::new();
    for chunk in chunks {
        let (path, size, file, generation) = {
            let j = journal.borrow();
            let s = &j.segments[chunk.segment];
            (
                s.path.clone(),
                j.cfg.segment_size_bytes,
                s.file.clone(),
                s.generation,
            )
        };
        let file = match file {
            Some(f) => f,
            None => {
                let f = if path.exists() {
                    open_segment(&path).await?
                } else {
                    create_segment(&path, size, Pace::Now).await?
                };
                journal.borrow_mut().segments[chunk.segment].file = Some(f.clone());
                f
            }
        };
        // Assemble: [header block if fresh] + tail of the last partial block + new bytes.
        let (start, data) = {
            let mut j = journal.borrow_mut();
            if chunk.fresh {
                j.tail.clear();
                j.written_len = BLOCK;
                let mut data = vec![0u8; BLOCK as usize];
                put_header(&mut data, generation);
                data.extend_from_slice(&chunk.bytes);
                (0u64, data)
            } else {
                let block_start = j.written_len - j.tail.len() as u64;
                let mut data = std::mem::take(&mut j.tail);
                data.extend_from_slice(&chunk.bytes);
                (block_start, data)
            }
        };
        let end = start + data.len() as u64;
        let padded = end.div_ceil(BLOCK) * BLOCK - start;
        let mut buf = file.alloc_dma_buffer(padded as usize);
        let bytes = buf.as_bytes_mut();
        bytes[..data.len()].copy_from_slice(&data);
        bytes[data.len()..].fill(0);
        let n = file
            .write_at(buf, start)
            .await
            .map_err(|e| glommio_err(&path, e))?;
        if (n as u64) < padded {
            return Err(JournalError::Io {
                path,
                source: std::io::Error::other(format!("short write: {n} of {padded} bytes")),
            });
        }
        {
            let mut j = journal.borrow_mut();
            let tail_start = (end / BLOCK * BLOCK - start) as usize;
            j.tail = data[tail_start..].to_vec();
            j.written_len = end;
        }
        if !touched.iter().any(|f| Rc::ptr_eq(f, &file)) {
            touched.push(file);
        }
    }
    Ok(Written {
        files: touched,
        upto,
    })
}

impl super::Store for Journal {
    fn append(&mut self, rec: &RecordRef<'_>, holders: u32) {
        Journal::append(self, rec, holders);
    }
    fn release(&mut self, id: u64) {
        Journal::release(self, id);
    }
}

impl Journal {
    pub(crate) fn from_recovery(
        cfg: JournalConfig,
        usage: Arc<StoreUsage>,
        state: recovery::Layout,
    ) -> Journal {
        usage.used_bytes.fetch_add(
            state.in_use.len() as u64 * cfg.segment_size_bytes,
            Ordering::Relaxed,
        );
        let mut j = Journal {
            segments: state
                .segments
                .into_iter()
                .map(|(path, generation, live)| Segment {
                    path,
                    generation,
                    live,
                    file: None,
                })
                .collect(),
            in_use: state.in_use,
            free: state.free,
            next_generation: state.next_generation,
            active_len: state.active_len,
            tail: state.tail,
            written_len: state.active_len,
            pending: Vec::new(),
            appended: 0,
            durable: 0,
            holders: state.holders,
            next_file_number: state.next_file_number,
            durables: state.durables,
            making_spare: false,
            usage,
            cfg,
        };
        if j.in_use.is_empty() {
            j.roll();
        }
        j
    }
}

/// Keeps one zero-filled segment ready so that rolling to a new segment
/// never waits for a file to be made. Runs beside the flusher.
pub async fn ensure_spare(
    journal: &std::cell::RefCell<Journal>,
    pace: Pace,
) -> Result<(), JournalError> {
    let (path, size) = {
        let mut j = journal.borrow_mut();
        if j.making_spare || !j.free.is_empty() {
            return Ok(());
        }
        j.making_spare = true;
        let number = j.next_file_number;
        j.next_file_number += 1;
        (
            Journal::segment_path(&j.cfg.dir, number),
            j.cfg.segment_size_bytes,
        )
    };
    let made = create_segment(&path, size, pace).await;
    let mut j = journal.borrow_mut();
    j.making_spare = false;
    let file = made?;
    let index = j.segments.len();
    j.segments.push(Segment {
        path,
        generation: 0,
        live: 0,
        file: Some(file),
    });
    // A fresh segment holds nothing: reuse it before any older one.
    j.free.push_front(index);
    Ok(())
}
