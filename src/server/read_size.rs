//! How many bytes a connection's next read asks for.
//!
//! A read goes into the spare end of the connection's `BytesMut`, which
//! must be zeroed first (`resize`): a `&mut [u8]` may not point at
//! uninitialized bytes, and `recv` takes one. Zeroing the full 64 KiB
//! before every read, as the read size used to stay once a burst had
//! grown it, was the largest single cost on a busy shard (perf at 23 800
//! persistent msg/s, 8 producers: `memset` from `BytesMut::resize` about a
//! tenth of the shard's samples), while a read under that load brings a
//! few KiB. So the size follows what reads bring, both ways: it doubles
//! while reads fill it (a burst is still one read) and halves while they
//! bring less than a quarter of it.

/// The least a read asks for (and where every connection starts): idle
/// connections stay small.
pub const MIN: usize = 4 * 1024;

/// The most: large enough that a burst of small frames is one read.
pub const MAX: usize = 64 * 1024;

/// The next read's size, adapted to what reads bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(MIN)
    }
}

impl ReadSize {
    pub fn get(self) -> usize {
        self.0
    }

    /// Adapts to a read of `n` bytes that asked for [`Self::get`].
    pub fn after(&mut self, n: usize) {
        if n >= self.0 {
            self.0 = (self.0 * 2).min(MAX);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(MIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_reads_fill_it_and_stops_at_the_most() {
        let mut size = ReadSize::default();
        assert_eq!(size.get(), MIN);
        for _ in 0..10 {
            let n = size.get();
            size.after(n);
        }
        assert_eq!(size.get(), MAX);
    }

    #[test]
    fn shrinks_while_reads_bring_little_and_stops_at_the_least() {
        let mut size = ReadSize(MAX);
        size.after(MAX / 4); // a quarter keeps it
        assert_eq!(size.get(), MAX);
        size.after(1000);
        assert_eq!(size.get(), MAX / 2);
        for _ in 0..10 {
            size.after(10);
        }
        assert_eq!(size.get(), MIN);
    }

    #[test]
    fn a_steady_read_size_settles_between_it_and_four_times_it() {
        let mut size = ReadSize(MAX);
        for _ in 0..10 {
            size.after(5_000);
        }
        assert!(size.get() > 5_000 && size.get() <= 20_000, "{size:?}");
    }
}
