//! Ids and destinations: the small structures every command refers to and
//! the marshalling cache exists for.

use super::types;
use crate::protocol::openwire::error::{CodecError, Result};
use crate::protocol::openwire::primitives::{Marshal, Reader, Writer};

use super::{unexpected, DataStructure};

wire_struct! {
    /// `ID:host-port-start-n`: names a client connection.
    ConnectionId {
        value: string;
    }
}
impl_data_marshal!(ConnectionId = CONNECTION_ID);

wire_struct! {
    SessionId {
        connection_id: string;
        value: long;
    }
}
impl_data_marshal!(SessionId = SESSION_ID);

wire_struct! {
    ProducerId {
        connection_id: string;
        value: long;
        session_id: long;
    }
}
impl_data_marshal!(ProducerId = PRODUCER_ID);

wire_struct! {
    ConsumerId {
        connection_id: string;
        session_id: long;
        value: long;
    }
}
impl_data_marshal!(ConsumerId = CONSUMER_ID);

wire_struct! {
    /// (producer, sequence) identifies a message; failover resends are
    /// recognised by it.
    MessageId {
        text_view: string, since 10;
        producer_id: cached ProducerId;
        producer_sequence_id: long;
        broker_sequence_id: long;
    }
}
impl_data_marshal!(MessageId = MESSAGE_ID);

wire_struct! {
    BrokerId {
        value: string;
    }
}
impl_data_marshal!(BrokerId = BROKER_ID);

wire_struct! {
    /// A local (session) transaction: the connection and its counter.
    LocalTransactionId {
        value: long;
        connection_id: cached ConnectionId;
    }
}
impl_data_marshal!(LocalTransactionId = ACTIVEMQ_LOCAL_TRANSACTION_ID);

wire_struct! {
    /// An XA transaction id; decoded so XA can be refused by name.
    XaTransactionId {
        format_id: int;
        global_transaction_id: bytes;
        branch_qualifier: bytes;
    }
}
impl_data_marshal!(XaTransactionId = ACTIVEMQ_XA_TRANSACTION_ID);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionId {
    Local(LocalTransactionId),
    Xa(XaTransactionId),
}

impl Marshal for TransactionId {
    const NAME: &'static str = "TransactionId";

    fn type_code(&self) -> u8 {
        match self {
            TransactionId::Local(_) => types::ACTIVEMQ_LOCAL_TRANSACTION_ID,
            TransactionId::Xa(_) => types::ACTIVEMQ_XA_TRANSACTION_ID,
        }
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
        match self {
            TransactionId::Local(t) => t.write_fields(w),
            TransactionId::Xa(t) => t.write_fields(w),
        }
    }

    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
        match code {
            types::ACTIVEMQ_LOCAL_TRANSACTION_ID => {
                LocalTransactionId::read_fields(r).map(TransactionId::Local)
            }
            types::ACTIVEMQ_XA_TRANSACTION_ID => {
                XaTransactionId::read_fields(r).map(TransactionId::Xa)
            }
            found => Err(CodecError::UnexpectedType {
                expected: Self::NAME,
                found,
            }),
        }
    }

    fn to_data(&self) -> DataStructure {
        DataStructure::TransactionId(self.clone())
    }

    fn from_data(data: DataStructure) -> Result<Self> {
        match data {
            DataStructure::TransactionId(t) => Ok(t),
            DataStructure::LocalTransactionId(t) => Ok(TransactionId::Local(t)),
            DataStructure::XaTransactionId(t) => Ok(TransactionId::Xa(t)),
            other => Err(unexpected(Self::NAME, &other)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    #[default]
    Queue,
    Topic,
    TempQueue,
    TempTopic,
}

impl DestinationKind {
    pub fn code(self) -> u8 {
        match self {
            DestinationKind::Queue => types::ACTIVEMQ_QUEUE,
            DestinationKind::Topic => types::ACTIVEMQ_TOPIC,
            DestinationKind::TempQueue => types::ACTIVEMQ_TEMP_QUEUE,
            DestinationKind::TempTopic => types::ACTIVEMQ_TEMP_TOPIC,
        }
    }

    pub fn from_code(code: u8) -> Option<DestinationKind> {
        Some(match code {
            types::ACTIVEMQ_QUEUE => DestinationKind::Queue,
            types::ACTIVEMQ_TOPIC => DestinationKind::Topic,
            types::ACTIVEMQ_TEMP_QUEUE => DestinationKind::TempQueue,
            types::ACTIVEMQ_TEMP_TOPIC => DestinationKind::TempTopic,
            _ => return None,
        })
    }

    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            DestinationKind::TempQueue | DestinationKind::TempTopic
        )
    }

    pub fn is_topic(self) -> bool {
        matches!(self, DestinationKind::Topic | DestinationKind::TempTopic)
    }
}

/// ActiveMQDestination: a kind and a physical name (which may list several
/// destinations, comma-separated, and carry `?options`; the listener reads
/// those, the codec keeps the name as sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Destination {
    pub kind: DestinationKind,
    pub physical_name: String,
}

impl Destination {
    pub fn queue(name: impl Into<String>) -> Destination {
        Destination {
            kind: DestinationKind::Queue,
            physical_name: name.into(),
        }
    }

    pub fn topic(name: impl Into<String>) -> Destination {
        Destination {
            kind: DestinationKind::Topic,
            physical_name: name.into(),
        }
    }
}

impl Marshal for Destination {
    const NAME: &'static str = "ActiveMQDestination";

    fn type_code(&self) -> u8 {
        self.kind.code()
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
        w.str_opt(Some(&self.physical_name))
    }

    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
        let kind = DestinationKind::from_code(code).ok_or(CodecError::UnexpectedType {
            expected: Self::NAME,
            found: code,
        })?;
        Ok(Destination {
            kind,
            physical_name: r.string()?.unwrap_or_default(),
        })
    }

    fn to_data(&self) -> DataStructure {
        DataStructure::Destination(self.clone())
    }

    fn from_data(data: DataStructure) -> Result<Self> {
        match data {
            DataStructure::Destination(d) => Ok(d),
            other => Err(unexpected(Self::NAME, &other)),
        }
    }
}
