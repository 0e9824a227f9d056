"""Interoperability: drive the real brokk binary with the third-party
stomp.py client (STOMP 1.1 and 1.2): send, subscribe, all three ack modes,
NACK, transactions, receipts and durable subscriptions."""

import os
import queue
import re
import signal
import subprocess
import tempfile
import time

import pytest
import stomp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROKK = os.environ.get("BROKK_BIN", os.path.join(ROOT, "target", "debug", "brokk"))


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.errors = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame):
        self.errors.put(frame)

    def message(self, timeout=10):
        return self.messages.get(timeout=timeout)

    def no_message(self, wait=0.3):
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)

    def receipt(self, rid, timeout=10):
        got = self.receipts.get(timeout=timeout)
        assert got == rid
        return got


@pytest.fixture(scope="module")
def broker():
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write("[broker]\nmax_redeliveries = 1\n")
    cfg.close()
    env = dict(os.environ, BROKK_LOG="warn")
    data = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [BROKK, "serve", "--config", cfg.name, "--stomp", "127.0.0.1:0", "--openwire", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "2",
         "--data", data],
        stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r"stomp=127\.0\.0\.1:(\d+)", line).group(1))
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    os.unlink(cfg.name)


def connect(port, version="1.2", client_id=None):
    cls = {"1.1": stomp.Connection11, "1.2": stomp.Connection12}[version]
    conn = cls([("127.0.0.1", port)], heartbeats=(0, 0))
    listener = Collector()
    conn.set_listener("", listener)
    headers = {"client-id": client_id} if client_id else {}
    conn.connect(wait=True, headers=headers)
    return conn, listener


def ack(conn, version, frame):
    if version == "1.2":
        conn.ack(frame.headers["ack"])
    else:
        conn.ack(frame.headers["message-id"], frame.headers["subscription"])


def nack(conn, version, frame):
    if version == "1.2":
        conn.nack(frame.headers["ack"])
    else:
        conn.nack(frame.headers["message-id"], frame.headers["subscription"])


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_send_with_receipt_and_auto_ack(broker, version):
    dest = f"/queue/py-auto-{version}"
    c, l = connect(broker, version)
    c.subscribe(dest, id="1", ack="auto", headers={"receipt": "s1"})
    l.receipt("s1")
    c.send(dest, "hello", headers={"receipt": "r1", "x-custom": "v"})
    l.receipt("r1")
    m = l.message()
    assert m.body == "hello"
    assert m.headers["x-custom"] == "v"
    c.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_ack_is_cumulative(broker, version):
    dest = f"/queue/py-client-{version}"
    p, pl = connect(broker, version)
    for i in range(3):
        p.send(dest, str(i))
    p.disconnect(receipt="done")
    c, l = connect(broker, version)
    c.subscribe(dest, id="1", ack="client")
    frames = [l.message() for _ in range(3)]
    ack(c, version, frames[1])  # acknowledges 0 and 1
    c.disconnect()
    c2, l2 = connect(broker, version)
    c2.subscribe(dest, id="2", ack="auto")
    m = l2.message()
    assert m.body == "2"
    assert m.headers.get("redelivered") == "true"
    l2.no_message()
    c2.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_ack_and_nack(broker, version):
    dest = f"/queue/py-individual-{version}"
    p, _ = connect(broker, version)
    for i in range(2):
        p.send(dest, str(i))
    p.disconnect(receipt="done")
    c, l = connect(broker, version)
    c.subscribe(dest, id="1", ack="client-individual")
    a, b = l.message(), l.message()
    ack(c, version, b)
    nack(c, version, a)  # redelivered once, then (max_redeliveries = 1) dead-lettered
    again = l.message()
    assert again.body == "0" and again.headers.get("redelivered") == "true"
    nack(c, version, again)
    l.no_message()
    c.disconnect()
    d, dl = connect(broker, version)
    d.subscribe("/queue/ActiveMQ.DLQ", id="dlq", ack="auto")
    dead = dl.message()
    assert dead.body == "0"
    assert dead.headers["original-destination"] == dest
    d.disconnect()


def test_transactions_commit_and_abort(broker):
    dest = "/queue/py-tx"
    c, l = connect(broker)
    c.subscribe(dest, id="1", ack="client-individual", headers={"receipt": "s"})
    l.receipt("s")
    p, pl = connect(broker)
    tx = p.begin()
    p.send(dest, "committed", transaction=tx)
    l.no_message()
    p.commit(tx, headers={"receipt": "c"})
    pl.receipt("c")
    m = l.message()
    assert m.body == "committed"
    tx2 = p.begin()
    p.send(dest, "aborted", transaction=tx2)
    p.abort(tx2)
    l.no_message()
    c.disconnect()
    p.disconnect()


def test_durable_subscription_survives_disconnect(broker):
    dest = "/topic/py-durable"
    sub_headers = {"activemq.subscriptionName": "py-sub"}
    c, l = connect(broker, client_id="py-client")
    c.subscribe(dest, id="d", ack="client-individual", headers=dict(sub_headers, receipt="s"))
    l.receipt("s")
    # Waits for the DISCONNECT's receipt (stomp.py does only when given
    # one): coming back with the same client id before the broker closed
    # the subscription would be refused as still active.
    c.disconnect(receipt="away")
    l.receipt("away")
    p, pl = connect(broker)
    p.send(dest, "while away", headers={"receipt": "r"})
    pl.receipt("r")
    p.disconnect()
    c, l = connect(broker, client_id="py-client")
    c.subscribe(dest, id="d", ack="client-individual", headers=sub_headers)
    m = l.message()
    assert m.body == "while away"
    c.ack(m.headers["ack"])
    c.disconnect()


def test_error_frame_for_bad_destination(broker):
    c, l = connect(broker)
    c.send("not-a-destination", "x")
    err = l.errors.get(timeout=10)
    assert "/queue/" in err.headers["message"]
