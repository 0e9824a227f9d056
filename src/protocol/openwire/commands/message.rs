//! Messages and what moves them: dispatch to a consumer, acks, pulls and
//! producer acks.

use bytes::Bytes;

use super::ids::{BrokerId, ConsumerId, Destination, MessageId, ProducerId, TransactionId};
use super::{types, unexpected, Command, DataStructure};
use crate::protocol::openwire::error::{CodecError, Result};
use crate::protocol::openwire::primitives::{Marshal, Reader, Writer};
use crate::protocol::openwire::properties::{map_to_bytes, unmarshal_map, MapLimits, PropertyMap};

/// Which ActiveMQ message class: decides how `content` is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A plain `javax.jms.Message`: no body.
    #[default]
    Message,
    Bytes,
    Map,
    Object,
    Stream,
    Text,
}

impl MessageKind {
    pub fn code(self) -> u8 {
        match self {
            MessageKind::Message => types::ACTIVEMQ_MESSAGE,
            MessageKind::Bytes => types::ACTIVEMQ_BYTES_MESSAGE,
            MessageKind::Map => types::ACTIVEMQ_MAP_MESSAGE,
            MessageKind::Object => types::ACTIVEMQ_OBJECT_MESSAGE,
            MessageKind::Stream => types::ACTIVEMQ_STREAM_MESSAGE,
            MessageKind::Text => types::ACTIVEMQ_TEXT_MESSAGE,
        }
    }

    pub fn from_code(code: u8) -> Option<MessageKind> {
        Some(match code {
            types::ACTIVEMQ_MESSAGE => MessageKind::Message,
            types::ACTIVEMQ_BYTES_MESSAGE => MessageKind::Bytes,
            types::ACTIVEMQ_MAP_MESSAGE => MessageKind::Map,
            types::ACTIVEMQ_OBJECT_MESSAGE => MessageKind::Object,
            types::ACTIVEMQ_STREAM_MESSAGE => MessageKind::Stream,
            types::ACTIVEMQ_TEXT_MESSAGE => MessageKind::Text,
            _ => return None,
        })
    }
}

wire_command! {
    /// ActiveMQMessage and its subtypes. `content` and
    /// `marshalled_properties` are zero-copy slices of the frame they came
    /// in; see [`compress`](crate::protocol::openwire::compress) for bodies
    /// and [`Message::properties`] for the typed properties.
    Message {
        kind: skip MessageKind;
        producer_id: cached ProducerId;
        destination: cached Destination;
        transaction_id: cached TransactionId;
        original_destination: cached Destination;
        message_id: nested MessageId;
        original_transaction_id: cached TransactionId;
        group_id: string;
        group_sequence: int;
        correlation_id: string;
        persistent: bool;
        /// Milliseconds since the epoch; 0 never expires.
        expiration: long;
        priority: byte;
        reply_to: nested Destination;
        timestamp: long;
        /// JMSType.
        jms_type: string;
        content: bytes;
        marshalled_properties: bytes;
        /// An advisory's subject (a ConsumerInfo, say); clients send none.
        data_structure: nested DataStructure;
        target_consumer_id: cached ConsumerId;
        compressed: bool;
        redelivery_counter: int;
        broker_path: array BrokerId;
        arrival: long;
        user_id: string;
        received_by_df_bridge: bool;
        droppable: bool;
        cluster: array BrokerId;
        broker_in_time: long;
        broker_out_time: long;
        jmsx_group_first_for_consumer: bool, since 10;
    }
}

impl Message {
    pub fn new(kind: MessageKind) -> Message {
        Message {
            kind,
            ..Message::default()
        }
    }

    /// The typed properties, parsed from the marshalled map on demand (a
    /// broker that only routes never pays for them).
    pub fn properties(&self) -> Result<PropertyMap> {
        match &self.marshalled_properties {
            Some(b) => Ok(unmarshal_map(b, MapLimits::MESSAGE)?.unwrap_or_default()),
            None => Ok(PropertyMap::new()),
        }
    }

    pub fn set_properties(&mut self, props: &PropertyMap) -> Result<()> {
        self.marshalled_properties = if props.is_empty() {
            None
        } else {
            Some(map_to_bytes(props)?)
        };
        Ok(())
    }

    /// The body as sent, still compressed if `compressed` is set.
    pub fn raw_content(&self) -> Bytes {
        self.content.clone().unwrap_or_default()
    }
}

impl Marshal for Message {
    const NAME: &'static str = "Message";

    fn type_code(&self) -> u8 {
        self.kind.code()
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
        self.write_fields(w)
    }

    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
        let kind = MessageKind::from_code(code).ok_or(CodecError::UnexpectedType {
            expected: Self::NAME,
            found: code,
        })?;
        let mut m = Message::read_fields(r)?;
        m.kind = kind;
        Ok(m)
    }

    fn to_data(&self) -> DataStructure {
        DataStructure::Command(Box::new(Command::Message(Box::new(self.clone()))))
    }

    fn from_data(data: DataStructure) -> Result<Self> {
        match data {
            DataStructure::Command(c) => match *c {
                Command::Message(m) => Ok(*m),
                other => Err(unexpected(
                    Self::NAME,
                    &DataStructure::Command(Box::new(other)),
                )),
            },
            other => Err(unexpected(Self::NAME, &other)),
        }
    }
}

wire_command! {
    /// A message delivered to a consumer. A dispatch without a message
    /// tells a browser (or a pulling consumer) there is nothing more.
    MessageDispatch {
        consumer_id: cached ConsumerId;
        destination: cached Destination;
        message: nested Box<Message>;
        redelivery_counter: int;
    }
}

wire_command! {
    /// Acknowledges `message_count` messages from `first_message_id` to
    /// `last_message_id`; `ack_type` is an [`AckType`](super::AckType).
    MessageAck {
        destination: cached Destination;
        transaction_id: cached TransactionId;
        consumer_id: cached ConsumerId;
        ack_type: byte;
        first_message_id: nested MessageId;
        last_message_id: nested MessageId;
        message_count: int;
        poison_cause: throwable;
    }
}

wire_command! {
    /// A prefetch-0 consumer asks for one message, waiting up to `timeout`
    /// ms (0: forever, -1: do not wait).
    MessagePull {
        consumer_id: cached ConsumerId;
        destination: cached Destination;
        timeout: long;
        correlation_id: string;
        message_id: nested MessageId;
    }
}

wire_command! {
    /// Frees `size` bytes of a producer's window.
    ProducerAck {
        producer_id: nested ProducerId;
        size: int;
    }
}
