//! Anonymous memory mappings: the page-aligned buffers O_DIRECT reads go
//! into (a segment recovery reads, a run the read-ahead reads).

use std::ptr::NonNull;

/// Maps `len` bytes (a multiple of the page size) of private anonymous
/// memory, reserving no swap: pages come on first touch. The caller owns
/// the mapping and unmaps it.
pub(crate) fn map(len: usize) -> std::io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; the result is checked.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(raw.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}
