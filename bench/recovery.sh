#!/usr/bin/env bash
# Measures journal recovery: fills a file-mode broker with persistent
# messages nobody consumes, SIGKILLs it, restarts it and times the start
# until it serves (the "brokk listening" line).
#   bench/recovery.sh [MESSAGES] [SIZE]     (default 1000000 x 1024 B ~ 1.1 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}; size=${2:-1024}
cargo build --release --workspace -q
dir=$(mktemp -d --suffix=-brokk-recovery)
trap 'pkill -9 -f "brokk serve --stomp 127.0.0.1:61900" || true; sleep 0.2; rm -rf "$dir"' EXIT
cfg="$dir/brokk.toml"
printf '[limits]\nmemory_limit_bytes = 8589934592\n[store]\nlimit_bytes = 17179869184\n' > "$cfg"
serve() { BROKK_LOG=${BROKK_LOG:-warn} exec target/release/brokk serve --config "$cfg" --stomp 127.0.0.1:61900 --admin 127.0.0.1:0 --shards 2 --data "$dir/data"; }
serve > "$dir/out1" &
pid=$!
until grep -q "brokk listening" "$dir/out1" 2>/dev/null; do sleep 0.05; done
target/release/bench --brokers 127.0.0.1:61900 --producers 8 --consumers 0 --messages "$n" --size "$size" --window 64 --persistent | grep -E "sent\+"
kill -9 $pid; wait $pid 2>/dev/null || true
bytes=$(du -sb "$dir/data" | cut -f1)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
start=$(date +%s.%N)
BROKK_LOG=info serve > "$dir/out2" 2> "$dir/err2" &
until grep -q "brokk listening" "$dir/out2" 2>/dev/null; do sleep 0.005; done
end=$(date +%s.%N)
live=$(find "$dir/data" -name 'seg-*' -size +0 | wc -l)
grep -hoE "(read_ms|total_ms|restore_ms|restored|records)=[0-9]+" "$dir/err2" | paste -sd' ' || true
echo "journal: $bytes bytes on disk in $live segment files; recovery to serving: $(echo "$end - $start" | awk '{printf "%.3f", $1 - $3}') s"
