//! Flush rounds: the unit a journal segment is written and read back in.
//!
//! Every group commit writes one *round* per segment it touches, starting
//! on a block boundary: a round header, then the round's records, then
//! zeros to the next block. A round never shares a block with another, so
//! a write never touches bytes that an earlier fdatasync made durable (a
//! torn rewrite of a shared tail block could destroy receipted records).
//!
//! The header says how long the round is, so a record missing from inside
//! it (a zeroed block, a damaged length) is seen as damage, not as the end
//! of the data; and it carries the writer's *durable watermark*: the journal
//! position up to which every round was known durable when this one was
//! written. On recovery, a bad round before the highest watermark found
//! anywhere was durable, so it is corruption (the start stops); a bad round
//! at or after it was never acknowledged to anyone, so it is a torn write
//! and is cut off with everything after it. When the flusher goes idle it
//! writes a *seal* (an empty round, overwritten by the next data round)
//! so that the watermark also covers the journal's last rounds.
//!
//! `first_gen` is the generation of the oldest segment still holding data
//! when the round was written: older segments are free, and their stale
//! content is never replayed (a segment is reused only once a durable round
//! says it is free, see `Journal::roll`).
//!
//! ```text
//! magic u32 | gen u32 | kind u8, 0 u8 x3 | len u32 | durable_gen u64 |
//! durable_offset u64 | first_gen u64 | epoch u64 | crc u32 (CRC32C of the
//! preceding 52 bytes) | zeros to ROUND_HEADER_BYTES
//! ```

use super::BLOCK;

pub const ROUND_HEADER_BYTES: u64 = 64;
const ROUND_MAGIC: u32 = u32::from_le_bytes(*b"BRND");
const CRC_AT: usize = 52;

/// A position in the journal: (segment generation, byte offset). Ordered
/// as the journal is written.
pub type Position = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundKind {
    /// Records follow.
    Data,
    /// No records: the durable watermark when the flusher went idle. The
    /// next data round is written over it.
    Seal,
    /// No records: the segment is complete; the journal goes on in the
    /// next generation.
    End,
}

impl RoundKind {
    fn code(self) -> u8 {
        match self {
            RoundKind::Data => 0,
            RoundKind::Seal => 1,
            RoundKind::End => 2,
        }
    }

    fn from_code(c: u8) -> Option<RoundKind> {
        match c {
            0 => Some(RoundKind::Data),
            1 => Some(RoundKind::Seal),
            2 => Some(RoundKind::End),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundHeader {
    pub kind: RoundKind,
    /// Bytes of records after the header.
    pub len: u64,
    pub durable: Position,
    pub first_gen: u64,
    /// The writing master's epoch (0 when the store has none).
    pub epoch: u64,
}

impl RoundHeader {
    /// Writes the header for a segment of generation `gen` and salt `salt`
    /// into `out` (ROUND_HEADER_BYTES).
    pub fn put(&self, gen: u64, salt: u64, out: &mut [u8]) {
        let out = &mut out[..ROUND_HEADER_BYTES as usize];
        out.fill(0);
        out[0..4].copy_from_slice(&ROUND_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(gen as u32).to_le_bytes());
        out[8] = self.kind.code();
        out[12..16].copy_from_slice(&(self.len as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.durable.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.durable.1.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_gen.to_le_bytes());
        out[40..48].copy_from_slice(&self.epoch.to_le_bytes());
        // 48..52 reserved (zero).
        let crc = crc(salt, &out[..CRC_AT]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// The header at `pos` of a segment of generation `gen`, if one is
    /// there (stale rounds of an earlier use of the segment do not count).
    pub fn read(buf: &[u8], pos: usize, gen: u64, salt: u64) -> Option<RoundHeader> {
        let h = buf.get(pos..pos + ROUND_HEADER_BYTES as usize)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
        if u32_at(0) != ROUND_MAGIC || u32_at(4) != gen as u32 {
            return None;
        }
        if crc(salt, &h[..CRC_AT]) != u32_at(CRC_AT) {
            return None;
        }
        Some(RoundHeader {
            kind: RoundKind::from_code(h[8])?,
            len: u64::from(u32_at(12)),
            durable: (u64_at(16), u64_at(24)),
            first_gen: u64_at(32),
            epoch: u64_at(40),
        })
    }

    /// Where the round after this one (at `pos`) starts.
    pub fn next(&self, pos: u64) -> u64 {
        next_block(pos + ROUND_HEADER_BYTES + self.len)
    }
}

/// The header CRC, keyed by the segment's salt.
fn crc(salt: u64, header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), header)
}

/// `pos` rounded up to a block boundary.
pub fn next_block(pos: u64) -> u64 {
    pos.div_ceil(BLOCK) * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_only_for_its_own_generation() {
        let h = RoundHeader {
            kind: RoundKind::Data,
            len: 1234,
            durable: (7, 8192),
            first_gen: 5,
            epoch: 3,
        };
        let mut buf = vec![0u8; 4096];
        h.put(9, 77, &mut buf[..]);
        assert_eq!(RoundHeader::read(&buf, 0, 9, 77), Some(h));
        assert_eq!(RoundHeader::read(&buf, 0, 8, 77), None, "stale generation");
        assert_eq!(RoundHeader::read(&buf, 0, 9, 78), None, "another salt");
        buf[20] ^= 1;
        assert_eq!(RoundHeader::read(&buf, 0, 9, 77), None, "damaged");
        assert_eq!(h.next(4096), 8192);
        assert_eq!(RoundHeader::read(&[0u8; 64], 0, 0, 0), None, "zeros");
    }
}
