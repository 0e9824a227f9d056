//! Reading a shard's journal back on start: order segments by generation,
//! verify every record, cut a torn tail, stop (or skip, if configured) at
//! corruption, hand the records to the caller in journal order, and return
//! the layout the writer resumes from.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};

use super::segment_read::read_live_part;
use super::{fsync_dir, io_err, read_header, JournalError, BLOCK};
use crate::idmap::{IdMap, IdSet};
use crate::store::record::{decode_at, decode_named, Decoded, Names, Record, StoredSub};

/// Where the writer resumes.
#[derive(Debug, Default)]
pub struct Layout {
    /// Per segment file: path, generation (0 = none), live sends.
    pub segments: Vec<(PathBuf, u64, usize)>,
    pub in_use: VecDeque<usize>,
    pub free: VecDeque<usize>,
    pub next_generation: u64,
    pub next_file_number: u64,
    /// End of data in the active (last in-use) segment.
    pub active_len: u64,
    /// The active segment's bytes from the last block boundary to `active_len`.
    pub tail: Vec<u8>,
    pub holders: IdMap<(usize, u32)>,
    /// Durable subscriptions per topic at the end of the journal.
    pub durables: HashMap<Arc<str>, HashSet<StoredSub>>,
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
    /// A torn tail was cut off (offset in the last segment).
    pub truncated_at: Option<(PathBuf, u64)>,
    pub skipped_corrupt: usize,
}

/// A segment file as listed before reading: its header says whether it
/// holds data and in which order.
struct Listed {
    path: PathBuf,
    number: u64,
    generation: Option<u64>,
}

/// Where decoding a segment stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Clean end of data at this offset.
    End(usize),
    /// A record of this generation that does not check out.
    Bad {
        pos: usize,
        reason: &'static str,
        claimed_len: Option<usize>,
    },
}

/// One segment read and decoded.
struct Scan {
    data: Bytes,
    records: Vec<Record>,
    stop: Stop,
}

/// Decodes records from `pos` until the end of data or a bad record.
fn decode_from(data: &Bytes, mut pos: usize, gen: u64) -> (Vec<Record>, Stop) {
    let mut records = Vec::new();
    let mut names = Names::default();
    loop {
        match decode_named(data, pos, gen, &mut names) {
            Decoded::Record(r, next) => {
                records.push(r);
                pos = next;
            }
            Decoded::End => return (records, Stop::End(pos)),
            Decoded::Bad {
                reason,
                claimed_len,
            } => {
                return (
                    records,
                    Stop::Bad {
                        pos,
                        reason,
                        claimed_len,
                    },
                )
            }
        }
    }
}

fn scan_one(path: &Path, gen: u64) -> Result<Scan, JournalError> {
    let (data, _) = read_live_part(path)?;
    let (records, stop) = decode_from(&data, BLOCK as usize, gen);
    Ok(Scan {
        data,
        records,
        stop,
    })
}

/// Lists the segment files with their generations (one block read each).
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
        let generation = read_header(&head);
        if generation.is_none() && file_len < segment_size {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed = true;
            continue;
        }
        files.push(Listed {
            path,
            number,
            generation,
        });
    }
    if removed {
        fsync_dir(dir)?;
    }
    Ok(files)
}

/// Reads and decodes `segments` (path, generation) on a few threads and
/// hands each to `each` in the given order, as soon as it and all before it
/// are ready: the caller's bookkeeping overlaps the reading of later
/// segments. The first error stops the threads and is returned.
fn scan_in_order(
    segments: &[(&Path, u64)],
    mut each: impl FnMut(usize, Scan) -> Result<(), JournalError>,
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
    let slots: Mutex<Vec<Option<Result<Scan, JournalError>>>> =
        Mutex::new(segments.iter().map(|_| None).collect());
    let filled = Condvar::new();
    std::thread::scope(|s| {
        let mut started = 0;
        for _ in 0..threads {
            let scan = || {
                unpin(cores);
                while !stop.load(Relaxed) {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(&(path, gen)) = segments.get(i) else {
                        break;
                    };
                    // A panic becomes an error here, so the caller never
                    // waits for a segment that will not come.
                    let r = std::panic::catch_unwind(|| scan_one(path, gen))
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
            for (i, &(path, _)) in segments.iter().enumerate() {
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
/// rebuilding overlaps the reading of later segments). Records share the
/// memory a segment was read into.
pub fn recover(
    dir: &Path,
    segment_size: u64,
    skip_corrupt: bool,
    mut sink: impl FnMut(Vec<Record>),
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
    let mut with_gen: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].generation.is_some())
        .collect();
    with_gen.sort_by_key(|&i| found[i].generation);
    let order: Vec<(&Path, u64)> = with_gen
        .iter()
        .map(|&i| (found[i].path.as_path(), found[i].generation.unwrap_or(0)))
        .collect();
    let mut durable: HashMap<Arc<str>, HashSet<StoredSub>> = HashMap::new();
    let mut live: Vec<usize> = vec![0; found.len()];
    let mut holders: IdMap<(usize, u32)> = IdMap::default();
    let mut active_len = BLOCK;
    // Per segment: how many sends it holds.
    let mut sends: Vec<usize> = vec![0; found.len()];
    // Segments are read and verified in parallel; the bookkeeping below
    // runs in generation order as each one becomes ready.
    scan_in_order(&order, |rank, scan| {
        let i = with_gen[rank];
        let (path, gen) = order[rank];
        let last = rank + 1 == order.len();
        out.bytes_scanned += scan.data.len() as u64;
        let Scan {
            data,
            mut records,
            mut stop,
        } = scan;
        // Normally one pass; more only when skipping corrupt records.
        let pos = loop {
            let (pos, reason, claimed_len) = match stop {
                Stop::End(end) => break end,
                Stop::Bad {
                    pos,
                    reason,
                    claimed_len,
                } => (pos, reason, claimed_len),
            };
            let next = claimed_len.map(|l| pos + 12 + l);
            let more_follows = !last
                || next.is_some_and(|n| matches!(decode_at(&data, n, gen), Decoded::Record(..)));
            if !more_follows {
                warn!(path = %path.display(), offset = pos, reason, "torn tail: cutting the journal here");
                zero_from(path, pos as u64)?;
                out.truncated_at = Some((path.to_path_buf(), pos as u64));
                break pos;
            }
            if !skip_corrupt {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: pos as u64,
                    reason,
                });
            }
            warn!(path = %path.display(), offset = pos, reason, "skipping a corrupt record (store.skip_corrupt)");
            out.skipped_corrupt += 1;
            let Some(n) = next else { break pos };
            let (more, s) = decode_from(&data, n, gen);
            records.extend(more);
            stop = s;
        };
        for r in &records {
            sends[i] += usize::from(matches!(r, Record::Send { .. }));
            track(r, i, &mut durable, &mut holders, &mut live);
        }
        out.records += records.len();
        if last {
            active_len = pos as u64;
            let block_start = active_len / BLOCK * BLOCK;
            out.layout.tail = data[block_start as usize..pos].to_vec();
        }
        sink(records);
        Ok(())
    })?;
    let read_ms = started.elapsed().as_millis() as u64;
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
    l.segments = found
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.clone(), f.generation.unwrap_or(0), live[i]))
        .collect();
    l.next_generation = with_gen
        .last()
        .and_then(|&i| found[i].generation)
        .unwrap_or(0)
        + 1;
    l.free = (0..found.len())
        .filter(|&i| found[i].generation.is_none())
        .collect();
    l.in_use = with_gen.iter().copied().collect();
    // Oldest segments with nothing live are reusable (the newest stays active).
    while l.in_use.len() > 1 && live[l.in_use[0]] == 0 {
        let i = l.in_use.pop_front().unwrap_or_default();
        l.free.push_back(i);
    }
    l.active_len = active_len;
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

fn track(
    r: &Record,
    seg: usize,
    durable: &mut HashMap<Arc<str>, HashSet<StoredSub>>,
    holders: &mut IdMap<(usize, u32)>,
    live: &mut [usize],
) {
    match r {
        Record::Send {
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
        Record::Redelivered { .. } => {}
        Record::DurableAdd { topic, sub } => {
            durable
                .entry(topic.clone())
                .or_default()
                .insert(sub.clone());
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
