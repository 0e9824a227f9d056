//! OpenWire, ActiveMQ's binary protocol (version 12, down to 9), as a pure
//! codec: bytes to [`Command`]s and back under a negotiated
//! [`WireFormat`]. The listener that turns commands into broker
//! operations is built on it (see docs/design/openwire.md).

#[macro_use]
mod macros;

pub mod boolean_stream;
pub mod cache;
pub mod commands;
pub mod compress;
pub mod error;
pub mod frame;
pub mod primitives;
pub mod properties;
pub mod samples;
pub mod session;
pub mod wire_format;

#[cfg(test)]
mod tests;

pub use commands::{Command, DataStructure, Message, MessageKind};
pub use error::CodecError;
pub use frame::Codec;
pub use properties::{PropertyMap, Value};
pub use wire_format::{WireFormat, WireFormatInfo, WireFormatOptions};
