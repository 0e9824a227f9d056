// Load through ActiveMQ's own JMS client (OpenWire): producers each on a
// connection of their own sending BytesMessages in a loop for a while,
// consumers (AUTO_ACKNOWLEDGE, default prefetch) each on their own
// connection; prints the send and receive rates and a loss / duplicate
// count from a per-producer sequence check.
//
// java Load URL PRODUCERS CONSUMERS persistent|non-persistent BODY_BYTES SECONDS QUEUE
import java.util.BitSet;
import java.util.concurrent.atomic.AtomicLong;

import javax.jms.BytesMessage;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;

import org.apache.activemq.ActiveMQConnectionFactory;

public class Load {
    /** Consumers give up this long after the last message once producers are done. */
    static final long IDLE_MS = 10_000;

    public static void main(String[] a) throws Exception {
        if (a.length != 7) {
            System.err.println("usage: Load URL PRODUCERS CONSUMERS persistent|non-persistent BODY_BYTES SECONDS QUEUE");
            System.exit(2);
        }
        String url = a[0];
        int producers = Integer.parseInt(a[1]);
        int consumers = Integer.parseInt(a[2]);
        boolean persistent = a[3].equals("persistent");
        int size = Integer.parseInt(a[4]);
        double seconds = Double.parseDouble(a[5]);
        String queue = a[6];
        ActiveMQConnectionFactory factory = new ActiveMQConnectionFactory(url);

        BitSet[] seen = new BitSet[producers];
        for (int i = 0; i < producers; i++) seen[i] = new BitSet();
        long[] sent = new long[producers];
        AtomicLong received = new AtomicLong();
        AtomicLong duplicates = new AtomicLong();
        AtomicLong lastReceive = new AtomicLong();
        AtomicLong errors = new AtomicLong();
        final boolean[] producing = {true};

        Thread[] cs = new Thread[consumers];
        Connection[] cconns = new Connection[consumers];
        for (int c = 0; c < consumers; c++) {
            Connection conn = factory.createConnection();
            conn.start();
            cconns[c] = conn;
            Session s = conn.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(s.createQueue(queue));
            cs[c] = new Thread(() -> {
                try {
                    while (true) {
                        Message m = mc.receive(200);
                        long now = System.nanoTime();
                        if (m == null) {
                            boolean done;
                            synchronized (producing) { done = !producing[0]; }
                            long total = 0;
                            for (long x : sent) total += x;
                            if (done && (received.get() >= total
                                    || now - Math.max(lastReceive.get(), 0) > IDLE_MS * 1_000_000L)) {
                                return;
                            }
                            continue;
                        }
                        int p = m.getIntProperty("bench-p");
                        long seq = m.getLongProperty("bench-seq");
                        if (p < 0 || p >= producers) continue; // left over from another run
                        BitSet b = seen[p];
                        synchronized (b) {
                            if (b.get((int) seq)) {
                                duplicates.incrementAndGet();
                                continue;
                            }
                            b.set((int) seq);
                        }
                        received.incrementAndGet();
                        lastReceive.set(now);
                    }
                } catch (Exception e) {
                    errors.incrementAndGet();
                    e.printStackTrace();
                }
            });
        }
        for (Thread t : cs) t.start();

        byte[] body = new byte[size];
        java.util.Arrays.fill(body, (byte) 'x');
        long start = System.nanoTime();
        long deadline = start + (long) (seconds * 1e9);
        Thread[] ps = new Thread[producers];
        for (int p = 0; p < producers; p++) {
            final int id = p;
            Connection conn = factory.createConnection();
            conn.start();
            Session s = conn.createSession(false, Session.AUTO_ACKNOWLEDGE);
            Queue q = s.createQueue(queue);
            MessageProducer mp = s.createProducer(q);
            mp.setDeliveryMode(persistent ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT);
            ps[p] = new Thread(() -> {
                long n = 0;
                try {
                    while (System.nanoTime() < deadline) {
                        BytesMessage m = s.createBytesMessage();
                        m.writeBytes(body);
                        m.setIntProperty("bench-p", id);
                        m.setLongProperty("bench-seq", n);
                        mp.send(m);
                        n++;
                        // Published after the send returns: a consumer never
                        // waits for more than was sent.
                        synchronized (sent) { sent[id] = n; }
                    }
                    conn.close();
                } catch (Exception e) {
                    errors.incrementAndGet();
                    e.printStackTrace();
                }
            });
        }
        start = System.nanoTime();
        for (Thread t : ps) t.start();
        for (Thread t : ps) t.join();
        double sendSecs = (System.nanoTime() - start) / 1e9;
        synchronized (producing) { producing[0] = false; }
        for (Thread t : cs) t.join();
        for (Connection c : cconns) c.close();
        long total = 0;
        for (long x : sent) total += x;
        long lost = 0;
        for (int p = 0; p < producers; p++) {
            lost += sent[p] - seen[p].cardinality();
        }
        double recvSecs = Math.max((lastReceive.get() - start) / 1e9, sendSecs);
        System.out.printf("java-load %s producers=%d consumers=%d %s size=%d%n",
                url, producers, consumers, persistent ? "persistent" : "non-persistent", size);
        System.out.printf("  sent      %10d in %6.2f s = %10.0f msg/s%n", total, sendSecs, total / sendSecs);
        System.out.printf("  received  %10d in %6.2f s = %10.0f msg/s%n", received.get(), recvSecs, received.get() / recvSecs);
        System.out.printf("  lost %d duplicates %d errors %d%n", lost, duplicates.get(), errors.get());
        System.out.printf("{\"sent\":%d,\"send_secs\":%.3f,\"sent_per_sec\":%.0f,\"received\":%d,\"receive_secs\":%.3f,\"received_per_sec\":%.0f,\"lost\":%d,\"duplicates\":%d,\"errors\":%d}%n",
                total, sendSecs, total / sendSecs, received.get(), recvSecs, received.get() / recvSecs, lost, duplicates.get(), errors.get());
        System.exit(errors.get() == 0 && lost == 0 ? 0 : 1);
    }
}
