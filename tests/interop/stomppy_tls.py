"""stomp.py over TLS against a running brokk (driven by tests/security.rs):
usage: stomppy_tls.py PORT CA_FILE LOGIN PASSCODE. Sends a message to
itself over the TLS listener and prints what it received."""

import queue
import sys

import stomp

port, ca, login, passcode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame.body)


host = [("127.0.0.1", port)]
conn = stomp.Connection12(host, timeout=10)
conn.set_ssl(for_hosts=host, ca_certs=ca)
listener = Collector()
conn.set_listener("c", listener)
conn.connect(login, passcode, wait=True)
conn.subscribe("/queue/py.tls", id="1", ack="auto")
conn.send("/queue/py.tls", "hello over tls", receipt="r1")
body = listener.messages.get(timeout=10)
print("received", body)
conn.disconnect()
