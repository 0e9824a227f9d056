#!/usr/bin/env python3
"""Loads a broker's admin port the way an operator's browser and a
Prometheus server would: every second, every console page's API call plus
/metrics. Used to show that the console costs the message path nothing
measurable (bench/RESULTS.md). Standard library only.

    bench/console_poller.py http://127.0.0.1:8161 ops secret SECONDS
"""
import base64
import sys
import time
import urllib.request

PATHS = ["/api/overview", "/api/queues", "/api/topics", "/api/subscribers",
         "/api/connections", "/api/cluster", "/metrics", "/healthz"]


def main():
    base, user, password, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    end = time.monotonic() + seconds
    ok = failed = 0
    while time.monotonic() < end:
        tick = time.monotonic()
        for p in PATHS:
            req = urllib.request.Request(base + p, headers={"Authorization": auth})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    r.read()
                    ok += 1
            except Exception:
                failed += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    print(f"console_poller: {ok} requests answered, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
