//! A shard's spool: where the bodies of messages a queue keeps out of
//! memory (see `broker::paging`) wait until the queue wants them back.
//!
//! The spool is not a store. The store (journal, database) stays the only
//! record of what survives a crash; the spool holds second copies so that
//! paging reads never depend on a store's layout (journal rounds move when
//! a write is put back at a full disk, database rows live behind the side
//! runtime) and work the same in every mode. It is emptied when a shard
//! starts and nothing in it is ever synced: after a crash recovery rebuilds
//! the queues from the store.
//!
//! Records are appended to the active file, buffered in memory and written
//! with one `pwrite` per megabyte (or per sweep), never one per message; a
//! read serves bytes not yet written from the buffer. A file whose records
//! have all been read back (or dropped) is deleted once a newer file is
//! active.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use super::journal::StoreUsage;
use crate::broker::message::{MemoryCharge, MemoryUsage};
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {path}: record at {at} (+{len}) is past the end of the file")]
    Short { path: PathBuf, at: u64, len: u32 },
    #[error("spool file {0} is gone while a record in it is still held")]
    Gone(u32),
    #[error("damaged spool record: {what}")]
    Damaged { what: String },
}

/// Where one record went: file number, offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolRef {
    file: u32,
    len: u32,
    at: u64,
}

impl SpoolRef {
    /// Bytes of the record.
    pub fn bytes(&self) -> u32 {
        self.len
    }
}

/// Spool files roll at this size: small enough that a file is deleted
/// soon after the queue drained past it, large enough that the file count
/// stays small for a multi-GiB backlog.
pub const FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Buffered record bytes written at once (one syscall per this much).
const WRITE_BYTES: usize = 1024 * 1024;

/// Records nearer than this in one file are read with one `pread` (the
/// gap, other queues' records, is read and dropped)...
const READ_GAP_BYTES: u64 = 64 * 1024;

/// ...up to this much in one `pread`.
const READ_SPAN_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    file: File,
    /// Records not yet read back or dropped.
    live: u64,
    /// Bytes written to the file (the rest, if any, is in `unwritten`).
    written: u64,
    /// Bytes appended, written or not.
    len: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    files: BTreeMap<u32, SpoolFile>,
    active: u32,
    /// Bytes of the active file (from its `written` offset) not yet
    /// written. Older files are always written in full before a roll.
    unwritten: Vec<u8>,
    /// The last write failed (full disk...): logged once, retried at the
    /// next flush, bytes kept meanwhile.
    failing: bool,
    bytes_live: u64,
    /// Spool bytes across shards (files and buffer), against the store limit.
    store: Arc<StoreUsage>,
    /// This spool's part of `store.spool_bytes`.
    counted: u64,
    /// The write buffer is memory like any held message: charged, so that
    /// a spool that cannot write pauses producers at the memory limit.
    memory: Arc<MemoryUsage>,
    charge: Option<MemoryCharge>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.store
            .spool_bytes
            .fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl Spool {
    /// Empties `dir` (what a previous process spooled is worthless: the
    /// store has it) and opens the first file.
    pub fn open(
        dir: &Path,
        memory: Arc<MemoryUsage>,
        store: Arc<StoreUsage>,
    ) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        };
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut s = Spool {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            active: 0,
            unwritten: Vec::new(),
            failing: false,
            bytes_live: 0,
            store,
            counted: 0,
            memory,
            charge: None,
        };
        s.start_file(0)?;
        Ok(s)
    }

    fn start_file(&mut self, n: u32) -> Result<(), SpoolError> {
        let path = self.dir.join(format!("{n:08}.spool"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        self.files.insert(
            n,
            SpoolFile {
                path,
                file,
                live: 0,
                written: 0,
                len: 0,
            },
        );
        self.active = n;
        Ok(())
    }

    /// Appends one record, encoded by `encode` straight into the buffer,
    /// held `holders` times (see [`Spool::release`]). Never fails: bytes
    /// that cannot be written yet stay buffered (see [`Spool::flush`]).
    pub fn append(&mut self, holders: u64, encode: impl FnOnce(&mut Vec<u8>)) -> SpoolRef {
        if self.active_len() >= FILE_BYTES {
            self.roll();
        }
        let before = self.unwritten.len();
        encode(&mut self.unwritten);
        let len = (self.unwritten.len() - before) as u32;
        let active = self.active;
        let f = self
            .files
            .get_mut(&active)
            .expect("the active spool file is open");
        let r = SpoolRef {
            file: active,
            len,
            at: f.len,
        };
        f.len += u64::from(len);
        f.live += holders;
        self.bytes_live += u64::from(len) * holders;
        self.count(i64::from(len));
        if self.unwritten.len() >= WRITE_BYTES && !self.failing {
            self.flush();
        }
        self.recharge();
        r
    }

    /// Adds to (or takes from) this spool's bytes in the store's count.
    fn count(&mut self, delta: i64) {
        if delta >= 0 {
            self.counted += delta as u64;
            self.store
                .spool_bytes
                .fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let d = delta.unsigned_abs().min(self.counted);
            self.counted -= d;
            self.store.spool_bytes.fetch_sub(d, Ordering::Relaxed);
        }
    }

    /// Charges the write buffer's capacity to memory, again once it moved
    /// by a write's worth (not per record).
    fn recharge(&mut self) {
        let now = self.unwritten.capacity();
        let charged = self.charge.as_ref().map_or(0, MemoryCharge::bytes);
        if now.abs_diff(charged) >= WRITE_BYTES / 2 || (now == 0) != (charged == 0) {
            self.charge = (now > 0).then(|| self.memory.charge(now));
        }
    }

    fn active_len(&self) -> u64 {
        self.files.get(&self.active).map_or(0, |f| f.len)
    }

    /// One more holder of `r` (a topic message paged for several durable
    /// subscriptions is written once).
    pub fn hold(&mut self, r: SpoolRef) {
        if let Some(f) = self.files.get_mut(&r.file) {
            f.live += 1;
            self.bytes_live += u64::from(r.len);
        }
    }

    /// Writes what is buffered. A failure is logged (once until a write
    /// works again) and the bytes stay buffered and readable: nothing is
    /// lost, memory grows until the disk takes them.
    pub fn flush(&mut self) {
        if self.unwritten.is_empty() {
            return;
        }
        let Some(f) = self.files.get_mut(&self.active) else {
            return;
        };
        match f.file.write_all_at(&self.unwritten, f.written) {
            Ok(()) => {
                f.written += self.unwritten.len() as u64;
                self.unwritten.clear();
                if self.unwritten.capacity() > 2 * WRITE_BYTES {
                    self.unwritten.shrink_to(WRITE_BYTES);
                }
                self.recharge();
                if self.failing {
                    self.failing = false;
                    info!(dir = %self.dir.display(), "spool writes work again");
                }
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %f.path.display(), error = %e,
                        "cannot write the spool; paged messages stay in memory until it works");
                }
                self.failing = true;
            }
        }
    }

    /// The active file is written out and a new one started. If either
    /// fails the current file stays active (it grows past its size; appends
    /// go on buffering): the spool degrades, it does not refuse.
    fn roll(&mut self) {
        self.flush();
        if !self.unwritten.is_empty() {
            return;
        }
        let old = self.active;
        if let Err(e) = self.start_file(old + 1) {
            warn!(error = %e, "cannot start a new spool file; the current one grows");
            self.active = old;
            return;
        }
        self.drop_if_dead(old);
    }

    /// One holder of `r` is done with it (read back, or dropped).
    pub fn release(&mut self, r: SpoolRef) {
        if let Some(f) = self.files.get_mut(&r.file) {
            f.live = f.live.saturating_sub(1);
            self.bytes_live = self.bytes_live.saturating_sub(u64::from(r.len));
        }
        self.drop_if_dead(r.file);
    }

    fn drop_if_dead(&mut self, n: u32) {
        if n == self.active || self.files.get(&n).is_none_or(|f| f.live > 0) {
            return;
        }
        if let Some(f) = self.files.remove(&n) {
            self.count(-(f.len as i64));
            if let Err(e) = std::fs::remove_file(&f.path) {
                warn!(path = %f.path.display(), error = %e, "cannot delete a drained spool file");
            }
        }
    }

    /// Reads records back, in the order given; records close together in
    /// one file are read with one `pread`. The returned bytes are slices
    /// of shared read buffers (zero-copy for the caller).
    pub fn read(&self, refs: &[SpoolRef]) -> Result<Vec<Bytes>, SpoolError> {
        let mut out = Vec::with_capacity(refs.len());
        let mut i = 0;
        while i < refs.len() {
            let first = refs[i];
            let f = self
                .files
                .get(&first.file)
                .ok_or(SpoolError::Gone(first.file))?;
            // The run: following refs in the same file, in increasing
            // order, near each other, all written (or all buffered).
            let buffered = |r: &SpoolRef| r.file == self.active && r.at >= f.written;
            let mut end = first.at + u64::from(first.len);
            let mut j = i + 1;
            while j < refs.len() {
                let r = refs[j];
                if r.file != first.file
                    || r.at < end
                    || r.at - end > READ_GAP_BYTES
                    || r.at + u64::from(r.len) - first.at > READ_SPAN_BYTES
                    || buffered(&r) != buffered(&first)
                {
                    break;
                }
                end = r.at + u64::from(r.len);
                j += 1;
            }
            let wanted: u64 = refs[i..j].iter().map(|r| u64::from(r.len)).sum();
            let span = (end - first.at) as usize;
            let buf = if buffered(&first) {
                let from = (first.at - f.written) as usize;
                let part = self
                    .unwritten
                    .get(from..from + span)
                    .ok_or(SpoolError::Short {
                        path: f.path.clone(),
                        at: first.at,
                        len: first.len,
                    })?;
                Bytes::copy_from_slice(part)
            } else {
                let mut v = vec![0u8; span];
                f.file
                    .read_exact_at(&mut v, first.at)
                    .map_err(|source| match source.kind() {
                        std::io::ErrorKind::UnexpectedEof => SpoolError::Short {
                            path: f.path.clone(),
                            at: first.at,
                            len: first.len,
                        },
                        _ => SpoolError::Io {
                            path: f.path.clone(),
                            source,
                        },
                    })?;
                Bytes::from(v)
            };
            // Slices keep the whole read buffer alive as long as any of
            // them lives, and only the records are charged to memory: a
            // buffer that is mostly other queues' records is copied out.
            let sparse = (span as u64) > 2 * wanted;
            for r in &refs[i..j] {
                let from = (r.at - first.at) as usize;
                let part = buf.slice(from..from + r.len as usize);
                out.push(if sparse {
                    Bytes::copy_from_slice(&part)
                } else {
                    part
                });
            }
            i = j;
        }
        Ok(out)
    }

    /// Bytes of records still held (a record held by two subscriptions
    /// counts twice).
    pub fn bytes_live(&self) -> u64 {
        self.bytes_live
    }

    pub fn files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Spool {
        Spool::open(dir, Arc::default(), Arc::default()).unwrap()
    }

    fn put(s: &mut Spool, data: &[u8]) -> SpoolRef {
        s.append(1, |b| b.extend_from_slice(data))
    }

    #[test]
    fn reads_back_buffered_and_written_records_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let a = put(&mut s, b"alpha");
        let b = put(&mut s, b"beta");
        s.flush();
        let c = put(&mut s, b"gamma");
        let got = s.read(&[a, b, c]).unwrap();
        assert_eq!(got, vec![&b"alpha"[..], b"beta", b"gamma"]);
        let got = s.read(&[c, a]).unwrap();
        assert_eq!(got, vec![&b"gamma"[..], b"alpha"]);
    }

    #[test]
    fn a_drained_file_is_deleted_once_another_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let big = vec![7u8; 1024 * 1024];
        let mut refs = Vec::new();
        while s.files() < 2 {
            refs.push(put(&mut s, &big));
        }
        let in_first: Vec<SpoolRef> = refs.iter().copied().filter(|r| r.file == 0).collect();
        assert!(!in_first.is_empty());
        let back = s.read(&in_first).unwrap();
        assert!(back.iter().all(|b| b.len() == big.len() && b[0] == 7));
        for r in in_first {
            s.release(r);
        }
        assert_eq!(s.files(), 1);
        assert!(!dir.path().join("00000000.spool").exists());
    }

    #[test]
    fn opening_empties_what_a_previous_process_left() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000007.spool"), b"old").unwrap();
        let _s = open(dir.path());
        assert!(!dir.path().join("00000007.spool").exists());
    }
}
