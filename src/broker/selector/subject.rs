//! What a selector reads from a message: its properties by name and the
//! JMS headers. A protocol's message model implements
//! [`SelectorSubject`]; [`Candidate`] does it for the broker's own
//! [`Message`], whose properties are STOMP's string headers.

use std::borrow::Cow;

use super::value::Value;
use crate::broker::destination::Destination;
use crate::broker::message::{Message, MESSAGE_ID_PREFIX};

/// The JMS header fields a selector may name (JMS 1.1 §3.8.1.1 and
/// ActiveMQ's additions). Any other identifier is a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JmsHeader {
    DeliveryMode,
    Priority,
    MessageId,
    Timestamp,
    CorrelationId,
    Type,
    Expiration,
    Redelivered,
    Destination,
    ReplyTo,
    /// `JMSXDeliveryCount`: 1 on the first delivery.
    DeliveryCount,
}

/// What a header's values are, for the parser's type checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderType {
    Bool,
    Number,
    String,
}

impl JmsHeader {
    /// Identifiers are case-sensitive: `jmspriority` is a property.
    pub fn from_identifier(name: &str) -> Option<JmsHeader> {
        Some(match name {
            "JMSDeliveryMode" => JmsHeader::DeliveryMode,
            "JMSPriority" => JmsHeader::Priority,
            "JMSMessageID" => JmsHeader::MessageId,
            "JMSTimestamp" => JmsHeader::Timestamp,
            "JMSCorrelationID" => JmsHeader::CorrelationId,
            "JMSType" => JmsHeader::Type,
            "JMSExpiration" => JmsHeader::Expiration,
            "JMSRedelivered" => JmsHeader::Redelivered,
            "JMSDestination" => JmsHeader::Destination,
            "JMSReplyTo" => JmsHeader::ReplyTo,
            "JMSXDeliveryCount" => JmsHeader::DeliveryCount,
            _ => return None,
        })
    }

    pub fn value_type(self) -> HeaderType {
        match self {
            JmsHeader::Priority
            | JmsHeader::Timestamp
            | JmsHeader::Expiration
            | JmsHeader::DeliveryCount => HeaderType::Number,
            JmsHeader::Redelivered => HeaderType::Bool,
            JmsHeader::DeliveryMode
            | JmsHeader::MessageId
            | JmsHeader::CorrelationId
            | JmsHeader::Type
            | JmsHeader::Destination
            | JmsHeader::ReplyTo => HeaderType::String,
        }
    }
}

/// A message as a selector reads it. `None` is an absent field (NULL).
pub trait SelectorSubject {
    fn property(&self, name: &str) -> Option<Value<'_>>;
    fn header(&self, header: JmsHeader) -> Option<Value<'_>>;
}

/// A broker message about to be handed out, `redeliveries` times handed
/// out and returned before.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub msg: &'a Message,
    pub redeliveries: u32,
}

impl Candidate<'_> {
    /// The first header of that name wins, as STOMP 1.2 says of repeated
    /// headers.
    fn raw(&self, name: &str) -> Option<Cow<'_, str>> {
        self.msg
            .properties
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v))
    }
}

impl SelectorSubject for Candidate<'_> {
    /// STOMP headers have no type: they are [`Value::Text`], which
    /// compares as a number with a number (the module's documentation
    /// says why).
    fn property(&self, name: &str) -> Option<Value<'_>> {
        self.raw(name).map(Value::Text)
    }

    fn header(&self, header: JmsHeader) -> Option<Value<'_>> {
        let m = self.msg;
        Some(match header {
            JmsHeader::DeliveryMode => Value::Str(Cow::Borrowed(if m.persistent {
                "PERSISTENT"
            } else {
                "NON_PERSISTENT"
            })),
            JmsHeader::Priority => Value::Long(i64::from(m.priority)),
            // What consumers see (see `protocol::openwire::session::deliver`).
            JmsHeader::MessageId => match crate::broker::producer_audit::origin_of(&m.properties) {
                Some(o) => Value::Str(String::from_utf8_lossy(o)),
                None => Value::Str(Cow::Owned(format!("{MESSAGE_ID_PREFIX}{}", m.id))),
            },
            JmsHeader::Timestamp => Value::Long(m.timestamp_ms as i64),
            JmsHeader::Expiration => Value::Long(m.expires_ms as i64),
            JmsHeader::Redelivered => Value::Bool(self.redeliveries > 0),
            JmsHeader::DeliveryCount => Value::Long(i64::from(self.redeliveries) + 1),
            // ActiveMQ's destination names: queue://NAME, topic://NAME.
            JmsHeader::Destination => Value::Str(Cow::Owned(match &m.destination {
                Destination::Queue(n) => format!("queue://{n}"),
                Destination::Topic(n) => format!("topic://{n}"),
            })),
            JmsHeader::CorrelationId => Value::Str(self.raw("correlation-id")?),
            JmsHeader::Type => Value::Str(self.raw("type")?),
            JmsHeader::ReplyTo => Value::Str(self.raw("reply-to")?),
        })
    }
}
