//! The `ACTIVEMQ_MSGS.MSG` blob: what Brokk needs to rebuild a message.
//!
//! ActiveMQ stores an OpenWire-marshalled message there; Brokk stores its
//! own small, versioned layout instead (the blob is opaque to operators'
//! queries, which use the other columns). Layout, all integers little
//! endian:
//!
//! ```text
//! u8   version (1)
//! u64  timestamp, ms since the epoch
//! u32  property count N
//! N x  (u32 key length, key bytes, u32 value length, value bytes)
//! ..   body: the rest of the blob
//! ```
//!
//! The version byte comes first so that a later layout can be read next to
//! old rows. [`decode`] never copies: properties and body are slices of
//! the blob (`Bytes::slice`), and a damaged blob is an error, never a panic.

use bytes::Bytes;

/// The layout [`encode`] writes.
pub const VERSION: u8 = 1;

/// A decoded blob; every `Bytes` shares the blob's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub timestamp_ms: u64,
    pub properties: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
}

/// Appends the blob for one message to `out`.
///
/// Keys and values longer than `u32::MAX` bytes cannot occur (frames are
/// far smaller); the length is saturated rather than panicking.
pub fn encode(timestamp_ms: u64, properties: &[(Bytes, Bytes)], body: &[u8], out: &mut Vec<u8>) {
    let props: usize = properties.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    out.reserve(1 + 8 + 4 + props + body.len());
    out.push(VERSION);
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&len_u32(properties.len()).to_le_bytes());
    for (key, value) in properties {
        put_field(key, out);
        put_field(value, out);
    }
    out.extend_from_slice(body);
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_field(field: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&len_u32(field.len()).to_le_bytes());
    out.extend_from_slice(field);
}

/// Reads a blob written by [`encode`], or says why it cannot.
pub fn decode(msg: &Bytes) -> Result<Decoded, String> {
    let mut r = Reader { msg, pos: 0 };
    let version = r.take(1, "version")?[0];
    if version != VERSION {
        return Err(format!(
            "unknown MSG blob version {version} (this build reads {VERSION})"
        ));
    }
    let timestamp_ms = u64::from_le_bytes(r.array::<8>("timestamp")?);
    let count = u32::from_le_bytes(r.array::<4>("property count")?) as usize;
    // Each property takes at least 8 bytes: a count larger than the rest
    // allows is damage, caught before allocating for it.
    if count > r.remaining() / 8 {
        return Err(format!(
            "MSG blob claims {count} properties but only {} bytes follow",
            r.remaining()
        ));
    }
    let mut properties = Vec::with_capacity(count);
    for i in 0..count {
        let key = r.field(i, "key")?;
        let value = r.field(i, "value")?;
        properties.push((key, value));
    }
    let body = msg.slice(r.pos..);
    Ok(Decoded {
        timestamp_ms,
        properties,
        body,
    })
}

/// A cursor over the blob that errors instead of reading past its end.
struct Reader<'a> {
    msg: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.msg.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "MSG blob truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.msg[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn field(&mut self, index: usize, what: &str) -> Result<Bytes, String> {
        let len = u32::from_le_bytes(self.array::<4>(what)?) as usize;
        let start = self.pos;
        self.take(len, &format!("property {index} {what}"))?;
        Ok(self.msg.slice(start..start + len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Vec<(Bytes, Bytes)> {
        vec![
            (
                Bytes::from_static(b"content-type"),
                Bytes::from_static(b"text/plain"),
            ),
            (Bytes::from_static(b"empty"), Bytes::new()),
            (Bytes::new(), Bytes::from_static(b"no key")),
        ]
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(1_700_000_000_123, &props(), b"hello\0world", &mut out);
        let blob = Bytes::from(out);
        let d = decode(&blob).unwrap();
        assert_eq!(d.timestamp_ms, 1_700_000_000_123);
        assert_eq!(d.properties, props());
        assert_eq!(&d.body[..], b"hello\0world");
        // Zero-copy: the body points into the blob.
        assert_eq!(d.body.as_ptr(), blob[blob.len() - 11..].as_ptr());
    }

    #[test]
    fn round_trip_empty() {
        let mut out = Vec::new();
        encode(0, &[], b"", &mut out);
        assert_eq!(out.len(), 13);
        let d = decode(&Bytes::from(out)).unwrap();
        assert_eq!(
            d,
            Decoded {
                timestamp_ms: 0,
                properties: vec![],
                body: Bytes::new()
            }
        );
    }

    #[test]
    fn every_truncation_of_the_header_is_an_error() {
        let mut out = Vec::new();
        encode(7, &props(), b"", &mut out);
        // With an empty body, every proper prefix is damaged.
        for n in 0..out.len() {
            let err = decode(&Bytes::copy_from_slice(&out[..n])).unwrap_err();
            assert!(
                err.contains("truncated") || err.contains("claims"),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn unknown_version_is_an_error() {
        let mut out = Vec::new();
        encode(7, &[], b"x", &mut out);
        out[0] = 2;
        let err = decode(&Bytes::from(out)).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn huge_property_count_is_an_error_without_allocating() {
        let mut out = vec![VERSION];
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&Bytes::from(out)).unwrap_err();
        assert!(err.contains("claims"), "{err}");
    }

    #[test]
    fn huge_field_length_is_an_error() {
        let mut out = vec![VERSION];
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        let err = decode(&Bytes::from(out)).unwrap_err();
        assert!(err.contains("property 0 key"), "{err}");
    }
}
