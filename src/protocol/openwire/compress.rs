//! Message bodies: how each ActiveMQ message class lays out `content`,
//! and its compressed form (`jms.useCompression`), which is zlib
//! (`java.util.zip.Deflater`) — with one twist: a BytesMessage puts the
//! uncompressed length, 4 bytes big-endian, before the zlib stream, while
//! every other class deflates its content as it is.
//!
//! A TextMessage's content is `[i32 length][modified UTF-8]` (ActiveMQ's
//! `MarshallingSupport.writeUTF8`), before compression.
//!
//! Inflating is bounded by the caller's limit (the connection's
//! maxFrameSize): a small frame cannot expand into gigabytes.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::commands::{Message, MessageKind};
use super::error::{CodecError, Result};
use super::primitives::{decode_mutf8, mutf8_len, write_mutf8};
use super::properties::{
    map_to_bytes, unmarshal_map, unmarshal_value, MapLimits, PropertyMap, Value,
};

/// Inflates a zlib stream, refusing to produce more than `max` bytes.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let limit = (max as u64).saturating_add(1);
    ZlibDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Compression(e.to_string()))?;
    if out.len() > max {
        return Err(CodecError::Compression(format!(
            "inflates past the {max}-byte limit"
        )));
    }
    Ok(out)
}

pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The body bytes as the message class wrote them before compressing:
/// the text's `[length][UTF]`, the map's marshalled map, the stream's
/// values, the object's serialized form, or the bytes. Zero-copy when the
/// body is not compressed.
pub fn plain_content(msg: &Message, max: usize) -> Result<Bytes> {
    let Some(content) = msg.content.as_ref() else {
        return Ok(Bytes::new());
    };
    if !msg.compressed || content.is_empty() {
        return Ok(content.clone());
    }
    if msg.kind != MessageKind::Bytes {
        return inflate(content, max).map(Bytes::from);
    }
    let Some(len) = content.get(..4) else {
        return Err(CodecError::Compression(
            "a compressed BytesMessage body shorter than its length".into(),
        ));
    };
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let len = usize::try_from(len)
        .map_err(|_| CodecError::Compression(format!("negative uncompressed length {len}")))?;
    if len > max {
        return Err(CodecError::Compression(format!(
            "uncompressed length {len} exceeds the {max}-byte limit"
        )));
    }
    let out = inflate(&content[4..], len)?;
    if out.len() != len {
        return Err(CodecError::Compression(format!(
            "inflated {} bytes where the header said {len}",
            out.len()
        )));
    }
    Ok(Bytes::from(out))
}

/// A TextMessage's text (`None`: a null text).
pub fn text(msg: &Message, max: usize) -> Result<Option<String>> {
    Ok(text_utf8(msg, max)?.map(|b| {
        // Checked by text_utf8.
        String::from_utf8(b.to_vec()).unwrap_or_default()
    }))
}

/// A TextMessage's text as UTF-8 bytes: a slice of the message's content
/// (no copy) when its modified UTF-8 is plain UTF-8, as it almost always
/// is; decoded otherwise.
pub fn text_utf8(msg: &Message, max: usize) -> Result<Option<Bytes>> {
    if msg.kind != MessageKind::Text {
        return Err(CodecError::WrongBodyType("text"));
    }
    if msg.content.is_none() {
        return Ok(None);
    }
    let content = plain_content(msg, max)?;
    let Some(len) = content.get(..4) else {
        return Err(CodecError::Truncated {
            what: "a text body's length",
            needed: 4 - content.len(),
        });
    };
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    let utf = content.get(4..4 + len).ok_or(CodecError::Truncated {
        what: "a text body",
        needed: (4 + len).saturating_sub(content.len()),
    })?;
    if std::str::from_utf8(utf).is_ok() {
        return Ok(Some(content.slice(4..4 + len)));
    }
    decode_mutf8(utf, "a text body").map(|t| Some(Bytes::from(t)))
}

/// A BytesMessage's bytes.
pub fn bytes(msg: &Message, max: usize) -> Result<Bytes> {
    if msg.kind != MessageKind::Bytes {
        return Err(CodecError::WrongBodyType("bytes"));
    }
    plain_content(msg, max)
}

/// A MapMessage's map.
pub fn map(msg: &Message, max: usize) -> Result<PropertyMap> {
    if msg.kind != MessageKind::Map {
        return Err(CodecError::WrongBodyType("map"));
    }
    let content = plain_content(msg, max)?;
    if content.is_empty() {
        return Ok(PropertyMap::new());
    }
    Ok(unmarshal_map(&content, MapLimits::MESSAGE)?.unwrap_or_default())
}

/// A StreamMessage's values, in order (typed as in a map).
pub fn stream(msg: &Message, max: usize) -> Result<Vec<Value>> {
    if msg.kind != MessageKind::Stream {
        return Err(CodecError::WrongBodyType("stream"));
    }
    let mut rest = plain_content(msg, max)?;
    let mut values = Vec::new();
    while !rest.is_empty() {
        let (v, used) = unmarshal_value(&rest, MapLimits::MESSAGE)?;
        values.push(v);
        let _ = rest.split_to(used);
    }
    Ok(values)
}

pub fn set_text(msg: &mut Message, text: &str, compress: bool) {
    let len = mutf8_len(text);
    let mut plain = BytesMut::with_capacity(4 + len);
    plain.put_i32(len as i32);
    write_mutf8(text, &mut plain);
    msg.kind = MessageKind::Text;
    set_content(msg, plain.freeze(), compress);
}

pub fn set_bytes(msg: &mut Message, body: Bytes, compress: bool) {
    msg.kind = MessageKind::Bytes;
    if !compress {
        msg.compressed = false;
        msg.content = Some(body);
        return;
    }
    let mut out = BytesMut::with_capacity(4 + body.len() / 2);
    out.put_i32(body.len() as i32);
    out.put_slice(&deflate(&body));
    msg.compressed = true;
    msg.content = Some(out.freeze());
}

pub fn set_map(msg: &mut Message, map: &PropertyMap, compress: bool) -> Result<()> {
    msg.kind = MessageKind::Map;
    set_content(msg, map_to_bytes(map)?, compress);
    Ok(())
}

fn set_content(msg: &mut Message, plain: Bytes, compress: bool) {
    msg.compressed = compress;
    msg.content = Some(if compress {
        Bytes::from(deflate(&plain))
    } else {
        plain
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_plain_and_compressed() {
        for compress in [false, true] {
            let mut m = Message::new(MessageKind::Text);
            let t = "héllo wörld ".repeat(100);
            set_text(&mut m, &t, compress);
            assert_eq!(m.compressed, compress);
            assert_eq!(text(&m, 1 << 20).unwrap().as_deref(), Some(t.as_str()));
        }
    }

    #[test]
    fn bytes_round_trip_with_the_length_header_when_compressed() {
        let body = Bytes::from(vec![7u8; 10_000]);
        let mut m = Message::new(MessageKind::Bytes);
        set_bytes(&mut m, body.clone(), true);
        let c = m.content.clone().unwrap();
        assert_eq!(&c[..4], &10_000i32.to_be_bytes());
        assert!(c.len() < 200);
        assert_eq!(bytes(&m, 1 << 20).unwrap(), body);
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let mut m = Message::new(MessageKind::Text);
        set_text(&mut m, &"a".repeat(1 << 20), true);
        assert!(m.content.as_ref().unwrap().len() < 5000);
        assert!(matches!(
            text(&m, 64 * 1024),
            Err(CodecError::Compression(_))
        ));
        let mut b = Message::new(MessageKind::Bytes);
        set_bytes(&mut b, Bytes::from(vec![0u8; 1 << 20]), true);
        assert!(matches!(bytes(&b, 1000), Err(CodecError::Compression(_))));
    }

    #[test]
    fn corrupt_compressed_bodies_are_errors() {
        let mut m = Message::new(MessageKind::Text);
        m.compressed = true;
        m.content = Some(Bytes::from_static(b"not zlib at all"));
        assert!(text(&m, 1000).is_err());
        let mut b = Message::new(MessageKind::Bytes);
        b.compressed = true;
        b.content = Some(Bytes::from_static(&[0, 0, 0, 5, 1, 2]));
        assert!(bytes(&b, 1000).is_err());
        b.content = Some(Bytes::from_static(&[0, 0]));
        assert!(bytes(&b, 1000).is_err());
    }

    #[test]
    fn stream_body_is_a_run_of_typed_values() {
        let mut m = Message::new(MessageKind::Stream);
        m.content = Some(Bytes::from_static(&[5, 0, 0, 0, 9, 9, 0, 1, b's']));
        assert_eq!(
            stream(&m, 100).unwrap(),
            vec![Value::Int(9), Value::String("s".into())]
        );
        m.content = Some(Bytes::from_static(&[5, 0, 0]));
        assert!(stream(&m, 100).is_err());
    }

    #[test]
    fn map_body_round_trips() {
        let mut props = PropertyMap::new();
        props.insert("a".into(), Value::Int(1));
        for compress in [false, true] {
            let mut m = Message::new(MessageKind::Map);
            set_map(&mut m, &props, compress).unwrap();
            assert_eq!(map(&m, 1 << 20).unwrap(), props);
        }
    }
}
