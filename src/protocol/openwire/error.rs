//! What can go wrong turning OpenWire bytes into commands and back. Every
//! variant names what was being read, so the listener can answer with an
//! ExceptionResponse that a person can act on.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Only returned inside a frame whose size prefix said it was complete,
    /// or by the no-prefix decoder, which turns it into "need more bytes".
    #[error("frame ends inside {what}: {needed} more bytes needed")]
    Truncated { what: &'static str, needed: usize },
    #[error("frame of {size} bytes exceeds maxFrameSize ({max} bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("negative {what} {value}")]
    NegativeLength { what: &'static str, value: i64 },
    #[error("unknown data structure type {0}")]
    UnknownType(u8),
    #[error("data structure type {found} where {expected} was expected")]
    UnexpectedType { expected: &'static str, found: u8 },
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    #[error("boolean stream exhausted while reading {0}")]
    BooleanStreamExhausted(&'static str),
    #[error("marshalling cache index {index} outside the negotiated cache of {size} entries")]
    CacheIndex { index: i16, size: usize },
    #[error("string of {len} encoded bytes is too long for {what}")]
    StringTooLong { what: &'static str, len: usize },
    #[error("invalid modified UTF-8 in {0}")]
    BadUtf8(&'static str),
    #[error("nesting deeper than {0} levels")]
    TooDeep(u32),
    #[error("unknown primitive type {0} in a marshalled map")]
    UnknownPrimitive(u8),
    #[error("{what} holds {count} entries, more than the {max} allowed")]
    TooManyEntries {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("not an OpenWire peer: WireFormatInfo magic is {0:?}")]
    BadMagic([u8; 8]),
    #[error("peer speaks OpenWire version {0}; this broker needs 9 or later")]
    UnsupportedVersion(i32),
    #[error("property {name} has type {found}, expected {expected}")]
    PropertyType {
        name: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("compressed body: {0}")]
    Compression(String),
    #[error("a {0} body was asked of a message of another type")]
    WrongBodyType(&'static str),
}

pub type Result<T> = std::result::Result<T, CodecError>;
