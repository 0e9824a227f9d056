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
//!
//! Reads do not stall the shard: what a queue pages in next is read ahead
//! by the same reader threads as the journal's (`store::read_ahead`), one
//! `pread` per run of nearby records, and a queue whose next record is
//! still being read waits to be woken ([`Spool::reading`]). What was not
//! read ahead is read when wanted, one `pread` per run.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use super::journal::StoreUsage;
use super::read_ahead::{advice, runs, Advice, Notify, Readers, RunAt};
use crate::broker::message::{MemoryCharge, MemoryUsage};
use tracing::{info, warn};

impl SpoolError {
    /// The same error for another record of the same failed read.
    fn again(&self) -> SpoolError {
        match self {
            SpoolError::Io { path, source } => SpoolError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            SpoolError::Short { path, at, len } => SpoolError::Short {
                path: path.clone(),
                at: *at,
                len: *len,
            },
            SpoolError::Gone(n) => SpoolError::Gone(*n),
            SpoolError::Damaged { what } => SpoolError::Damaged { what: what.clone() },
        }
    }
}

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

#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    /// Shared with the reader threads while they read it.
    file: Arc<File>,
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
    /// Started on the first read ahead (see `store::read_ahead`).
    read_ahead: Readers,
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
            read_ahead: Readers::new("paged messages are read from the spool when wanted"),
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
                file: Arc::new(file),
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
            if let Some(ra) = self.read_ahead.running() {
                ra.forget(n as usize);
            }
            self.count(-(f.len as i64));
            if let Err(e) = std::fs::remove_file(&f.path) {
                warn!(path = %f.path.display(), error = %e, "cannot delete a drained spool file");
            }
        }
    }

    /// `notify` is called (on a reader thread) when a read ahead is done:
    /// from then on a record being read ahead is reported as such
    /// ([`Spool::reading`]) for the caller to come back when woken, instead
    /// of waiting for it. Set it before the first read ahead.
    pub fn wake_on_read_ahead(&mut self, notify: Notify) {
        self.read_ahead.wake_with(notify);
    }

    /// Written records of `refs`, in file order: (file, offset, index).
    fn on_disk(&self, refs: &[SpoolRef]) -> Vec<(usize, u64, usize)> {
        let mut disk: Vec<_> = refs
            .iter()
            .enumerate()
            .filter(|(_, r)| self.written(r))
            .map(|(k, r)| (r.file as usize, r.at, k))
            .collect();
        disk.sort_unstable();
        disk
    }

    /// `r` is in its file (not only in the write buffer).
    fn written(&self, r: &SpoolRef) -> bool {
        self.files
            .get(&r.file)
            .is_some_and(|f| r.at + u64::from(r.len) <= f.written)
    }

    /// Has the written records of `refs` read ahead in the background, one
    /// `pread` per run of nearby records, skipping those already read or
    /// being read, until the runs' spans reach `max_bytes`.
    pub fn advise_read_ahead(&self, refs: &[SpoolRef], max_bytes: u64) {
        let mut disk = self.on_disk(refs);
        if disk.is_empty() {
            return;
        }
        let Some(ra) = self.read_ahead.get() else {
            return;
        };
        ra.retain_uncovered(&mut disk, |&(file, at, k)| {
            (file, 0, at, u64::from(refs[k].len))
        });
        let place = |&(file, at, k): &(usize, u64, usize)| (file, at, u64::from(refs[k].len));
        for Advice {
            file,
            start,
            end,
            sparse,
            records,
        } in advice(&disk, place, max_bytes)
        {
            let Some(f) = self.files.get(&(file as u32)) else {
                continue;
            };
            let run = RunAt {
                segment: file,
                // Spool files are never reused (numbers only grow).
                generation: 0,
                start,
                end,
                sparse,
            };
            if !ra.request(run, records, f.file.clone()) {
                // Full: the rest is read when wanted.
                break;
            }
        }
    }

    /// `r` is being read ahead, and the readers will wake whoever asked
    /// (see [`Spool::wake_on_read_ahead`]).
    pub fn reading(&self, r: &SpoolRef) -> bool {
        self.read_ahead
            .running()
            .is_some_and(|ra| ra.reading(r.file as usize, 0, r.at, u64::from(r.len)))
    }

    /// Reads records back, in the order given: those read ahead as slices
    /// of the readers' buffers, those still in the write buffer copied
    /// out, the others with one `pread` per run of nearby records (slices
    /// of the run, or copies of a sparse one's: only the records are
    /// charged to memory, and a slice keeps its whole buffer alive). A
    /// record that cannot be read is an error of its own: the others come
    /// back.
    pub fn read(&self, refs: &[SpoolRef]) -> Vec<Result<Bytes, SpoolError>> {
        let mut out: Vec<Option<Result<Bytes, SpoolError>>> = refs.iter().map(|_| None).collect();
        let mut disk = self.on_disk(refs);
        if let Some(ra) = self.read_ahead.running() {
            // A caller woken by the readers asked `reading` first and does
            // not wait; one that is not, waits.
            let wait = !ra.wakes();
            disk.retain(|&(file, at, k)| {
                match ra.take(file, 0, at, u64::from(refs[k].len), wait) {
                    Some(b) => {
                        out[k] = Some(Ok(b));
                        false
                    }
                    None => true,
                }
            });
        }
        for (k, r) in refs.iter().enumerate() {
            if out[k].is_some() || self.written(r) {
                continue;
            }
            out[k] = Some(self.read_unwritten(r));
        }
        let place = |&(file, at, k): &(usize, u64, usize)| (file, at, u64::from(refs[k].len));
        for (start, end, run) in runs(&disk, place) {
            let buf = match self.pread(run[0].0 as u32, start, end) {
                Ok(buf) => buf,
                Err(e) => {
                    for &(_, _, k) in run {
                        out[k] = Some(Err(e.again()));
                    }
                    continue;
                }
            };
            let used: u64 = run.iter().map(|&(_, _, k)| u64::from(refs[k].len)).sum();
            let copy_out = super::read_ahead::sparse(start, end, used);
            for &(_, at, k) in run {
                let from = (at - start) as usize;
                let part = buf.slice(from..from + refs[k].len as usize);
                out[k] = Some(Ok(if copy_out {
                    Bytes::copy_from_slice(&part)
                } else {
                    part
                }));
            }
        }
        out.into_iter()
            .zip(refs)
            .map(|(b, r)| b.unwrap_or(Err(SpoolError::Gone(r.file))))
            .collect()
    }

    /// A record still in the write buffer, copied out.
    fn read_unwritten(&self, r: &SpoolRef) -> Result<Bytes, SpoolError> {
        let f = self.files.get(&r.file).ok_or(SpoolError::Gone(r.file))?;
        let short = || SpoolError::Short {
            path: f.path.clone(),
            at: r.at,
            len: r.len,
        };
        if r.file != self.active || r.at < f.written {
            return Err(short());
        }
        let from = (r.at - f.written) as usize;
        let part = self
            .unwritten
            .get(from..from + r.len as usize)
            .ok_or_else(short)?;
        Ok(Bytes::copy_from_slice(part))
    }

    /// Bytes `start..end` of spool file `file`.
    fn pread(&self, file: u32, start: u64, end: u64) -> Result<Bytes, SpoolError> {
        let f = self.files.get(&file).ok_or(SpoolError::Gone(file))?;
        let mut v = vec![0u8; (end - start) as usize];
        f.file
            .read_exact_at(&mut v, start)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof => SpoolError::Short {
                    path: f.path.clone(),
                    at: start,
                    len: (end - start) as u32,
                },
                _ => SpoolError::Io {
                    path: f.path.clone(),
                    source,
                },
            })?;
        Ok(Bytes::from(v))
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

    fn ok(read: Vec<Result<Bytes, SpoolError>>) -> Vec<Bytes> {
        read.into_iter().map(Result::unwrap).collect()
    }

    /// 1 MiB records of `byte` until a second file is active.
    fn fill_first_file(s: &mut Spool, byte: u8) -> Vec<SpoolRef> {
        let big = vec![byte; 1024 * 1024];
        let mut refs = Vec::new();
        while s.files() < 2 {
            refs.push(put(s, &big));
        }
        refs
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
        let got = ok(s.read(&[a, b, c]));
        assert_eq!(got, vec![&b"alpha"[..], b"beta", b"gamma"]);
        let got = ok(s.read(&[c, a]));
        assert_eq!(got, vec![&b"gamma"[..], b"alpha"]);
    }

    #[test]
    fn a_drained_file_is_deleted_once_another_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let refs = fill_first_file(&mut s, 7);
        let big = vec![7u8; 1024 * 1024];
        let in_first: Vec<SpoolRef> = refs.iter().copied().filter(|r| r.file == 0).collect();
        assert!(!in_first.is_empty());
        let back = ok(s.read(&in_first));
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

    fn parked(s: &Spool) -> usize {
        s.read_ahead.running().map_or(0, |ra| ra.parked_bytes())
    }

    /// Records of two queues interleaved, some written, the last buffered.
    fn interleaved(s: &mut Spool) -> (Vec<SpoolRef>, Vec<Vec<u8>>) {
        let (mut mine, mut want) = (Vec::new(), Vec::new());
        for k in 0..400u32 {
            let body: Vec<u8> = (0..(k % 7 + 1) * 500).map(|i| (i + k) as u8).collect();
            if k % 3 == 0 {
                put(s, &[9u8; 3000]); // another queue's
            }
            mine.push(put(s, &body));
            want.push(body);
            if k == 300 {
                s.flush();
            }
        }
        (mine, want)
    }

    #[test]
    fn records_read_ahead_read_back_the_same_woken_or_not() {
        for woken in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open(dir.path());
            let (tx, rx) = std::sync::mpsc::channel();
            if woken {
                s.wake_on_read_ahead(Arc::new(move || {
                    let _ = tx.send(());
                }));
            }
            let (mine, want) = interleaved(&mut s);
            let tail = mine.last().unwrap();
            assert!(!s.written(tail), "the last records are still buffered");
            s.advise_read_ahead(&mine, 1 << 30);
            assert!(!s.reading(tail), "a buffered record is never read ahead");
            if woken {
                // Every run ends in a wake-up; none is waited for.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while mine.iter().any(|r| s.reading(r)) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    rx.recv_timeout(left)
                        .expect("the readers wake the spool's owner");
                }
                assert!(parked(&s) > 0, "runs were read ahead and parked");
            }
            // In two takes, as a queue pages in batches.
            let (a, b) = mine.split_at(123);
            let mut got = ok(s.read(a));
            got.extend(ok(s.read(b)));
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(&g[..], &w[..], "record {k} (woken: {woken})");
            }
            assert_eq!(parked(&s), 0, "every run went once its records were taken");
        }
    }

    #[test]
    fn runs_of_a_deleted_file_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        s.wake_on_read_ahead(Arc::new(move || {
            let _ = tx.send(());
        }));
        let refs = fill_first_file(&mut s, 5);
        let first: Vec<SpoolRef> = refs.iter().copied().filter(|r| r.file == 0).collect();
        s.advise_read_ahead(&first, 1 << 30);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.iter().any(|r| s.reading(r)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rx.recv_timeout(left)
                .expect("the readers wake the spool's owner");
        }
        assert!(parked(&s) > 0);
        // Dropped without being read (a purge): the file goes, its runs too.
        for r in first {
            s.release(r);
        }
        assert_eq!(s.files(), 1);
        assert_eq!(parked(&s), 0);
    }

    #[test]
    fn a_record_that_cannot_be_read_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let refs = fill_first_file(&mut s, 1);
        let later = put(&mut s, b"in the second file");
        s.flush();
        // The first file loses its tail (a damaged disk, a stray truncate).
        let first = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("00000000.spool"))
            .unwrap();
        first.set_len(1024).unwrap();
        let got = s.read(&[refs[3], later]);
        assert!(
            matches!(got[0], Err(SpoolError::Short { .. })),
            "{:?}",
            got[0]
        );
        assert_eq!(&got[1].as_ref().unwrap()[..], b"in the second file");
    }
}
