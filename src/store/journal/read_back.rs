//! Reading SEND records back while the journal runs: what a queue that
//! paged a message out (see `broker::paging`) reads when it wants the
//! message again. The journal is the message's only copy; a held message
//! pins its segment, so the record stays where it was written.
//!
//! A record is named by its offset in its segment's *record stream*: the
//! bytes appended to the segment since it was (re)started, in order. Where
//! those bytes land is known only once the flusher wrote them (each round
//! adds a header, and a round put back at a full disk is written later, in
//! one piece with what followed it), so each segment keeps the written
//! rounds' stream offsets and file offsets ([`Stream`]). Bytes not yet
//! written are read from the journal's memory: the pending chunks, or the
//! chunks being written ([`InFlight`]). A segment recovery read starts its
//! stream where its records end: their offsets are file offsets.
//!
//! What a queue will page in next is read ahead off the shard's thread
//! with O_DIRECT (`read_ahead`), and the shard is woken when it is in;
//! what was not read ahead is read with a plain `pread`, one per run of
//! nearby records. Every record is checked as recovery checks it
//! (generation, CRC) and must be the SEND the caller expects: a damaged
//! one is an error, never a message.

use std::cell::{OnceCell, RefCell};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::segment_read::open_direct;
use super::Journal;
use crate::store::read_ahead::{advice, runs, sparse, Advice, Notify, ReadAhead, RunAt};
use crate::store::record::{decode_at, Decoded};
use crate::store::{ReadBackError, Record, RecordAt, RecordSource};

/// One segment's record stream: where its written rounds' records are.
#[derive(Debug)]
pub(super) struct Stream {
    /// Offsets below this are file offsets (what recovery read).
    base: u64,
    /// Where the next record appended starts.
    appended: u64,
    /// Written rounds, in stream order: (stream offset, file offset) of
    /// their first record byte.
    rounds: Vec<(u64, u64)>,
    /// The stream offset up to which rounds were written.
    written: u64,
    /// Opened on the first read; forgotten when the slot changes files.
    file: OnceCell<File>,
    /// The same with O_DIRECT, for reads ahead (see `read_ahead`).
    direct: OnceCell<Arc<File>>,
}

impl Stream {
    pub(super) fn new(base: u64) -> Stream {
        Stream {
            base,
            appended: base,
            rounds: Vec::new(),
            written: base,
            file: OnceCell::new(),
            direct: OnceCell::new(),
        }
    }

    pub(super) fn appended(&self) -> u64 {
        self.appended
    }

    pub(super) fn append(&mut self, bytes: u64) {
        self.appended += bytes;
    }

    /// The last record appended was taken back out (it did not fit).
    pub(super) fn unappend(&mut self, bytes: u64) {
        self.appended -= bytes;
    }

    /// A round holding the stream's bytes from `logical` (`len` of them)
    /// was written with its first record byte at file offset `file_at`.
    pub(super) fn wrote(&mut self, logical: u64, file_at: u64, len: u64) {
        debug_assert_eq!(logical, self.written, "rounds are written in stream order");
        self.rounds.push((logical, file_at));
        self.written = logical + len;
    }

    pub(super) fn forget_file(&mut self) {
        self.file = OnceCell::new();
        self.direct = OnceCell::new();
    }

    #[cfg(test)]
    pub(super) fn file_offset_for_test(&self, at: u64, len: u64) -> Option<u64> {
        self.file_offset(at, len)
    }

    /// The file offset of stream bytes `at..at + len`, if written.
    fn file_offset(&self, at: u64, len: u64) -> Option<u64> {
        if at < self.base {
            return (at + len <= self.base).then_some(at);
        }
        if at + len > self.written {
            return None;
        }
        let k = self.rounds.partition_point(|r| r.0 <= at).checked_sub(1)?;
        let (start, file_at) = self.rounds[k];
        let end = self.rounds.get(k + 1).map_or(self.written, |r| r.0);
        (at + len <= end).then_some(file_at + (at - start))
    }
}

/// A record on disk: (segment, file offset, index into the caller's list).
type OnDisk = (usize, u64, usize);

/// What `cell` holds, opened from `path` on first use.
fn opened<'a, T>(
    cell: &'a OnceCell<T>,
    path: &std::path::Path,
    open: impl FnOnce(&std::path::Path) -> std::io::Result<T>,
) -> Result<&'a T, ReadBackError> {
    if let Some(f) = cell.get() {
        return Ok(f);
    }
    let f = open(path).map_err(|source| ReadBackError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(cell.get_or_init(|| f))
}

/// A chunk the flusher is writing: (segment, stream offset, bytes).
#[derive(Debug)]
pub(super) struct InFlight {
    pub segment: usize,
    pub logical: u64,
    pub bytes: Bytes,
}

impl RecordSource for RefCell<Journal> {
    fn read_records(&self, at: &[RecordAt]) -> Vec<Result<Record, ReadBackError>> {
        match self.try_borrow() {
            Ok(j) => j.read_records(at),
            // Never while the broker appends (reads happen in dispatch);
            // an error, not a panic, if that ever changes.
            Err(_) => at
                .iter()
                .map(|&a| {
                    Err(ReadBackError::Damaged {
                        at: a,
                        reason: "the journal is busy".into(),
                    })
                })
                .collect(),
        }
    }

    fn advise_read_ahead(&self, at: &[RecordAt], max_bytes: u64) {
        if let Ok(j) = self.try_borrow() {
            j.advise_read_ahead(at, max_bytes);
        }
    }

    fn reading(&self, at: &RecordAt) -> bool {
        self.try_borrow().is_ok_and(|j| j.reading(at))
    }
}

impl Journal {
    /// Has the records at `at` that are on disk read ahead, in the
    /// background, one O_DIRECT read per run of nearby records (see
    /// `read_ahead`), skipping those already read or being read. Measured
    /// on a 4 GiB backlog drained by 4 consumers: 26k msg/s reading each
    /// batch with a plain `pread` when it was wanted, 33k with the kernel
    /// asked to read ahead (`POSIX_FADV_WILLNEED`, what is done here when
    /// the read-ahead thread cannot start), 16-18k reading ahead through
    /// the shard's io_uring (the copy out of the DMA buffers and the
    /// ring's latency under a busy shard cost more than they saved).
    ///
    /// At most `max_bytes` are read, counting the gaps a run reads between
    /// its records (other queues' records): a queue of small messages
    /// interleaved with large ones must not have gigabytes read.
    pub fn advise_read_ahead(&self, at: &[RecordAt], max_bytes: u64) {
        let ahead = self.read_ahead();
        let mut disk = self.on_disk(at);
        if let Some(ra) = ahead {
            ra.retain_uncovered(&mut disk, |&(seg, off, k)| {
                (seg, self.segments[seg].generation, off, at[k].len as u64)
            });
        }
        let place = |&(seg, off, k): &OnDisk| (seg, off, at[k].len as u64);
        for Advice {
            file: seg,
            start,
            end,
            sparse,
            records,
        } in advice(&disk, place, max_bytes)
        {
            match ahead {
                Some(ra) => {
                    let Ok(file) = self.direct_reader(seg) else {
                        continue;
                    };
                    let run = RunAt {
                        segment: seg,
                        generation: self.segments[seg].generation,
                        start,
                        end,
                        sparse,
                    };
                    if !ra.request(run, records, file) {
                        // Full: the rest is read when wanted.
                        break;
                    }
                }
                None => {
                    let Ok(file) = self.reader(seg) else {
                        continue;
                    };
                    // SAFETY: a hint on an open descriptor; failure is
                    // harmless.
                    unsafe {
                        libc::posix_fadvise(
                            file.as_raw_fd(),
                            start as libc::off_t,
                            (end - start) as libc::off_t,
                            libc::POSIX_FADV_WILLNEED,
                        );
                    }
                }
            }
        }
    }

    /// `notify` is called (on another thread) when a read ahead is done:
    /// from then on, a record being read ahead is reported as such
    /// ([`Journal::reading`]) for the caller to come back when woken,
    /// instead of waiting for it. Set it before the first read ahead (the
    /// threads start then, with the waker they will ever have): set later,
    /// it is not used, and reads wait as without one (warned).
    pub fn wake_on_read_ahead(&mut self, notify: Notify) {
        self.read_ahead.wake_with(notify);
    }

    /// The record at `a` is being read ahead, and the reader will wake
    /// whoever asked (see [`Journal::wake_on_read_ahead`]).
    pub fn reading(&self, a: &RecordAt) -> bool {
        let Some(ra) = self.read_ahead.running() else {
            return false;
        };
        let seg = a.segment as usize;
        let Some(s) = self.segments.get(seg) else {
            return false;
        };
        let len = a.len as u64;
        s.stream
            .file_offset(a.at, len)
            .is_some_and(|off| ra.reading(seg, s.generation, off, len))
    }

    /// The read-ahead thread, started on first use (None: it could not
    /// start; reads ahead then go through the page cache).
    fn read_ahead(&self) -> Option<&ReadAhead> {
        self.read_ahead.get()
    }

    /// A segment's file slot changed files: runs read ahead from the old
    /// one are dropped.
    pub(super) fn forget_read_ahead(&self, seg: usize) {
        if let Some(ra) = self.read_ahead.running() {
            ra.forget(seg);
        }
    }

    /// The records of `at` on disk: (segment, file offset, index), sorted.
    fn on_disk(&self, at: &[RecordAt]) -> Vec<OnDisk> {
        let mut disk: Vec<OnDisk> = at
            .iter()
            .enumerate()
            .filter_map(|(k, a)| {
                let seg = a.segment as usize;
                let off = self
                    .segments
                    .get(seg)?
                    .stream
                    .file_offset(a.at, a.len as u64)?;
                Some((seg, off, k))
            })
            .collect();
        disk.sort_unstable();
        disk
    }

    /// Reads the SEND records at `at` (see the module comment).
    pub fn read_records(&self, at: &[RecordAt]) -> Vec<Result<Record, ReadBackError>> {
        let mut out: Vec<Option<Result<Record, ReadBackError>>> = at.iter().map(|_| None).collect();
        // On disk, read ahead or read now in runs; the others from memory.
        let mut disk = self.on_disk(at);
        if let Some(ra) = self.read_ahead.running() {
            disk.retain(|&(seg, off, k)| {
                let a = &at[k];
                let gen = self.segments[seg].generation;
                // A caller woken by the reader asked `reading` first and
                // does not wait; one that is not, waits.
                let wait = !ra.wakes();
                match ra.take(seg, gen, off, a.len as u64, wait) {
                    Some(rec) => {
                        out[k] = Some(self.decode(a, &rec));
                        false
                    }
                    None => true,
                }
            });
        }
        let mut written = vec![false; at.len()];
        for &(_, _, k) in &disk {
            written[k] = true;
        }
        for (k, o) in out.iter().enumerate() {
            written[k] |= o.is_some();
        }
        for (k, a) in at.iter().enumerate() {
            if !written[k] {
                out[k] = Some(self.read_unwritten(a));
            }
        }
        for (start, end, run) in runs(&disk, |&(seg, off, k)| (seg, off, at[k].len as u64)) {
            let seg = run[0].0;
            let used: u64 = run.iter().map(|&(_, _, k)| at[k].len as u64).sum();
            match self.pread(seg, start, end - start) {
                Ok(buf) => {
                    let copy_out = sparse(start, end, used);
                    for &(_, off, k) in run {
                        let a = &at[k];
                        let from = (off - start) as usize;
                        let rec = if copy_out {
                            Bytes::copy_from_slice(&buf[from..from + a.len as usize])
                        } else {
                            buf.slice(from..from + a.len as usize)
                        };
                        out[k] = Some(self.decode(a, &rec));
                    }
                }
                Err(e) => {
                    for &(_, _, k) in run {
                        out[k] = Some(Err(match &e {
                            ReadBackError::Io { path, source } => ReadBackError::Io {
                                path: path.clone(),
                                source: std::io::Error::new(source.kind(), source.to_string()),
                            },
                            other => ReadBackError::Damaged {
                                at: at[k],
                                reason: other.to_string(),
                            },
                        }));
                    }
                }
            }
        }
        out.into_iter()
            .zip(at)
            .map(|(r, a)| r.unwrap_or(Err(ReadBackError::Gone { at: *a })))
            .collect()
    }

    /// A record not written yet: in a chunk being written, or pending.
    /// Copied out (a few records at the tail of a queue).
    fn read_unwritten(&self, a: &RecordAt) -> Result<Record, ReadBackError> {
        let seg = a.segment as usize;
        let len = a.len as u64;
        let inside = |logical: u64, n: usize| logical <= a.at && a.at + len <= logical + n as u64;
        let from_flight = self
            .in_flight
            .iter()
            .find(|f| f.segment == seg && inside(f.logical, f.bytes.len()))
            .map(|f| (f.logical, &f.bytes[..]));
        let from_pending = || {
            self.pending
                .iter()
                .find(|c| c.segment == seg && inside(c.logical, c.bytes.len()))
                .map(|c| (c.logical, &c.bytes[..]))
        };
        let Some((logical, bytes)) = from_flight.or_else(from_pending) else {
            return Err(ReadBackError::Gone { at: *a });
        };
        let from = (a.at - logical) as usize;
        let rec = Bytes::copy_from_slice(&bytes[from..from + a.len as usize]);
        self.decode(a, &rec)
    }

    fn decode(&self, a: &RecordAt, rec: &Bytes) -> Result<Record, ReadBackError> {
        let gen = self.segments[a.segment as usize].generation;
        let damaged = |reason: &str| ReadBackError::Damaged {
            at: *a,
            reason: reason.to_string(),
        };
        match decode_at(rec, 0, gen) {
            Decoded::Record(r @ (Record::Send { .. } | Record::TxSend { .. }), n)
                if n == rec.len() =>
            {
                Ok(r)
            }
            Decoded::Record(..) => Err(damaged("not the SEND record expected there")),
            Decoded::End => Err(damaged("no record of this segment's generation there")),
            Decoded::Bad { reason, .. } => Err(damaged(reason)),
        }
    }

    /// Segment `seg`'s file, opened for reading back.
    fn direct_reader(&self, seg: usize) -> Result<Arc<File>, ReadBackError> {
        let s = &self.segments[seg];
        opened(&s.stream.direct, &s.path, |p| open_direct(p).map(Arc::new)).cloned()
    }

    fn reader(&self, seg: usize) -> Result<&File, ReadBackError> {
        let s = &self.segments[seg];
        opened(&s.stream.file, &s.path, |p| File::open(p))
    }

    fn pread(&self, seg: usize, at: u64, len: u64) -> Result<Bytes, ReadBackError> {
        let s = &self.segments[seg];
        let io = |source| ReadBackError::Io {
            path: s.path.clone(),
            source,
        };
        let file = self.reader(seg)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at).map_err(io)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_offsets_map_to_the_rounds_that_wrote_them() {
        let mut s = Stream::new(4096);
        s.append(300);
        s.wrote(4096, 4096 + 64, 200);
        s.wrote(4296, 8192 + 64, 100);
        assert_eq!(s.file_offset(4096, 50), Some(4160));
        assert_eq!(s.file_offset(4196, 100), Some(4260));
        // Across two rounds: not one record.
        assert_eq!(s.file_offset(4250, 100), None);
        assert_eq!(s.file_offset(4296, 100), Some(8256));
        // Not written yet.
        s.append(10);
        assert_eq!(s.file_offset(4396, 10), None);
    }

    #[test]
    fn read_ahead_advice_counts_the_gaps_it_reads() {
        // Small records 60 KiB apart (another queue's large ones between
        // them): one run reads the gaps too, and the budget counts them.
        let at: Vec<RecordAt> = (0..300u64)
            .map(|k| RecordAt {
                segment: 0,
                len: 200,
                at: 4096 + k * 60 * 1024,
            })
            .collect();
        let disk: Vec<OnDisk> = at.iter().enumerate().map(|(k, a)| (0, a.at, k)).collect();
        // 300 x 60 KiB: about 18 MiB of reads for 60 KB of records.
        let advised = advice(
            &disk,
            |&(seg, off, k)| (seg, off, at[k].len as u64),
            8 << 20,
        );
        let spans: u64 = advised.iter().map(|a| a.end - a.start).sum();
        assert!(
            spans <= 8 << 20,
            "{spans} bytes advised for an 8 MiB budget"
        );
        assert!(spans >= 4 << 20, "{spans}: the budget is used");
        assert_eq!(advised[0].start, 4096, "earliest first");
    }

    #[test]
    fn a_recovered_segment_reads_at_file_offsets() {
        let mut s = Stream::new(1 << 20);
        assert_eq!(s.file_offset(4096 + 64, 500), Some(4096 + 64));
        s.append(100);
        s.wrote(1 << 20, (1 << 20) + 64, 100);
        assert_eq!(s.file_offset(1 << 20, 100), Some((1 << 20) + 64));
    }
}
