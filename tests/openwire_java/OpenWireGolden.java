// Golden frames for Brokk's OpenWire codec, made and read by ActiveMQ's own
// marshallers (org.apache.activemq.openwire.OpenWireFormat, version 12).
//
//   java OpenWireGolden write DIR      one file per encoding, DIR/java-NAME.bin,
//                                      holding every command type in turn
//   java OpenWireGolden read NAME FILE unmarshals FILE (written by Brokk) and
//                                      prints one line per command
//   java OpenWireGolden client URL     a real JMS client session against URL:
//                                      consume, send a text message, receive
//                                      it back, print it, close
//
// NAME is loose, loose-cache, tight or tight-cache. tests/openwire_codec.rs
// runs both directions and checks the fields by name.
import java.io.*;
import java.nio.file.*;
import java.util.*;
import javax.transaction.xa.Xid;
import org.apache.activemq.command.*;
import org.apache.activemq.openwire.OpenWireFormat;
import org.apache.activemq.openwire.OpenWireFormatFactory;
import org.apache.activemq.util.ByteSequence;

public class OpenWireGolden {
    static final String[] NAMES = {"loose", "loose-cache", "tight", "tight-cache"};

    static OpenWireFormat format(String name) {
        OpenWireFormat f = new OpenWireFormat(12);
        f.setTightEncodingEnabled(name.startsWith("tight"));
        f.setCacheEnabled(name.endsWith("cache"));
        f.setStackTraceEnabled(true);
        f.setSizePrefixDisabled(false);
        return f;
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("write")) {
            for (String name : NAMES) {
                OpenWireFormat f = format(name);
                try (DataOutputStream out = new DataOutputStream(new BufferedOutputStream(
                        new FileOutputStream(new File(args[1], "java-" + name + ".bin"))))) {
                    for (Object c : commands()) {
                        f.marshal(c, out);
                    }
                }
            }
        } else if (args.length == 3 && args[0].equals("read")) {
            OpenWireFormat f = format(args[1]);
            byte[] all = Files.readAllBytes(Paths.get(args[2]));
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(all));
            PrintStream out = new PrintStream(System.out, true, "UTF-8");
            while (in.available() > 0) {
                out.println(describe(f.unmarshal(in)));
            }
        } else if (args.length == 2 && args[0].equals("client")) {
            client(args[1]);
        } else {
            System.err.println("usage: OpenWireGolden write DIR | read NAME FILE | client URL");
            System.exit(2);
        }
    }

    static void client(String url) throws Exception {
        javax.jms.Connection c = new org.apache.activemq.ActiveMQConnectionFactory(url)
                .createConnection("alice", "secret");
        c.setClientID("golden-client");
        c.start();
        javax.jms.Session s = c.createSession(false, javax.jms.Session.AUTO_ACKNOWLEDGE);
        javax.jms.Queue q = s.createQueue("golden");
        javax.jms.MessageConsumer consumer = s.createConsumer(q);
        javax.jms.MessageProducer producer = s.createProducer(q);
        javax.jms.TextMessage m = s.createTextMessage("hello over the wire");
        m.setIntProperty("n", 42);
        producer.send(m);
        javax.jms.Message got = consumer.receive(10000);
        if (!(got instanceof javax.jms.TextMessage)) {
            throw new IllegalStateException("received " + got);
        }
        PrintStream out = new PrintStream(System.out, true, "UTF-8");
        out.println("received: " + ((javax.jms.TextMessage) got).getText() + " n=" + got.getIntProperty("n"));
        c.close();
        out.println("closed");
    }

    static final ConnectionId CONNECTION = new ConnectionId("ID:java-1");
    static final SessionId SESSION = new SessionId(CONNECTION, 1);
    static final ProducerId PRODUCER = new ProducerId(SESSION, 7);
    static final ConsumerId CONSUMER = new ConsumerId(SESSION, 3);
    static final ActiveMQQueue QUEUE = new ActiveMQQueue("orders");
    static final ActiveMQTopic TOPIC = new ActiveMQTopic("prices");

    static List<Object> commands() throws Exception {
        List<Object> l = new ArrayList<>();
        OpenWireFormatFactory factory = new OpenWireFormatFactory();
        l.add(((OpenWireFormat) factory.createWireFormat()).getPreferedWireFormatInfo());

        BrokerInfo broker = new BrokerInfo();
        broker.setBrokerId(new BrokerId("ID:broker-1"));
        broker.setBrokerURL("tcp://localhost:61616");
        broker.setBrokerName("amq");
        broker.setMasterBroker(true);
        broker.setConnectionId(99);
        l.add(broker);

        ConnectionInfo conn = new ConnectionInfo(CONNECTION);
        conn.setCommandId(1);
        conn.setResponseRequired(true);
        conn.setClientId("java-client");
        conn.setUserName("alice");
        conn.setPassword("secret");
        conn.setFaultTolerant(true);
        l.add(conn);

        SessionInfo session = new SessionInfo(SESSION);
        session.setCommandId(2);
        l.add(session);

        ProducerInfo producer = new ProducerInfo(PRODUCER);
        producer.setDestination(QUEUE);
        producer.setWindowSize(1024);
        l.add(producer);

        ConsumerInfo consumer = new ConsumerInfo(CONSUMER);
        consumer.setDestination(TOPIC);
        consumer.setPrefetchSize(1000);
        consumer.setSelector("price > 10");
        consumer.setSubscriptionName("sub");
        consumer.setClientId("java-client");
        consumer.setNoLocal(true);
        consumer.setExclusive(true);
        consumer.setPriority((byte) -2);
        l.add(consumer);

        l.add(new DestinationInfo(CONNECTION, DestinationInfo.ADD_OPERATION_TYPE,
                new ActiveMQTempQueue("ID:java-1:1:1")));
        LocalTransactionId localTx = new LocalTransactionId(CONNECTION, 5);
        l.add(new TransactionInfo(CONNECTION, localTx, TransactionInfo.BEGIN));
        XATransactionId xaTx = new XATransactionId(new Xid() {
            public int getFormatId() { return 0x1234; }
            public byte[] getGlobalTransactionId() { return "global".getBytes(); }
            public byte[] getBranchQualifier() { return "branch".getBytes(); }
        });
        l.add(new TransactionInfo(CONNECTION, xaTx, TransactionInfo.PREPARE));

        ActiveMQTextMessage text = new ActiveMQTextMessage();
        headers(text, 1);
        text.setTransactionId(localTx);
        text.setText("hello from java é");
        text.setProperty("p_null", null);
        text.setProperty("p_bool", Boolean.TRUE);
        text.setProperty("p_byte", (byte) -3);
        text.setProperty("p_char", '€');
        text.setProperty("p_short", (short) -300);
        text.setProperty("p_int", 70000);
        text.setProperty("p_long", -(1L << 40));
        text.setProperty("p_float", 1.5f);
        text.setProperty("p_double", -2.25d);
        text.setProperty("p_string", "héllo wörld");
        text.setProperty("p_big_string", String.join("", Collections.nCopies(10000, "b")));
        text.setProperty("p_bytes", new byte[] {0, 1, (byte) 255});
        Map<String, Object> inner = new HashMap<>();
        inner.put("inner", 1);
        text.setProperty("p_map", inner);
        text.setProperty("p_list", Arrays.asList(1L, "x"));
        l.add(text);

        ActiveMQTextMessage compressedText = new ActiveMQTextMessage();
        headers(compressedText, 2);
        compressedText.setText(String.join("", Collections.nCopies(50, "compress me ")));
        compressedText.compress();
        l.add(compressedText);

        ActiveMQBytesMessage bytes = new ActiveMQBytesMessage();
        headers(bytes, 3);
        bytes.writeBytes(new byte[] {0, 1, 2, (byte) 255});
        bytes.storeContent();
        l.add(bytes);

        ActiveMQBytesMessage compressedBytes = new ActiveMQBytesMessage();
        headers(compressedBytes, 4);
        byte[] nines = new byte[4096];
        Arrays.fill(nines, (byte) 9);
        compressedBytes.writeBytes(nines);
        compressedBytes.compress();
        l.add(compressedBytes);

        ActiveMQMapMessage map = new ActiveMQMapMessage();
        headers(map, 5);
        map.setString("k", "v");
        map.setInt("n", 5);
        map.storeContent();
        l.add(map);

        ActiveMQStreamMessage stream = new ActiveMQStreamMessage();
        headers(stream, 6);
        stream.writeInt(9);
        stream.writeString("s");
        stream.storeContent();
        l.add(stream);

        ActiveMQObjectMessage object = new ActiveMQObjectMessage();
        headers(object, 7);
        object.setObject("serialized");
        object.storeContent();
        l.add(object);

        ActiveMQMessage plain = new ActiveMQMessage();
        headers(plain, 8);
        l.add(plain);

        ActiveMQTextMessage dispatched = new ActiveMQTextMessage();
        headers(dispatched, 9);
        dispatched.setText("dispatched");
        MessageDispatch dispatch = new MessageDispatch();
        dispatch.setConsumerId(CONSUMER);
        dispatch.setDestination(QUEUE);
        dispatch.setMessage(dispatched);
        dispatch.setRedeliveryCounter(2);
        l.add(dispatch);

        MessageAck ack = new MessageAck();
        ack.setDestination(QUEUE);
        ack.setConsumerId(CONSUMER);
        ack.setAckType(MessageAck.POISON_ACK_TYPE);
        ack.setFirstMessageId(new MessageId(PRODUCER, 1));
        ack.setLastMessageId(new MessageId(PRODUCER, 9));
        ack.setMessageCount(9);
        ack.setPoisonCause(new Throwable("poison"));
        l.add(ack);

        MessagePull pull = new MessagePull();
        pull.setConsumerId(CONSUMER);
        pull.setDestination(QUEUE);
        pull.setTimeout(-1);
        pull.setCorrelationId("pull");
        l.add(pull);

        l.add(new ProducerAck(PRODUCER, 4096));
        Response response = new Response();
        response.setCorrelationId(3);
        l.add(response);
        ExceptionResponse error = new ExceptionResponse(new javax.jms.JMSSecurityException("denied"));
        error.setCorrelationId(1);
        l.add(error);
        l.add(new KeepAliveInfo());

        ConnectionControl control = new ConnectionControl();
        control.setFaultTolerant(true);
        control.setReconnectTo("tcp://b:61617");
        control.setRebalanceConnection(true);
        l.add(control);

        ConsumerControl consumerControl = new ConsumerControl();
        consumerControl.setConsumerId(CONSUMER);
        consumerControl.setDestination(QUEUE);
        consumerControl.setPrefetch(10);
        consumerControl.setStart(true);
        l.add(consumerControl);

        ConnectionError connError = new ConnectionError();
        connError.setException(new IOException("broken"));
        connError.setConnectionId(CONNECTION);
        l.add(connError);

        RemoveSubscriptionInfo unsubscribe = new RemoveSubscriptionInfo();
        unsubscribe.setConnectionId(CONNECTION);
        unsubscribe.setSubscriptionName("sub");
        unsubscribe.setClientId("java-client");
        l.add(unsubscribe);

        RemoveInfo remove = new RemoveInfo(CONSUMER);
        remove.setLastDeliveredSequenceId(77);
        l.add(remove);
        l.add(new ShutdownInfo());
        return l;
    }

    static void headers(ActiveMQMessage m, long seq) throws Exception {
        m.setMessageId(new MessageId(PRODUCER, seq));
        m.setProducerId(PRODUCER);
        m.setDestination(QUEUE);
        m.setCorrelationId("corr-" + seq);
        m.setType("type-x");
        m.setPersistent(true);
        m.setPriority((byte) 7);
        m.setExpiration(1700000060000L);
        m.setTimestamp(1700000000000L);
        m.setReplyTo(new ActiveMQTempQueue("ID:java-1:1:2"));
        m.setGroupID("g");
        m.setGroupSequence(2);
        m.setUserID("alice");
    }

    static String describe(Object o) throws Exception {
        if (o == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder(o.getClass().getSimpleName());
        if (o instanceof ActiveMQMessage) {
            ActiveMQMessage m = (ActiveMQMessage) o;
            b.append(" |messageId=").append(m.getMessageId())
             .append(" |destination=").append(m.getDestination())
             .append(" |replyTo=").append(m.getReplyTo())
             .append(" |correlationId=").append(m.getCorrelationId())
             .append(" |type=").append(m.getType())
             .append(" |persistent=").append(m.isPersistent())
             .append(" |priority=").append(m.getPriority())
             .append(" |expiration=").append(m.getExpiration())
             .append(" |timestamp=").append(m.getTimestamp())
             .append(" |transactionId=").append(m.getTransactionId())
             .append(" |compressed=").append(m.isCompressed())
             .append(" |props=").append(props(m.getProperties()));
            if (o instanceof ActiveMQTextMessage) {
                b.append(" |text=").append(((ActiveMQTextMessage) o).getText());
            } else if (o instanceof ActiveMQBytesMessage) {
                ActiveMQBytesMessage bm = (ActiveMQBytesMessage) o;
                bm.reset();
                byte[] body = new byte[(int) bm.getBodyLength()];
                bm.readBytes(body);
                b.append(" |bytes=").append(hex(body));
            } else if (o instanceof ActiveMQMapMessage) {
                b.append(" |map=").append(props(((ActiveMQMapMessage) o).getContentMap()));
            }
        } else if (o instanceof MessageDispatch) {
            MessageDispatch d = (MessageDispatch) o;
            b.append(" |consumerId=").append(d.getConsumerId())
             .append(" |redeliveryCounter=").append(d.getRedeliveryCounter())
             .append(" |message=").append(describe(d.getMessage()));
        } else if (o instanceof WireFormatInfo) {
            WireFormatInfo w = (WireFormatInfo) o;
            b.append(" |valid=").append(w.isValid())
             .append(" |version=").append(w.getVersion())
             .append(" |props=").append(props(w.getProperties()));
        } else if (o instanceof ExceptionResponse) {
            Throwable t = ((ExceptionResponse) o).getException();
            b.append(" |correlationId=").append(((ExceptionResponse) o).getCorrelationId())
             .append(" |exception=").append(t.getClass().getName()).append(": ").append(t.getMessage())
             .append(" |frames=").append(t.getStackTrace().length)
             .append(" |cause=").append(t.getCause());
        } else {
            b.append(" ").append(o);
        }
        return b.toString().replace('\n', ' ');
    }

    static String props(Map<String, Object> map) {
        if (map == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("{");
        for (String k : new TreeSet<>(map.keySet())) {
            Object v = map.get(k);
            String type = v == null ? "null" : v.getClass().getSimpleName();
            String value = v instanceof byte[] ? hex((byte[]) v) : String.valueOf(v);
            if (value.length() > 40) {
                value = value.substring(0, 10) + "...(" + value.length() + ")";
            }
            b.append(k).append(':').append(type).append('=').append(value).append(';');
        }
        return b.append('}').toString();
    }

    static String hex(byte[] data) {
        StringBuilder b = new StringBuilder();
        for (byte x : data) {
            b.append(String.format("%02x", x));
        }
        return b.toString();
    }
}
