#!/usr/bin/env python3
"""Opens N idle STOMP connections to a broker, holds them, and prints the
broker's resident memory (VmRSS) before and while they are open.

    bench/idle_connections.py --port 61613 --pid $(pgrep -x brokk) -n 1000
"""
import argparse
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=61613)
    ap.add_argument("--pid", type=int, required=True, help="broker process id (for RSS)")
    ap.add_argument("-n", type=int, default=1000)
    a = ap.parse_args()
    idle = rss_kib(a.pid)
    socks = []
    for _ in range(a.n):
        s = socket.create_connection((a.host, a.port))
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        assert s.recv(4096).startswith(b"CONNECTED")
    time.sleep(1)
    held = rss_kib(a.pid)
    print(f"idle RSS {idle / 1024:.1f} MiB; with {a.n} idle connections {held / 1024:.1f} MiB")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
