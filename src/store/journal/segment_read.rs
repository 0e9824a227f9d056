//! Reading a segment back on start: O_DIRECT reads in large aligned chunks
//! into memory of its own (a page-aligned anonymous mapping), exposed as
//! `Bytes` so that recovered records, and the messages rebuilt from them,
//! are slices of it rather than copies.
//!
//! Why not the page cache: on the disks measured here a buffered read of a
//! cold journal runs at about half the speed of 1 MiB O_DIRECT reads
//! (0.96 vs 1.8 GB/s), and every byte would be copied once more on its way
//! from the cache.
//!
//! A recovery that keeps few of the messages it reads (a journal larger
//! than memory, whose messages are paged) frees each segment's memory soon
//! after reading it. Those mappings go back to a [`Pool`] for the next
//! segment instead of to the kernel: freeing and zeroing fresh pages was a
//! third of a 4 GiB takeover's time (perf: `clear_page_rep`, page frees),
//! which made it slower than one keeping everything in memory.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::round::{RoundHeader, RoundKind, ROUND_HEADER_BYTES};
use super::{io_err, JournalError, BLOCK};

/// One read request: large enough to keep the device busy, small enough
/// that the walk over records stops close to the end of the live data.
const CHUNK: usize = 4 << 20;
/// Page size (and O_DIRECT's alignment).
const PAGE: usize = 4096;

/// An anonymous mapping: `mapped` bytes from `ptr`, of which the first
/// `touched` may hold pages.
struct Mapping {
    ptr: NonNull<u8>,
    mapped: usize,
    touched: usize,
}

// Plain memory owned by whoever holds the value.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn unmap(self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.mapped);
        }
    }
}

/// Most memory a pool keeps (in 2-16 mappings): enough for the reading
/// threads to run ahead of the caller (a 4 GiB takeover's peak RSS was
/// 319 MiB with 32 MiB segments), and a fixed bound whatever the journal.
const POOL_BYTES: u64 = 512 << 20;

/// Mappings of segments read during one recovery that nothing uses any
/// more, for the next segment read. Closed when the recovery ends: its
/// mappings go back to the kernel then, and so does every later one.
///
/// The pool's first few mappings get huge pages: reading into reused 4 KiB
/// pages ran at two thirds of the speed of reading into fresh ones (the
/// device takes at most 254 segments per request, and reused pages are
/// scattered), while 2 MiB pages read fastest of all (a 4 GiB journal
/// whose messages are paged: read in 1.45 s, against 2.3-2.6 s into fresh
/// 4 KiB pages and 3.0-3.4 s into reused ones). Only a few, and only for a long journal: a huge-page fault may
/// compact memory first (~70 ms measured on a long-running machine), which
/// a short recovery would feel, and a recovery that keeps everything in
/// memory would pay for every segment (3-6 s for 4 GiB).
#[derive(Default)]
pub struct Pool {
    free: Mutex<Option<Vec<Mapping>>>,
    /// Most mappings kept.
    max: usize,
    /// Fresh mappings that may still get huge pages.
    huge: std::sync::atomic::AtomicUsize,
}

/// Segments a journal must have for its recovery to use huge pages.
const HUGE_FROM_SEGMENTS: usize = 16;

impl Pool {
    /// A pool for reading `segments` segments of `segment_bytes`.
    pub fn new(segments: usize, segment_bytes: u64) -> Arc<Pool> {
        let max = (POOL_BYTES / segment_bytes.max(1)).clamp(2, 16) as usize;
        let huge = if segments >= HUGE_FROM_SEGMENTS {
            max
        } else {
            0
        };
        Arc::new(Pool {
            free: Mutex::new(Some(Vec::new())),
            max,
            huge: std::sync::atomic::AtomicUsize::new(huge),
        })
    }

    /// Whether the next fresh mapping gets huge pages (a few do).
    fn take_huge(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.huge
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    fn take(&self, capacity: usize) -> Option<Mapping> {
        let mut free = self.free.lock().ok()?;
        let free = free.as_mut()?;
        let k = free.iter().position(|m| m.mapped >= capacity)?;
        Some(free.swap_remove(k))
    }

    fn give(&self, m: Mapping) {
        let Ok(mut free) = self.free.lock() else {
            return m.unmap();
        };
        match free.as_mut() {
            Some(f) if f.len() < self.max => f.push(m),
            _ => m.unmap(),
        }
    }

    /// The recovery is over: what the pool holds, and every mapping
    /// given back from now on, is unmapped.
    pub fn close(&self) {
        let taken = match self.free.lock() {
            Ok(mut free) => free.take(),
            Err(_) => None,
        };
        for m in taken.into_iter().flatten() {
            m.unmap();
        }
    }
}

/// Page-aligned memory owned by one segment's recovered bytes.
struct SegmentBuf {
    map: Option<Mapping>,
    len: usize,
    pool: Arc<Pool>,
}

impl SegmentBuf {
    fn new(capacity: usize, pool: Arc<Pool>) -> std::io::Result<SegmentBuf> {
        let capacity = capacity.max(PAGE).next_multiple_of(PAGE);
        if let Some(map) = pool.take(capacity) {
            return Ok(SegmentBuf {
                map: Some(map),
                len: 0,
                pool,
            });
        }
        // Plain 4 KiB pages, no MADV_HUGEPAGE: on a long-running machine a
        // huge-page fault may compact memory first, which added ~70 ms to a
        // failover's recovery of 60 MB in measurements here.
        let ptr = crate::store::anon::map(capacity)?;
        if pool.take_huge() {
            // SAFETY: advice on the mapping just made; failure is harmless.
            unsafe { libc::madvise(ptr.as_ptr().cast(), capacity, libc::MADV_HUGEPAGE) };
        }
        Ok(SegmentBuf {
            map: Some(Mapping {
                ptr,
                mapped: capacity,
                touched: 0,
            }),
            len: 0,
            pool,
        })
    }

    fn map(&self) -> &Mapping {
        self.map
            .as_ref()
            .expect("a SegmentBuf owns its mapping until dropped")
    }

    fn mapped(&self) -> usize {
        self.map().mapped
    }

    /// The whole mapping, for reading into.
    fn spare(&mut self) -> &mut [u8] {
        let m = self.map.as_mut().expect("owned until dropped");
        // SAFETY: `mapped` bytes from `ptr` are this value's own mapping.
        unsafe { std::slice::from_raw_parts_mut(m.ptr.as_ptr(), m.mapped) }
    }

    /// Gives the pages past `len` back to the kernel (a reused mapping may
    /// hold some from its last segment), keeping the mapping whole for
    /// reuse.
    fn shrink_to_len(&mut self) {
        let keep = self.len.max(1).next_multiple_of(PAGE);
        let m = self.map.as_mut().expect("owned until dropped");
        let touched = m.touched.min(m.mapped);
        if keep < touched {
            // SAFETY: a page-aligned range inside this value's mapping that
            // nothing refers to (past the bytes read).
            unsafe {
                libc::madvise(
                    m.ptr.as_ptr().add(keep) as *mut libc::c_void,
                    touched - keep,
                    libc::MADV_DONTNEED,
                );
            }
        }
        m.touched = keep.min(m.mapped);
    }
}

impl AsRef<[u8]> for SegmentBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by reads.
        unsafe { std::slice::from_raw_parts(self.map().ptr.as_ptr(), self.len) }
    }
}

impl Drop for SegmentBuf {
    fn drop(&mut self) {
        if let Some(m) = self.map.take() {
            self.pool.give(m);
        }
    }
}

/// A segment file being read front to back.
struct Reader<'a> {
    path: &'a Path,
    file: File,
    file_len: usize,
    buf: SegmentBuf,
}

impl Reader<'_> {
    /// Reads on until at least `upto` bytes are in (or the file ends).
    fn fill(&mut self, upto: usize) -> Result<(), JournalError> {
        let upto = upto.min(self.file_len);
        while self.buf.len < upto {
            let at = self.buf.len;
            let want = CHUNK.min(self.buf.mapped() - at);
            let n = self
                .file
                .read_at(&mut self.buf.spare()[at..at + want], at as u64)
                .map_err(io_err(self.path))?;
            if n == 0 {
                break;
            }
            if let Some(m) = self.buf.map.as_mut() {
                m.touched = m.touched.max(at + n);
            }
            self.buf.len = (at + n).min(self.file_len);
        }
        Ok(())
    }
}

pub(super) fn open_direct(path: &Path) -> std::io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        // A file system without O_DIRECT (tmpfs): read through the cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => File::open(path),
        r => r,
    }
}

/// Reads a segment only as far as it holds rounds of its own generation,
/// up to its End round: a closed segment costs what its data fills, not
/// the preallocation. A segment without an End round (the journal's newest,
/// or a damaged or torn one) is read whole: recovery looks past where its
/// rounds stop for later ones (see `recovery`). Returns those bytes and the
/// file length.
pub fn read_live_part(
    path: &Path,
    gen: u64,
    salt: u64,
    pool: &Arc<Pool>,
) -> Result<(Bytes, u64), JournalError> {
    let file = open_direct(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut r = Reader {
        path,
        file,
        file_len: file_len as usize,
        buf: SegmentBuf::new(file_len as usize, pool.clone()).map_err(io_err(path))?,
    };
    let mut pos = BLOCK;
    let mut ended = false;
    loop {
        r.fill((pos + ROUND_HEADER_BYTES) as usize)?;
        let Some(h) = RoundHeader::read(r.buf.as_ref(), pos as usize, gen, salt) else {
            break;
        };
        let next = h.next(pos);
        r.fill(next as usize)?;
        if h.kind == RoundKind::End || next >= file_len {
            ended = h.kind == RoundKind::End;
            break;
        }
        pos = next;
    }
    if !ended {
        r.fill(file_len as usize)?;
    }
    r.buf.shrink_to_len();
    Ok((Bytes::from_owner(r.buf), file_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_that_is_not_block_sized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg-000000.log");
        // No header, and a length that O_DIRECT can only read short.
        std::fs::write(&path, vec![7u8; 10_000]).expect("write");
        let (data, len) = read_live_part(&path, 1, 0, &Pool::new(1, 1 << 20)).expect("read");
        assert_eq!(len, 10_000);
        assert!(data.len() >= BLOCK as usize && data.len() <= 10_000);
        assert!(data.iter().all(|&b| b == 7));
    }
}
