//! Framing: `[size: i32][type: u8][command]` (the size left out when both
//! sides disabled it), and the per-connection [`Codec`] that holds the
//! negotiated format and the two marshalling caches.
//!
//! As in the STOMP codec, a partial frame costs nothing: the decoder reads
//! the size, refuses it at once if it exceeds maxFrameSize, and otherwise
//! waits, without allocating, until the whole frame is buffered. The frame
//! is then frozen once and every body and property map in it is a slice.

use bytes::{BufMut, Bytes, BytesMut};

use super::cache::{MarshalCache, UnmarshalCache};
use super::commands::{types, Command};
use super::error::{CodecError, Result};
use super::primitives::{Pass, Reader, Writer};
use super::wire_format::{WireFormat, WireFormatInfo, WireFormatOptions};

const SIZE_PREFIX: usize = 4;

/// One connection's codec. Not shared: each direction's cache is state of
/// this connection alone.
#[derive(Debug)]
pub struct Codec {
    format: WireFormat,
    marshal_cache: Option<MarshalCache>,
    unmarshal_cache: Option<UnmarshalCache>,
}

impl Codec {
    pub fn new(format: WireFormat) -> Codec {
        let mut c = Codec {
            format,
            marshal_cache: None,
            unmarshal_cache: None,
        };
        c.set_format(format);
        c
    }

    pub fn format(&self) -> &WireFormat {
        &self.format
    }

    /// Switches to a (negotiated) format. The caches start empty, as
    /// ActiveMQ's do on renegotiation.
    pub fn set_format(&mut self, format: WireFormat) {
        self.format = format;
        self.marshal_cache = format
            .cache_enabled
            .then(|| MarshalCache::new(format.cache_size));
        self.unmarshal_cache = format
            .cache_enabled
            .then(|| UnmarshalCache::new(format.cache_size));
    }

    /// The handshake's second half: given the peer's WireFormatInfo,
    /// negotiates against `ours` (what this side sent) and switches to the
    /// result, which it returns for the listener's inactivity monitor.
    pub fn renegotiate(
        &mut self,
        ours: &WireFormatOptions,
        theirs: &WireFormatInfo,
    ) -> Result<WireFormat> {
        let theirs = WireFormatOptions::from_info(theirs)?;
        let format = WireFormat::negotiate(ours, &theirs)?;
        self.set_format(format);
        Ok(format)
    }

    /// 0 means no bound (ActiveMQ's "not set").
    fn max_frame_size(&self) -> u64 {
        match self.format.max_frame_size {
            0 => u64::MAX,
            n => n,
        }
    }

    /// Takes one command off the front of `buf` if a whole frame is there;
    /// `Ok(None)` means "read more". An error leaves the connection
    /// unusable (the stream position is lost): answer and close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>> {
        loop {
            let decoded = if self.format.size_prefix_disabled {
                self.decode_unprefixed(buf)?
            } else {
                self.decode_prefixed(buf)?
            };
            match decoded {
                None => return Ok(None),
                Some(Some(cmd)) => return Ok(Some(cmd)),
                // A NULL frame (ActiveMQ marshals `null` so): nothing to do.
                Some(None) => continue,
            }
        }
    }

    fn decode_prefixed(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Command>>> {
        let Some(prefix) = buf.get(..SIZE_PREFIX) else {
            return Ok(None);
        };
        let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let size = u64::try_from(size).map_err(|_| CodecError::NegativeLength {
            what: "frame size",
            value: size.into(),
        })?;
        let max = self.max_frame_size();
        if size > max {
            return Err(CodecError::TooLarge { size, max });
        }
        // Checked: size is at most i32::MAX.
        let total = SIZE_PREFIX + size as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let frame = buf.split_to(total).freeze().slice(SIZE_PREFIX..);
        self.decode_body(&frame).map(|(cmd, _)| Some(cmd))
    }

    /// Without a size prefix the only way to find a frame's end is to
    /// parse it; a truncated parse is retried when more bytes come. Rare
    /// (both sides must ask for it, and Brokk's listener never does), so
    /// this path trades a copy of the leftover bytes for simplicity.
    fn decode_unprefixed(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Command>>> {
        if buf.is_empty() {
            return Ok(None);
        }
        let frozen = buf.split().freeze();
        match self.decode_body(&frozen) {
            Ok((cmd, used)) => {
                *buf = BytesMut::from(&frozen[used..]);
                Ok(Some(cmd))
            }
            Err(CodecError::Truncated { .. }) => {
                let len = frozen.len() as u64;
                if len > self.max_frame_size() {
                    return Err(CodecError::TooLarge {
                        size: len,
                        max: self.max_frame_size(),
                    });
                }
                // Nothing decoded holds a slice any more: no copy here.
                *buf = frozen
                    .try_into_mut()
                    .unwrap_or_else(|b| BytesMut::from(&b[..]));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes `[type][command]`; returns the command (None for a NULL
    /// frame) and the bytes it took.
    fn decode_body(&mut self, frame: &Bytes) -> Result<(Option<Command>, usize)> {
        let code = *frame.first().ok_or(CodecError::Truncated {
            what: "the command type",
            needed: 1,
        })?;
        if code == types::NULL {
            return Ok((None, 1));
        }
        let f = self.format;
        let mut r = Reader::new(
            frame.slice(1..),
            f.tight_encoding,
            self.unmarshal_cache.as_mut(),
            f.version,
            f.stack_trace_enabled,
        )?;
        let cmd = Command::read_fields(code, &mut r)?;
        Ok((Some(cmd), 1 + r.position()))
    }

    /// Appends `cmd` as one frame to `out` (so many frames share a write).
    /// On error nothing is appended and the outgoing cache starts over,
    /// which keeps both ends' caches consistent.
    pub fn encode(&mut self, cmd: &Command, out: &mut BytesMut) -> Result<()> {
        let start = out.len();
        let result = self.encode_frame(cmd, out);
        if result.is_err() {
            out.truncate(start);
            if self.format.cache_enabled {
                self.marshal_cache = Some(MarshalCache::new(self.format.cache_size));
            }
        }
        result
    }

    fn encode_frame(&mut self, cmd: &Command, out: &mut BytesMut) -> Result<()> {
        if let Some(cache) = self.marshal_cache.as_mut() {
            cache.evict_for_next_frame();
        }
        let f = self.format;
        let max = self.max_frame_size();
        let code = cmd.type_code();
        let prefix = !f.size_prefix_disabled;
        let cache = self.marshal_cache.as_mut();
        if !f.tight_encoding {
            let at = out.len();
            if prefix {
                out.put_u32(0);
            }
            out.put_u8(code);
            let mut w = Writer::new(Pass::Loose, out, cache, f.version, f.stack_trace_enabled);
            cmd.write_fields(&mut w)?;
            let size = out.len() - at - if prefix { SIZE_PREFIX } else { 0 };
            check_size(size, max)?;
            if prefix {
                out[at..at + SIZE_PREFIX].copy_from_slice(&(size as u32).to_be_bytes());
            }
            return Ok(());
        }
        // Tight: size the frame and collect its booleans, then write.
        let mut w = Writer::new(Pass::Size, out, cache, f.version, f.stack_trace_enabled);
        cmd.write_fields(&mut w)?;
        let size = 1 + w.bs.marshalled_size() + w.size;
        check_size(size, max)?;
        w.out.reserve(size + SIZE_PREFIX);
        if prefix {
            w.out.put_u32(size as u32);
        }
        w.out.put_u8(code);
        w.bs.marshal(&mut *w.out);
        w.bs.rewind();
        w.pass = Pass::Write;
        cmd.write_fields(&mut w)
    }
}

fn check_size(size: usize, max: u64) -> Result<()> {
    let size64 = size as u64;
    if size64 > max || size > i32::MAX as usize {
        return Err(CodecError::TooLarge {
            size: size64,
            max: max.min(i32::MAX as u64),
        });
    }
    Ok(())
}
