#!/usr/bin/env bash
# Runs the measurements recorded in bench/RESULTS.md, in one go, on this
# machine: Brokk memory and file modes beside ActiveMQ Classic (Debian's
# package, bench/activemq/run.sh), with identical bench parameters.
#   bench/compare.sh [OUT_DIR]      (needs: apt-get install -y activemq)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/brokk-compare}
mkdir -p "$out"
cargo build --release --workspace -q
B=target/release/bench
N=${MESSAGES:-200000}
common="--size 1024 --window 64 --messages $N"

run() { # name, args...
  local name=$1; shift
  echo "== $name: bench $*" | tee "$out/$name.txt"
  "$B" "$@" 2>&1 | tee -a "$out/$name.txt" | grep -E "sent\+receipted|send->receipt|end-to-end|lost|failover gap"
}

# Non-persistent, 64 producers, 8 consumers, one queue.
run brokk-memory-64p --mode memory --shards 2 --producers 64 --consumers 8 $common
run brokk-file-nonpersistent-64p --mode file --shards 2 --producers 64 --consumers 8 $common
# Persistent through the journal: 1, 8, 64 producers.
for p in 1 8 64; do
  run brokk-file-persistent-${p}p --mode file --shards 2 --producers $p --consumers 8 --persistent $common
  run brokk-memory-persistent-${p}p --mode memory --shards 2 --producers $p --consumers 8 --persistent $common
done
# Failover: five kills of the master, each on a fresh pair.
for k in 1 2 3 4 5; do
  run brokk-failover-$k --mode file --shards 2 --producers 8 --consumers 2 --persistent --kill-master-after $((N / 4)) $common
done

if [ -x /usr/bin/activemq ]; then
  port=61623
  bench/activemq/run.sh $port > "$out/activemq.log" 2>&1 &
  amq=$!
  trap 'kill $amq 2>/dev/null; pkill -f "activemq-bench" 2>/dev/null || true' EXIT
  for _ in $(seq 1 60); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 1; done
  sleep 2
  run activemq-64p --brokers 127.0.0.1:$port --producers 64 --consumers 8 $common
  for p in 1 8 64; do
    run activemq-persistent-${p}p --brokers 127.0.0.1:$port --producers $p --consumers 8 --persistent $common
  done
else
  echo "ActiveMQ not installed (apt-get install -y activemq): skipped" | tee "$out/activemq-skipped.txt"
fi
echo "raw outputs in $out"
