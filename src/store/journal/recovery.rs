//! Reading a shard's journal back on start: order segments by generation,
//! verify every record, cut a torn tail, stop (or skip, if configured) at
//! corruption, and hand back the records in journal order together with
//! the layout the writer resumes from.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};

use super::{io_err, read_header, JournalError, BLOCK};
use crate::store::record::{decode_at, Decoded, Record, StoredSub};

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
    pub holders: HashMap<u64, (usize, u32)>,
    /// Durable subscriptions per topic at the end of the journal.
    pub durables: HashMap<Arc<str>, HashSet<StoredSub>>,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub records: Vec<Record>,
    pub layout: Layout,
    pub bytes_scanned: u64,
    /// A torn tail was cut off (offset in the last segment).
    pub truncated_at: Option<(PathBuf, u64)>,
    pub skipped_corrupt: usize,
}

struct Found {
    path: PathBuf,
    number: u64,
    generation: Option<u64>,
    data: Bytes,
    records: Vec<Record>,
    stop: Stop,
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

struct Scan {
    generation: Option<u64>,
    file_len: u64,
    data: Bytes,
    records: Vec<Record>,
    stop: Stop,
}

/// Decodes records from `pos` until the end of data or a bad record.
fn decode_from(data: &Bytes, mut pos: usize, gen: u64) -> (Vec<Record>, Stop) {
    let mut records = Vec::new();
    loop {
        match decode_at(data, pos, gen) {
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

fn scan_one(path: &Path) -> Result<Scan, JournalError> {
    let (data, file_len) = read_live_part(path)?;
    let generation = read_header(&data[..data.len().min(BLOCK as usize)]);
    let (records, stop) = match generation {
        Some(gen) => decode_from(&data, BLOCK as usize, gen),
        None => (Vec::new(), Stop::End(BLOCK as usize)),
    };
    Ok(Scan {
        generation,
        file_len,
        data,
        records,
        stop,
    })
}

/// Scans every file on as many threads as there are cores.
fn scan_all(files: &[(PathBuf, u64)]) -> Result<Vec<Scan>, JournalError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<Scan, JournalError>>>> =
        files.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((path, _)) = files.get(i) else { break };
                let r = scan_one(path);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(JournalError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other("segment scan did not run"),
                })
            })
        })
        .collect()
}

pub fn recover(
    dir: &Path,
    segment_size: u64,
    skip_corrupt: bool,
) -> Result<Recovered, JournalError> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut files = Vec::new();
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
        files.push((entry.path(), number));
    }
    // Read and verify segments in parallel: each one decodes on its own
    // (it needs only its generation); ordering and the torn-or-corrupt
    // decision happen afterwards, in generation order.
    let scans = scan_all(&files)?;
    let mut found = Vec::new();
    for ((path, number), scan) in files.into_iter().zip(scans) {
        if scan.generation.is_none() && scan.file_len < segment_size {
            // A segment whose creation never finished: make it again later.
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        found.push(Found {
            path,
            number,
            generation: scan.generation,
            data: scan.data,
            records: scan.records,
            stop: scan.stop,
        });
    }
    let mut out = Recovered::default();
    out.layout.next_file_number = found.iter().map(|f| f.number + 1).max().unwrap_or(0);
    let read_ms = started.elapsed().as_millis() as u64;
    let mut with_gen: Vec<usize> = (0..found.len())
        .filter(|&i| found[i].generation.is_some())
        .collect();
    with_gen.sort_by_key(|&i| found[i].generation);
    let mut durable: HashMap<Arc<str>, HashSet<StoredSub>> = HashMap::new();
    let mut live: Vec<usize> = vec![0; found.len()];
    let mut holders: HashMap<u64, (usize, u32)> = HashMap::new();
    let mut active_len = BLOCK;
    for (rank, &i) in with_gen.iter().enumerate() {
        let gen = found[i].generation.unwrap_or(0);
        let last = rank + 1 == with_gen.len();
        out.bytes_scanned += found[i].data.len() as u64;
        let mut records = std::mem::take(&mut found[i].records);
        let mut stop = found[i].stop;
        let f = &found[i];
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
                || next.is_some_and(|n| matches!(decode_at(&f.data, n, gen), Decoded::Record(..)));
            if !more_follows {
                warn!(path = %f.path.display(), offset = pos, reason, "torn tail: cutting the journal here");
                zero_from(&f.path, pos as u64)?;
                out.truncated_at = Some((f.path.clone(), pos as u64));
                break pos;
            }
            if !skip_corrupt {
                return Err(JournalError::Corrupt {
                    path: f.path.clone(),
                    offset: pos as u64,
                    reason,
                });
            }
            warn!(path = %f.path.display(), offset = pos, reason, "skipping a corrupt record (store.skip_corrupt)");
            out.skipped_corrupt += 1;
            let Some(n) = next else { break pos };
            let (more, s) = decode_from(&f.data, n, gen);
            records.extend(more);
            stop = s;
        };
        for r in &records {
            track(r, i, &mut durable, &mut holders, &mut live);
        }
        out.records.extend(records);
        if last {
            active_len = pos as u64;
            let block_start = active_len / BLOCK * BLOCK;
            out.layout.tail = f.data[block_start as usize..pos].to_vec();
        }
    }
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
        records = out.records.len(),
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
    holders: &mut HashMap<u64, (usize, u32)>,
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

/// Reads a segment only as far as it holds records of its own generation
/// (plus the block after, so a torn record is seen whole): a mostly empty
/// 64 MiB segment costs a few blocks, not 64 MiB, and recovery time follows
/// the data, not the preallocation. Returns those bytes and the file length.
fn read_live_part(path: &Path) -> Result<(Bytes, u64), JournalError> {
    use std::io::Read;
    const CHUNK: usize = 1 << 20;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut data: Vec<u8> = Vec::new();
    let mut fill = |data: &mut Vec<u8>, upto: usize| -> Result<(), JournalError> {
        let want = (upto.max(data.len() + CHUNK).min(file_len as usize)).max(data.len());
        let start = data.len();
        data.resize(want, 0);
        let mut got = start;
        while got < want {
            let n = f.read(&mut data[got..want]).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        data.truncate(got);
        Ok(())
    };
    fill(&mut data, BLOCK as usize)?;
    let Some(gen) = read_header(&data[..data.len().min(BLOCK as usize)]) else {
        return Ok((Bytes::from(data), file_len));
    };
    let mut pos = BLOCK as usize;
    loop {
        if data.len() < pos + 12 && (data.len() as u64) < file_len {
            fill(&mut data, pos + 12)?;
        }
        if data.len() < pos + 12 {
            break;
        }
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let g = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len == 0 || g != gen as u32 {
            break;
        }
        let end = pos + 12 + len;
        if end as u64 > file_len {
            break;
        }
        if data.len() < end {
            fill(&mut data, end)?;
        }
        pos = end;
    }
    // One more block: enough to tell a torn record from the end of data.
    if (data.len() as u64) < file_len {
        fill(&mut data, pos + BLOCK as usize)?;
    }
    Ok((Bytes::from(data), file_len))
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
