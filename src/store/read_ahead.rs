//! Reading a queue's next records ahead, off the shard's thread: what
//! makes draining a paged backlog fast. Two kinds of files are read this
//! way: the journal's segments in the file mode (`journal::read_back`,
//! opened with O_DIRECT) and the shard's spool in the database modes
//! (`spool`, read through the page cache: it is written buffered and
//! never synced, so its recent bytes are there).
//!
//! The shard asks for runs of records it will page in soon ([`ReadAhead::
//! request`], grouped by [`advice`]); the reader threads read each run
//! with one `pread` into a block-aligned buffer and park it until the
//! shard takes its records ([`ReadAhead::take`]), as slices of that buffer
//! (no copy, unless the run is sparse). O_DIRECT for segments because
//! they are written with it and recovery read them with it (the page cache
//! holds none of it), and because buffered reads of cold segments ran at
//! about half the speed here (see `journal::segment_read`); threads of
//! their own because the shard's io_uring is busy with the clients'
//! sockets and the journal's writes (reads ahead through it drained at
//! half the rate, see `journal::read_back`).
//!
//! The shard does not wait for the disk: a queue whose next record is
//! being read stops paging in ([`ReadAhead::reading`]) and a reader wakes
//! the shard when the read is done (the `Notify` given at start), which
//! dispatches the queue again. Without a waker, a take waits for a run
//! being read. A record asked for that was never requested, or whose run
//! was dropped or failed, is read the plain way by the caller (one `pread`
//! per run of [`runs`]). What is parked is bounded ([`PARKED_BYTES`]): the
//! oldest runs go first, their records then read the plain way.

use std::alloc::{alloc, dealloc, Layout};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

/// O_DIRECT reads start and end on this boundary.
const ALIGN: u64 = 4096;

/// Most bytes of runs being read or read and not yet taken, per reader set
/// (a shard's journal, or its spool): a few queues' reads ahead (see
/// `broker::paging::READ_AHEAD_BYTES`). A request past it first drops
/// runs nobody came for in [`STALE`]; if that is not enough it is not
/// made, and its records are read the plain way when wanted. Refusing,
/// rather than dropping the oldest runs, keeps a run a queue was woken for
/// until it takes it: dropped, it would be asked for again and again
/// while other queues' requests push it out (three queues reading ahead
/// 12 MiB each are past 32 MiB).
pub(crate) const PARKED_BYTES: usize = 32 * 1024 * 1024;

/// A read run nobody took anything from for this long is dropped when room
/// is needed: its queue was purged, or its records were browsed or read
/// the plain way. A woken queue takes its run within milliseconds.
const STALE: Duration = Duration::from_secs(1);

/// Reads in flight at once per journal: one 4 MiB O_DIRECT read at a time
/// leaves the disk idle between them (2 GiB paged backlog drained at 42k
/// msg/s with one reader, 47-53k with two, 53-57k with four).
const READERS: usize = 4;

/// Longest a run may take once a reader started it, before its records are
/// read the plain way: the disk answers in milliseconds; a reader that
/// stopped must not stop a queue.
const READ_WAIT: Duration = Duration::from_secs(5);

/// Records nearer than this in one file are read with one `pread` (the
/// gap, other queues' records, is read and dropped)...
pub(crate) const READ_GAP_BYTES: u64 = 64 * 1024;

/// ...up to this much in one `pread` (a read ahead, aligned to blocks,
/// then fits a pooled 4 MiB buffer).
pub(crate) const READ_SPAN_BYTES: u64 = BUF_BYTES as u64 - 2 * ALIGN;

/// Groups `items`, sorted by file and offset, into runs read at once:
/// (start, end, the run's items). `place` says where an item is: (file,
/// offset, length).
pub(crate) fn runs<T>(
    items: &[T],
    place: impl Fn(&T) -> (usize, u64, u64),
) -> Vec<(u64, u64, &[T])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let (file, start, len) = place(&items[i]);
        let mut end = start + len;
        let mut j = i + 1;
        while j < items.len() {
            let (f2, off, len) = place(&items[j]);
            let rec_end = off + len;
            if f2 != file || off > end + READ_GAP_BYTES || rec_end - start > READ_SPAN_BYTES {
                break;
            }
            end = end.max(rec_end);
            j += 1;
        }
        out.push((start, end, &items[i..j]));
        i = j;
    }
    out
}

/// A run of records to read ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Advice {
    pub file: usize,
    pub start: u64,
    pub end: u64,
    /// See [`RunAt::sparse`].
    pub sparse: bool,
    /// The file offsets of its records.
    pub records: Vec<u64>,
}

/// The runs of `items` (sorted, see [`runs`]) to read ahead, in file order
/// (a queue's arrival order) until their spans reach `max_bytes`. The
/// budget counts the gaps a run reads between its records (other queues'
/// records): a queue of small messages interleaved with large ones must
/// not have gigabytes read.
pub(crate) fn advice<T>(
    items: &[T],
    place: impl Fn(&T) -> (usize, u64, u64) + Copy,
    max_bytes: u64,
) -> Vec<Advice> {
    let mut spent = 0u64;
    runs(items, place)
        .into_iter()
        .take_while(|(start, end, _)| {
            spent += end - start;
            spent <= max_bytes
        })
        .map(|(start, end, run)| {
            let used = run.iter().map(|t| place(t).2).sum();
            Advice {
                file: place(&run[0]).0,
                start,
                end,
                sparse: sparse(start, end, used),
                records: run.iter().map(|t| place(t).1).collect(),
            }
        })
        .collect()
}

/// A run whose records (`used` bytes) fill less than half of it: they are
/// copied out, so that one message does not keep the whole read alive.
pub(crate) fn sparse(start: u64, end: u64, used: u64) -> bool {
    used * 2 < end - start
}

/// A run of records of one file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAt {
    pub segment: usize,
    pub generation: u64,
    /// File offsets of the run's first byte and one past its last.
    pub start: u64,
    pub end: u64,
    /// Its records fill less than half of it: taken records are copied
    /// out, so that one message does not keep the whole buffer alive.
    pub sparse: bool,
}

impl RunAt {
    fn covers(&self, segment: usize, generation: u64, at: u64, len: u64) -> bool {
        self.segment == segment
            && self.generation == generation
            && self.start <= at
            && at + len <= self.end
    }
}

#[derive(Debug)]
enum Parked {
    Reading,
    /// The run's bytes, from `RunAt::start`.
    Read(Bytes),
    Failed,
}

#[derive(Debug)]
struct Run {
    at: RunAt,
    /// When a reader started it (None: queued behind other reads): a run
    /// read for longer than [`READ_WAIT`] counts as failed (a hung disk
    /// must not stop its queue for good)...
    since: Option<Instant>,
    /// ...and so does one requested twice that long ago that no reader
    /// started (every reader stuck). Once read: when it was last taken
    /// from (see [`STALE`]).
    touched: Instant,
    /// Its buffer's size, counted in [`State::held`] unless it failed.
    bytes: usize,
    /// File offsets of the records it was requested for, sorted, and
    /// whether each was taken: it goes when all were. Only those count:
    /// another queue's records in its gaps may be taken from it too.
    records: Vec<u64>,
    taken: Vec<bool>,
    left: usize,
    parked: Parked,
}

impl Run {
    /// Being read for longer than [`READ_WAIT`], or queued for twice that.
    fn overdue(&self) -> bool {
        matches!(self.parked, Parked::Reading)
            && match self.since {
                Some(t) => t.elapsed() >= READ_WAIT,
                None => self.touched.elapsed() >= 2 * READ_WAIT,
            }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Requested runs, oldest first.
    runs: VecDeque<Run>,
    /// Bytes of the runs in `runs` being read or read (see
    /// [`PARKED_BYTES`]).
    held: usize,
}

impl State {
    /// Run `k` failed: its records are read the plain way, and its bytes
    /// no longer count.
    fn fail(&mut self, k: usize, why: &str) {
        let r = &mut self.runs[k];
        if !matches!(r.parked, Parked::Failed) {
            warn!(segment = r.at.segment, start = r.at.start, "{why}");
            r.parked = Parked::Failed;
            self.held -= r.bytes;
        }
    }

    /// Removes run `k`, returned to be dropped outside the lock (its
    /// buffer may go back to the kernel).
    fn remove(&mut self, k: usize) -> Option<Run> {
        let r = self.runs.remove(k)?;
        if !matches!(r.parked, Parked::Failed) {
            self.held -= r.bytes;
        }
        Some(r)
    }

    /// Drops read runs nobody took from in [`STALE`], oldest first, until
    /// `need` more bytes fit under [`PARKED_BYTES`]. Whether they fit.
    fn make_room(&mut self, need: usize, gone: &mut Vec<Run>) -> bool {
        let mut k = 0;
        while self.held + need > PARKED_BYTES && k < self.runs.len() {
            let r = &self.runs[k];
            if matches!(r.parked, Parked::Read(_)) && r.touched.elapsed() >= STALE {
                gone.extend(self.remove(k));
            } else {
                k += 1;
            }
        }
        self.held + need <= PARKED_BYTES
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    read: Condvar,
}

struct Job {
    run: RunAt,
    file: Arc<File>,
    /// Where to read it, allocated by the requester: a small run's heap
    /// memory then comes from (and goes back to) the shard's allocator
    /// arena, not one per reader (four more arenas held ~30 MiB more).
    buf: std::io::Result<Aligned>,
}

/// Called by the read-ahead thread after each run it read (or failed to).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A file set's reader threads, started on first use with the waker set
/// before (see [`Readers::wake_with`]).
pub(crate) struct Readers {
    started: std::cell::OnceCell<Option<ReadAhead>>,
    notify: Option<Notify>,
    /// What happens when the threads cannot start (logged).
    without: &'static str,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("started", &self.running().is_some())
            .field("wakes", &self.notify.is_some())
            .finish()
    }
}

impl Readers {
    pub(crate) fn new(without: &'static str) -> Readers {
        Readers {
            started: std::cell::OnceCell::new(),
            notify: None,
            without,
        }
    }

    /// `notify` is called (on a reader thread) when a read ahead is done.
    /// Set it before the first read ahead: the threads start then, with
    /// the waker they will ever have; set later it is not used, and reads
    /// wait as without one (warned).
    pub(crate) fn wake_with(&mut self, notify: Notify) {
        if self.started.get().is_some() {
            warn!("a read-ahead waker set after the readers started is not used");
        }
        self.notify = Some(notify);
    }

    /// The threads, started now if they were not (None: they could not
    /// start; logged once).
    pub(crate) fn get(&self) -> Option<&ReadAhead> {
        self.started
            .get_or_init(|| match ReadAhead::start(self.notify.clone()) {
                Ok(ra) => Some(ra),
                Err(e) => {
                    warn!(error = %e, "no read-ahead threads; {}", self.without);
                    None
                }
            })
            .as_ref()
    }

    /// The threads, if they were started.
    pub(crate) fn running(&self) -> Option<&ReadAhead> {
        self.started.get().and_then(Option::as_ref)
    }
}

/// One file set's reader threads and the runs they read.
pub(crate) struct ReadAhead {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    pool: Arc<Buffers>,
    /// The threads wake the journal's owner (see [`ReadAhead::reading`]).
    wakes: bool,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead").finish_non_exhaustive()
    }
}

impl ReadAhead {
    /// Starts the thread; it ends when this is dropped (after the read it
    /// is doing).
    pub(crate) fn start(notify: Option<Notify>) -> std::io::Result<ReadAhead> {
        let (jobs, rx) = channel();
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared::default());
        for _ in 0..READERS {
            let (s, rx, notify) = (shared.clone(), rx.clone(), notify.clone());
            std::thread::Builder::new()
                .name("brokk-read-ahead".into())
                .spawn(move || reader(&rx, s, notify))?;
        }
        Ok(ReadAhead {
            jobs,
            shared,
            pool: Arc::new(Buffers::default()),
            wakes: notify.is_some(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that
        // matters: the runs are a cache.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves in `items` those that no run requested (and not failed)
    /// covers; `key` says where each is: (segment, generation, file
    /// offset, length). One lock for the lot.
    pub(crate) fn retain_uncovered<T>(
        &self,
        items: &mut Vec<T>,
        key: impl Fn(&T) -> (usize, u64, u64, u64),
    ) {
        let st = self.state();
        items.retain(|item| {
            let (segment, generation, at, len) = key(item);
            !st.runs.iter().any(|r| {
                r.at.covers(segment, generation, at, len) && !matches!(r.parked, Parked::Failed)
            })
        });
    }

    /// The threads wake the journal's owner when a run is read.
    pub(crate) fn wakes(&self) -> bool {
        self.wakes
    }

    /// A run covering these bytes is being read, and the threads will
    /// wake the journal's owner when it is (never true without a waker:
    /// nobody would come back). A run read for longer than [`READ_WAIT`]
    /// counts as failed from then on: its records are read the plain way.
    pub(crate) fn reading(&self, segment: usize, generation: u64, at: u64, len: u64) -> bool {
        if !self.wakes {
            return false;
        }
        let mut st = self.state();
        let Some(k) = st.runs.iter().position(|r| {
            r.at.covers(segment, generation, at, len) && matches!(r.parked, Parked::Reading)
        }) else {
            return false;
        };
        if !st.runs[k].overdue() {
            return true;
        }
        st.fail(
            k,
            "a read ahead takes too long; its records are read directly",
        );
        false
    }

    /// Reads `run` of `file` (a segment opened with O_DIRECT, or a spool
    /// file) in the background,
    /// for the records at file offsets `records` (sorted). Not made (false)
    /// when it does not fit under [`PARKED_BYTES`].
    pub(crate) fn request(&self, run: RunAt, records: Vec<u64>, file: Arc<File>) -> bool {
        let (from, to) = aligned(run.start, run.end);
        let bytes = (to - from) as usize;
        let mut st = self.state();
        let mut gone = Vec::new();
        if !st.make_room(bytes, &mut gone) {
            drop(st);
            drop(gone);
            return false;
        }
        st.held += bytes;
        st.runs.push_back(Run {
            at: run,
            since: None,
            touched: Instant::now(),
            bytes,
            taken: vec![false; records.len()],
            left: records.len(),
            records,
            parked: Parked::Reading,
        });
        let buf = Aligned::new(bytes, &self.pool);
        if self.jobs.send(Job { run, file, buf }).is_err() {
            // The threads are gone (they never exit while this lives).
            let k = st.runs.len() - 1;
            st.fail(k, "the read-ahead threads are gone");
        }
        drop(st);
        drop(gone);
        true
    }

    /// The record at file offset `at` (`len` bytes) of a segment, if a run
    /// covering it was read (with `wait`, waiting for one being read;
    /// without, the caller reads it itself). A run goes once the bytes
    /// taken from it reach those it was requested for.
    pub(crate) fn take(
        &self,
        segment: usize,
        generation: u64,
        at: u64,
        len: u64,
        wait: bool,
    ) -> Option<Bytes> {
        let mut st = self.state();
        // A run that never starts (readers stuck on a hung disk) is not
        // waited for past this either.
        let deadline = Instant::now() + 2 * READ_WAIT;
        loop {
            if Instant::now() >= deadline {
                return None;
            }
            let k = st.runs.iter().position(|r| {
                r.at.covers(segment, generation, at, len)
                    && (wait || !matches!(r.parked, Parked::Reading))
            })?;
            match &st.runs[k].parked {
                Parked::Reading => {
                    let left = st.runs[k]
                        .since
                        .map_or(READ_WAIT, |t| READ_WAIT.saturating_sub(t.elapsed()));
                    let (next, _) = self
                        .shared
                        .read
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner());
                    st = next;
                    // The run may have moved: look again, and give up on
                    // one read for too long (its other records too).
                    if let Some(k) = st
                        .runs
                        .iter()
                        .position(|r| r.at.covers(segment, generation, at, len) && r.overdue())
                    {
                        st.fail(
                            k,
                            "a read ahead takes too long; its records are read directly",
                        );
                    }
                }
                Parked::Read(b) => {
                    let b = b.clone();
                    let r = &st.runs[k];
                    let from = (at - r.at.start) as usize;
                    let rec = b.slice(from..from + len as usize);
                    let rec = if r.at.sparse {
                        Bytes::copy_from_slice(&rec)
                    } else {
                        rec
                    };
                    let r = &mut st.runs[k];
                    r.touched = Instant::now();
                    if let Ok(i) = r.records.binary_search(&at) {
                        if !r.taken[i] {
                            r.taken[i] = true;
                            r.left -= 1;
                        }
                    }
                    if r.left == 0 {
                        let gone = st.remove(k);
                        // Its buffer may go back to the kernel: not under
                        // the lock the readers need.
                        drop(st);
                        drop(gone);
                    }
                    return Some(rec);
                }
                Parked::Failed => {
                    // Another run may cover it; this one never will.
                    st.remove(k);
                }
            }
        }
    }

    /// Drops the runs of a segment (or spool file) whose file changed or
    /// went (their generation never matches again; this frees their memory
    /// early). One being read is dropped too: its reader finds it gone and
    /// drops what it read.
    pub(crate) fn forget(&self, segment: usize) {
        let mut st = self.state();
        let mut gone = Vec::new();
        let mut k = 0;
        while k < st.runs.len() {
            if st.runs[k].at.segment == segment {
                gone.extend(st.remove(k));
            } else {
                k += 1;
            }
        }
        drop(st);
        drop(gone);
    }

    /// Bytes of runs being read or read (see [`PARKED_BYTES`]).
    #[cfg(test)]
    pub(crate) fn parked_bytes(&self) -> usize {
        self.state().held
    }
}

/// The thread: reads each job's run and parks it.
fn reader(jobs: &Mutex<Receiver<Job>>, shared: Arc<Shared>, notify: Option<Notify>) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(Job { run, file, buf }) = job else {
            return;
        };
        {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            match st
                .runs
                .iter_mut()
                .find(|r| r.at == run && matches!(r.parked, Parked::Reading))
            {
                Some(r) => r.since = Some(Instant::now()),
                // Given up on, or dropped, while queued: not read.
                None => {
                    drop(st);
                    drop(buf);
                    continue;
                }
            }
        }
        let result = buf.and_then(|buf| read_run(&file, run.start, run.end, buf));
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = st
            .runs
            .iter()
            .position(|r| r.at == run && matches!(r.parked, Parked::Reading))
        else {
            // Given up on meanwhile (see `READ_WAIT`); whoever waited for
            // it looks again.
            drop(st);
            drop(result);
            shared.read.notify_all();
            if let Some(n) = &notify {
                n();
            }
            continue;
        };
        match result {
            Ok(b) => {
                let r = &mut st.runs[k];
                r.parked = Parked::Read(b);
                r.touched = Instant::now();
            }
            // Its records are read the plain way, which reports the error
            // where it matters.
            Err(e) => st.fail(k, &format!("a read ahead failed: {e}")),
        }
        drop(st);
        shared.read.notify_all();
        if let Some(n) = &notify {
            n();
        }
    }
}

/// The block-aligned span around file bytes `start..end`.
fn aligned(start: u64, end: u64) -> (u64, u64) {
    (start / ALIGN * ALIGN, end.div_ceil(ALIGN) * ALIGN)
}

/// Reads file bytes `start..end`: the aligned span around them (O_DIRECT
/// needs it) into an aligned buffer, returned as the bytes asked for.
fn read_run(file: &File, start: u64, end: u64, mut buf: Aligned) -> std::io::Result<Bytes> {
    let (from, _) = aligned(start, end);
    let mut done = 0usize;
    while done < buf.len {
        // SAFETY: writes within the buffer's mapping.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.ptr().add(done).cast(),
                buf.len - done,
                (from + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => break,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    let want = (end - from) as usize;
    if done < want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ends at {} before {end}", from + done as u64),
        ));
    }
    buf.len = done;
    let skip = (start - from) as usize;
    Ok(Bytes::from_owner(buf).slice(skip..want))
}

/// What a pooled buffer holds: one read of a run of up to
/// `READ_SPAN_BYTES` (4 MiB less two blocks, see `read_back`) once aligned.
const BUF_BYTES: usize = 4 << 20;

/// Huge pages are this large (and pooled buffers aligned to them).
const HUGE_PAGE: usize = 2 << 20;

/// Most free buffers a journal keeps (the rest go back to the kernel).
const POOLED: usize = 4;

/// Buffers whose messages are all gone, for the next read of a large run
/// (half a buffer or more): 4 MiB mappings on huge pages. O_DIRECT into fresh 4 KiB pages read 2 MiB runs at ~0.6
/// GB/s per reader here (the device takes at most 254 segments per
/// request, and fresh pages are scattered, as recovery found; see
/// `segment_read`), and every fresh page is zeroed first.
#[derive(Default)]
struct Buffers {
    free: Mutex<Vec<Mapping>>,
}

impl Buffers {
    fn take(&self) -> std::io::Result<Mapping> {
        if let Some(m) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(m);
        }
        Mapping::new(BUF_BYTES, HUGE_PAGE)
    }

    fn give(&self, m: Mapping) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOLED {
            free.push(m);
        }
    }
}

/// An anonymous mapping of `len` bytes, aligned to `align`; unmapped when
/// dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory owned by whoever holds the value.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize, align: usize) -> std::io::Result<Mapping> {
        let len = len.next_multiple_of(ALIGN as usize);
        let over = len + align - ALIGN as usize;
        let raw = super::anon::map(over)?.as_ptr().cast::<libc::c_void>();
        let base = raw as usize;
        let start = base.next_multiple_of(align);
        // SAFETY: the parts of the mapping just made before `start` and
        // after `start + len` (page-aligned: mmap and `len` are).
        unsafe {
            if start > base {
                libc::munmap(raw, start - base);
            }
            if base + over > start + len {
                libc::munmap(
                    (start + len) as *mut libc::c_void,
                    base + over - start - len,
                );
            }
        }
        if align >= HUGE_PAGE {
            // SAFETY: advice on our own mapping; failure is harmless (4 KiB
            // pages then).
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        }
        let ptr = NonNull::new(start as *mut u8)
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Where a read's bytes live.
enum Memory {
    /// A pooled 4 MiB buffer (a large run).
    Pooled(Mapping, Arc<Buffers>),
    /// A mapping of its own (a run larger than a pooled buffer).
    Mapped(Mapping),
    /// A heap allocation of its own (a small run: a pooled buffer's huge
    /// pages would hold 2 MiB for each, and one message would keep them).
    Heap(NonNull<u8>, Layout),
}

/// A block-aligned buffer (O_DIRECT needs one), owned by the `Bytes`
/// sliced from it.
struct Aligned {
    memory: Option<Memory>,
    /// Bytes filled.
    len: usize,
}

// SAFETY: plain memory owned by whoever holds the value.
unsafe impl Send for Aligned {}

impl Aligned {
    fn new(size: usize, pool: &Arc<Buffers>) -> std::io::Result<Aligned> {
        let memory = if size > BUF_BYTES {
            Memory::Mapped(Mapping::new(size, ALIGN as usize)?)
        } else if size >= BUF_BYTES / 2 {
            Memory::Pooled(pool.take()?, pool.clone())
        } else {
            let layout = Layout::from_size_align(size.max(1), ALIGN as usize)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            // SAFETY: a non-zero size.
            let ptr = NonNull::new(unsafe { alloc(layout) })
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
            Memory::Heap(ptr, layout)
        };
        Ok(Aligned {
            memory: Some(memory),
            len: size,
        })
    }

    fn ptr(&self) -> *mut u8 {
        match self.memory.as_ref().expect("owned until dropped") {
            Memory::Pooled(m, _) | Memory::Mapped(m) => m.ptr.as_ptr(),
            Memory::Heap(p, _) => p.as_ptr(),
        }
    }
}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by the read.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        match self.memory.take() {
            Some(Memory::Pooled(m, pool)) => pool.give(m),
            Some(Memory::Mapped(m)) => drop(m),
            // SAFETY: allocated with this layout in `new`.
            Some(Memory::Heap(p, layout)) => unsafe { dealloc(p.as_ptr(), layout) },
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .or_else(|_| File::open(&path))
            .unwrap();
        (dir, Arc::new(f))
    }

    use std::os::unix::fs::OpenOptionsExt;

    fn covers(ra: &ReadAhead, segment: usize, generation: u64, at: u64, len: u64) -> bool {
        let mut v = vec![()];
        ra.retain_uncovered(&mut v, |_| (segment, generation, at, len));
        v.is_empty()
    }

    fn run(start: u64, end: u64, sparse: bool) -> RunAt {
        RunAt {
            segment: 1,
            generation: 7,
            start,
            end,
            sparse,
        }
    }

    #[test]
    fn a_requested_run_is_taken_as_slices_of_the_read() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (_d, f) = file_of(&data);
        let ra = ReadAhead::start(None).unwrap();
        ra.request(run(5000, 20000, false), vec![5000, 6000, 7000], f);
        assert!(covers(&ra, 1, 7, 6000, 100));
        let got = ra.take(1, 7, 5000, 10, true).expect("read");
        assert_eq!(&got[..], &data[5000..5010]);
        assert!(!ra.reading(1, 7, 6000, 100), "read by now");
        assert!(!covers(&ra, 1, 8, 6000, 100), "another generation");
        assert!(!covers(&ra, 1, 7, 19990, 100), "past the run");
        let got = ra.take(1, 7, 6000, 100, true).expect("read");
        assert_eq!(&got[..], &data[6000..6100]);
        let again = ra.take(1, 7, 5000, 15000, true).expect("still parked");
        assert_eq!(&again[..], &data[5000..20000]);
        assert_eq!(ra.take(2, 7, 6000, 100, true), None, "another segment");
        assert!(ra.parked_bytes() >= 15000);
        ra.forget(1);
        assert_eq!(ra.parked_bytes(), 0);
        assert_eq!(ra.take(1, 7, 6000, 100, true), None);
    }

    #[test]
    fn a_run_goes_once_its_records_were_taken() {
        let data = vec![9u8; 16384];
        let (_d, f) = file_of(&data);
        let ra = ReadAhead::start(None).unwrap();
        ra.request(run(0, 16384, false), vec![0, 8000], f);
        assert!(ra.take(1, 7, 0, 100, true).is_some());
        assert!(ra.parked_bytes() > 0);
        // Another queue's record in its gap does not count.
        assert!(ra.take(1, 7, 4000, 100, true).is_some());
        assert!(ra.take(1, 7, 0, 100, true).is_some());
        assert!(
            ra.parked_bytes() > 0,
            "only its own records count, once each"
        );
        assert!(ra.take(1, 7, 8000, 100, true).is_some());
        assert_eq!(ra.parked_bytes(), 0);
        assert!(!covers(&ra, 1, 7, 0, 100));
    }

    #[test]
    fn the_waker_hears_of_every_run_read() {
        let data = vec![5u8; 16384];
        let (_d, f) = file_of(&data);
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let ra = ReadAhead::start(Some(Arc::new(move || {
            let _ = tx.lock().unwrap().send(());
        })))
        .unwrap();
        ra.request(run(0, 8192, false), vec![0], f.clone());
        ra.request(run(8192, 16384, false), vec![8192], f);
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        }
        assert!(!ra.reading(1, 7, 0, 100));
        assert!(!ra.reading(1, 7, 8192, 100));
        assert!(ra.take(1, 7, 8192, 100, true).is_some());
    }

    #[test]
    fn a_run_past_the_end_of_its_file_fails_and_is_read_the_plain_way() {
        let (_d, f) = file_of(&[1u8; 8192]);
        let ra = ReadAhead::start(None).unwrap();
        ra.request(run(4096, 12000, true), vec![4096], f);
        assert_eq!(ra.take(1, 7, 4096, 100, true), None);
        assert!(!covers(&ra, 1, 7, 4096, 100));
    }

    #[test]
    fn requests_past_the_bound_are_refused_until_runs_go() {
        let data = vec![3u8; 8 * 1024 * 1024];
        let (_d, f) = file_of(&data);
        let ra = ReadAhead::start(None).unwrap();
        let fit = PARKED_BYTES / data.len();
        let runs: Vec<RunAt> = (0..=fit)
            .map(|k| RunAt {
                generation: k as u64,
                ..run(0, data.len() as u64, false)
            })
            .collect();
        for r in &runs[..fit] {
            assert!(ra.request(*r, vec![0, 4096], f.clone()));
        }
        let extra = runs[fit];
        assert!(
            !ra.request(extra, vec![0], f.clone()),
            "past the bound: refused, not an older run dropped"
        );
        assert_eq!(ra.parked_bytes(), PARKED_BYTES);
        // Every run is still there for its queue.
        for r in &runs[..fit] {
            assert!(ra.take(1, r.generation, 0, 10, true).is_some());
        }
        // Taken from just now: not stale, still refused.
        assert!(!ra.request(extra, vec![0], f.clone()));
        // A run whose records were all taken goes and makes room.
        assert!(ra.take(1, 0, 4096, 10, true).is_some());
        assert!(ra.request(extra, vec![0], f.clone()));
        assert!(ra.take(1, extra.generation, 0, 10, true).is_some());
        // Runs nobody came back for go once stale.
        std::thread::sleep(STALE);
        let later = RunAt {
            generation: 99,
            ..extra
        };
        assert!(ra.request(later, vec![0], f));
        assert!(ra.parked_bytes() <= PARKED_BYTES);
    }
}
