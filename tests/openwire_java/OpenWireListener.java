// ActiveMQ's JMS client (Debian's libactivemq-java 5.17), unchanged,
// against the real brokk binary: one case per run, named by the first
// argument, the broker URL second. A case prints "ok <case>" and exits 0,
// or prints "FAIL <why>" and exits 1; every wait has a deadline, and the
// process exits even if a client thread hangs.

import javax.jms.BytesMessage;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.JMSException;
import javax.jms.JMSSecurityException;
import javax.jms.MapMessage;
import javax.jms.ObjectMessage;
import javax.jms.StreamMessage;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;
import javax.jms.TemporaryQueue;
import javax.jms.TextMessage;
import javax.jms.Topic;

import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQSession;

public class OpenWireListener {
    static final long WAIT_MS = 10_000;
    static String url;

    public static void main(String[] args) {
        // A hung client thread must not hang the test.
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(60_000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL the case did not finish within 60 s");
            for (java.util.Map.Entry<Thread, StackTraceElement[]> e : Thread.getAllStackTraces().entrySet()) {
                System.out.println("thread " + e.getKey().getName());
                for (StackTraceElement f : e.getValue()) {
                    System.out.println("    at " + f);
                }
            }
            System.out.flush();
            Runtime.getRuntime().halt(1);
        });
        watchdog.setDaemon(true);
        watchdog.start();
        int code = 1;
        try {
            url = args[1];
            switch (args[0]) {
                case "queue": queue(); break;
                case "client-ack": clientAck(); break;
                case "topic": topic(); break;
                case "bad-password": badPassword(); break;
                case "individual-ack": individualAck(); break;
                case "selector": selector(); break;
                case "transacted": transacted(); break;
                case "temporary": temporary(); break;
                case "message-kinds": messageKinds(); break;
                case "poison": poison(); break;
                case "producer-window": producerWindow(); break;
                case "browse": browse(); break;
                case "pull": pull(); break;
                case "stomp-replies": stompReplies(args[2]); break;
                case "durable": durable(); break;
                case "client-id": clientId(); break;
                case "send-to-stomp": sendToStomp(args[2]); break;
                case "receive-from-stomp": receiveFromStomp(args[2]); break;
                case "failover": failover(); break;
                case "exclusive-no-local": exclusiveNoLocal(); break;
                case "priority-expiry-dups-ok": priorityExpiryDupsOk(); break;
                case "close-after-one": closeAfterOne(); break;
                case "poison-by-close": poisonByClose(args[2]); break;
                default: throw new IllegalArgumentException("unknown case " + args[0]);
            }
            System.out.println("ok " + args[0]);
            code = 0;
        } catch (Throwable t) {
            System.out.println("FAIL " + t);
            t.printStackTrace(System.out);
        }
        System.out.flush();
        Runtime.getRuntime().halt(code);
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException(what);
        }
    }

    static Connection connect() throws JMSException {
        Connection c = new ActiveMQConnectionFactory(url).createConnection("alice", "secret");
        c.start();
        return c;
    }

    /** A connection with client options (`jms.x=y&...`) in its URL. */
    static Connection connectWith(String options) throws JMSException {
        Connection c = new ActiveMQConnectionFactory(url + "?" + options).createConnection("alice", "secret");
        c.start();
        return c;
    }

    /**
     * Through a failover: URL (the test kills the master once "sent 1000"
     * is printed): 8 producers on one connection send 500 persistent
     * messages each; then every message must arrive exactly once, with
     * the JMSMessageID its producer saw.
     */
    static void failover() throws Exception {
        final int producers = 8, each = 500, total = producers * each;
        Connection c = new ActiveMQConnectionFactory(url).createConnection("alice", "secret");
        c.start();
        // A consumer that lives through the failover: what the new master
        // dispatches must not look like what the old one did (the client
        // keeps its duplicate audit and would poison-ack it).
        Session early = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue before = early.createQueue("ow.failover.early");
        MessageProducer pre = early.createProducer(before);
        MessageConsumer survivor = early.createConsumer(before);
        for (int i = 0; i < 10; i++) {
            pre.send(early.createTextMessage("early-" + i));
        }
        for (int i = 0; i < 10; i++) {
            TextMessage m = receiveText(survivor, "early message " + i);
            check(m.getText().equals("early-" + i), "early " + i + ": " + m.getText());
        }
        java.util.concurrent.ConcurrentHashMap<String, String> ids = new java.util.concurrent.ConcurrentHashMap<>();
        java.util.concurrent.atomic.AtomicInteger sent = new java.util.concurrent.atomic.AtomicInteger();
        java.util.List<Thread> threads = new java.util.ArrayList<>();
        java.util.List<Throwable> failures = java.util.Collections.synchronizedList(new java.util.ArrayList<>());
        for (int k = 0; k < producers; k++) {
            final int pk = k;
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageProducer p = s.createProducer(s.createQueue("ow.failover"));
            p.setDeliveryMode(DeliveryMode.PERSISTENT);
            Thread t = new Thread(() -> {
                try {
                    for (int i = 0; i < each; i++) {
                        String body = "p" + pk + "-" + i;
                        TextMessage m = s.createTextMessage(body);
                        p.send(m);
                        ids.put(body, m.getJMSMessageID());
                        int n = sent.incrementAndGet();
                        if (n % 100 == 0) {
                            System.out.println("sent " + n);
                            System.out.flush();
                        }
                    }
                } catch (Throwable e) {
                    failures.add(e);
                }
            });
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) {
            t.join();
        }
        check(failures.isEmpty(), "a send failed: " + failures);
        for (int i = 0; i < 10; i++) {
            pre.send(early.createTextMessage("late-" + i));
        }
        for (int i = 0; i < 10; i++) {
            TextMessage m = receiveText(survivor, "late message " + i + " (after the failover)");
            check(m.getText().equals("late-" + i), "late " + i + ": " + m.getText());
        }
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = s.createConsumer(s.createQueue("ow.failover"));
        java.util.Set<String> got = new java.util.HashSet<>();
        int duplicates = 0;
        long end = System.currentTimeMillis() + 30_000;
        while (got.size() < total && System.currentTimeMillis() < end) {
            Message m = consumer.receive(1000);
            if (m == null) {
                continue;
            }
            String body = ((TextMessage) m).getText();
            if (!got.add(body)) {
                duplicates++;
            }
            check(m.getJMSMessageID().equals(ids.get(body)),
                body + " arrived as " + m.getJMSMessageID() + ", sent as " + ids.get(body));
        }
        check(got.size() == total, "lost " + (total - got.size()) + " of " + total + " receipted messages");
        // Anything stored twice would be behind them.
        for (Message m; (m = consumer.receive(1000)) != null; ) {
            duplicates++;
        }
        check(duplicates == 0, duplicates + " messages arrived twice");
        c.close();
        System.out.println("all " + total + " messages arrived once");
    }

    /**
     * An exclusive queue consumer takes every message while it lives, even
     * though another consumer was there first; then the other does. A
     * noLocal topic subscriber does not get its own connection's messages.
     */
    static void exclusiveNoLocal() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer shared = s.createConsumer(s.createQueue("ow.exclusive"));
        MessageConsumer only = s.createConsumer(s.createQueue("ow.exclusive?consumer.exclusive=true"));
        MessageProducer p = s.createProducer(s.createQueue("ow.exclusive"));
        for (int i = 0; i < 10; i++) {
            p.send(s.createTextMessage("x-" + i));
        }
        for (int i = 0; i < 10; i++) {
            TextMessage m = receiveText(only, "exclusive message " + i);
            check(m.getText().equals("x-" + i), "exclusive got " + m.getText());
        }
        check(shared.receive(500) == null, "the non-exclusive consumer got a message");
        only.close();
        p.send(s.createTextMessage("after"));
        check(receiveText(shared, "after the exclusive consumer left").getText().equals("after"), "after");

        Topic t = s.createTopic("ow.nolocal");
        MessageConsumer notMine = s.createConsumer(t, null, true);
        MessageConsumer all = s.createConsumer(t);
        s.createProducer(t).send(s.createTextMessage("mine"));
        Connection other = connect();
        Session os = other.createSession(false, Session.AUTO_ACKNOWLEDGE);
        os.createProducer(os.createTopic("ow.nolocal")).send(os.createTextMessage("theirs"));
        check(receiveText(notMine, "another connection's message").getText().equals("theirs"),
            "noLocal subscriber got its own connection's message");
        check(receiveText(all, "own message").getText().equals("mine"), "plain subscriber: mine");
        check(receiveText(all, "other message").getText().equals("theirs"), "plain subscriber: theirs");
        // A transacted publish of this connection is its own too.
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        tx.createProducer(tx.createTopic("ow.nolocal")).send(tx.createTextMessage("mine, committed"));
        tx.commit();
        os.createProducer(os.createTopic("ow.nolocal")).send(os.createTextMessage("theirs again"));
        check(receiveText(notMine, "another connection's second message").getText().equals("theirs again"),
            "noLocal subscriber got its own connection's transacted message");
        other.close();
        c.close();
    }

    /**
     * Higher priority first; a message past its time to live is never
     * delivered; DUPS_OK_ACKNOWLEDGE receives (and acknowledges) like AUTO.
     */
    static void priorityExpiryDupsOk() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.priority");
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < 3; i++) {
            p.send(s.createTextMessage("low-" + i), DeliveryMode.PERSISTENT, 1, 0);
        }
        for (int i = 0; i < 3; i++) {
            p.send(s.createTextMessage("high-" + i), DeliveryMode.PERSISTENT, 9, 0);
        }
        // Expires 200 ms after it is sent; by the time a consumer exists it is gone.
        p.send(s.createTextMessage("short-lived"), DeliveryMode.PERSISTENT, 9, 200);
        Thread.sleep(600);
        MessageConsumer consumer = s.createConsumer(q);
        String[] expected = {"high-0", "high-1", "high-2", "low-0", "low-1", "low-2"};
        for (String e : expected) {
            TextMessage m = receiveText(consumer, e);
            check(m.getText().equals(e), "expected " + e + ", got " + m.getText());
        }
        check(consumer.receive(500) == null, "an expired message was delivered");
        consumer.close();

        Session dups = c.createSession(false, Session.DUPS_OK_ACKNOWLEDGE);
        Queue dq = dups.createQueue("ow.dups-ok");
        MessageProducer dp = dups.createProducer(dq);
        for (int i = 0; i < 20; i++) {
            dp.send(dups.createTextMessage("d-" + i));
        }
        MessageConsumer dc = dups.createConsumer(dq);
        for (int i = 0; i < 20; i++) {
            TextMessage m = receiveText(dc, "dups-ok message " + i);
            check(m.getText().equals("d-" + i), "dups-ok " + i + ": " + m.getText());
        }
        c.close();
        System.out.println("priority, expiry and dups-ok as JMS says");
    }

    /** Sends `prefix`0 .. `prefix`(n-1) to `q`, persistent, through `s`. */
    static void sendTexts(Session s, Queue q, String prefix, int n) throws JMSException {
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < n; i++) {
            p.send(s.createTextMessage(prefix + i));
        }
        p.close();
    }

    static TextMessage receiveText(MessageConsumer consumer, String what) throws JMSException {
        Message m = consumer.receive(WAIT_MS);
        check(m != null, "no message within " + WAIT_MS + " ms: " + what);
        check(m instanceof TextMessage, "not a TextMessage: " + m);
        return (TextMessage) m;
    }

    /** (a) 100 persistent TextMessages to a queue, received with AUTO_ACKNOWLEDGE. */
    static void queue() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.queue");
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < 100; i++) {
            TextMessage m = s.createTextMessage("m-" + i);
            m.setIntProperty("n", i);
            p.send(m);
        }
        MessageConsumer consumer = s.createConsumer(q);
        for (int i = 0; i < 100; i++) {
            TextMessage m = receiveText(consumer, "message " + i);
            check(m.getText().equals("m-" + i), "expected m-" + i + ", got " + m.getText());
            check(m.getStringProperty("n").equals(Integer.toString(i)), "property n of " + i);
            check(m.getJMSDeliveryMode() == DeliveryMode.PERSISTENT, "persistent " + i);
            check(!m.getJMSRedelivered(), "first delivery of " + i + " marked redelivered");
        }
        check(consumer.receive(500) == null, "a 101st message");
        c.close();
        // Acknowledged: a new connection finds the queue empty.
        Connection again = connect();
        Session s2 = again.createSession(false, Session.AUTO_ACKNOWLEDGE);
        check(s2.createConsumer(q).receive(1000) == null, "acknowledged messages came back");
        again.close();
    }

    /** (b) CLIENT_ACKNOWLEDGE: unacknowledged messages come back, redelivered; acked ones do not. */
    static void clientAck() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.client-ack");
        sendTexts(s, q, "c-", 10);
        MessageConsumer consumer = s.createConsumer(q);
        for (int i = 0; i < 10; i++) {
            TextMessage m = receiveText(consumer, "first delivery " + i);
            check(m.getText().equals("c-" + i), "expected c-" + i + ", got " + m.getText());
            check(!m.getJMSRedelivered(), "first delivery of " + i + " marked redelivered");
        }
        c.close();

        Connection c2 = connect();
        Session s2 = c2.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        MessageConsumer consumer2 = s2.createConsumer(q);
        Message last = null;
        for (int i = 0; i < 10; i++) {
            TextMessage m = receiveText(consumer2, "redelivery " + i);
            check(m.getText().equals("c-" + i), "expected c-" + i + " again, got " + m.getText());
            check(m.getJMSRedelivered(), "redelivery of " + i + " not marked redelivered");
            last = m;
        }
        last.acknowledge();
        c2.close();

        Connection c3 = connect();
        Session s3 = c3.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        check(s3.createConsumer(q).receive(1000) == null, "acknowledged messages came back");
        c3.close();
    }

    /** (c) Topic publish/subscribe: two subscribers each get every message. */
    static void topic() throws Exception {
        Connection sub = connect();
        Session ss = sub.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic t = ss.createTopic("ow.prices");
        MessageConsumer one = ss.createConsumer(t);
        MessageConsumer two = ss.createConsumer(t);
        Connection pub = connect();
        Session ps = pub.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(t);
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        for (int i = 0; i < 5; i++) {
            p.send(ps.createTextMessage("price-" + i));
        }
        for (MessageConsumer c : new MessageConsumer[] {one, two}) {
            for (int i = 0; i < 5; i++) {
                TextMessage m = receiveText(c, "topic message " + i);
                check(m.getText().equals("price-" + i), "expected price-" + i + ", got " + m.getText());
            }
            check(c.receive(300) == null, "a topic message too many");
        }
        // A BytesMessage stays one, even with UTF-8 bytes.
        BytesMessage b = ps.createBytesMessage();
        b.writeBytes("raw".getBytes("UTF-8"));
        p.send(b);
        Message got = one.receive(WAIT_MS);
        check(got instanceof BytesMessage, "expected a BytesMessage, got " + got);
        BytesMessage gb = (BytesMessage) got;
        byte[] body = new byte[(int) gb.getBodyLength()];
        gb.readBytes(body);
        check(new String(body, "UTF-8").equals("raw"), "BytesMessage body");
        pub.close();
        sub.close();
    }

    /** INDIVIDUAL_ACKNOWLEDGE: only the acknowledged message is gone. */
    static void individualAck() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.individual");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 3; i++) {
            p.send(s.createTextMessage("i-" + i));
        }
        MessageConsumer consumer = s.createConsumer(q);
        for (int i = 0; i < 3; i++) {
            TextMessage m = receiveText(consumer, "individual " + i);
            if (i == 1) {
                m.acknowledge();
            }
        }
        c.close();
        Connection c2 = connect();
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer again = s2.createConsumer(q);
        check(receiveText(again, "i-0 back").getText().equals("i-0"), "i-0 redelivered");
        check(receiveText(again, "i-2 back").getText().equals("i-2"), "i-2 redelivered");
        check(again.receive(500) == null, "the acknowledged i-1 came back");
        c2.close();
    }

    /** A consumer's selector picks its messages; a bad one is InvalidSelectorException. */
    static void selector() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.selector");
        MessageConsumer red = s.createConsumer(q, "color = 'red' AND n > 1");
        MessageProducer p = s.createProducer(q);
        String[] colors = {"red", "blue", "red", "red"};
        for (int i = 0; i < colors.length; i++) {
            TextMessage m = s.createTextMessage(colors[i] + "-" + i);
            m.setStringProperty("color", colors[i]);
            m.setIntProperty("n", i);
            p.send(m);
        }
        check(receiveText(red, "red-2").getText().equals("red-2"), "red-2 selected");
        check(receiveText(red, "red-3").getText().equals("red-3"), "red-3 selected");
        check(red.receive(300) == null, "a message the selector does not match");
        try {
            s.createConsumer(q, "color = ");
            throw new IllegalStateException("a bad selector was accepted");
        } catch (javax.jms.InvalidSelectorException e) {
            System.out.println("bad selector refused: " + e.getMessage());
        }
        c.close();
    }

    /**
     * Local transactions: a rolled-back send never arrives and a committed
     * one does, atomically across two queues; a rolled-back receive comes
     * back marked redelivered, and a committed one is gone for good.
     */
    static void transacted() throws Exception {
        Connection c = connect();
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        Queue q = tx.createQueue("ow.tx");
        Queue other = tx.createQueue("ow.tx.other");
        MessageProducer p = tx.createProducer(null);
        p.send(q, tx.createTextMessage("rolled-back"));
        tx.rollback();
        for (int i = 0; i < 3; i++) {
            p.send(q, tx.createTextMessage("tx-" + i));
        }
        p.send(other, tx.createTextMessage("tx-other"));
        Session plain = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer peek = plain.createConsumer(q);
        check(peek.receive(300) == null, "a message arrived before its transaction committed");
        peek.close();
        tx.commit();
        MessageConsumer consumer = tx.createConsumer(q);
        for (int i = 0; i < 3; i++) {
            TextMessage m = receiveText(consumer, "tx-" + i);
            check(m.getText().equals("tx-" + i), "expected tx-" + i + ", got " + m.getText());
            check(!m.getJMSRedelivered(), "first delivery of tx-" + i + " marked redelivered");
        }
        tx.rollback();
        for (int i = 0; i < 3; i++) {
            TextMessage m = receiveText(consumer, "tx-" + i + " after the rollback");
            check(m.getText().equals("tx-" + i), "expected tx-" + i + " again, got " + m.getText());
            check(m.getJMSRedelivered(), "tx-" + i + " after a rollback not marked redelivered");
        }
        check(consumer.receive(300) == null, "the rolled-back send arrived");
        tx.commit();
        consumer.close();
        MessageConsumer fromOther = tx.createConsumer(other);
        check(receiveText(fromOther, "tx-other").getText().equals("tx-other"), "the other queue's part");
        tx.commit();
        c.close();
        // Committed receives are gone, also for another connection.
        Connection c2 = connect();
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        check(s2.createConsumer(q).receive(1000) == null, "a committed receive came back");
        check(s2.createConsumer(other).receive(500) == null, "a committed receive came back (other)");
        c2.close();
        // With prefetch 1 a transacted consumer still receives more than
        // one message before it commits: its DELIVERED acks widen the window.
        Connection c3 = connectWith("jms.prefetchPolicy.all=1");
        Session t3 = c3.createSession(true, Session.SESSION_TRANSACTED);
        Queue narrow = t3.createQueue("ow.tx.prefetch-1");
        MessageProducer p3 = t3.createProducer(narrow);
        for (int i = 0; i < 5; i++) {
            p3.send(t3.createTextMessage("p1-" + i));
        }
        t3.commit();
        MessageConsumer slow = t3.createConsumer(narrow);
        for (int i = 0; i < 5; i++) {
            TextMessage m = receiveText(slow, "p1-" + i + " before the commit");
            check(m.getText().equals("p1-" + i), "expected p1-" + i + ", got " + m.getText());
        }
        t3.commit();
        slow.close();
        Session plain3 = c3.createSession(false, Session.AUTO_ACKNOWLEDGE);
        check(plain3.createConsumer(narrow).receive(500) == null, "a committed receive came back (prefetch 1)");
        c3.close();
        System.out.println("transactions committed and rolled back");
    }

    /**
     * Temporary queues: request/reply across connections (a replier that
     * was connected before the temporary queue was made, and one that
     * connected after), then the queue is gone once deleted, and another
     * gone with its connection: a send to either is refused.
     */
    static void temporary() throws Exception {
        Connection replier = connect();
        Session rs = replier.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer requests = rs.createConsumer(rs.createQueue("ow.requests"));
        MessageProducer replies = rs.createProducer(null);

        Connection requester = connect();
        Session qs = requester.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TemporaryQueue inbox = qs.createTemporaryQueue();
        MessageConsumer answers = qs.createConsumer(inbox);
        MessageProducer asks = qs.createProducer(qs.createQueue("ow.requests"));

        Connection late = connect();
        Session ls = late.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer lateReplies = ls.createProducer(null);

        for (int i = 0; i < 3; i++) {
            TextMessage ask = qs.createTextMessage("question-" + i);
            ask.setJMSReplyTo(inbox);
            ask.setJMSCorrelationID("c-" + i);
            asks.send(ask);
            TextMessage got = receiveText(requests, "question-" + i);
            check(got.getJMSReplyTo() != null && got.getJMSReplyTo().equals(inbox), "reply-to " + got.getJMSReplyTo());
            TextMessage answer = rs.createTextMessage("answer-" + i);
            answer.setJMSCorrelationID(got.getJMSCorrelationID());
            // The replier connected before the queue was made (it heard of
            // it), the late one after (it was told what lives).
            (i == 2 ? lateReplies : replies).send(got.getJMSReplyTo(), answer);
            TextMessage back = receiveText(answers, "answer-" + i);
            check(back.getText().equals("answer-" + i), "expected answer-" + i + ", got " + back.getText());
            check(("c-" + i).equals(back.getJMSCorrelationID()), "correlation id " + back.getJMSCorrelationID());
        }
        // Only its own connection may consume from it (the client itself
        // refuses; the broker would too, for any other client).
        try {
            rs.createConsumer(inbox);
            throw new IllegalStateException("another connection consumed from a temporary queue");
        } catch (JMSException e) {
            check(e.getMessage().contains("from another Connection")
                || e.getMessage().contains("only by the connection that made it"), "says why: " + e.getMessage());
        }
        answers.close();
        inbox.delete();
        TemporaryQueue second = qs.createTemporaryQueue();
        requester.close();
        // A connection that does not watch advisories sends to both: the
        // broker refuses (persistent sends wait for its answer).
        ActiveMQConnectionFactory blind = new ActiveMQConnectionFactory(url);
        blind.setWatchTopicAdvisories(false);
        Connection b = blind.createConnection("alice", "secret");
        b.start();
        Session bs = b.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = bs.createProducer(null);
        for (TemporaryQueue gone : new TemporaryQueue[] {inbox, second}) {
            try {
                p.send(gone, bs.createTextMessage("too late"));
                throw new IllegalStateException("a send to a removed temporary queue was taken");
            } catch (JMSException e) {
                check(e.getMessage().contains("does not exist"), "says why: " + e.getMessage());
            }
        }
        b.close();
        late.close();
        replier.close();
        System.out.println("temporary queues: request/reply and removal");
    }

    /**
     * Map, Stream and Object messages come back as what they were sent as,
     * with every value (and compressed, too).
     */
    static void messageKinds() throws Exception {
        for (boolean compressed : new boolean[] {false, true}) {
            ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
            f.setUseCompression(compressed);
            Connection c = f.createConnection("alice", "secret");
            c.start();
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            Queue q = s.createQueue("ow.kinds");
            MessageProducer p = s.createProducer(q);
            MapMessage map = s.createMapMessage();
            map.setString("name", "widget");
            map.setInt("count", 42);
            map.setDouble("price", 9.5);
            map.setBoolean("fresh", true);
            map.setBytes("raw", new byte[] {1, 2, 3});
            p.send(map);
            StreamMessage stream = s.createStreamMessage();
            stream.writeString("first");
            stream.writeLong(7L);
            stream.writeBoolean(false);
            p.send(stream);
            // A class the client trusts to deserialize by default.
            String object = "a serialized object";
            p.send(s.createObjectMessage(object));
            MessageConsumer consumer = s.createConsumer(q);
            Message m1 = consumer.receive(WAIT_MS);
            check(m1 instanceof MapMessage, "expected a MapMessage, got " + m1);
            MapMessage gm = (MapMessage) m1;
            check("widget".equals(gm.getString("name")), "name " + gm.getString("name"));
            check(gm.getInt("count") == 42, "count " + gm.getInt("count"));
            check(gm.getDouble("price") == 9.5, "price");
            check(gm.getBoolean("fresh"), "fresh");
            check(java.util.Arrays.equals(gm.getBytes("raw"), new byte[] {1, 2, 3}), "raw");
            Message m2 = consumer.receive(WAIT_MS);
            check(m2 instanceof StreamMessage, "expected a StreamMessage, got " + m2);
            StreamMessage gs = (StreamMessage) m2;
            check("first".equals(gs.readString()), "stream string");
            check(gs.readLong() == 7L, "stream long");
            check(!gs.readBoolean(), "stream boolean");
            Message m3 = consumer.receive(WAIT_MS);
            check(m3 instanceof ObjectMessage, "expected an ObjectMessage, got " + m3);
            check(object.equals(((ObjectMessage) m3).getObject()), "object " + ((ObjectMessage) m3).getObject());
            c.close();
        }
        System.out.println("map, stream and object messages");
    }

    /**
     * A message the client gives up on (rolled back past its
     * maximumRedeliveries: it sends a POISON ack) goes to the dead-letter
     * queue at once, with its redelivery count seen on the way.
     */
    static void poison() throws Exception {
        Connection c = connectWith("jms.redeliveryPolicy.maximumRedeliveries=1&jms.redeliveryPolicy.initialRedeliveryDelay=0");
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        Queue q = tx.createQueue("ow.poison");
        tx.createProducer(q).send(tx.createTextMessage("bad"));
        tx.commit();
        MessageConsumer consumer = tx.createConsumer(q);
        TextMessage first = receiveText(consumer, "bad, first delivery");
        check(!first.getJMSRedelivered(), "first delivery marked redelivered");
        tx.rollback();
        TextMessage second = receiveText(consumer, "bad, redelivered");
        check(second.getJMSRedelivered(), "redelivery not marked");
        check(second.getIntProperty("JMSXDeliveryCount") >= 2, "delivery count " + second.getIntProperty("JMSXDeliveryCount"));
        tx.rollback();
        check(consumer.receive(500) == null, "delivered past maximumRedeliveries");
        consumer.close();
        Session plain = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TextMessage dead = receiveText(plain.createConsumer(plain.createQueue("ActiveMQ.DLQ")), "bad in the DLQ");
        check(dead.getText().equals("bad"), "DLQ got " + dead.getText());
        check(plain.createConsumer(q).receive(500) == null, "a poisoned message stayed in its queue");
        c.close();
        System.out.println("poisoned message dead-lettered");
    }

    /**
     * A consumer that takes one message and closes gives its prefetched
     * rest back unseen (RemoveInfo's lastDeliveredSequenceId): ten such
     * consumers in turn, more than the broker's max_redeliveries (6), each
     * get the next message, never marked redelivered, and nothing reaches
     * the dead-letter queue. A CLIENT_ACKNOWLEDGE consumer closed with two
     * messages unacknowledged gives those two back redelivered, the rest
     * as they were.
     */
    static void closeAfterOne() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.close-after-one");
        sendTexts(s, q, "o-", 20);
        for (int i = 0; i < 10; i++) {
            MessageConsumer one = s.createConsumer(q);
            TextMessage m = receiveText(one, "o-" + i);
            check(m.getText().equals("o-" + i), "expected o-" + i + ", got " + m.getText());
            check(!m.getJMSRedelivered(), "o-" + i + " marked redelivered, though no consumer before got it");
            one.close();
        }
        Session ca = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        MessageConsumer first = ca.createConsumer(q);
        for (int i = 10; i < 12; i++) {
            TextMessage m = receiveText(first, "o-" + i);
            check(m.getText().equals("o-" + i), "expected o-" + i + ", got " + m.getText());
            check(!m.getJMSRedelivered(), "first delivery of o-" + i + " marked redelivered");
        }
        first.close();
        MessageConsumer second = ca.createConsumer(q);
        Message last = null;
        for (int i = 10; i < 20; i++) {
            TextMessage m = receiveText(second, "o-" + i + " after the close");
            check(m.getText().equals("o-" + i), "expected o-" + i + ", got " + m.getText());
            check(m.getJMSRedelivered() == (i < 12),
                "o-" + i + (i < 12 ? " not marked redelivered, though the closed consumer's application got it"
                                   : " marked redelivered, though only prefetched by the closed consumer"));
            last = m;
        }
        last.acknowledge();
        Session plain = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        check(plain.createConsumer(plain.createQueue("ActiveMQ.DLQ")).receive(500) == null,
            "a message reached the dead-letter queue");
        c.close();
        System.out.println("only what the application got counted as redelivered");
    }

    /**
     * A message the application takes and gives up on, each time closing
     * without acknowledging it (CLIENT_ACKNOWLEDGE), still reaches the
     * dead-letter queue: counted at each close whether the close is the
     * consumer's own (`consumer`) or the whole connection's (`connection`;
     * its RemoveInfo names the highest id any consumer delivered, here a
     * message another consumer of that connection took and acknowledged
     * after it). The broker runs one shard with max_redeliveries = 2, so
     * later messages have higher ids.
     */
    static void poisonByClose(String how) throws Exception {
        String name = "ow.poison-by-close." + how;
        Connection setup = connect();
        Session ss = setup.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = ss.createQueue(name);
        Queue other = ss.createQueue(name + ".other");
        ss.createProducer(q).send(ss.createTextMessage("bad"));
        int deliveries = 0;
        while (deliveries < 10) {
            Connection c = connect();
            Session s = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
            MessageConsumer consumer = s.createConsumer(q);
            Message m = consumer.receive(2000);
            if (m == null) {
                c.close();
                break;
            }
            deliveries++;
            check(((TextMessage) m).getText().equals("bad"), "got " + m);
            check(m.getJMSRedelivered() == (deliveries > 1), "delivery " + deliveries + " redelivered " + m.getJMSRedelivered());
            if (how.equals("consumer")) {
                consumer.close();
            } else {
                // Its own session: CLIENT_ACKNOWLEDGE's acknowledge()
                // would settle "bad" too.
                ss.createProducer(other).send(ss.createTextMessage("fine"));
                Session auto = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
                receiveText(auto.createConsumer(other), "fine");
            }
            c.close();
        }
        check(deliveries == 3, "delivered " + deliveries + " times, expected 3 (max_redeliveries = 2)");
        TextMessage dead = receiveText(ss.createConsumer(ss.createQueue("ActiveMQ.DLQ")), "bad in the DLQ");
        check(dead.getText().equals("bad"), "DLQ got " + dead.getText());
        setup.close();
        System.out.println("given up on at each close, dead-lettered");
    }

    /**
     * A producer with a window (asynchronous sends, producerWindowSize)
     * gets it back through ProducerAcks: 500 messages through a window of
     * four do not block, and all arrive.
     */
    static void producerWindow() throws Exception {
        Connection c = connectWith("jms.useAsyncSend=true&jms.producerWindowSize=4096");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.window");
        MessageProducer p = s.createProducer(q);
        char[] filler = new char[512];
        java.util.Arrays.fill(filler, 'w');
        for (int i = 0; i < 500; i++) {
            p.send(s.createTextMessage("w-" + i + new String(filler)));
        }
        MessageConsumer consumer = s.createConsumer(q);
        for (int i = 0; i < 500; i++) {
            TextMessage m = receiveText(consumer, "w-" + i);
            check(m.getText().startsWith("w-" + i + "w"), "expected w-" + i + ", got " + m.getText().substring(0, 8));
        }
        c.close();
        System.out.println("producer window given back");
    }

    /** A queue browser sees what waits, in order, and takes nothing. */
    static void browse() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.browse");
        check(!s.createBrowser(q).getEnumeration().hasMoreElements(), "an empty queue browsed something");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 5; i++) {
            TextMessage m = s.createTextMessage("b-" + i);
            m.setIntProperty("n", i);
            p.send(m);
        }
        java.util.Enumeration<?> picked = s.createBrowser(q, "n > 2").getEnumeration();
        for (int i = 3; i < 5; i++) {
            check(picked.hasMoreElements(), "a selective browse ended before b-" + i);
            TextMessage m = (TextMessage) picked.nextElement();
            check(m.getText().equals("b-" + i), "selective browse: expected b-" + i + ", got " + m.getText());
        }
        check(!picked.hasMoreElements(), "a selective browse saw a message its selector does not match");
        for (int pass = 0; pass < 2; pass++) {
            java.util.Enumeration<?> e = s.createBrowser(q).getEnumeration();
            for (int i = 0; i < 5; i++) {
                check(e.hasMoreElements(), "browse pass " + pass + " ended before b-" + i);
                TextMessage m = (TextMessage) e.nextElement();
                check(m.getText().equals("b-" + i), "expected b-" + i + ", got " + m.getText());
            }
            check(!e.hasMoreElements(), "browse pass " + pass + " saw a sixth message");
        }
        MessageConsumer consumer = s.createConsumer(q);
        for (int i = 0; i < 5; i++) {
            check(receiveText(consumer, "b-" + i + " after browsing").getText().equals("b-" + i), "browsing took b-" + i);
        }
        c.close();
        System.out.println("browsed without taking");
    }

    /**
     * Prefetch 0: a consumer gets a message only when it asks (MessagePull),
     * so two of them share a queue one receive at a time; with nothing
     * waiting, receiveNoWait and receive(timeout) return null.
     */
    static void pull() throws Exception {
        Connection c = connectWith("jms.prefetchPolicy.all=0");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("ow.pull");
        MessageConsumer a = s.createConsumer(q);
        MessageConsumer b = s.createConsumer(q);
        check(a.receiveNoWait() == null, "receiveNoWait on an empty queue");
        check(b.receive(300) == null, "receive(300) on an empty queue");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 4; i++) {
            p.send(s.createTextMessage("pull-" + i));
        }
        check(receiveText(a, "pull-0").getText().equals("pull-0"), "a got pull-0");
        check(receiveText(b, "pull-1").getText().equals("pull-1"), "b got pull-1 (nothing was prefetched to a)");
        Message m = a.receiveNoWait();
        check(m instanceof TextMessage && ((TextMessage) m).getText().equals("pull-2"), "receiveNoWait got " + m);
        check(receiveText(b, "pull-3").getText().equals("pull-3"), "b got pull-3");
        check(a.receive(200) == null, "a fifth message");
        c.close();
        System.out.println("prefetch 0 pulls one at a time");
    }

    /** Request/reply across protocols: a STOMP client answers on a JMS temporary queue. */
    static void stompReplies(String queue) throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TemporaryQueue inbox = s.createTemporaryQueue();
        MessageConsumer answers = s.createConsumer(inbox);
        TextMessage ask = s.createTextMessage("question for stomp");
        ask.setJMSReplyTo(inbox);
        s.createProducer(s.createQueue(queue)).send(ask);
        TextMessage back = receiveText(answers, "the STOMP client's answer");
        check(back.getText().equals("answer from stomp"), "got " + back.getText());
        c.close();
        System.out.println("STOMP answered on a temporary queue");
    }

    static Connection connect(String clientId) throws JMSException {
        Connection c = new ActiveMQConnectionFactory(url).createConnection("alice", "secret");
        c.setClientID(clientId);
        c.start();
        return c;
    }

    /** A durable subscriber gets what was published while it was away; unsubscribe deletes it. */
    static void durable() throws Exception {
        Connection c1 = connect("durable-client");
        Session s1 = c1.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic t = s1.createTopic("ow.news");
        s1.createDurableSubscriber(t, "sub1");
        c1.close();

        Connection pub = connect();
        Session ps = pub.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(t);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < 3; i++) {
            p.send(ps.createTextMessage("news-" + i));
        }

        Connection c2 = connect("durable-client");
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer d = s2.createDurableSubscriber(t, "sub1");
        for (int i = 0; i < 3; i++) {
            TextMessage m = receiveText(d, "kept news " + i);
            check(m.getText().equals("news-" + i), "expected news-" + i + ", got " + m.getText());
        }
        check(d.receive(300) == null, "a message too many");
        d.close();
        s2.unsubscribe("sub1");

        p.send(ps.createTextMessage("after unsubscribe"));
        MessageConsumer fresh = s2.createDurableSubscriber(t, "sub1");
        check(fresh.receive(500) == null, "a deleted subscription kept a message");
        fresh.close();
        s2.unsubscribe("sub1");
        c2.close();
        pub.close();
    }

    /** A client id is one connection's at a time. */
    static void clientId() throws Exception {
        Connection first = connect("only-one");
        try {
            connect("only-one");
            throw new IllegalStateException("a client id in use was accepted");
        } catch (javax.jms.InvalidClientIDException e) {
            System.out.println("second refused: " + e.getMessage());
        }
        first.close();
        // Given back before the close is answered: reconnecting at once works.
        connect("only-one").close();
    }

    /** (d) A wrong password fails the connection's start with JMSSecurityException. */
    static void badPassword() throws Exception {
        Connection c = new ActiveMQConnectionFactory(url).createConnection("alice", "wrong");
        try {
            c.start();
            c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            throw new IllegalStateException("a wrong password was accepted");
        } catch (JMSSecurityException e) {
            System.out.println("refused: " + e.getClass().getName() + ": " + e.getMessage());
        } finally {
            try {
                c.close();
            } catch (JMSException ignored) {
                // Already failed: closing may say so again.
            }
        }
    }

    /** (e) OpenWire -> STOMP: the Rust side reads it over STOMP. */
    static void sendToStomp(String queue) throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(queue));
        TextMessage m = s.createTextMessage("from openwire");
        m.setStringProperty("color", "blue");
        m.setJMSCorrelationID("corr-ow");
        m.setJMSType("greeting");
        p.send(m);
        c.close();
    }

    /** (e) STOMP -> OpenWire: the Rust side sent it over STOMP. */
    static void receiveFromStomp(String queue) throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = s.createConsumer(s.createQueue(queue));
        TextMessage m = receiveText(consumer, "the STOMP message");
        check(m.getText().equals("from stomp"), "text " + m.getText());
        check("red".equals(m.getStringProperty("color")), "color " + m.getStringProperty("color"));
        check("corr-stomp".equals(m.getJMSCorrelationID()), "correlation id " + m.getJMSCorrelationID());
        check(m.getJMSPriority() == 7, "priority " + m.getJMSPriority());
        check(m.getJMSDeliveryMode() == DeliveryMode.PERSISTENT, "delivery mode " + m.getJMSDeliveryMode());
        check(m.getJMSReplyTo() != null && m.getJMSReplyTo().toString().equals("queue://replies"),
                "reply-to " + m.getJMSReplyTo());
        // Sent with content-length: a BytesMessage, as ActiveMQ makes it.
        Message raw = consumer.receive(WAIT_MS);
        check(raw instanceof BytesMessage, "with content-length, not a BytesMessage: " + raw);
        BytesMessage b = (BytesMessage) raw;
        byte[] data = new byte[(int) b.getBodyLength()];
        b.readBytes(data);
        check(new String(data, java.nio.charset.StandardCharsets.UTF_8).equals("sized"), "bytes body");
        // With amq-msg-type:text it stays text whatever the length says.
        TextMessage forced = receiveText(consumer, "the amq-msg-type:text message");
        check(forced.getText().equals("forced text"), "forced text " + forced.getText());
        c.close();
    }
}
