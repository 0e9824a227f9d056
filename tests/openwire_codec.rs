//! Golden tests of the OpenWire codec against ActiveMQ's own marshallers
//! (Debian's libactivemq-java, which ops/test.sh installs): a small Java
//! program (tests/openwire_java/OpenWireGolden.java, compiled here with
//! javac) marshals every command type in every encoding and Brokk decodes
//! them; Brokk encodes every command type and the Java program unmarshals
//! them and prints their fields, which the test checks by name. No broker
//! is involved: this is how we know the bytes are right.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::OnceLock;

use brokk::protocol::openwire::commands::*;
use brokk::protocol::openwire::compress;
use brokk::protocol::openwire::properties::Value;
use brokk::protocol::openwire::{samples, Codec, WireFormat, WireFormatInfo, WireFormatOptions};
use bytes::{Bytes, BytesMut};

/// The encodings the Java program writes and reads, by its names.
const ENCODINGS: [(&str, bool, bool); 4] = [
    ("loose", false, false),
    ("loose-cache", false, true),
    ("tight", true, false),
    ("tight-cache", true, true),
];

fn format(tight: bool, cache: bool) -> WireFormat {
    WireFormat {
        tight_encoding: tight,
        cache_enabled: cache,
        // 0: ActiveMQ's default size, which an OpenWireFormat that was
        // never renegotiated uses.
        cache_size: 0,
        stack_trace_enabled: true,
        ..WireFormat::initial(1 << 30)
    }
}

fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("openwire-java")
}

/// Compiles the Java program once per test run; the classpath to run it.
fn classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| common::java::compile("OpenWireGolden.java", &work_dir().join("classes")))
}

fn java(args: &[&str]) -> String {
    let out = Process::new("java")
        .args(["-cp", classpath(), "OpenWireGolden"])
        .args(args)
        .output()
        .expect("java runs");
    assert!(
        out.status.success(),
        "java {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from the Java program")
}

fn decode_file(path: &Path, f: WireFormat) -> Vec<Command> {
    let mut buf = BytesMut::from(&std::fs::read(path).unwrap()[..]);
    let mut codec = Codec::new(f);
    let mut cmds = Vec::new();
    while let Some(c) = codec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{}: frame {}: {e}", path.display(), cmds.len()))
    {
        cmds.push(c);
    }
    assert!(
        buf.is_empty(),
        "{}: {} bytes left over",
        path.display(),
        buf.len()
    );
    cmds
}

const JAVA_CONNECTION: &str = "ID:java-1";

fn java_session() -> SessionId {
    SessionId {
        connection_id: Some(JAVA_CONNECTION.into()),
        value: 1,
    }
}

fn java_producer() -> ProducerId {
    ProducerId {
        connection_id: Some(JAVA_CONNECTION.into()),
        value: 7,
        session_id: 1,
    }
}

fn java_consumer() -> ConsumerId {
    ConsumerId {
        connection_id: Some(JAVA_CONNECTION.into()),
        session_id: 1,
        value: 3,
    }
}

fn java_connection() -> Option<ConnectionId> {
    Some(ConnectionId {
        value: Some(JAVA_CONNECTION.into()),
    })
}

fn message(c: &Command) -> &Message {
    match c {
        Command::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The headers OpenWireGolden.headers() sets on message number `seq`.
fn check_headers(m: &Message, seq: i64) {
    let id = m.message_id.as_ref().expect("message id");
    assert_eq!(id.producer_id, Some(java_producer()));
    assert_eq!(id.producer_sequence_id, seq);
    assert_eq!(m.producer_id, Some(java_producer()));
    assert_eq!(m.destination, Some(Destination::queue("orders")));
    assert_eq!(
        m.correlation_id.as_deref(),
        Some(format!("corr-{seq}").as_str())
    );
    assert_eq!(m.jms_type.as_deref(), Some("type-x"));
    assert!(m.persistent);
    assert_eq!(m.priority, 7);
    assert_eq!(m.expiration, 1_700_000_060_000);
    assert_eq!(m.timestamp, 1_700_000_000_000);
    assert_eq!(
        m.reply_to,
        Some(Destination {
            kind: DestinationKind::TempQueue,
            physical_name: "ID:java-1:1:2".into()
        })
    );
    assert_eq!(m.group_id.as_deref(), Some("g"));
    assert_eq!(m.group_sequence, 2);
    assert_eq!(m.user_id.as_deref(), Some("alice"));
}

fn check_java_commands(cmds: &[Command]) {
    assert_eq!(cmds.len(), 30, "{cmds:#?}");
    let limit = 1 << 20;

    let Command::WireFormatInfo(info) = &cmds[0] else {
        panic!("{:?}", cmds[0])
    };
    let o = WireFormatOptions::from_info(info).unwrap();
    assert_eq!(o.version, 12);
    assert!(o.tight_encoding_enabled && o.cache_enabled && o.stack_trace_enabled);
    assert!(o.tcp_no_delay_enabled && !o.size_prefix_disabled);
    assert_eq!(o.cache_size, 1024);
    assert_eq!(o.max_inactivity_duration_ms, 30_000);
    assert_eq!(o.max_inactivity_duration_initial_delay_ms, 10_000);
    assert_eq!(o.max_frame_size, i64::MAX);
    assert_eq!(o.provider_name.as_deref(), Some("ActiveMQ"));

    let Command::BrokerInfo(b) = &cmds[1] else {
        panic!("{:?}", cmds[1])
    };
    assert_eq!(
        b.broker_id.as_ref().and_then(|i| i.value.as_deref()),
        Some("ID:broker-1")
    );
    assert_eq!(b.broker_url.as_deref(), Some("tcp://localhost:61616"));
    assert_eq!(b.broker_name.as_deref(), Some("amq"));
    assert!(b.master_broker && !b.slave_broker);
    assert_eq!(b.connection_id, 99);

    let Command::ConnectionInfo(c) = &cmds[2] else {
        panic!("{:?}", cmds[2])
    };
    assert_eq!((c.command_id, c.response_required), (1, true));
    assert_eq!(c.connection_id, java_connection());
    assert_eq!(c.client_id.as_deref(), Some("java-client"));
    assert_eq!(c.user_name.as_deref(), Some("alice"));
    assert_eq!(c.password.as_deref(), Some("secret"));
    assert!(c.fault_tolerant && c.client_master && !c.manageable);

    let Command::SessionInfo(s) = &cmds[3] else {
        panic!("{:?}", cmds[3])
    };
    assert_eq!(s.command_id, 2);
    assert_eq!(s.session_id, Some(java_session()));

    let Command::ProducerInfo(p) = &cmds[4] else {
        panic!("{:?}", cmds[4])
    };
    assert_eq!(p.producer_id, Some(java_producer()));
    assert_eq!(p.destination, Some(Destination::queue("orders")));
    assert_eq!(p.window_size, 1024);

    let Command::ConsumerInfo(c) = &cmds[5] else {
        panic!("{:?}", cmds[5])
    };
    assert_eq!(c.consumer_id, Some(java_consumer()));
    assert_eq!(c.destination, Some(Destination::topic("prices")));
    assert_eq!(c.prefetch_size, 1000);
    assert_eq!(c.selector.as_deref(), Some("price > 10"));
    assert_eq!(c.subscription_name.as_deref(), Some("sub"));
    assert_eq!(c.client_id.as_deref(), Some("java-client"));
    assert!(c.no_local && c.exclusive && !c.browser && !c.retroactive);
    assert_eq!(c.priority, -2);

    let Command::DestinationInfo(d) = &cmds[6] else {
        panic!("{:?}", cmds[6])
    };
    assert_eq!(d.connection_id, java_connection());
    assert_eq!(d.operation_type, 0);
    assert_eq!(
        d.destination,
        Some(Destination {
            kind: DestinationKind::TempQueue,
            physical_name: "ID:java-1:1:1".into()
        })
    );

    let Command::TransactionInfo(t) = &cmds[7] else {
        panic!("{:?}", cmds[7])
    };
    assert_eq!(
        TransactionType::from_byte(t.transaction_type),
        Some(TransactionType::Begin)
    );
    assert_eq!(
        t.transaction_id,
        Some(TransactionId::Local(LocalTransactionId {
            value: 5,
            connection_id: java_connection()
        }))
    );
    let Command::TransactionInfo(t) = &cmds[8] else {
        panic!("{:?}", cmds[8])
    };
    assert_eq!(
        TransactionType::from_byte(t.transaction_type),
        Some(TransactionType::Prepare)
    );
    assert_eq!(
        t.transaction_id,
        Some(TransactionId::Xa(XaTransactionId {
            format_id: 0x1234,
            global_transaction_id: Some(Bytes::from_static(b"global")),
            branch_qualifier: Some(Bytes::from_static(b"branch")),
        }))
    );

    let text = message(&cmds[9]);
    assert_eq!(text.kind, MessageKind::Text);
    check_headers(text, 1);
    assert!(matches!(text.transaction_id, Some(TransactionId::Local(ref l)) if l.value == 5));
    assert_eq!(
        compress::text(text, limit).unwrap().as_deref(),
        Some("hello from java é")
    );
    // OpenWireGolden sets the same properties as samples::every_property.
    assert_eq!(text.properties().unwrap(), samples::every_property());

    let ctext = message(&cmds[10]);
    check_headers(ctext, 2);
    assert!(ctext.compressed);
    assert_eq!(
        compress::text(ctext, limit).unwrap(),
        Some("compress me ".repeat(50))
    );

    let bytes = message(&cmds[11]);
    assert_eq!(bytes.kind, MessageKind::Bytes);
    check_headers(bytes, 3);
    assert_eq!(&compress::bytes(bytes, limit).unwrap()[..], &[0, 1, 2, 255]);

    let cbytes = message(&cmds[12]);
    assert!(cbytes.compressed);
    assert_eq!(compress::bytes(cbytes, limit).unwrap(), vec![9u8; 4096]);
    assert!(matches!(
        compress::bytes(cbytes, 4095),
        Err(brokk::protocol::openwire::CodecError::Compression(_))
    ));

    let map = message(&cmds[13]);
    assert_eq!(map.kind, MessageKind::Map);
    check_headers(map, 5);
    let body = compress::map(map, limit).unwrap();
    assert_eq!(body.get("k"), Some(&Value::String("v".into())));
    assert_eq!(body.get("n"), Some(&Value::Int(5)));

    let stream = message(&cmds[14]);
    assert_eq!(stream.kind, MessageKind::Stream);
    // writeInt(9), writeString("s"): typed values back to back.
    assert_eq!(
        compress::stream(stream, limit).unwrap(),
        vec![Value::Int(9), Value::String("s".into())]
    );

    let object = message(&cmds[15]);
    assert_eq!(object.kind, MessageKind::Object);
    assert!(
        object.raw_content().starts_with(&[0xac, 0xed]),
        "Java serialization"
    );

    let plain = message(&cmds[16]);
    assert_eq!(plain.kind, MessageKind::Message);
    check_headers(plain, 8);
    assert_eq!(plain.content, None);

    let Command::MessageDispatch(d) = &cmds[17] else {
        panic!("{:?}", cmds[17])
    };
    assert_eq!(d.consumer_id, Some(java_consumer()));
    assert_eq!(d.redelivery_counter, 2);
    let inner = d.message.as_ref().expect("dispatched message");
    check_headers(inner, 9);
    assert_eq!(
        compress::text(inner, limit).unwrap().as_deref(),
        Some("dispatched")
    );

    let Command::MessageAck(a) = &cmds[18] else {
        panic!("{:?}", cmds[18])
    };
    assert_eq!(AckType::from_byte(a.ack_type), Some(AckType::Poison));
    assert_eq!(a.consumer_id, Some(java_consumer()));
    assert_eq!(
        a.first_message_id.as_ref().map(|m| m.producer_sequence_id),
        Some(1)
    );
    assert_eq!(
        a.last_message_id.as_ref().map(|m| m.producer_sequence_id),
        Some(9)
    );
    assert_eq!(a.message_count, 9);
    let cause = a.poison_cause.as_ref().expect("poison cause");
    assert_eq!(cause.class_name, "java.lang.Throwable");
    assert_eq!(cause.message.as_deref(), Some("poison"));
    assert!(!cause.stack_trace.is_empty(), "stack traces are on");

    let Command::MessagePull(p) = &cmds[19] else {
        panic!("{:?}", cmds[19])
    };
    assert_eq!((p.timeout, p.correlation_id.as_deref()), (-1, Some("pull")));

    let Command::ProducerAck(p) = &cmds[20] else {
        panic!("{:?}", cmds[20])
    };
    assert_eq!(
        (p.producer_id.clone(), p.size),
        (Some(java_producer()), 4096)
    );

    let Command::Response(r) = &cmds[21] else {
        panic!("{:?}", cmds[21])
    };
    assert_eq!(r.correlation_id, 3);

    let Command::ExceptionResponse(e) = &cmds[22] else {
        panic!("{:?}", cmds[22])
    };
    assert_eq!(e.correlation_id, 1);
    let ex = e.exception.as_ref().expect("exception");
    assert_eq!(ex.class_name, "javax.jms.JMSSecurityException");
    assert_eq!(ex.message.as_deref(), Some("denied"));

    assert!(matches!(cmds[23], Command::KeepAliveInfo(_)));

    let Command::ConnectionControl(c) = &cmds[24] else {
        panic!("{:?}", cmds[24])
    };
    assert!(c.fault_tolerant && c.rebalance_connection && !c.close);
    assert_eq!(c.reconnect_to.as_deref(), Some("tcp://b:61617"));

    let Command::ConsumerControl(c) = &cmds[25] else {
        panic!("{:?}", cmds[25])
    };
    assert_eq!((c.prefetch, c.start, c.stop), (10, true, false));
    assert_eq!(c.consumer_id, Some(java_consumer()));

    let Command::ConnectionError(c) = &cmds[26] else {
        panic!("{:?}", cmds[26])
    };
    assert_eq!(c.connection_id, java_connection());
    let ex = c.exception.as_ref().expect("exception");
    assert_eq!(
        (ex.class_name.as_str(), ex.message.as_deref()),
        ("java.io.IOException", Some("broken"))
    );

    let Command::RemoveSubscriptionInfo(r) = &cmds[27] else {
        panic!("{:?}", cmds[27])
    };
    assert_eq!(r.subscription_name.as_deref(), Some("sub"));
    assert_eq!(r.client_id.as_deref(), Some("java-client"));

    let Command::RemoveInfo(r) = &cmds[28] else {
        panic!("{:?}", cmds[28])
    };
    assert_eq!(
        r.object_id,
        Some(DataStructure::ConsumerId(java_consumer()))
    );
    assert_eq!(r.last_delivered_sequence_id, 77);

    assert!(matches!(cmds[29], Command::ShutdownInfo(_)));
}

#[test]
fn brokk_decodes_every_frame_activemq_marshals() {
    let dir = work_dir().join("from-java");
    std::fs::create_dir_all(&dir).unwrap();
    java(&["write", dir.to_str().unwrap()]);
    for (name, tight, cache) in ENCODINGS {
        let cmds = decode_file(&dir.join(format!("java-{name}.bin")), format(tight, cache));
        check_java_commands(&cmds);
    }
}

/// What the Java program must print for each of `samples::commands()`.
fn expected_lines() -> Vec<Vec<String>> {
    let conn = samples::CONNECTION;
    let e = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let msg_headers = |seq: u32, kind: &str| {
        vec![
            format!("{kind} |messageId={conn}:1:7:{seq} "),
            "|destination=queue://orders ".into(),
            format!("|replyTo=temp-queue://{conn}:1 "),
            "|correlationId=corr-1 |type=order |persistent=true |priority=7 ".into(),
            "|expiration=1700000060000 |timestamp=1700000000000 ".into(),
        ]
    };
    let every_prop = "|props={p_big_string:UTF8Buffer=bbbbbbbbbb...(10000);p_bool:Boolean=true;\
        p_byte:Byte=-3;p_bytes:byte[]=0001ff;p_char:Character=€;p_double:Double=-2.25;\
        p_float:Float=1.5;p_int:Integer=70000;p_list:ArrayList=[1, x];p_long:Long=-1099511627776;\
        p_map:HashMap={inner=1};p_null:null=null;p_short:Short=-300;\
        p_string:UTF8Buffer=héllo wörld;}";
    let mut text = msg_headers(1, "ActiveMQTextMessage");
    text.extend(e(&[
        &format!("|transactionId=TX:{conn}:5 "),
        "|compressed=false ",
        every_prop,
        "|text=hello, wörld",
    ]));
    let mut ctext = msg_headers(1, "ActiveMQTextMessage");
    ctext.extend(e(&[
        "|compressed=true ",
        &format!("|text={}", "compressible text ".repeat(50)),
    ]));
    let mut bytes = msg_headers(2, "ActiveMQBytesMessage");
    bytes.extend(e(&["|compressed=false ", "|bytes=000162696e617279ff"]));
    let mut cbytes = msg_headers(2, "ActiveMQBytesMessage");
    cbytes.extend(e(&[
        "|compressed=true ",
        &format!("|bytes={}", "09".repeat(4096)),
    ]));
    let mut map = msg_headers(3, "ActiveMQMapMessage");
    map.extend(e(&["|map={k:"]));
    map[3] = "|correlationId=corr-1 ".into();
    let mut object = e(&[
        &format!("ActiveMQObjectMessage |messageId={conn}:1:7:5 "),
        "|destination=topic://prices ",
        "|transactionId=XID:[4660,globalId=676c6f62616c,branchId=6272616e6368] ",
    ]);
    object.push("|correlationId=corr-1 ".into());
    let plain = e(&[
        &format!("ActiveMQMessage |messageId={conn}:1:7:6 "),
        "|props={}",
    ]);
    vec![
        e(&[
            "WireFormatInfo |valid=true |version=12 ",
            "CacheSize:Integer=1024;",
            "ProviderName:UTF8Buffer=Brokk;",
            "TightEncodingEnabled:Boolean=true;",
            "MaxInactivityDuration:Long=30000;",
        ]),
        e(&[
            "BrokerInfo {commandId = 1, ",
            "brokerId = ID:brokk-1, brokerURL = tcp://localhost:61616, ",
            "masterBroker = true, ",
            "brokerName = brokk, connectionId = 99, ",
        ]),
        e(&[
            "ConnectionInfo {commandId = 1, responseRequired = true, ",
            &format!(
                "connectionId = {conn}, clientId = client-é, clientIp = tcp://127.0.0.1:5555, "
            ),
            "userName = alice, ",
            "manageable = true, ",
            "faultTolerant = true, ",
        ]),
        e(&[
            "SessionInfo {commandId = 2, responseRequired = true, ",
            &format!("sessionId = {conn}:1}}"),
        ]),
        e(&[
            &format!("producerId = {conn}:1:7, destination = queue://orders, "),
            "dispatchAsync = true, windowSize = 1048576, ",
        ]),
        e(&[
            &format!("consumerId = {conn}:1:3, destination = topic://prices, "),
            "prefetchSize = 1000, maximumPendingMessageLimit = -1, ",
            "selector = price > 10 AND sym LIKE 'A%', clientId = client-é, ",
            "subscriptionName = durable-1, noLocal = true, exclusive = true, ",
            "priority = -2, ",
        ]),
        e(&[&format!(
            "destination = temp-topic://{conn}:2, operationType = 0, "
        )]),
        e(&["type = 0, ", &format!("transactionId = TX:{conn}:5}}")]),
        e(&[
            "type = 1, ",
            "transactionId = XID:[4660,globalId=676c6f62616c,branchId=6272616e6368]}",
        ]),
        text,
        ctext,
        bytes,
        cbytes,
        map,
        e(&[&format!("ActiveMQStreamMessage |messageId={conn}:1:7:4 ")]),
        object,
        plain,
        e(&[
            &format!("MessageDispatch |consumerId={conn}:1:3 |redeliveryCounter=2 "),
            "|message=ActiveMQTextMessage ",
            "|text=dispatched",
        ]),
        e(&[
            "ackType = 1, ",
            &format!("firstMessageId = {conn}:1:7:1, lastMessageId = {conn}:1:7:9, "),
            "messageCount = 9, ",
            "poisonCause = javax.jms.JMSSecurityException: User name [bob] or password is invalid.",
        ]),
        e(&[&format!("consumerId = {conn}:1:3, "), "timeout = -1}"]),
        e(&[&format!("producerId = {conn}:1:7, size = 4096}}")]),
        e(&["Response {commandId = 0, responseRequired = false, correlationId = 3}"]),
        e(&[
            "ExceptionResponse |correlationId=1 ",
            "|exception=javax.jms.JMSSecurityException: User name [bob] or password is invalid. ",
            "|frames=1 |cause=java.lang.IllegalStateException: cause",
        ]),
        e(&["KeepAliveInfo "]),
        e(&[
            "faultTolerant = true, ",
            "connectedBrokers = tcp://a:61616,tcp://b:61617, reconnectTo = tcp://b:61617, ",
            "rebalanceConnection = true",
        ]),
        e(&[
            &format!("consumerId = {conn}:1:3, "),
            "start = true, ",
            "prefetch = 10, destination = queue://orders}",
        ]),
        e(&["ConnectionError "]),
        e(&[&format!(
            "connectionId = {conn}, clientId = client-é, subscriptionName = durable-1}}"
        )]),
        e(&[&format!(
            "objectId = {conn}:1:3, lastDeliveredSequenceId = 77}}"
        )]),
        e(&[&format!(
            "objectId = {conn}, lastDeliveredSequenceId = -2}}"
        )]),
        e(&["ShutdownInfo {commandId = 16, "]),
    ]
}

#[test]
fn activemq_reads_every_frame_brokk_encodes() {
    let dir = work_dir().join("from-brokk");
    std::fs::create_dir_all(&dir).unwrap();
    let cmds = samples::commands();
    let expected = expected_lines();
    assert_eq!(cmds.len(), expected.len());
    for (name, tight, cache) in ENCODINGS {
        let mut codec = Codec::new(format(tight, cache));
        let mut out = BytesMut::new();
        for c in &cmds {
            codec.encode(c, &mut out).unwrap();
        }
        let path = dir.join(format!("rust-{name}.bin"));
        std::fs::write(&path, &out).unwrap();
        let printed = java(&["read", name, path.to_str().unwrap()]);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), cmds.len(), "{name}:\n{printed}");
        for (i, (line, parts)) in lines.iter().zip(&expected).enumerate() {
            for part in parts {
                assert!(
                    line.contains(part.as_str()),
                    "{name}, command {i}: {part:?} not in\n{line}"
                );
            }
        }
    }
}

/// The handshake as the listener will run it: the client's own
/// WireFormatInfo, as ActiveMQ writes it before negotiation (loose, size
/// prefix), is negotiated against Brokk's defaults.
#[test]
fn activemq_client_wire_format_negotiates_tight_with_cache() {
    let dir = work_dir().join("from-java-handshake");
    std::fs::create_dir_all(&dir).unwrap();
    java(&["write", dir.to_str().unwrap()]);
    let cmds = decode_file(&dir.join("java-loose.bin"), WireFormat::initial(1 << 20));
    let Command::WireFormatInfo(info) = &cmds[0] else {
        panic!("{:?}", cmds[0])
    };
    let info: &WireFormatInfo = info;
    let mut codec = Codec::new(WireFormat::initial(1 << 20));
    let f = codec
        .renegotiate(&WireFormatOptions::default(), info)
        .unwrap();
    assert_eq!(codec.format(), &f);
    assert_eq!(f.version, 12);
    assert!(
        f.tight_encoding && f.cache_enabled && f.stack_trace_enabled && !f.size_prefix_disabled
    );
    assert_eq!(f.cache_size, 1024);
    assert_eq!(f.max_frame_size, 104_857_600);
    assert_eq!(f.max_inactivity_duration_ms, 30_000);
}

/// What the test server saw of a live client session.
#[derive(Default, Debug)]
struct Seen {
    format: Option<WireFormat>,
    user: Option<String>,
    client_id: Option<String>,
    texts: Vec<String>,
    acks: Vec<AckType>,
    shutdown: bool,
}

/// A one-connection stand-in for the listener, enough for ActiveMQ's JMS
/// client to connect, consume, send and close: every command that asks
/// for one gets a Response, and a message sent to a queue with a consumer
/// is dispatched back to it.
fn serve_one(listener: std::net::TcpListener) -> Seen {
    use std::io::{Read, Write};
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let ours = WireFormatOptions::default();
    let mut codec = Codec::new(WireFormat::initial(1 << 20));
    let mut out = BytesMut::new();
    codec
        .encode(&ours.to_info().unwrap().into(), &mut out)
        .unwrap();
    sock.write_all(&out).unwrap();
    let mut seen = Seen::default();
    let mut consumers: Vec<ConsumerInfo> = Vec::new();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(cmd) = codec.decode(&mut buf).unwrap() {
            let mut replies: Vec<Command> = Vec::new();
            if cmd.response_required() {
                replies.push(
                    Response {
                        correlation_id: cmd.command_id(),
                        ..Response::default()
                    }
                    .into(),
                );
            }
            match cmd {
                Command::WireFormatInfo(info) => {
                    seen.format = Some(codec.renegotiate(&ours, &info).unwrap());
                    replies.push(
                        BrokerInfo {
                            broker_id: Some(BrokerId {
                                value: Some("ID:brokk-test".into()),
                            }),
                            broker_name: Some("brokk".into()),
                            ..BrokerInfo::default()
                        }
                        .into(),
                    );
                }
                Command::ConnectionInfo(c) => {
                    seen.user = c.user_name.clone();
                    seen.client_id = c.client_id.clone();
                }
                Command::ConsumerInfo(c) => consumers.push(*c),
                Command::Message(m) => {
                    seen.texts
                        .extend(compress::text(&m, 1 << 20).ok().flatten());
                    for c in consumers.iter().filter(|c| c.destination == m.destination) {
                        replies.push(
                            MessageDispatch {
                                consumer_id: c.consumer_id.clone(),
                                destination: m.destination.clone(),
                                message: Some(m.clone()),
                                ..MessageDispatch::default()
                            }
                            .into(),
                        );
                    }
                }
                Command::MessageAck(a) => seen.acks.extend(AckType::from_byte(a.ack_type)),
                Command::ShutdownInfo(_) => {
                    seen.shutdown = true;
                    return seen;
                }
                _ => {}
            }
            let mut out = BytesMut::new();
            for r in &replies {
                codec.encode(r, &mut out).unwrap();
            }
            sock.write_all(&out).unwrap();
        }
        let n = sock
            .read(&mut chunk)
            .expect("the client goes on talking within 20 s");
        if n == 0 {
            return seen;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// ActiveMQ's JMS client, unchanged, runs a session against the codec:
/// the handshake negotiates tight encoding with the cache, and every frame
/// after it (ids cached, properties, a dispatch back to the client) is
/// understood by both sides.
#[test]
fn a_real_activemq_client_session_runs_over_the_codec() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || serve_one(listener));
    let printed = java(&["client", &url]);
    let seen = server.join().expect("the test server ran to the end");
    assert!(
        printed.contains("received: hello over the wire n=42"),
        "{printed}"
    );
    assert!(printed.contains("closed"), "{printed}");
    let f = seen.format.expect("negotiated");
    assert!(
        f.tight_encoding && f.cache_enabled && f.version == 12,
        "{f:?}"
    );
    assert_eq!(seen.user.as_deref(), Some("alice"));
    assert_eq!(seen.client_id.as_deref(), Some("golden-client"));
    assert_eq!(seen.texts, vec!["hello over the wire".to_string()]);
    assert!(seen.acks.contains(&AckType::Standard), "{:?}", seen.acks);
    assert!(seen.shutdown);
}
