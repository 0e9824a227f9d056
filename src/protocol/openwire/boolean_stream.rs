//! Tight encoding's boolean stream: every boolean of a frame (field values,
//! "is null", "is ASCII", "is the long 0/16/32/64 bits") packed eight to a
//! byte, LSB first, written once after the command type. That is what makes
//! tight frames small, and why encoding takes two passes: the stream's length
//! must be known before the first data byte is written.

use bytes::BufMut;

use super::error::{CodecError, Result};

/// One frame's booleans, written by the sizing pass and read back, in the
/// same order, by the writing pass and by the decoder.
#[derive(Debug, Default, Clone)]
pub struct BooleanStream {
    bytes: Vec<u8>,
    /// Booleans written so far (sizing) or available (reading).
    len_bits: usize,
    read_bits: usize,
}

/// The stream's byte count is a u16 on the wire; a frame cannot carry more.
const MAX_BYTES: usize = i16::MAX as usize;

impl BooleanStream {
    pub fn new() -> BooleanStream {
        BooleanStream::default()
    }

    pub fn push(&mut self, value: bool) -> Result<()> {
        let bit = self.len_bits % 8;
        if bit == 0 {
            if self.bytes.len() == MAX_BYTES {
                return Err(CodecError::Unsupported(
                    "more than 262136 booleans in one frame",
                ));
            }
            self.bytes.push(0);
        }
        if value {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 1 << bit;
        }
        self.len_bits += 1;
        Ok(())
    }

    /// The next boolean; `what` names the field for the error.
    pub fn read(&mut self, what: &'static str) -> Result<bool> {
        let byte = self
            .bytes
            .get(self.read_bits / 8)
            .ok_or(CodecError::BooleanStreamExhausted(what))?;
        let value = (byte >> (self.read_bits % 8)) & 1 == 1;
        self.read_bits += 1;
        Ok(value)
    }

    /// Restarts reading from the first boolean (the writing pass re-reads
    /// what the sizing pass wrote).
    pub fn rewind(&mut self) {
        self.read_bits = 0;
    }

    /// Bytes [`BooleanStream::marshal`] will write: the length header
    /// (1, 2 or 3 bytes, as ActiveMQ chooses it) plus the bits.
    pub fn marshalled_size(&self) -> usize {
        let n = self.bytes.len();
        n + match n {
            0..=63 => 1,
            64..=255 => 2,
            _ => 3,
        }
    }

    pub fn marshal(&self, out: &mut impl BufMut) {
        let n = self.bytes.len();
        match n {
            0..=63 => out.put_u8(n as u8),
            64..=255 => {
                out.put_u8(0xC0);
                out.put_u8(n as u8);
            }
            _ => {
                out.put_u8(0x80);
                out.put_u16(n as u16);
            }
        }
        out.put_slice(&self.bytes);
    }

    /// Reads a stream from the front of `input`, returning it and the
    /// number of bytes it occupied.
    pub fn unmarshal(input: &[u8]) -> Result<(BooleanStream, usize)> {
        let truncated = |needed| CodecError::Truncated {
            what: "boolean stream",
            needed,
        };
        let first = *input.first().ok_or(truncated(1))?;
        let (len, header) = match first {
            0xC0 => (*input.get(1).ok_or(truncated(1))? as usize, 2),
            0x80 => {
                let b = input.get(1..3).ok_or(truncated(2))?;
                let n = i16::from_be_bytes([b[0], b[1]]);
                if n < 0 {
                    return Err(CodecError::NegativeLength {
                        what: "boolean stream length",
                        value: n.into(),
                    });
                }
                (n as usize, 3)
            }
            // ActiveMQ reads any other byte as the length itself.
            n => (n as usize, 1),
        };
        let bits = input
            .get(header..header + len)
            .ok_or_else(|| truncated(header + len - input.len()))?;
        Ok((
            BooleanStream {
                bytes: bits.to_vec(),
                len_bits: len * 8,
                read_bits: 0,
            },
            header + len,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_round_trip_for_every_length_header() {
        for count in [0usize, 1, 8, 9, 63 * 8, 64 * 8, 255 * 8, 256 * 8 + 3] {
            let mut bs = BooleanStream::new();
            for i in 0..count {
                bs.push(i % 3 == 0).unwrap();
            }
            let mut out = Vec::new();
            bs.marshal(&mut out);
            assert_eq!(out.len(), bs.marshalled_size(), "{count}");
            let (mut back, used) = BooleanStream::unmarshal(&out).unwrap();
            assert_eq!(used, out.len());
            for i in 0..count {
                assert_eq!(back.read("test").unwrap(), i % 3 == 0);
            }
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let (mut bs, _) = BooleanStream::unmarshal(&[1, 0xff]).unwrap();
        for _ in 0..8 {
            bs.read("x").unwrap();
        }
        assert_eq!(bs.read("x"), Err(CodecError::BooleanStreamExhausted("x")));
    }

    #[test]
    fn truncated_and_negative_headers_are_errors() {
        assert!(BooleanStream::unmarshal(&[]).is_err());
        assert!(BooleanStream::unmarshal(&[0xC0]).is_err());
        assert!(BooleanStream::unmarshal(&[3, 0]).is_err());
        assert!(matches!(
            BooleanStream::unmarshal(&[0x80, 0xff, 0xff]),
            Err(CodecError::NegativeLength { .. })
        ));
    }
}
