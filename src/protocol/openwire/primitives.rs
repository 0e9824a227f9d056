//! The field encodings every marshaller is built from, tight and loose, as
//! ActiveMQ's `BaseDataStreamMarshaller` defines them.
//!
//! One [`Writer`] serves the three ways ActiveMQ writes a structure — the
//! tight sizing pass (booleans and byte count only), the tight writing pass
//! (which reads the booleans back), and loose encoding (booleans inline as
//! bytes) — so each command lists its fields once, in one order, and the
//! passes cannot disagree. [`Reader`] mirrors it for decoding. Every read is
//! checked against the frame's remaining bytes before anything is allocated.

use bytes::{BufMut, Bytes, BytesMut};

use super::boolean_stream::BooleanStream;
use super::cache::{MarshalCache, UnmarshalCache};
use super::commands::DataStructure;
use super::error::{CodecError, Result};

/// Nesting bound for structures inside structures (a dispatch holds a
/// message, which may hold an advisory's command, which holds ids). Real
/// traffic nests 4 deep; the bound keeps a hostile frame off the stack.
pub const MAX_NESTING: u32 = 32;

/// A data structure OpenWire can marshal: its type byte and its fields.
pub trait Marshal: Sized {
    /// What the structure is called in errors ("a destination").
    const NAME: &'static str;
    fn type_code(&self) -> u8;
    fn write_body(&self, w: &mut Writer<'_>) -> Result<()>;
    /// Reads the fields of a structure of type `code`, refusing a code that
    /// is not one of this type's.
    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self>;
    fn to_data(&self) -> DataStructure;
    fn from_data(data: DataStructure) -> Result<Self>;
    /// Whether `d` holds this very structure: the marshalling cache's
    /// lookup, without the copy `to_data` makes.
    fn same_as(&self, d: &DataStructure) -> bool {
        self.to_data() == *d
    }
    /// ActiveMQ's "marshall aware" types (messages, WireFormatInfo) carry
    /// one more boolean when nested in a tight frame.
    fn marshall_aware(code: u8) -> bool {
        super::commands::marshall_aware(code)
    }
}

/// A boxed structure marshals as the structure (a dispatch boxes its
/// message so that commands stay small).
impl<T: Marshal> Marshal for Box<T> {
    const NAME: &'static str = T::NAME;

    fn type_code(&self) -> u8 {
        (**self).type_code()
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
        (**self).write_body(w)
    }

    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
        T::read_body(code, r).map(Box::new)
    }

    fn to_data(&self) -> DataStructure {
        (**self).to_data()
    }

    fn same_as(&self, d: &DataStructure) -> bool {
        (**self).same_as(d)
    }

    fn from_data(data: DataStructure) -> Result<Self> {
        T::from_data(data).map(Box::new)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Tight, first pass: push booleans and count data bytes.
    Size,
    /// Tight, second pass: write data bytes, reading booleans back.
    Write,
    Loose,
}

pub struct Writer<'a> {
    pub(super) pass: Pass,
    pub(super) bs: BooleanStream,
    pub(super) size: usize,
    pub(super) out: &'a mut BytesMut,
    cache: Option<&'a mut MarshalCache>,
    pub(super) version: i32,
    pub(super) stack_trace: bool,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        pass: Pass,
        out: &'a mut BytesMut,
        cache: Option<&'a mut MarshalCache>,
        version: i32,
        stack_trace: bool,
    ) -> Writer<'a> {
        Writer {
            pass,
            bs: BooleanStream::new(),
            size: 0,
            out,
            cache,
            version,
            stack_trace,
        }
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    fn flag(&mut self, value: bool, what: &'static str) -> Result<bool> {
        match self.pass {
            Pass::Size => {
                self.bs.push(value)?;
                Ok(value)
            }
            Pass::Write => {
                let stored = self.bs.read(what)?;
                debug_assert_eq!(stored, value, "{what}: sizing and writing passes differ");
                Ok(stored)
            }
            Pass::Loose => {
                self.out.put_u8(value.into());
                Ok(value)
            }
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        match self.pass {
            Pass::Size => self.size += bytes.len(),
            Pass::Write | Pass::Loose => self.out.put_slice(bytes),
        }
    }

    pub fn int(&mut self, v: &i32) -> Result<()> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    pub fn byte(&mut self, v: &i8) -> Result<()> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    pub fn bool(&mut self, v: &bool) -> Result<()> {
        self.flag(*v, "a boolean field").map(drop)
    }

    /// Tight: two booleans say whether the long is 0, or fits 16, 32 or 64
    /// bits, and only those bytes follow. Loose: always 8 bytes.
    pub fn long(&mut self, v: &i64) -> Result<()> {
        if self.pass == Pass::Loose {
            self.put(&v.to_be_bytes());
            return Ok(());
        }
        let u = *v as u64;
        let (wide, low) = if u == 0 {
            (false, false)
        } else if u & !0xFFFF == 0 {
            (false, true)
        } else if u & !0xFFFF_FFFF == 0 {
            (true, false)
        } else {
            (true, true)
        };
        let wide = self.flag(wide, "a long's width")?;
        let low = self.flag(low, "a long's width")?;
        match (wide, low) {
            (true, true) => self.put(&v.to_be_bytes()),
            (true, false) => self.put(&(u as u32).to_be_bytes()),
            (false, true) => self.put(&(u as u16).to_be_bytes()),
            (false, false) => {}
        }
        Ok(())
    }

    pub fn string(&mut self, v: &Option<String>) -> Result<()> {
        self.str_opt(v.as_deref())
    }

    pub(super) fn str_opt(&mut self, v: Option<&str>) -> Result<()> {
        let Some(s) = v else {
            self.flag(false, "a string's presence")?;
            return Ok(());
        };
        self.flag(true, "a string's presence")?;
        let len = mutf8_len(s);
        if self.pass == Pass::Loose {
            if len > u16::MAX as usize {
                return Err(CodecError::StringTooLong {
                    what: "a loose string",
                    len,
                });
            }
            self.put(&(len as u16).to_be_bytes());
            self.put_mutf8(s, len);
            return Ok(());
        }
        // ActiveMQ refuses tight strings of 32767 encoded bytes or more.
        if len >= i16::MAX as usize {
            return Err(CodecError::StringTooLong {
                what: "a tight string",
                len,
            });
        }
        let ascii = s.bytes().all(|b| (1..=0x7f).contains(&b));
        if self.flag(ascii, "a string's ASCII flag")? {
            self.put(&(s.len() as u16).to_be_bytes());
            self.put(s.as_bytes());
        } else {
            self.put(&(len as u16).to_be_bytes());
            self.put_mutf8(s, len);
        }
        Ok(())
    }

    fn put_mutf8(&mut self, s: &str, len: usize) {
        match self.pass {
            Pass::Size => self.size += len,
            Pass::Write | Pass::Loose => write_mutf8(s, self.out),
        }
    }

    /// A byte sequence (message content, marshalled properties, XA ids).
    pub fn bytes(&mut self, v: &Option<Bytes>) -> Result<()> {
        if !self.flag(v.is_some(), "a byte array's presence")? {
            return Ok(());
        }
        let b = v.as_deref().unwrap_or_default();
        let len = i32::try_from(b.len()).map_err(|_| CodecError::TooLarge {
            size: b.len() as u64,
            max: i32::MAX as u64,
        })?;
        self.put(&len.to_be_bytes());
        self.put(b);
        Ok(())
    }

    /// WireFormatInfo's 8 magic bytes, written without a length.
    pub fn magic(&mut self, v: &[u8; 8]) -> Result<()> {
        self.put(v);
        Ok(())
    }

    /// A field that is not on the wire.
    pub fn skip<T>(&mut self, _: &T) -> Result<()> {
        Ok(())
    }

    pub fn nested<T: Marshal>(&mut self, v: &Option<T>) -> Result<()> {
        if !self.flag(v.is_some(), "a nested structure's presence")? {
            return Ok(());
        }
        match v {
            Some(v) => self.nested_body(v),
            None => Ok(()),
        }
    }

    fn nested_body<T: Marshal>(&mut self, v: &T) -> Result<()> {
        let code = v.type_code();
        if self.pass != Pass::Loose && T::marshall_aware(code) {
            // "A cached marshalled form follows": never, as in ActiveMQ.
            self.flag(false, "a marshall-aware flag")?;
        }
        self.put(&[code]);
        v.write_body(self)
    }

    /// A structure that goes through the marshalling cache when it is on:
    /// the first time as (new, index, structure), afterwards as its index.
    /// A missing structure is cached too, as ActiveMQ caches `null`.
    pub fn cached<T: Marshal + std::hash::Hash>(&mut self, v: &Option<T>) -> Result<()> {
        if self.cache.is_none() {
            return self.nested(v);
        }
        let known = self.cache.as_deref().and_then(|c| c.index_of_ref(v));
        match self.pass {
            Pass::Size => {
                if self.flag(known.is_none(), "a cached structure's novelty")? {
                    self.size += 2;
                    self.nested(v)?;
                    // ActiveMQ adds after sizing the structure in tight mode.
                    if let Some(cache) = self.cache.as_deref_mut() {
                        cache.add(v.as_ref().map(Marshal::to_data));
                    }
                } else {
                    self.size += 2;
                }
            }
            Pass::Write => {
                // The sizing pass decided novelty (and numbered it since,
                // so `known` no longer tells); a full cache gave no number:
                // -1, "not cached".
                let new = self.bs.read("a cached structure's novelty")?;
                self.put(&known.unwrap_or(-1).to_be_bytes());
                if new {
                    self.nested(v)?;
                }
            }
            Pass::Loose => {
                if self.flag(known.is_none(), "a cached structure's novelty")? {
                    let index = match self.cache.as_deref_mut() {
                        Some(cache) => cache.add(v.as_ref().map(Marshal::to_data)),
                        None => -1,
                    };
                    self.put(&index.to_be_bytes());
                    self.nested(v)?;
                } else {
                    self.put(&known.unwrap_or(-1).to_be_bytes());
                }
            }
        }
        Ok(())
    }

    pub fn array<T: Marshal>(&mut self, v: &Option<Vec<T>>) -> Result<()> {
        let Some(items) = v else {
            self.flag(false, "an array's presence")?;
            return Ok(());
        };
        self.flag(true, "an array's presence")?;
        let len = i16::try_from(items.len()).map_err(|_| CodecError::TooManyEntries {
            what: "an array",
            count: items.len(),
            max: i16::MAX as usize,
        })?;
        self.put(&len.to_be_bytes());
        for item in items {
            self.flag(true, "an array element's presence")?;
            self.nested_body(item)?;
        }
        Ok(())
    }

    pub fn throwable(&mut self, v: &Option<Throwable>) -> Result<()> {
        self.throwable_at(v.as_ref(), 0)
    }

    fn throwable_at(&mut self, v: Option<&Throwable>, depth: u32) -> Result<()> {
        let Some(t) = v else {
            self.flag(false, "a throwable's presence")?;
            return Ok(());
        };
        if depth >= MAX_NESTING {
            return Err(CodecError::TooDeep(MAX_NESTING));
        }
        self.flag(true, "a throwable's presence")?;
        self.str_opt(Some(&t.class_name))?;
        self.string(&t.message)?;
        if !self.stack_trace {
            return Ok(());
        }
        let frames =
            i16::try_from(t.stack_trace.len()).map_err(|_| CodecError::TooManyEntries {
                what: "a stack trace",
                count: t.stack_trace.len(),
                max: i16::MAX as usize,
            })?;
        self.put(&frames.to_be_bytes());
        for f in &t.stack_trace {
            self.string(&f.class_name)?;
            self.string(&f.method_name)?;
            self.string(&f.file_name)?;
            self.int(&f.line_number)?;
        }
        self.throwable_at(t.cause.as_deref(), depth + 1)
    }
}

/// A Java exception as OpenWire carries it (ExceptionResponse,
/// ConnectionError, a poison ack's cause). The stack trace and cause travel
/// only when the negotiated StackTraceEnabled is on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Throwable {
    /// Java class name; ActiveMQ's client rebuilds that class when it can
    /// (so `javax.jms.JMSSecurityException` reaches the application as one).
    pub class_name: String,
    pub message: Option<String>,
    pub stack_trace: Vec<StackFrame>,
    pub cause: Option<Box<Throwable>>,
}

impl Throwable {
    pub fn new(class_name: impl Into<String>, message: impl Into<String>) -> Throwable {
        Throwable {
            class_name: class_name.into(),
            message: Some(message.into()),
            ..Throwable::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StackFrame {
    pub class_name: Option<String>,
    pub method_name: Option<String>,
    pub file_name: Option<String>,
    pub line_number: i32,
}

/// Checked reads from a frozen frame: every length is checked against the
/// bytes that are left before anything is sliced or allocated, and byte
/// arrays come out as zero-copy slices.
pub(crate) struct Cursor {
    buf: Bytes,
    pos: usize,
}

impl Cursor {
    pub(crate) fn new(buf: Bytes) -> Cursor {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(CodecError::Truncated {
                what,
                needed: (self.pos + n).saturating_sub(self.buf.len()),
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..start + n))
    }
}

pub struct Reader<'a> {
    cur: Cursor,
    /// Present in tight frames.
    bs: Option<BooleanStream>,
    cache: Option<&'a mut UnmarshalCache>,
    version: i32,
    stack_trace: bool,
    depth: u32,
}

impl<'a> Reader<'a> {
    /// `buf` is the command's bytes after its type byte. A tight frame's
    /// boolean stream is read from its front.
    pub(super) fn new(
        buf: Bytes,
        tight: bool,
        cache: Option<&'a mut UnmarshalCache>,
        version: i32,
        stack_trace: bool,
    ) -> Result<Reader<'a>> {
        let mut cur = Cursor::new(buf);
        let bs = if tight {
            let (bs, used) = BooleanStream::unmarshal(&cur.buf)?;
            cur.pos = used;
            Some(bs)
        } else {
            None
        };
        Ok(Reader {
            cur,
            bs,
            cache,
            version,
            stack_trace,
            depth: 0,
        })
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// Bytes consumed from the start of the buffer.
    pub(super) fn position(&self) -> usize {
        self.cur.position()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8]> {
        self.cur.take(n, what)
    }

    fn take_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.cur.array(what)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool> {
        match self.bs.as_mut() {
            Some(bs) => bs.read(what),
            None => Ok(self.take(1, what)?[0] != 0),
        }
    }

    fn i16(&mut self, what: &'static str) -> Result<i16> {
        self.take_array(what).map(i16::from_be_bytes)
    }

    fn len16(&mut self, what: &'static str) -> Result<usize> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| CodecError::NegativeLength {
            what,
            value: n.into(),
        })
    }

    pub fn int(&mut self) -> Result<i32> {
        self.take_array("an int field").map(i32::from_be_bytes)
    }

    pub fn byte(&mut self) -> Result<i8> {
        self.take_array("a byte field").map(i8::from_be_bytes)
    }

    pub fn bool(&mut self) -> Result<bool> {
        self.flag("a boolean field")
    }

    pub fn long(&mut self) -> Result<i64> {
        const WHAT: &str = "a long field";
        if self.bs.is_none() {
            return self.take_array(WHAT).map(i64::from_be_bytes);
        }
        let wide = self.flag(WHAT)?;
        let low = self.flag(WHAT)?;
        Ok(match (wide, low) {
            (true, true) => i64::from_be_bytes(self.take_array(WHAT)?),
            // Shorter forms are unsigned, as ActiveMQ's toLong masks them.
            (true, false) => u32::from_be_bytes(self.take_array(WHAT)?).into(),
            (false, true) => u16::from_be_bytes(self.take_array(WHAT)?).into(),
            (false, false) => 0,
        })
    }

    pub fn string(&mut self) -> Result<Option<String>> {
        const WHAT: &str = "a string";
        if !self.flag(WHAT)? {
            return Ok(None);
        }
        let ascii = self.bs.is_some() && self.flag(WHAT)?;
        if ascii {
            let n = self.len16(WHAT)?;
            return Ok(Some(latin1(self.take(n, WHAT)?)));
        }
        let n = u16::from_be_bytes(self.take_array(WHAT)?) as usize;
        decode_mutf8(self.take(n, WHAT)?, WHAT).map(Some)
    }

    pub fn bytes(&mut self) -> Result<Option<Bytes>> {
        const WHAT: &str = "a byte array";
        if !self.flag(WHAT)? {
            return Ok(None);
        }
        let n = i32::from_be_bytes(self.take_array(WHAT)?);
        let n = usize::try_from(n).map_err(|_| CodecError::NegativeLength {
            what: WHAT,
            value: n.into(),
        })?;
        self.cur.bytes(n, WHAT).map(Some)
    }

    pub fn magic(&mut self) -> Result<[u8; 8]> {
        self.take_array("the magic")
    }

    /// A field that is not on the wire: its default.
    pub fn skip<T: Default>(&mut self) -> Result<T> {
        Ok(T::default())
    }

    pub fn nested<T: Marshal>(&mut self) -> Result<Option<T>> {
        if !self.flag(T::NAME)? {
            return Ok(None);
        }
        self.nested_body().map(Some)
    }

    fn nested_body<T: Marshal>(&mut self) -> Result<T> {
        let code = self.take(1, T::NAME)?[0];
        if self.bs.is_some() && T::marshall_aware(code) && self.flag(T::NAME)? {
            return Err(CodecError::Unsupported(
                "a pre-marshalled nested structure (ActiveMQ never sends one)",
            ));
        }
        if self.depth >= MAX_NESTING {
            return Err(CodecError::TooDeep(MAX_NESTING));
        }
        self.depth += 1;
        let v = T::read_body(code, self);
        self.depth -= 1;
        v
    }

    pub fn cached<T: Marshal>(&mut self) -> Result<Option<T>> {
        if self.cache.is_none() {
            return self.nested();
        }
        let new = self.flag(T::NAME)?;
        let index = self.i16("a cache index")?;
        if new {
            let v: Option<T> = self.nested()?;
            if let Some(cache) = self.cache.as_deref_mut() {
                cache.set(index, v.as_ref().map(Marshal::to_data))?;
            }
            return Ok(v);
        }
        let data = match self.cache.as_deref() {
            Some(cache) => cache.get(index)?,
            None => None,
        };
        data.map(T::from_data).transpose()
    }

    pub fn array<T: Marshal>(&mut self) -> Result<Option<Vec<T>>> {
        if !self.flag("an array")? {
            return Ok(None);
        }
        let n = self.len16("an array length")?;
        let mut items = Vec::new();
        for _ in 0..n {
            // A null element carries nothing a broker could use.
            if let Some(item) = self.nested()? {
                items.push(item);
            }
        }
        Ok(Some(items))
    }

    pub fn throwable(&mut self) -> Result<Option<Throwable>> {
        self.throwable_at(0)
    }

    fn throwable_at(&mut self, depth: u32) -> Result<Option<Throwable>> {
        if !self.flag("a throwable")? {
            return Ok(None);
        }
        if depth >= MAX_NESTING {
            return Err(CodecError::TooDeep(MAX_NESTING));
        }
        let mut t = Throwable {
            class_name: self.string()?.unwrap_or_default(),
            message: self.string()?,
            ..Throwable::default()
        };
        if self.stack_trace {
            let n = self.len16("a stack trace length")?;
            for _ in 0..n {
                t.stack_trace.push(StackFrame {
                    class_name: self.string()?,
                    method_name: self.string()?,
                    file_name: self.string()?,
                    line_number: self.int()?,
                });
            }
            t.cause = self.throwable_at(depth + 1)?.map(Box::new);
        }
        Ok(Some(t))
    }
}

/// ActiveMQ's tight "ASCII" strings are read one byte per char (ISO-8859-1).
fn latin1(b: &[u8]) -> String {
    if b.is_ascii() {
        // Checked: ASCII is valid UTF-8.
        return String::from_utf8(b.to_vec()).unwrap_or_default();
    }
    b.iter().map(|&c| char::from(c)).collect()
}

/// Bytes Java's `DataOutput.writeUTF` ("modified UTF-8") takes for `s`:
/// NUL takes two bytes, and a character outside the BMP takes six (two
/// surrogates of three bytes each).
/// Whether `s` is the same in modified UTF-8: ASCII without NUL (ids,
/// names and most bodies), checked a word at a time.
fn plain_ascii(s: &str) -> bool {
    s.is_ascii() && memchr::memchr(0, s.as_bytes()).is_none()
}

pub fn mutf8_len(s: &str) -> usize {
    if plain_ascii(s) {
        return s.len();
    }
    s.chars()
        .map(|c| match c as u32 {
            1..=0x7f => 1,
            0 | 0x80..=0x7ff => 2,
            0x800..=0xffff => 3,
            _ => 6,
        })
        .sum()
}

pub fn write_mutf8(s: &str, out: &mut impl BufMut) {
    if plain_ascii(s) {
        out.put_slice(s.as_bytes());
        return;
    }
    let mut units = [0u16; 2];
    for c in s.chars() {
        for &u in c.encode_utf16(&mut units).iter() {
            match u {
                1..=0x7f => out.put_u8(u as u8),
                0 | 0x80..=0x7ff => {
                    out.put_u8(0xc0 | (u >> 6) as u8);
                    out.put_u8(0x80 | (u & 0x3f) as u8);
                }
                _ => {
                    out.put_u8(0xe0 | (u >> 12) as u8);
                    out.put_u8(0x80 | ((u >> 6) & 0x3f) as u8);
                    out.put_u8(0x80 | (u & 0x3f) as u8);
                }
            }
        }
    }
}

/// Decodes Java's modified UTF-8. A lone surrogate (legal in Java, not in
/// a Rust string) becomes U+FFFD.
pub fn decode_mutf8(b: &[u8], what: &'static str) -> Result<String> {
    if b.is_ascii() {
        return String::from_utf8(b.to_vec()).map_err(|_| CodecError::BadUtf8(what));
    }
    let mut units = Vec::with_capacity(b.len());
    let mut i = 0;
    let cont = |i: usize| match b.get(i) {
        Some(&c) if c & 0xc0 == 0x80 => Ok(u16::from(c & 0x3f)),
        _ => Err(CodecError::BadUtf8(what)),
    };
    while i < b.len() {
        let a = b[i];
        if a < 0x80 {
            units.push(u16::from(a));
            i += 1;
        } else if a & 0xe0 == 0xc0 {
            units.push((u16::from(a & 0x1f) << 6) | cont(i + 1)?);
            i += 2;
        } else if a & 0xf0 == 0xe0 {
            units.push((u16::from(a & 0x0f) << 12) | (cont(i + 1)? << 6) | cont(i + 2)?);
            i += 3;
        } else if a & 0xf8 == 0xf0 {
            // Standard UTF-8's 4-byte form: not what Java writes, but what
            // hawtbuf's UTF8Buffer (property strings) reads, so accept it.
            let cp = (u32::from(a & 0x07) << 18)
                | (u32::from(cont(i + 1)?) << 12)
                | (u32::from(cont(i + 2)?) << 6)
                | u32::from(cont(i + 3)?);
            let c = char::from_u32(cp).ok_or(CodecError::BadUtf8(what))?;
            let mut pair = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut pair));
            i += 4;
        } else {
            return Err(CodecError::BadUtf8(what));
        }
    }
    Ok(String::from_utf16_lossy(&units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf8_matches_java_for_nul_bmp_and_supplementary() {
        let s = "a\0é€😀";
        let mut out = Vec::new();
        write_mutf8(s, &mut out);
        assert_eq!(out.len(), mutf8_len(s));
        assert_eq!(&out[..3], &[b'a', 0xc0, 0x80]);
        // U+1F600 as the surrogates D83D DE00, three bytes each.
        assert_eq!(&out[out.len() - 6..], &[0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]);
        assert_eq!(decode_mutf8(&out, "t").unwrap(), s);
    }

    #[test]
    fn bad_modified_utf8_is_an_error() {
        assert_eq!(decode_mutf8(&[0xf0, 0x9f, 0x98, 0x80], "t").unwrap(), "😀");
        for bad in [&[0xc3][..], &[0xe2, 0x82], &[0xf8, 0x80], &[0xc3, 0x41]] {
            assert!(decode_mutf8(bad, "t").is_err(), "{bad:?}");
        }
    }

    fn loose_and_tight(f: impl Fn(&mut Writer<'_>) -> Result<()>) -> (Vec<u8>, Vec<u8>) {
        let mut loose = BytesMut::new();
        f(&mut Writer::new(Pass::Loose, &mut loose, None, 12, false)).unwrap();
        let mut data = BytesMut::new();
        let mut w = Writer::new(Pass::Size, &mut data, None, 12, false);
        f(&mut w).unwrap();
        let (bs, size) = (w.bs.clone(), w.size);
        let mut tight = BytesMut::new();
        bs.marshal(&mut tight);
        let mut w = Writer::new(Pass::Write, &mut tight, None, 12, false);
        w.bs = bs;
        f(&mut w).unwrap();
        let bs_size = w.bs.marshalled_size();
        assert_eq!(tight.len(), size + bs_size);
        (loose.to_vec(), tight.to_vec())
    }

    #[test]
    fn tight_longs_take_only_the_bytes_they_need() {
        for (v, data_len) in [(0i64, 0), (0xffff, 2), (0x1_0000, 4), (-1, 8), (1 << 40, 8)] {
            let (loose, tight) = loose_and_tight(|w| w.long(&v));
            assert_eq!(loose.len(), 8);
            assert_eq!(tight.len(), 2 + data_len, "{v}");
            let mut r = Reader::new(Bytes::from(tight), true, None, 12, false).unwrap();
            assert_eq!(r.long().unwrap(), v);
            let mut r = Reader::new(Bytes::from(loose), false, None, 12, false).unwrap();
            assert_eq!(r.long().unwrap(), v);
        }
    }

    #[test]
    fn strings_round_trip_ascii_unicode_and_null() {
        for s in [None, Some(""), Some("queue.a"), Some("ünïcødé\0x")] {
            let s = s.map(String::from);
            let (loose, tight) = loose_and_tight(|w| w.string(&s));
            for (buf, t) in [(loose, false), (tight, true)] {
                let mut r = Reader::new(Bytes::from(buf), t, None, 12, false).unwrap();
                assert_eq!(r.string().unwrap(), s);
            }
        }
    }

    #[test]
    fn byte_arrays_are_zero_copy_slices_of_the_frame() {
        let payload = Bytes::from_static(b"payload");
        let body = Some(payload.clone());
        let (loose, _) = loose_and_tight(|w| w.bytes(&body));
        let frame = Bytes::from(loose);
        let mut r = Reader::new(frame.clone(), false, None, 12, false).unwrap();
        let got = r.bytes().unwrap().unwrap();
        assert_eq!(got, payload);
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(range.contains(&(got.as_ptr() as usize)));
    }

    #[test]
    fn negative_and_oversized_lengths_are_errors_not_allocations() {
        let mut r = Reader::new(
            Bytes::from_static(&[1, 0xff, 0xff, 0xff, 0xff]),
            false,
            None,
            12,
            false,
        )
        .unwrap();
        assert!(matches!(r.bytes(), Err(CodecError::NegativeLength { .. })));
        let mut r = Reader::new(
            Bytes::from_static(&[1, 0x7f, 0xff, 0xff, 0xff]),
            false,
            None,
            12,
            false,
        )
        .unwrap();
        assert!(matches!(r.bytes(), Err(CodecError::Truncated { .. })));
    }
}
