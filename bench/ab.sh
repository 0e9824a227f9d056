#!/usr/bin/env bash
# Before/after on one machine in one sitting: runs the same bench load
# against two brokk binaries, alternating, ROUNDS times, and prints each
# run's throughput and send->receipt percentiles (p50 p90 p99 p99.9 max, ms).
#   bench/ab.sh BEFORE_BIN AFTER_BIN [bench args...]
#   ROUNDS=5 TASKSET=1 bench/ab.sh /tmp/brokk-old target/release/brokk \
#       --mode file --shards 1 --producers 2 --consumers 2 --persistent --rate 81000 --duration 8
# TASKSET=CPU pins bench (and so the brokers it starts, until each shard
# pins itself to cores 0..N-1) to that CPU: bench and a one-shard broker
# then do not share a core.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2; shift 2
cargo build --release -p bench -q
pin=()
[ -n "${TASKSET:-}" ] && pin=(taskset -c "$TASKSET")
for round in $(seq "${ROUNDS:-3}"); do
  for bin in "$before" "$after"; do
    out=$(BROKK_BIN=$bin "${pin[@]}" target/release/bench "$@" 2>&1)
    rate=$(grep -oE "= +[0-9]+ msg/s" <<<"$out" | head -1 | tr -s ' ')
    line=$(grep -E "send->receipt" <<<"$out" | head -1 | tr -s ' ')
    printf '%s round %s %s |%s\n' "$bin" "$round" "$rate" "$line"
  done
done
