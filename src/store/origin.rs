//! A message's origin: its producer's own name for it,
//! `<producer id>:<sequence>` (ActiveMQ's JMSMessageID), kept as a
//! property. The broker recognises a producer's resend by it (see
//! `broker::producer_audit`); the database store keeps each producer's
//! highest sequence from it, which outlives the messages' rows.

use bytes::Bytes;

/// `<producer id>:<sequence>` (ActiveMQ's JMSMessageID without its
/// `ID:` cut off): set by the OpenWire listener on every message.
pub const ORIGIN_PROPERTY: &str = "brokk-origin";

/// The (producer, sequence) an origin names, or None if it is not one.
pub fn parse_origin(origin: &[u8]) -> Option<(&[u8], u64)> {
    let colon = origin.iter().rposition(|b| *b == b':')?;
    let (producer, seq) = (&origin[..colon], &origin[colon + 1..]);
    if producer.is_empty() || seq.is_empty() || seq.len() > 19 {
        return None;
    }
    let seq = std::str::from_utf8(seq).ok()?.parse().ok()?;
    Some((producer, seq))
}

/// A message's origin, if it has one.
pub fn origin_of(properties: &[(Bytes, Bytes)]) -> Option<&[u8]> {
    properties
        .iter()
        .find(|(k, _)| k.as_ref() == ORIGIN_PROPERTY.as_bytes())
        .map(|(_, v)| v.as_ref())
}
