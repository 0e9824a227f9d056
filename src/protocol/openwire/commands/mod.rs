//! Every OpenWire structure the codec knows, and the two sums over them:
//! [`Command`] (what a frame carries) and [`DataStructure`] (what a field
//! typed "any structure" carries, and what the marshalling cache holds).

pub mod control;
pub mod ids;
pub mod info;
pub mod message;

use super::error::{CodecError, Result};
use super::primitives::{Marshal, Reader, Writer};
use super::wire_format::WireFormatInfo;

pub use control::*;
pub use ids::*;
pub use info::*;
pub use message::*;

/// ActiveMQ's `CommandTypes`: the type byte of each structure.
pub mod types {
    pub const NULL: u8 = 0;
    pub const WIREFORMAT_INFO: u8 = 1;
    pub const BROKER_INFO: u8 = 2;
    pub const CONNECTION_INFO: u8 = 3;
    pub const SESSION_INFO: u8 = 4;
    pub const CONSUMER_INFO: u8 = 5;
    pub const PRODUCER_INFO: u8 = 6;
    pub const TRANSACTION_INFO: u8 = 7;
    pub const DESTINATION_INFO: u8 = 8;
    pub const REMOVE_SUBSCRIPTION_INFO: u8 = 9;
    pub const KEEP_ALIVE_INFO: u8 = 10;
    pub const SHUTDOWN_INFO: u8 = 11;
    pub const REMOVE_INFO: u8 = 12;
    pub const CONTROL_COMMAND: u8 = 14;
    pub const FLUSH_COMMAND: u8 = 15;
    pub const CONNECTION_ERROR: u8 = 16;
    pub const CONSUMER_CONTROL: u8 = 17;
    pub const CONNECTION_CONTROL: u8 = 18;
    pub const PRODUCER_ACK: u8 = 19;
    pub const MESSAGE_PULL: u8 = 20;
    pub const MESSAGE_DISPATCH: u8 = 21;
    pub const MESSAGE_ACK: u8 = 22;
    pub const ACTIVEMQ_MESSAGE: u8 = 23;
    pub const ACTIVEMQ_BYTES_MESSAGE: u8 = 24;
    pub const ACTIVEMQ_MAP_MESSAGE: u8 = 25;
    pub const ACTIVEMQ_OBJECT_MESSAGE: u8 = 26;
    pub const ACTIVEMQ_STREAM_MESSAGE: u8 = 27;
    pub const ACTIVEMQ_TEXT_MESSAGE: u8 = 28;
    pub const ACTIVEMQ_BLOB_MESSAGE: u8 = 29;
    pub const RESPONSE: u8 = 30;
    pub const EXCEPTION_RESPONSE: u8 = 31;
    pub const DATA_RESPONSE: u8 = 32;
    pub const INTEGER_RESPONSE: u8 = 34;
    pub const ACTIVEMQ_QUEUE: u8 = 100;
    pub const ACTIVEMQ_TOPIC: u8 = 101;
    pub const ACTIVEMQ_TEMP_QUEUE: u8 = 102;
    pub const ACTIVEMQ_TEMP_TOPIC: u8 = 103;
    pub const MESSAGE_ID: u8 = 110;
    pub const ACTIVEMQ_LOCAL_TRANSACTION_ID: u8 = 111;
    pub const ACTIVEMQ_XA_TRANSACTION_ID: u8 = 112;
    pub const CONNECTION_ID: u8 = 120;
    pub const SESSION_ID: u8 = 121;
    pub const CONSUMER_ID: u8 = 122;
    pub const PRODUCER_ID: u8 = 123;
    pub const BROKER_ID: u8 = 124;
}

/// Messages and WireFormatInfo carry one more boolean when nested in a
/// tight frame (ActiveMQ's `isMarshallAware`).
pub(crate) fn marshall_aware(code: u8) -> bool {
    code == types::WIREFORMAT_INFO || MessageKind::from_code(code).is_some()
}

pub(crate) fn expect_code(found: u8, expected: u8, name: &'static str) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(CodecError::UnexpectedType {
            expected: name,
            found,
        })
    }
}

pub(crate) fn unexpected(expected: &'static str, found: &DataStructure) -> CodecError {
    CodecError::UnexpectedType {
        expected,
        found: found.type_code(),
    }
}

/// An enum over a command's byte field, with its wire values.
macro_rules! byte_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            pub fn from_byte(b: i8) -> Option<$name> {
                match b {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

byte_enum! {
    /// `MessageAck.ack_type` values.
    AckType {
        /// Delivered but not consumed (extends the prefetch window).
        Delivered = 0,
        /// Poison: to the dead-letter queue.
        Poison = 1,
        Standard = 2,
        Redelivered = 3,
        Individual = 4,
        Unmatched = 5,
        Expired = 6,
    }
}

byte_enum! {
    /// `TransactionInfo.transaction_type` values.
    TransactionType {
        Begin = 0,
        Prepare = 1,
        CommitOnePhase = 2,
        CommitTwoPhase = 3,
        Rollback = 4,
        Recover = 5,
        Forget = 6,
        End = 7,
    }
}

/// Moves a command out of its variant whether the variant boxes it or not.
trait Unbox<T> {
    fn unbox(self) -> T;
}

impl<T> Unbox<T> for T {
    fn unbox(self) -> T {
        self
    }
}

impl<T> Unbox<T> for Box<T> {
    fn unbox(self) -> T {
        *self
    }
}

/// The command enum, its type codes, and `Marshal` for each command, from
/// one table. Large commands are boxed so a `Command` stays small.
macro_rules! commands {
    ($( $variant:ident($ty:ty) = $code:ident, )*) => {
        /// One frame's command.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Command {
            $( $variant($ty), )*
            /// ActiveMQMessage and its subtypes (the kind is in the message).
            Message(Box<Message>),
        }

        impl Command {
            pub fn type_code(&self) -> u8 {
                match self {
                    $( Command::$variant(_) => types::$code, )*
                    Command::Message(m) => m.kind.code(),
                }
            }

            pub(crate) fn write_fields(&self, w: &mut Writer<'_>) -> Result<()> {
                match self {
                    $( Command::$variant(c) => c.write_fields(w), )*
                    Command::Message(m) => m.write_fields(w),
                }
            }

            /// Reads a command of type `code`; an unknown code is a typed
            /// error the listener answers with an ExceptionResponse.
            pub(crate) fn read_fields(code: u8, r: &mut Reader<'_>) -> Result<Command> {
                match code {
                    $( types::$code => $variant::read_fields(r).map(|c| Command::$variant(c.into())), )*
                    _ => match MessageKind::from_code(code) {
                        Some(_) => Message::read_body(code, r).map(|m| Command::Message(Box::new(m))),
                        None => Err(CodecError::UnknownType(code)),
                    },
                }
            }
        }

        $(
            impl Marshal for $variant {
                const NAME: &'static str = stringify!($variant);

                fn type_code(&self) -> u8 {
                    types::$code
                }

                fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
                    self.write_fields(w)
                }

                fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
                    expect_code(code, types::$code, Self::NAME)?;
                    Self::read_fields(r)
                }

                fn to_data(&self) -> DataStructure {
                    DataStructure::Command(Box::new(Command::$variant(self.clone().into())))
                }

                fn from_data(data: DataStructure) -> Result<Self> {
                    match data {
                        DataStructure::Command(c) => match *c {
                            Command::$variant(v) => Ok(v.unbox()),
                            other => Err(unexpected(Self::NAME, &DataStructure::Command(Box::new(other)))),
                        },
                        other => Err(unexpected(Self::NAME, &other)),
                    }
                }
            }

            impl From<$variant> for Command {
                fn from(c: $variant) -> Command {
                    Command::$variant(c.into())
                }
            }
        )*
    };
}

commands! {
    WireFormatInfo(WireFormatInfo) = WIREFORMAT_INFO,
    BrokerInfo(Box<BrokerInfo>) = BROKER_INFO,
    ConnectionInfo(Box<ConnectionInfo>) = CONNECTION_INFO,
    SessionInfo(SessionInfo) = SESSION_INFO,
    ConsumerInfo(Box<ConsumerInfo>) = CONSUMER_INFO,
    ProducerInfo(ProducerInfo) = PRODUCER_INFO,
    TransactionInfo(TransactionInfo) = TRANSACTION_INFO,
    DestinationInfo(DestinationInfo) = DESTINATION_INFO,
    RemoveSubscriptionInfo(RemoveSubscriptionInfo) = REMOVE_SUBSCRIPTION_INFO,
    KeepAliveInfo(KeepAliveInfo) = KEEP_ALIVE_INFO,
    ShutdownInfo(ShutdownInfo) = SHUTDOWN_INFO,
    RemoveInfo(RemoveInfo) = REMOVE_INFO,
    ControlCommand(ControlCommand) = CONTROL_COMMAND,
    FlushCommand(FlushCommand) = FLUSH_COMMAND,
    ConnectionError(ConnectionError) = CONNECTION_ERROR,
    ConsumerControl(ConsumerControl) = CONSUMER_CONTROL,
    ConnectionControl(ConnectionControl) = CONNECTION_CONTROL,
    ProducerAck(ProducerAck) = PRODUCER_ACK,
    MessagePull(MessagePull) = MESSAGE_PULL,
    MessageDispatch(MessageDispatch) = MESSAGE_DISPATCH,
    MessageAck(Box<MessageAck>) = MESSAGE_ACK,
    Response(Response) = RESPONSE,
    ExceptionResponse(ExceptionResponse) = EXCEPTION_RESPONSE,
    DataResponse(DataResponse) = DATA_RESPONSE,
    IntegerResponse(IntegerResponse) = INTEGER_RESPONSE,
}

impl From<Message> for Command {
    fn from(m: Message) -> Command {
        Command::Message(Box::new(m))
    }
}

impl Command {
    /// BaseCommand's fields, common to every command.
    pub fn command_id(&self) -> i32 {
        self.base().0
    }

    pub fn response_required(&self) -> bool {
        self.base().1
    }

    fn base(&self) -> (i32, bool) {
        macro_rules! base {
            ($c:expr) => {
                ($c.command_id, $c.response_required)
            };
        }
        match self {
            Command::WireFormatInfo(_) => (0, false),
            Command::BrokerInfo(c) => base!(c),
            Command::ConnectionInfo(c) => base!(c),
            Command::SessionInfo(c) => base!(c),
            Command::ConsumerInfo(c) => base!(c),
            Command::ProducerInfo(c) => base!(c),
            Command::TransactionInfo(c) => base!(c),
            Command::DestinationInfo(c) => base!(c),
            Command::RemoveSubscriptionInfo(c) => base!(c),
            Command::KeepAliveInfo(c) => base!(c),
            Command::ShutdownInfo(c) => base!(c),
            Command::RemoveInfo(c) => base!(c),
            Command::ControlCommand(c) => base!(c),
            Command::FlushCommand(c) => base!(c),
            Command::ConnectionError(c) => base!(c),
            Command::ConsumerControl(c) => base!(c),
            Command::ConnectionControl(c) => base!(c),
            Command::ProducerAck(c) => base!(c),
            Command::MessagePull(c) => base!(c),
            Command::MessageDispatch(c) => base!(c),
            Command::MessageAck(c) => base!(c),
            Command::Response(c) => base!(c),
            Command::ExceptionResponse(c) => base!(c),
            Command::DataResponse(c) => base!(c),
            Command::IntegerResponse(c) => base!(c),
            Command::Message(c) => base!(c),
        }
    }
}

/// A field that may hold any structure (RemoveInfo's object id, a
/// message's advisory subject), and a marshalling cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DataStructure {
    ConnectionId(ConnectionId),
    SessionId(SessionId),
    ProducerId(ProducerId),
    ConsumerId(ConsumerId),
    MessageId(MessageId),
    BrokerId(BrokerId),
    Destination(Destination),
    LocalTransactionId(LocalTransactionId),
    XaTransactionId(XaTransactionId),
    TransactionId(TransactionId),
    Command(Box<Command>),
}

impl Marshal for DataStructure {
    const NAME: &'static str = "DataStructure";

    fn type_code(&self) -> u8 {
        match self {
            DataStructure::ConnectionId(v) => v.type_code(),
            DataStructure::SessionId(v) => v.type_code(),
            DataStructure::ProducerId(v) => v.type_code(),
            DataStructure::ConsumerId(v) => v.type_code(),
            DataStructure::MessageId(v) => v.type_code(),
            DataStructure::BrokerId(v) => v.type_code(),
            DataStructure::Destination(v) => v.type_code(),
            DataStructure::LocalTransactionId(v) => v.type_code(),
            DataStructure::XaTransactionId(v) => v.type_code(),
            DataStructure::TransactionId(v) => v.type_code(),
            DataStructure::Command(c) => c.type_code(),
        }
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<()> {
        match self {
            DataStructure::ConnectionId(v) => v.write_fields(w),
            DataStructure::SessionId(v) => v.write_fields(w),
            DataStructure::ProducerId(v) => v.write_fields(w),
            DataStructure::ConsumerId(v) => v.write_fields(w),
            DataStructure::MessageId(v) => v.write_fields(w),
            DataStructure::BrokerId(v) => v.write_fields(w),
            DataStructure::Destination(v) => v.write_body(w),
            DataStructure::LocalTransactionId(v) => v.write_fields(w),
            DataStructure::XaTransactionId(v) => v.write_fields(w),
            DataStructure::TransactionId(v) => v.write_body(w),
            DataStructure::Command(c) => c.write_fields(w),
        }
    }

    fn read_body(code: u8, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match code {
            types::CONNECTION_ID => DataStructure::ConnectionId(ConnectionId::read_fields(r)?),
            types::SESSION_ID => DataStructure::SessionId(SessionId::read_fields(r)?),
            types::PRODUCER_ID => DataStructure::ProducerId(ProducerId::read_fields(r)?),
            types::CONSUMER_ID => DataStructure::ConsumerId(ConsumerId::read_fields(r)?),
            types::MESSAGE_ID => DataStructure::MessageId(MessageId::read_fields(r)?),
            types::BROKER_ID => DataStructure::BrokerId(BrokerId::read_fields(r)?),
            types::ACTIVEMQ_LOCAL_TRANSACTION_ID | types::ACTIVEMQ_XA_TRANSACTION_ID => {
                DataStructure::TransactionId(TransactionId::read_body(code, r)?)
            }
            c if DestinationKind::from_code(c).is_some() => {
                DataStructure::Destination(Destination::read_body(code, r)?)
            }
            _ => DataStructure::Command(Box::new(Command::read_fields(code, r)?)),
        })
    }

    fn to_data(&self) -> DataStructure {
        self.clone()
    }

    fn from_data(data: DataStructure) -> Result<Self> {
        Ok(data)
    }
}
