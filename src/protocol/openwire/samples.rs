//! One representative of every command the codec knows, with every field
//! set to something other than its default, so a test that round-trips
//! them notices a field read in the wrong order. Shared by the unit tests,
//! the golden test against ActiveMQ's own marshallers, and the fuzz seeds.

use bytes::Bytes;

use super::commands::*;
use super::compress;
use super::primitives::{StackFrame, Throwable};
use super::properties::{PropertyMap, Value};
use super::wire_format::WireFormatOptions;

pub const CONNECTION: &str = "ID:client-1-1700000000000-0:1";

pub fn connection_id() -> ConnectionId {
    ConnectionId {
        value: Some(CONNECTION.into()),
    }
}

pub fn session_id() -> SessionId {
    SessionId {
        connection_id: Some(CONNECTION.into()),
        value: 1,
    }
}

pub fn producer_id() -> ProducerId {
    ProducerId {
        connection_id: Some(CONNECTION.into()),
        value: 7,
        session_id: 1,
    }
}

pub fn consumer_id() -> ConsumerId {
    ConsumerId {
        connection_id: Some(CONNECTION.into()),
        session_id: 1,
        value: 3,
    }
}

pub fn message_id(seq: i64) -> MessageId {
    MessageId {
        text_view: None,
        producer_id: Some(producer_id()),
        producer_sequence_id: seq,
        broker_sequence_id: 0x1_0000_0000,
    }
}

pub fn local_tx() -> TransactionId {
    TransactionId::Local(LocalTransactionId {
        value: 5,
        connection_id: Some(connection_id()),
    })
}

pub fn xa_tx() -> TransactionId {
    TransactionId::Xa(XaTransactionId {
        format_id: 0x1234,
        global_transaction_id: Some(Bytes::from_static(b"global")),
        branch_qualifier: Some(Bytes::from_static(b"branch")),
    })
}

/// A property of every primitive type (nested map and list included).
pub fn every_property() -> PropertyMap {
    let mut inner = PropertyMap::new();
    inner.insert("inner".into(), Value::Int(1));
    [
        ("p_null", Value::Null),
        ("p_bool", Value::Bool(true)),
        ("p_byte", Value::Byte(-3)),
        ("p_char", Value::Char(0x20ac)),
        ("p_short", Value::Short(-300)),
        ("p_int", Value::Int(70_000)),
        ("p_long", Value::Long(-(1 << 40))),
        ("p_float", Value::Float(1.5)),
        ("p_double", Value::Double(-2.25)),
        ("p_string", Value::String("héllo wörld".into())),
        ("p_big_string", Value::String("b".repeat(10_000))),
        ("p_bytes", Value::Bytes(Bytes::from_static(b"\x00\x01\xff"))),
        ("p_map", Value::Map(inner)),
        (
            "p_list",
            Value::List(vec![Value::Long(1), Value::String("x".into())]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A message with every header set; its body is set by the caller.
pub fn message(kind: MessageKind, seq: i64) -> Message {
    let mut m = Message {
        command_id: 10 + seq as i32,
        response_required: true,
        kind,
        producer_id: Some(producer_id()),
        destination: Some(Destination::queue("orders")),
        transaction_id: Some(local_tx()),
        original_destination: None,
        message_id: Some(message_id(seq)),
        original_transaction_id: None,
        group_id: Some("group-a".into()),
        group_sequence: 2,
        correlation_id: Some("corr-1".into()),
        persistent: true,
        expiration: 1_700_000_060_000,
        priority: 7,
        reply_to: Some(Destination {
            kind: DestinationKind::TempQueue,
            physical_name: format!("{CONNECTION}:1"),
        }),
        timestamp: 1_700_000_000_000,
        jms_type: Some("order".into()),
        redelivery_counter: 1,
        user_id: Some("alice".into()),
        jmsx_group_first_for_consumer: true,
        ..Message::default()
    };
    m.set_properties(&every_property())
        .expect("sample properties marshal");
    m
}

pub fn text_message(text: &str, compressed: bool) -> Message {
    let mut m = message(MessageKind::Text, 1);
    compress::set_text(&mut m, text, compressed);
    m
}

pub fn bytes_message(body: Bytes, compressed: bool) -> Message {
    let mut m = message(MessageKind::Bytes, 2);
    compress::set_bytes(&mut m, body, compressed);
    m
}

pub fn exception() -> Throwable {
    Throwable {
        class_name: "javax.jms.JMSSecurityException".into(),
        message: Some("User name [bob] or password is invalid.".into()),
        stack_trace: vec![StackFrame {
            class_name: Some("org.brokk.Security".into()),
            method_name: Some("authenticate".into()),
            file_name: Some("security.rs".into()),
            line_number: 42,
        }],
        cause: Some(Box::new(Throwable::new(
            "java.lang.IllegalStateException",
            "cause",
        ))),
    }
}

/// Every command type, in the order a session would meet them.
pub fn commands() -> Vec<Command> {
    let mut map_body = PropertyMap::new();
    map_body.insert("k".into(), Value::String("v".into()));
    let mut map_msg = message(MessageKind::Map, 3);
    compress::set_map(&mut map_msg, &map_body, false).expect("sample map marshals");
    let mut stream_msg = message(MessageKind::Stream, 4);
    stream_msg.content = Some(Bytes::from_static(&[5, 0, 0, 0, 9]));
    let mut object_msg = message(MessageKind::Object, 5);
    object_msg.content = Some(Bytes::from_static(&[0xac, 0xed, 0, 5]));
    object_msg.destination = Some(Destination::topic("prices"));
    object_msg.transaction_id = Some(xa_tx());
    let plain = Message {
        marshalled_properties: None,
        ..message(MessageKind::Message, 6)
    };
    vec![
        WireFormatOptions::default()
            .to_info()
            .expect("default options marshal")
            .into(),
        BrokerInfo {
            command_id: 1,
            broker_id: Some(BrokerId {
                value: Some("ID:brokk-1".into()),
            }),
            broker_url: Some("tcp://localhost:61616".into()),
            peer_broker_infos: Some(vec![]),
            broker_name: Some("brokk".into()),
            master_broker: true,
            connection_id: 99,
            ..BrokerInfo::default()
        }
        .into(),
        ConnectionInfo {
            command_id: 1,
            response_required: true,
            connection_id: Some(connection_id()),
            client_id: Some("client-é".into()),
            password: Some("secret".into()),
            user_name: Some("alice".into()),
            broker_path: Some(vec![BrokerId {
                value: Some("b1".into()),
            }]),
            manageable: true,
            fault_tolerant: true,
            client_ip: Some("tcp://127.0.0.1:5555".into()),
            ..ConnectionInfo::default()
        }
        .into(),
        SessionInfo {
            command_id: 2,
            response_required: true,
            session_id: Some(session_id()),
        }
        .into(),
        ProducerInfo {
            command_id: 3,
            response_required: true,
            producer_id: Some(producer_id()),
            destination: Some(Destination::queue("orders")),
            broker_path: None,
            dispatch_async: true,
            window_size: 1 << 20,
        }
        .into(),
        ConsumerInfo {
            command_id: 4,
            response_required: true,
            consumer_id: Some(consumer_id()),
            destination: Some(Destination::topic("prices")),
            prefetch_size: 1000,
            maximum_pending_message_limit: -1,
            selector: Some("price > 10 AND sym LIKE 'A%'".into()),
            client_id: Some("client-é".into()),
            subscription_name: Some("durable-1".into()),
            no_local: true,
            exclusive: true,
            priority: -2,
            ..ConsumerInfo::default()
        }
        .into(),
        DestinationInfo {
            command_id: 5,
            response_required: true,
            connection_id: Some(connection_id()),
            destination: Some(Destination {
                kind: DestinationKind::TempTopic,
                physical_name: format!("{CONNECTION}:2"),
            }),
            operation_type: 0,
            timeout: 0,
            broker_path: None,
        }
        .into(),
        TransactionInfo {
            command_id: 6,
            response_required: true,
            connection_id: Some(connection_id()),
            transaction_id: Some(local_tx()),
            transaction_type: TransactionType::Begin as i8,
        }
        .into(),
        TransactionInfo {
            command_id: 7,
            response_required: true,
            connection_id: Some(connection_id()),
            transaction_id: Some(xa_tx()),
            transaction_type: TransactionType::Prepare as i8,
        }
        .into(),
        text_message("hello, wörld", false).into(),
        text_message(&"compressible text ".repeat(50), true).into(),
        bytes_message(Bytes::from_static(b"\x00\x01binary\xff"), false).into(),
        bytes_message(Bytes::from(vec![9u8; 4096]), true).into(),
        map_msg.into(),
        stream_msg.into(),
        object_msg.into(),
        plain.into(),
        MessageDispatch {
            command_id: 0,
            consumer_id: Some(consumer_id()),
            destination: Some(Destination::queue("orders")),
            message: Some(Box::new(text_message("dispatched", false))),
            redelivery_counter: 2,
            ..MessageDispatch::default()
        }
        .into(),
        MessageAck {
            command_id: 11,
            destination: Some(Destination::queue("orders")),
            transaction_id: Some(local_tx()),
            consumer_id: Some(consumer_id()),
            ack_type: AckType::Poison as i8,
            first_message_id: Some(message_id(1)),
            last_message_id: Some(message_id(9)),
            message_count: 9,
            poison_cause: Some(exception()),
            ..MessageAck::default()
        }
        .into(),
        MessagePull {
            command_id: 12,
            consumer_id: Some(consumer_id()),
            destination: Some(Destination::queue("orders")),
            timeout: -1,
            correlation_id: Some("pull-1".into()),
            message_id: Some(message_id(3)),
            ..MessagePull::default()
        }
        .into(),
        ProducerAck {
            command_id: 0,
            response_required: false,
            producer_id: Some(producer_id()),
            size: 4096,
        }
        .into(),
        Response {
            command_id: 0,
            response_required: false,
            correlation_id: 3,
        }
        .into(),
        ExceptionResponse {
            command_id: 0,
            response_required: false,
            correlation_id: 1,
            exception: Some(exception()),
        }
        .into(),
        KeepAliveInfo {
            command_id: 0,
            response_required: true,
        }
        .into(),
        ConnectionControl {
            command_id: 0,
            response_required: false,
            fault_tolerant: true,
            connected_brokers: Some("tcp://a:61616,tcp://b:61617".into()),
            reconnect_to: Some("tcp://b:61617".into()),
            rebalance_connection: true,
            token: Some(Bytes::from_static(b"tok")),
            ..ConnectionControl::default()
        }
        .into(),
        ConsumerControl {
            command_id: 0,
            response_required: false,
            destination: Some(Destination::queue("orders")),
            consumer_id: Some(consumer_id()),
            prefetch: 10,
            start: true,
            ..ConsumerControl::default()
        }
        .into(),
        ConnectionError {
            command_id: 0,
            response_required: false,
            exception: Some(Throwable::new("java.io.IOException", "broken")),
            connection_id: Some(connection_id()),
        }
        .into(),
        RemoveSubscriptionInfo {
            command_id: 13,
            response_required: true,
            connection_id: Some(connection_id()),
            subscription_name: Some("durable-1".into()),
            client_id: Some("client-é".into()),
        }
        .into(),
        RemoveInfo {
            command_id: 14,
            response_required: true,
            object_id: Some(DataStructure::ConsumerId(consumer_id())),
            last_delivered_sequence_id: 77,
        }
        .into(),
        RemoveInfo {
            command_id: 15,
            response_required: true,
            object_id: Some(DataStructure::ConnectionId(connection_id())),
            last_delivered_sequence_id: -2,
        }
        .into(),
        ShutdownInfo {
            command_id: 16,
            response_required: false,
        }
        .into(),
    ]
}
