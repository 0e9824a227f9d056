//! Reading a shard's journal back on start: order segments by generation,
//! walk every segment's rounds (see [`super::round`]), verify every record,
//! tell a torn tail (cut off) from damage to durable data (stop, or skip if
//! configured), hand the records to the caller in journal order, and return
//! the layout the writer resumes from.
//!
//! Deciding torn versus damaged: a round that does not check out at journal
//! position P was durable, and so damaged, if any valid round anywhere says
//! that the journal was durable past P (its watermark); otherwise it was
//! never acknowledged and is a torn write: the journal is cut at P and
//! everything after it is dropped. Segments older than the oldest segment a
//! recent round still counted as holding data are free: their content is
//! stale and never replayed (see `Journal::roll`).

use std::collections::{HashMap, VecDeque};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use super::round::{Position, RoundHeader, RoundKind, ROUND_HEADER_BYTES};
use super::segment_read::{read_live_part, Pool};
use super::{fsync_dir, io_err, read_header, read_prev_end, JournalError, SegmentHeader, BLOCK};
use crate::idmap::{IdMap, IdSet};
use crate::store::record::{decode_named, Decoded, DurableSubs, Names, Record};
use crate::store::RecordAt;
use std::sync::Arc;

/// One segment file as the writer resumes it.
#[derive(Debug, Clone)]
pub struct SegmentLayout {
    pub path: PathBuf,
    /// 0 = no valid header (free).
    pub generation: u64,
    pub salt: u64,
    /// Live sends.
    pub live: usize,
    /// Where its next round would go.
    pub write_at: u64,
}

/// Where the writer resumes.
#[derive(Debug, Default)]
pub struct Layout {
    pub segments: Vec<SegmentLayout>,
    pub in_use: VecDeque<usize>,
    /// Free segments, in the order to reuse them, each with whether the
    /// journal on disk already says it is free (no header, stale, dropped):
    /// the others (freed here because nothing in them is live) may be
    /// overwritten only after a durable round says so.
    pub free: VecDeque<(usize, bool)>,
    pub next_generation: u64,
    pub next_file_number: u64,
    /// Where the next round goes in the active (last in-use) segment.
    pub active_write_at: u64,
    /// The active segment is closed by its End round: start the next one.
    pub ended: bool,
    pub holders: IdMap<(usize, u32)>,
    /// Durable subscriptions per topic at the end of the journal.
    pub durables: DurableSubs,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub layout: Layout,
    /// Records handed to the sink.
    pub records: usize,
    /// Live messages in mostly acknowledged segments: whoever keeps them
    /// should copy their bytes out (see `recover`).
    pub copy_out: IdSet,
    pub bytes_scanned: u64,
    /// A torn write was cut off (segment and offset).
    pub truncated_at: Option<(PathBuf, u64)>,
    pub skipped_corrupt: usize,
}

/// A segment file as listed before reading: its header says whether it
/// holds data and in which order.
struct Listed {
    path: PathBuf,
    number: u64,
    /// (generation, salt)
    header: Option<(u64, u64)>,
    /// Where its predecessor was closed (from its header).
    prev_end: Option<Position>,
}

/// Where walking a segment's rounds stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The segment's End round; the offset after it.
    End(u64),
    /// No valid round at this offset: the end of the data, a torn write or
    /// damage (recovery decides which).
    At { pos: u64, reason: &'static str },
}

/// Rounds walked from one position.
struct Rounds {
    records: Vec<Record>,
    /// Each record's file offset and length, for reading it back later.
    at: Vec<(u64, u32)>,
    /// Each valid round walked: its offset and how many records came before it.
    starts: Vec<(u64, usize)>,
    stop: Stop,
    /// Highest durable watermark and oldest-live generation they carry.
    watermark: Position,
    first_gen: Option<u64>,
}

/// Walks valid rounds of generation `gen` from `pos`, decoding their records.
fn walk(data: &Bytes, mut pos: u64, gen: u64, salt: u64, names: &mut Names) -> Rounds {
    let mut out = Rounds {
        records: Vec::new(),
        at: Vec::new(),
        starts: Vec::new(),
        stop: Stop::End(pos),
        watermark: (0, 0),
        first_gen: None,
    };
    loop {
        let Some(h) = RoundHeader::read(data, pos as usize, gen, salt) else {
            out.stop = Stop::At {
                pos,
                reason: "no valid round header",
            };
            return out;
        };
        let body_end = pos + ROUND_HEADER_BYTES + h.len;
        if body_end > data.len() as u64 {
            out.stop = Stop::At {
                pos,
                reason: "round runs past the end of the segment",
            };
            return out;
        }
        let first = out.records.len();
        let mut p = (pos + ROUND_HEADER_BYTES) as usize;
        while (p as u64) < body_end {
            match decode_named(data, p, gen, names) {
                Decoded::Record(r, next) if next as u64 <= body_end => {
                    out.records.push(r);
                    out.at.push((p as u64, (next - p) as u32));
                    p = next;
                }
                _ => {
                    out.records.truncate(first);
                    out.at.truncate(first);
                    out.stop = Stop::At {
                        pos,
                        reason: "damaged record in a round",
                    };
                    return out;
                }
            }
        }
        out.starts.push((pos, first));
        out.watermark = out.watermark.max(h.durable);
        out.first_gen = out.first_gen.max(Some(h.first_gen));
        if h.kind == RoundKind::End {
            out.stop = Stop::End(h.next(pos));
            return out;
        }
        pos = h.next(pos);
    }
}

/// One segment read and walked.
struct Walk {
    data: Bytes,
    rounds: Rounds,
    /// Valid rounds of this generation past a stop (a later block of a
    /// torn write that survived, or what follows damage): where the first
    /// begins. Their watermarks are in `rounds.watermark`.
    beyond: Option<u64>,
}

fn walk_one(path: &Path, gen: u64, salt: u64, pool: &Arc<Pool>) -> Result<Walk, JournalError> {
    let (data, _) = read_live_part(path, gen, salt, pool)?;
    let mut names = Names::default();
    let mut rounds = walk(&data, BLOCK, gen, salt, &mut names);
    let mut beyond = None;
    if let Stop::At { pos, .. } = rounds.stop {
        // Look past the stop, block by block, for rounds of this
        // generation; only their watermarks matter here.
        let mut p = pos + BLOCK;
        while p + ROUND_HEADER_BYTES <= data.len() as u64 {
            if RoundHeader::read(&data, p as usize, gen, salt).is_none() {
                p += BLOCK;
                continue;
            }
            beyond.get_or_insert(p);
            let later = walk(&data, p, gen, salt, &mut names);
            rounds.watermark = rounds.watermark.max(later.watermark);
            rounds.first_gen = rounds.first_gen.max(later.first_gen);
            p = match later.stop {
                Stop::End(_) => break,
                Stop::At { pos, .. } => pos + BLOCK,
            };
        }
    }
    Ok(Walk {
        data,
        rounds,
        beyond,
    })
}

/// Lists the segment files with their headers (one block read each).
/// A file without a header that is shorter than a segment was being made
/// when the broker stopped: it is removed, to be made again when needed.
fn list(dir: &Path, segment_size: u64) -> Result<Vec<Listed>, JournalError> {
    use std::io::Read;
    let mut files = Vec::new();
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
        let file_len = f.metadata().map_err(io_err(&path))?.len();
        let mut head = Vec::with_capacity(BLOCK as usize);
        (&mut f)
            .take(BLOCK)
            .read_to_end(&mut head)
            .map_err(io_err(&path))?;
        let header = match read_header(&head) {
            Some(SegmentHeader::OldFormat) => return Err(JournalError::OldFormat { path }),
            Some(SegmentHeader::Current(gen, salt)) => Some((gen, salt)),
            None => None,
        };
        if header.is_none() && file_len < segment_size {
            crate::ha::fence::hold_blocking();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed = true;
            continue;
        }
        files.push(Listed {
            path,
            number,
            header,
            prev_end: read_prev_end(&head),
        });
    }
    if removed {
        fsync_dir(dir)?;
    }
    Ok(files)
}

/// Reads and walks `segments` (path, generation, salt) on a few threads and
/// hands each to `each` in the given order, as soon as it and all before it
/// are ready: the caller's bookkeeping overlaps the reading of later
/// segments. The first error stops the threads and is returned.
fn scan_in_order(
    segments: &[(&Path, u64, u64)],
    pool: &Arc<Pool>,
    mut each: impl FnMut(usize, Walk) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use std::sync::{Condvar, Mutex};
    // Two per core: while one thread verifies and decodes a segment, the
    // other keeps the disk busy with the next one. All the machine's cores:
    // recovery runs before any shard serves, and a shard's own thread (the
    // caller) is pinned to one core, which its children would inherit.
    let cores = online_cpus();
    let threads = (cores * 2).min(segments.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<Result<Walk, JournalError>>>> =
        Mutex::new(segments.iter().map(|_| None).collect());
    let filled = Condvar::new();
    std::thread::scope(|s| {
        let mut started = 0;
        for _ in 0..threads {
            let scan = || {
                unpin(cores);
                while !stop.load(Relaxed) {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(&(path, gen, salt)) = segments.get(i) else {
                        break;
                    };
                    // A panic becomes an error here, so the caller never
                    // waits for a segment that will not come.
                    let r = std::panic::catch_unwind(|| walk_one(path, gen, salt, pool))
                        .unwrap_or_else(|_| Err(poisoned(path)));
                    if let Ok(mut slots) = slots.lock() {
                        slots[i] = Some(r);
                    }
                    filled.notify_all();
                }
            };
            // A thread that cannot be started leaves its share to the others.
            started += usize::from(
                std::thread::Builder::new()
                    .name("brokk-recovery".into())
                    .spawn_scoped(s, scan)
                    .is_ok(),
            );
        }
        let result = (|| {
            for (i, &(path, _, _)) in segments.iter().enumerate() {
                let scan = {
                    let mut guard = slots.lock().map_err(|_| poisoned(path))?;
                    loop {
                        if started == 0 {
                            return Err(JournalError::Io {
                                path: path.to_path_buf(),
                                source: std::io::Error::other("no recovery thread could start"),
                            });
                        }
                        if let Some(r) = guard[i].take() {
                            break r;
                        }
                        guard = filled.wait(guard).map_err(|_| poisoned(path))?;
                    }
                };
                each(i, scan?)?;
            }
            Ok(())
        })();
        stop.store(true, Relaxed);
        result
    })
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Lets the calling thread run on any of the first `cores` CPUs. Best
/// effort: where it fails (a cpuset that forbids it) the thread simply
/// stays where it was started.
fn unpin(cores: usize) {
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; the calls
    // only read and write it and the calling thread's own affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cores.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn poisoned(path: &Path) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("reading this segment panicked"),
    }
}

/// Recovers the journal in `dir`, handing its records to `sink` segment by
/// segment in journal order, as each is read and verified (the caller's
/// rebuilding overlaps the reading of later segments), each with where it
/// can be read back while the journal runs. Records share the memory a
/// segment was read into.
pub fn recover(
    dir: &Path,
    segment_size: u64,
    skip_corrupt: bool,
    mut sink: impl FnMut(Vec<Record>, Vec<RecordAt>),
) -> Result<Recovered, JournalError> {
    let started = std::time::Instant::now();
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
    }
    let found = list(dir, segment_size)?;
    let mut out = Recovered::default();
    out.layout.next_file_number = found.iter().map(|f| f.number + 1).max().unwrap_or(0);
    // Journal order: by generation.
    let mut journal: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].header.is_some())
        .collect();
    journal.sort_by_key(|&i| found[i].header);
    let n = journal.len();
    let gen_of = |i: usize| found[i].header.map_or(0, |h| h.0);
    // Read the two newest segments first: their last rounds say which
    // older segments are free (stale), before any segment is replayed.
    let newest = n.min(2);
    let read_order: Vec<usize> = journal[n - newest..]
        .iter()
        .rev()
        .chain(&journal[..n - newest])
        .copied()
        .collect();
    let order: Vec<(&Path, u64, u64)> = read_order
        .iter()
        .map(|&i| {
            let (gen, salt) = found[i].header.unwrap_or((0, 0));
            (found[i].path.as_path(), gen, salt)
        })
        .collect();
    // Where each segment was closed, as its successor's header says.
    let mut closed_at: Vec<Option<u64>> = vec![None; found.len()];
    for pair in journal.windows(2) {
        let (i, j) = (pair[0], pair[1]);
        if let Some((gen, pos)) = found[j].prev_end {
            if gen == gen_of(i) && pos >= BLOCK {
                closed_at[i] = Some(pos);
            }
        }
    }
    let mut replay = Replay {
        closed_at,
        found: &found,
        skip_corrupt,
        oldest_live_gen: None,
        watermark: (0, 0),
        newest: Vec::new(),
        held: Vec::new(),
        live: vec![0; found.len()],
        sends: vec![0; found.len()],
        write_at: vec![BLOCK; found.len()],
        stale: vec![false; found.len()],
        dropped: vec![false; found.len()],
        holders: IdMap::default(),
        durable: HashMap::new(),
        cut: None,
        ended: false,
        out: &mut out,
    };
    // Segments the sink is done with lend their memory to later ones.
    let pool = Pool::new(order.len(), segment_size);
    let _close = ClosePool(&pool);
    scan_in_order(&order, &pool, |rank, walk| {
        let i = read_order[rank];
        replay.out.bytes_scanned += walk.data.len() as u64;
        replay.watermark = replay.watermark.max(walk.rounds.watermark);
        if rank < newest {
            replay.newest.push((i, walk));
            if rank + 1 == newest {
                // Normally the newest segment's last rounds say it. If
                // neither of the two newest has a valid round (a torn write
                // across them), every segment must be read first.
                replay.oldest_live_gen = replay
                    .newest
                    .iter()
                    .filter_map(|(_, w)| w.rounds.first_gen)
                    .max();
                if replay.oldest_live_gen.is_none() {
                    let newest = std::mem::take(&mut replay.newest);
                    replay.held.extend(newest);
                }
            }
            return Ok(());
        }
        replay.next(i, walk, &mut sink)
    })?;
    // The newest segments come last in journal order.
    let mut newest_walks = std::mem::take(&mut replay.newest);
    newest_walks.sort_by_key(|(i, _)| gen_of(*i));
    for (i, walk) in newest_walks {
        replay.next(i, walk, &mut sink)?;
    }
    if replay.oldest_live_gen.is_none() {
        let all = std::mem::take(&mut replay.held);
        replay.oldest_live_gen = Some(
            all.iter()
                .filter_map(|(_, w)| w.rounds.first_gen)
                .max()
                .unwrap_or(0),
        );
        let mut all = all;
        all.sort_by_key(|(i, _)| gen_of(*i));
        for (i, walk) in all {
            replay.next(i, walk, &mut sink)?;
        }
    }
    replay.settle_held(&mut sink)?;
    let read_ms = started.elapsed().as_millis() as u64;
    let Replay {
        live,
        sends,
        write_at,
        stale,
        dropped,
        holders,
        mut durable,
        cut,
        ended,
        ..
    } = replay;
    // A mostly live segment stays in memory as read, and its messages are
    // slices of it (no copy); a mostly dead one would be pinned by a few
    // survivors, so those should get memory of their own. Either way a
    // recovered message holds at most about twice its size.
    let mostly_dead: Vec<bool> = (0..found.len()).map(|i| live[i] * 2 < sends[i]).collect();
    out.copy_out = holders
        .iter()
        .filter(|(_, (seg, _))| mostly_dead[*seg])
        .map(|(id, _)| *id)
        .collect();
    let l = &mut out.layout;
    let usable = |i: usize| found[i].header.is_some() && !stale[i] && !dropped[i];
    l.segments = found
        .iter()
        .enumerate()
        .map(|(i, f)| SegmentLayout {
            path: f.path.clone(),
            generation: if usable(i) { gen_of(i) } else { 0 },
            salt: f.header.map_or(0, |h| h.1),
            live: live[i],
            write_at: write_at[i],
        })
        .collect();
    // Generations only grow, even past dropped segments.
    l.next_generation = found.iter().map(gen_of_listed).max().unwrap_or(0) + 1;
    // Reuse order: what the disk already calls free first (oldest first),
    // then what is free only by this count, oldest first.
    let mut declared: Vec<usize> = (0..found.len()).filter(|&i| !usable(i)).collect();
    declared.sort_by_key(|&i| (found[i].header.is_some(), gen_of(i)));
    l.free = declared.into_iter().map(|i| (i, true)).collect();
    l.in_use = journal.iter().copied().filter(|&i| usable(i)).collect();
    // Oldest segments with nothing live are reusable (the newest stays active).
    while l.in_use.len() > 1 && live[l.in_use[0]] == 0 {
        let i = l.in_use.pop_front().unwrap_or_default();
        l.free.push_back((i, false));
    }
    let active = l.in_use.back().copied();
    l.active_write_at = active.map_or(BLOCK, |a| write_at[a]);
    l.ended = ended && cut.is_none();
    l.holders = holders;
    durable.retain(|_, s| !s.is_empty());
    l.durables = durable;
    info!(
        dir = %dir.display(),
        records = out.records,
        copy_out = out.copy_out.len(),
        segments = found.len(),
        bytes = out.bytes_scanned,
        truncated = out.truncated_at.is_some(),
        skipped_corrupt = out.skipped_corrupt,
        read_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "journal recovered"
    );
    Ok(out)
}

/// Closes the recovery's pool however it ends.
struct ClosePool<'a>(&'a Pool);

impl Drop for ClosePool<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn gen_of_listed(f: &Listed) -> u64 {
    f.header.map_or(0, |h| h.0)
}

/// Replays walked segments in journal order and decides, for each place
/// where a segment's rounds stop short of its End round, whether the data
/// there was torn (cut) or damaged (stop, or skip).
struct Replay<'a> {
    /// Per segment: where its successor says it was closed.
    closed_at: Vec<Option<u64>>,
    found: &'a [Listed],
    skip_corrupt: bool,
    /// Segments older than this generation are free; their content is
    /// stale. None until known: then every walk waits in `held`.
    oldest_live_gen: Option<u64>,
    /// The highest durable watermark any valid round carries.
    watermark: Position,
    /// The newest segments' walks, read first, replayed last.
    newest: Vec<(usize, Walk)>,
    /// Segments after the first that stopped short of its End round: they
    /// wait until every watermark is known.
    held: Vec<(usize, Walk)>,
    live: Vec<usize>,
    sends: Vec<usize>,
    write_at: Vec<u64>,
    stale: Vec<bool>,
    /// Dropped by a cut: after a torn write, never acknowledged.
    dropped: Vec<bool>,
    holders: IdMap<(usize, u32)>,
    durable: DurableSubs,
    /// The segment a torn write was cut in; everything after is dropped.
    cut: Option<usize>,
    /// The last segment replayed ends with its End round.
    ended: bool,
    out: &'a mut Recovered,
}

impl Replay<'_> {
    fn next(
        &mut self,
        i: usize,
        walk: Walk,
        sink: &mut impl FnMut(Vec<Record>, Vec<RecordAt>),
    ) -> Result<(), JournalError> {
        let Some(oldest_live) = self.oldest_live_gen else {
            self.held.push((i, walk));
            return Ok(());
        };
        let gen = gen_of_listed(&self.found[i]);
        if gen < oldest_live {
            self.stale[i] = true;
            return Ok(());
        }
        let mut walk = walk;
        if let Some(end) = self.closed_at[i] {
            close_at(&mut walk, end);
        }
        if !self.held.is_empty() || matches!(walk.rounds.stop, Stop::At { .. }) {
            // Decided once every watermark is known (normally just the
            // newest segment, whose data simply ends).
            self.held.push((i, walk));
            return Ok(());
        }
        self.replay(i, walk, sink)
    }

    fn replay(
        &mut self,
        i: usize,
        mut w: Walk,
        sink: &mut impl FnMut(Vec<Record>, Vec<RecordAt>),
    ) -> Result<(), JournalError> {
        let (path, (gen, salt)) = (&self.found[i].path, self.found[i].header.unwrap_or((0, 0)));
        loop {
            let records = std::mem::take(&mut w.rounds.records);
            let at = std::mem::take(&mut w.rounds.at);
            self.feed(i, records, at, sink);
            let (pos, reason) = match w.rounds.stop {
                Stop::End(at) => {
                    self.write_at[i] = at;
                    self.ended = true;
                    return Ok(());
                }
                Stop::At { pos, reason } => (pos, reason),
            };
            self.ended = false;
            if (gen, pos) >= self.watermark {
                // Never durable: the end of the data, or a torn write.
                self.write_at[i] = pos;
                if w.beyond.is_some() || reason != "no valid round header" {
                    warn!(path = %path.display(), offset = pos, reason, "torn write: cutting the journal here");
                    if w.beyond.is_some() {
                        zero_from(path, pos)?;
                    }
                    self.out.truncated_at = Some((path.clone(), pos));
                }
                self.cut = Some(i);
                return Ok(());
            }
            // A round the journal had made durable does not check out.
            if !self.skip_corrupt {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: pos,
                    reason,
                });
            }
            warn!(path = %path.display(), offset = pos, reason, "skipping damaged journal data (store.skip_corrupt)");
            self.out.skipped_corrupt += 1;
            match w.beyond.filter(|&b| b > pos) {
                Some(b) => {
                    let mut names = Names::default();
                    w.rounds = walk(&w.data, b, gen, salt, &mut names);
                    w.beyond = None;
                    if let Stop::At { pos: p, .. } = w.rounds.stop {
                        // Further damage or the end: look once more.
                        w.beyond = find_round(&w.data, p + BLOCK, gen, salt);
                    }
                }
                None => {
                    // Nothing valid after the damage in this segment.
                    self.write_at[i] = next_free_block(&w.data, pos);
                    self.ended = false;
                    return Ok(());
                }
            }
        }
    }

    /// Replays the segments held back, now that every watermark is known;
    /// after a cut, the rest is dropped (their headers erased).
    fn settle_held(
        &mut self,
        sink: &mut impl FnMut(Vec<Record>, Vec<RecordAt>),
    ) -> Result<(), JournalError> {
        for (i, walk) in std::mem::take(&mut self.held) {
            if self.cut.is_some() {
                let path = &self.found[i].path;
                warn!(path = %path.display(), "dropping a segment written after a torn write");
                erase_header(path)?;
                self.dropped[i] = true;
                continue;
            }
            self.replay(i, walk, sink)?;
        }
        Ok(())
    }

    fn feed(
        &mut self,
        i: usize,
        records: Vec<Record>,
        at: Vec<(u64, u32)>,
        sink: &mut impl FnMut(Vec<Record>, Vec<RecordAt>),
    ) {
        for r in &records {
            self.sends[i] += usize::from(matches!(r, Record::Send { .. } | Record::TxSend { .. }));
            track(r, i, &mut self.durable, &mut self.holders, &mut self.live);
        }
        self.out.records += records.len();
        // Segment slots are the listing's indices (see `Layout::segments`).
        let at = at
            .into_iter()
            .map(|(at, len)| RecordAt {
                segment: i as u32,
                len,
                at,
            })
            .collect();
        sink(records, at);
    }
}

/// Ends a segment's walk at `end`, where its successor says it was closed:
/// rounds from there on (a fenced master's late write over the End round)
/// were never part of the journal. A walk that stopped short of `end` is
/// left to the torn/damaged decision.
fn close_at(walk: &mut Walk, end: u64) {
    let reached = match walk.rounds.stop {
        Stop::End(at) => at > end,
        Stop::At { pos, .. } => pos >= end,
    };
    if !reached {
        return;
    }
    if let Some(&(_, before)) = walk.rounds.starts.iter().find(|(pos, _)| *pos >= end) {
        walk.rounds.records.truncate(before);
        walk.rounds.at.truncate(before);
    }
    walk.rounds.stop = Stop::End(end + BLOCK);
    walk.beyond = None;
}

/// The first valid round of generation `gen` at or after `from`.
fn find_round(data: &Bytes, from: u64, gen: u64, salt: u64) -> Option<u64> {
    let mut p = from;
    while p + ROUND_HEADER_BYTES <= data.len() as u64 {
        if RoundHeader::read(data, p as usize, gen, salt).is_some() {
            return Some(p);
        }
        p += BLOCK;
    }
    None
}

/// Where writing may resume after skipped damage at `pos`: past everything
/// read, so that nothing damaged is ever mistaken for new data.
fn next_free_block(data: &Bytes, pos: u64) -> u64 {
    (data.len() as u64).max(pos + BLOCK).div_ceil(BLOCK) * BLOCK
}

/// Makes a segment read as free (no header) from now on.
fn erase_header(path: &Path) -> Result<(), JournalError> {
    crate::ha::fence::hold_blocking();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(&[0u8; BLOCK as usize]).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn track(
    r: &Record,
    seg: usize,
    durable: &mut DurableSubs,
    holders: &mut IdMap<(usize, u32)>,
    live: &mut [usize],
) {
    match r {
        Record::Send {
            id, destination, ..
        }
        | Record::TxSend {
            id, destination, ..
        } => {
            let n = if destination.topic {
                durable.get(&destination.name).map_or(0, |s| s.len() as u32)
            } else {
                1
            };
            if n > 0 {
                holders.insert(*id, (seg, n));
                live[seg] += 1;
            }
        }
        Record::Ack { id, .. } => {
            if let Some((s, left)) = holders.get_mut(id) {
                *left -= 1;
                if *left == 0 {
                    live[*s] -= 1;
                    holders.remove(id);
                }
            }
        }
        // A prepared ACK retires its message only if its transaction is
        // applied, which needs every shard's journal: the caller releases
        // it once that is decided (see `server::shard`).
        Record::Redelivered { .. } | Record::TxAck { .. } | Record::TxDone { .. } => {}
        // A decision stays readable until every participant has applied the
        // transaction; after a crash that is known only once every shard
        // has recovered, so the caller releases it then.
        Record::TxCommit { tx } => {
            holders.insert(*tx, (seg, 1));
            live[seg] += 1;
        }
        Record::DurableAdd {
            topic,
            sub,
            selector,
        } => {
            durable
                .entry(topic.clone())
                .or_default()
                .insert(sub.clone(), selector.clone());
        }
        Record::DurableRemove { topic, sub } => {
            if let Some(s) = durable.get_mut(topic) {
                s.remove(sub);
            }
        }
    }
}

/// Zeroes a segment from `offset` to its end, so the bytes of a torn write
/// can never be read as records after new data is written before them.
fn zero_from(path: &Path, offset: u64) -> Result<(), JournalError> {
    crate::ha::fence::hold_blocking();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    f.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len.saturating_sub(offset);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io_err(path))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err(path))
}
