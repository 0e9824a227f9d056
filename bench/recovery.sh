#!/usr/bin/env bash
# Measures journal recovery: fills a file-mode broker with persistent
# messages nobody consumes, SIGKILLs it, then restarts on a copy of that
# journal, page cache dropped, and times the start until it serves (the
# "brokk listening" line).
#   bench/recovery.sh [MESSAGES] [SIZE]     (default 1000000 x 1024 B ~ 1.1 GiB)
# Before/after: BINS="OLD_BIN NEW_BIN" ROUNDS=3 bench/recovery.sh restarts
# each binary ROUNDS times, alternating, each time on a fresh copy of the
# same journal (written by target/release/brokk).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}; size=${2:-1024}
cargo build --release --workspace -q
bins=${BINS:-target/release/brokk}
dir=$(mktemp -d --suffix=-brokk-recovery)
port=61900
trap 'pkill -9 -f "brokk serve --stomp 127.0.0.1:$port" || true; sleep 0.2; rm -rf "$dir"' EXIT
cfg="$dir/brokk.toml"
printf '[limits]\nmemory_limit_bytes = 8589934592\n[store]\nlimit_bytes = 17179869184\n' > "$cfg"
serve() { # bin, data dir
  BROKK_LOG=${BROKK_LOG:-warn} exec "$1" serve --config "$cfg" --stomp 127.0.0.1:$port --admin 127.0.0.1:0 --shards 2 --data "$2"
}
serve target/release/brokk "$dir/journal" > "$dir/out1" &
pid=$!
until grep -q "brokk listening" "$dir/out1" 2>/dev/null; do sleep 0.05; done
target/release/bench --brokers 127.0.0.1:$port --producers 8 --consumers 0 --messages "$n" --size "$size" --window 64 --persistent | grep -E "sent\+"
kill -9 $pid; wait $pid 2>/dev/null || true
bytes=$(du -sb "$dir/journal" | cut -f1)
live=$(find "$dir/journal" -name 'seg-*' -size +0 | wc -l)
echo "journal: $bytes bytes on disk in $live segment files"
for round in $(seq "${ROUNDS:-1}"); do
  for bin in $bins; do
    rm -rf "$dir/data"; cp -a "$dir/journal" "$dir/data"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    start=$(date +%s.%N)
    BROKK_LOG=info serve "$bin" "$dir/data" > "$dir/out2" 2> "$dir/err2" &
    pid=$!
    until grep -q "brokk listening" "$dir/out2" 2>/dev/null; do sleep 0.005; done
    end=$(date +%s.%N)
    stats=$(grep -hoE "(bytes|read_ms|total_ms|restore_ms|restored|records)=[0-9]+" "$dir/err2" | paste -sd' ' || true)
    echo "$bin round $round: recovery to serving $(echo "$end - $start" | awk '{printf "%.3f", $1 - $3}') s ($stats)"
    kill -9 $pid; wait $pid 2>/dev/null || true
  done
done
