//! ActiveMQ's typed primitive map (`MarshallingSupport.marshalPrimitiveMap`):
//! message properties, WireFormatInfo's options and a MapMessage's body.
//! Kept typed because JMS selectors compare by type (`x = 1` is false for
//! the string "1") and the STOMP mapping needs to know what to stringify.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{CodecError, Result};
use super::primitives::{decode_mutf8, mutf8_len, write_mutf8, Cursor};

const NULL: u8 = 0;
const BOOLEAN: u8 = 1;
const BYTE: u8 = 2;
const CHAR: u8 = 3;
const SHORT: u8 = 4;
const INT: u8 = 5;
const LONG: u8 = 6;
const DOUBLE: u8 = 7;
const FLOAT: u8 = 8;
const STRING: u8 = 9;
const BYTE_ARRAY: u8 = 10;
const MAP: u8 = 11;
const LIST: u8 = 12;
const BIG_STRING: u8 = 13;

/// One typed value. `Char` is a Java char (a UTF-16 unit).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Byte(i8),
    Char(u16),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    String(String),
    Bytes(Bytes),
    Map(PropertyMap),
    List(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Byte(_) => "byte",
            Value::Char(_) => "char",
            Value::Short(_) => "short",
            Value::Int(_) => "int",
            Value::Long(_) => "long",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "byte[]",
            Value::Map(_) => "map",
            Value::List(_) => "list",
        }
    }
}

/// Sorted by name so that encoding is deterministic (ActiveMQ's HashMap
/// order is not, and no reader depends on it).
pub type PropertyMap = BTreeMap<String, Value>;

/// Bounds on an untrusted map. Everything is also bounded by the bytes
/// there are: no count is trusted for an allocation.
#[derive(Debug, Clone, Copy)]
pub struct MapLimits {
    pub max_entries: usize,
    /// Maps and lists inside maps; 0 forbids them.
    pub max_depth: u32,
}

impl MapLimits {
    /// ActiveMQ's bounds for message properties (depth Byte.MAX_VALUE).
    pub const MESSAGE: MapLimits = MapLimits {
        max_entries: i32::MAX as usize,
        max_depth: 127,
    };
    /// ActiveMQ's bounds for WireFormatInfo (64 flat entries).
    pub const WIRE_FORMAT: MapLimits = MapLimits {
        max_entries: 64,
        max_depth: 0,
    };
}

pub fn marshal_map(map: &PropertyMap, out: &mut BytesMut) -> Result<()> {
    put_count(map.len(), "a map", out)?;
    for (k, v) in map {
        put_utf(k, out)?;
        marshal_value(v, out)?;
    }
    Ok(())
}

/// Marshals `map` into a fresh buffer (for `marshalledProperties`).
pub fn map_to_bytes(map: &PropertyMap) -> Result<Bytes> {
    let mut out = BytesMut::new();
    marshal_map(map, &mut out)?;
    Ok(out.freeze())
}

pub fn marshal_value(v: &Value, out: &mut BytesMut) -> Result<()> {
    match v {
        Value::Null => out.put_u8(NULL),
        Value::Bool(b) => {
            out.put_u8(BOOLEAN);
            out.put_u8((*b).into());
        }
        Value::Byte(b) => {
            out.put_u8(BYTE);
            out.put_i8(*b);
        }
        Value::Char(c) => {
            out.put_u8(CHAR);
            out.put_u16(*c);
        }
        Value::Short(s) => {
            out.put_u8(SHORT);
            out.put_i16(*s);
        }
        Value::Int(i) => {
            out.put_u8(INT);
            out.put_i32(*i);
        }
        Value::Long(l) => {
            out.put_u8(LONG);
            out.put_i64(*l);
        }
        Value::Float(f) => {
            out.put_u8(FLOAT);
            out.put_f32(*f);
        }
        Value::Double(d) => {
            out.put_u8(DOUBLE);
            out.put_f64(*d);
        }
        Value::String(s) => {
            // ActiveMQ's rule: a string under Short.MAX_VALUE / 4 UTF-16
            // units fits writeUTF; anything longer is a "big string".
            if s.encode_utf16().count() < i16::MAX as usize / 4 {
                out.put_u8(STRING);
                put_utf(s, out)?;
            } else {
                out.put_u8(BIG_STRING);
                let len = mutf8_len(s);
                put_count(len, "a big string", out)?;
                write_mutf8(s, out);
            }
        }
        Value::Bytes(b) => {
            out.put_u8(BYTE_ARRAY);
            put_count(b.len(), "a byte array", out)?;
            out.put_slice(b);
        }
        Value::Map(m) => {
            out.put_u8(MAP);
            marshal_map(m, out)?;
        }
        Value::List(l) => {
            out.put_u8(LIST);
            put_count(l.len(), "a list", out)?;
            for v in l {
                marshal_value(v, out)?;
            }
        }
    }
    Ok(())
}

fn put_count(n: usize, what: &'static str, out: &mut BytesMut) -> Result<()> {
    let n = i32::try_from(n).map_err(|_| CodecError::TooManyEntries {
        what,
        count: n,
        max: i32::MAX as usize,
    })?;
    out.put_i32(n);
    Ok(())
}

fn put_utf(s: &str, out: &mut BytesMut) -> Result<()> {
    let len = mutf8_len(s);
    let len16 = u16::try_from(len).map_err(|_| CodecError::StringTooLong {
        what: "a map key or string value",
        len,
    })?;
    out.put_u16(len16);
    write_mutf8(s, out);
    Ok(())
}

/// Reads a marshalled map; `None` is ActiveMQ's null map (size -1).
pub fn unmarshal_map(buf: &Bytes, limits: MapLimits) -> Result<Option<PropertyMap>> {
    let mut r = MapReader {
        cur: Cursor::new(buf.clone()),
        limits,
    };
    r.map(0)
}

/// Reads one typed value from the front of `buf`, returning it and the
/// bytes it took (a StreamMessage body is a run of them).
pub fn unmarshal_value(buf: &Bytes, limits: MapLimits) -> Result<(Value, usize)> {
    let mut r = MapReader {
        cur: Cursor::new(buf.clone()),
        limits,
    };
    let v = r.value(0)?;
    Ok((v, r.cur.position()))
}

/// Reads message properties the way the broker keeps them: each name
/// with its value as Java's `toString()` writes it, handed to `f` in wire
/// order. Names and string values are slices of `buf` (no copy) when
/// their modified UTF-8 is plain UTF-8, as it almost always is; numbers
/// are written into one buffer shared by the message's values. Null,
/// byte[], map and list values are skipped (the broker keeps text).
pub fn for_each_as_text(buf: &Bytes, mut f: impl FnMut(Bytes, Bytes)) -> Result<()> {
    let mut r = MapReader {
        cur: Cursor::new(buf.clone()),
        limits: MapLimits::MESSAGE,
    };
    let Some(n) = r.count("a map size")? else {
        return Ok(());
    };
    let mut numbers = BytesMut::new();
    for _ in 0..n {
        let len = u16::from_be_bytes(r.array("a map key")?) as usize;
        let key = r.text(len, "a map key")?;
        const WHAT: &str = "a typed value";
        let t = r.take(1, WHAT)?[0];
        let number = |numbers: &mut BytesMut, v: &dyn std::fmt::Display| {
            use std::fmt::Write as _;
            if numbers.capacity() - numbers.len() < 32 {
                numbers.reserve(128);
            }
            let _ = write!(numbers, "{v}");
            numbers.split().freeze()
        };
        let value = match t {
            BOOLEAN => Some(Bytes::from_static(if r.take(1, WHAT)?[0] != 0 {
                b"true"
            } else {
                b"false"
            })),
            BYTE => Some(number(&mut numbers, &i8::from_be_bytes(r.array(WHAT)?))),
            CHAR => {
                let c = u16::from_be_bytes(r.array(WHAT)?);
                char::from_u32(u32::from(c)).map(|c| number(&mut numbers, &c))
            }
            SHORT => Some(number(&mut numbers, &i16::from_be_bytes(r.array(WHAT)?))),
            INT => Some(number(&mut numbers, &i32::from_be_bytes(r.array(WHAT)?))),
            LONG => Some(number(&mut numbers, &i64::from_be_bytes(r.array(WHAT)?))),
            FLOAT => Some(number(&mut numbers, &f32::from_be_bytes(r.array(WHAT)?))),
            DOUBLE => Some(number(&mut numbers, &f64::from_be_bytes(r.array(WHAT)?))),
            STRING => {
                let len = u16::from_be_bytes(r.array(WHAT)?) as usize;
                Some(r.text(len, "a string value")?)
            }
            BIG_STRING => {
                let len = r.count("a big string length")?.unwrap_or(0);
                Some(r.text(len, "a big string value")?)
            }
            NULL | BYTE_ARRAY | MAP | LIST => {
                // Read (and bounded) as any value, then dropped.
                r.typed(t, 0)?;
                None
            }
            other => return Err(CodecError::UnknownPrimitive(other)),
        };
        if let Some(v) = value {
            f(key, v);
        }
    }
    Ok(())
}

/// Writes `entries` (names and text values, as the broker keeps them) as
/// a marshalled property map of string properties, which is what
/// `marshalledProperties` carries.
pub fn marshal_text_entries<'a, I>(entries: I, out: &mut BytesMut) -> Result<()>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    put_count(entries.clone().count(), "a map", out)?;
    for (k, v) in entries {
        put_text(k, out)?;
        if v.len() < i16::MAX as usize / 4 {
            // Fewer bytes than the limit is fewer UTF-16 units too.
            out.put_u8(STRING);
            put_text(v, out)?;
        } else {
            let v = String::from_utf8_lossy(v).into_owned();
            marshal_value(&Value::String(v), out)?;
        }
    }
    Ok(())
}

/// Bytes the broker keeps as a writeUTF string: as they are when ASCII
/// without NUL (the same in modified UTF-8), else through a `str`.
fn put_text(b: &[u8], out: &mut BytesMut) -> Result<()> {
    if b.is_ascii() && memchr::memchr(0, b).is_none() {
        let len = u16::try_from(b.len()).map_err(|_| CodecError::StringTooLong {
            what: "a map key or string value",
            len: b.len(),
        })?;
        out.put_u16(len);
        out.put_slice(b);
        return Ok(());
    }
    put_utf(&String::from_utf8_lossy(b), out)
}

struct MapReader {
    cur: Cursor,
    limits: MapLimits,
}

impl MapReader {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8]> {
        self.cur.take(n, what)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.cur.array(what)
    }

    fn count(&mut self, what: &'static str) -> Result<Option<usize>> {
        let n = i32::from_be_bytes(self.array(what)?);
        Ok(usize::try_from(n).ok())
    }

    /// A modified-UTF-8 string as UTF-8 bytes: a slice of the input when
    /// they are the same (no NUL, nothing outside the BMP), else decoded.
    fn text(&mut self, len: usize, what: &'static str) -> Result<Bytes> {
        let b = self.cur.bytes(len, what)?;
        if std::str::from_utf8(&b).is_ok() {
            return Ok(b);
        }
        decode_mutf8(&b, what).map(Bytes::from)
    }

    fn utf(&mut self, len: usize, what: &'static str) -> Result<String> {
        let b = self.take(len, what)?;
        decode_mutf8(b, what)
    }

    fn map(&mut self, depth: u32) -> Result<Option<PropertyMap>> {
        let Some(n) = self.count("a map size")? else {
            return Ok(None);
        };
        if n > self.limits.max_entries {
            return Err(CodecError::TooManyEntries {
                what: "a map",
                count: n,
                max: self.limits.max_entries,
            });
        }
        let mut map = PropertyMap::new();
        for _ in 0..n {
            let len = u16::from_be_bytes(self.array("a map key")?) as usize;
            let key = self.utf(len, "a map key")?;
            let value = self.value(depth)?;
            map.insert(key, value);
        }
        Ok(Some(map))
    }

    fn nested_depth(&self, depth: u32) -> Result<u32> {
        if depth >= self.limits.max_depth {
            return Err(CodecError::TooDeep(self.limits.max_depth));
        }
        Ok(depth + 1)
    }

    fn value(&mut self, depth: u32) -> Result<Value> {
        let t = self.take(1, "a typed value")?[0];
        self.typed(t, depth)
    }

    /// The value after its type byte `t`.
    fn typed(&mut self, t: u8, depth: u32) -> Result<Value> {
        const WHAT: &str = "a typed value";
        Ok(match t {
            NULL => Value::Null,
            BOOLEAN => Value::Bool(self.take(1, WHAT)?[0] != 0),
            BYTE => Value::Byte(i8::from_be_bytes(self.array(WHAT)?)),
            CHAR => Value::Char(u16::from_be_bytes(self.array(WHAT)?)),
            SHORT => Value::Short(i16::from_be_bytes(self.array(WHAT)?)),
            INT => Value::Int(i32::from_be_bytes(self.array(WHAT)?)),
            LONG => Value::Long(i64::from_be_bytes(self.array(WHAT)?)),
            FLOAT => Value::Float(f32::from_be_bytes(self.array(WHAT)?)),
            DOUBLE => Value::Double(f64::from_be_bytes(self.array(WHAT)?)),
            STRING => {
                let len = u16::from_be_bytes(self.array(WHAT)?) as usize;
                Value::String(self.utf(len, "a string value")?)
            }
            BIG_STRING => {
                let len = self.count("a big string length")?.unwrap_or(0);
                Value::String(self.utf(len, "a big string value")?)
            }
            BYTE_ARRAY => {
                let len = self
                    .count("a byte array length")?
                    .ok_or(CodecError::NegativeLength {
                        what: "a byte array value",
                        value: -1,
                    })?;
                Value::Bytes(self.cur.bytes(len, "a byte array value")?)
            }
            MAP => {
                let d = self.nested_depth(depth)?;
                Value::Map(self.map(d)?.unwrap_or_default())
            }
            LIST => {
                let d = self.nested_depth(depth)?;
                let n = self.count("a list size")?.unwrap_or(0);
                let mut list = Vec::new();
                for _ in 0..n {
                    list.push(self.value(d)?);
                }
                Value::List(list)
            }
            other => return Err(CodecError::UnknownPrimitive(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::openwire::samples::every_property as every_type;

    #[test]
    fn every_type_round_trips() {
        let map = every_type();
        let bytes = map_to_bytes(&map).unwrap();
        assert_eq!(
            unmarshal_map(&bytes, MapLimits::MESSAGE).unwrap(),
            Some(map)
        );
    }

    #[test]
    fn properties_read_as_text_as_activemq_writes_them() {
        let mut map = PropertyMap::new();
        map.insert("b".into(), Value::Bool(true));
        map.insert("i".into(), Value::Int(42));
        map.insert("l".into(), Value::Long(-7));
        map.insert("d".into(), Value::Double(1.5));
        map.insert("s".into(), Value::String("héllo".into()));
        map.insert("nul".into(), Value::String("a\0b".into()));
        map.insert("null".into(), Value::Null);
        map.insert("raw".into(), Value::Bytes(Bytes::from_static(b"x")));
        map.insert("m".into(), Value::Map(PropertyMap::new()));
        let bytes = map_to_bytes(&map).unwrap();
        let mut got = Vec::new();
        for_each_as_text(&bytes, |k, v| got.push((k, v))).unwrap();
        let text = |k: &str| {
            got.iter()
                .find(|(n, _)| n.as_ref() == k.as_bytes())
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(text("b").as_deref(), Some("true"));
        assert_eq!(text("i").as_deref(), Some("42"));
        assert_eq!(text("l").as_deref(), Some("-7"));
        assert_eq!(text("d").as_deref(), Some("1.5"));
        assert_eq!(text("s").as_deref(), Some("héllo"));
        assert_eq!(text("nul").as_deref(), Some("a\0b"));
        assert_eq!(got.len(), 6, "null, byte[] and map are not kept: {got:?}");
        // Every prefix fails cleanly.
        for cut in 0..bytes.len() {
            assert!(
                for_each_as_text(&bytes.slice(..cut), |_, _| {}).is_err(),
                "{cut}"
            );
        }
    }

    #[test]
    fn text_entries_marshal_as_string_properties() {
        let entries = [(&b"k"[..], &b"v"[..]), (b"long", &[b'x'; 9000][..])];
        let mut out = BytesMut::new();
        marshal_text_entries(entries.iter().copied(), &mut out).unwrap();
        let map = unmarshal_map(&out.freeze(), MapLimits::MESSAGE)
            .unwrap()
            .unwrap();
        assert_eq!(map.get("k"), Some(&Value::String("v".into())));
        assert_eq!(map.get("long"), Some(&Value::String("x".repeat(9000))));
    }

    #[test]
    fn long_strings_become_big_strings() {
        let mut out = BytesMut::new();
        marshal_value(&Value::String("x".repeat(9000)), &mut out).unwrap();
        assert_eq!(out[0], BIG_STRING);
    }

    #[test]
    fn null_map_and_limits() {
        let null = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(unmarshal_map(&null, MapLimits::MESSAGE).unwrap(), None);
        let bytes = map_to_bytes(&every_type()).unwrap();
        assert!(matches!(
            unmarshal_map(&bytes, MapLimits::WIRE_FORMAT),
            Err(CodecError::TooDeep(0)) | Err(CodecError::TooManyEntries { .. })
        ));
        // A huge count with no bytes behind it fails on the bytes, not in malloc.
        let lying = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            unmarshal_map(&lying, MapLimits::MESSAGE),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn truncation_at_every_byte_is_an_error() {
        let bytes = map_to_bytes(&every_type()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                unmarshal_map(&bytes.slice(..cut), MapLimits::MESSAGE).is_err(),
                "{cut}"
            );
        }
    }
}
