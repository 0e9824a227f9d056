#!/usr/bin/env bash
# Queues larger than memory: the produce rate while paging, the drain rate
# of a paged backlog against one held in memory, and a standby's takeover
# time and peak RSS (VmHWM) for that backlog's journal.
#   bench/paging.sh [BACKLOG_MIB] [SIZE]     (default 2048 MiB of 32 KiB messages)
# Each case: a fresh file-mode master gets the backlog from 8 producers
# (persistent, window 64, no consumer); a standby on the same data
# directory takes over after a SIGKILL of the master; 4 consumers drain it
# from the new master (bench --drain).
# CASES="BIN:MEMORY_LIMIT ..." picks binaries and limits; the default
# compares paging (16 MiB) with everything in memory (8 GiB).
# MODE=mysql runs the same on MariaDB (ops/services.sh start mariadb; a
# fresh database brokk_paging per case). The takeover writes the backlog
# past the paging point to the new master's spool; the page cache is
# dropped again before the drain, so the spool is read from disk.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-2048}; size=${2:-32768}
n=$(( mib * 1024 * 1024 / size ))
cargo build --release --workspace -q
mode=${MODE:-file}
store=""
if [ "$mode" = mysql ]; then
  ops/services.sh start mariadb >/dev/null
  store='mode = "mysql"\nurl = "mysql://brokk:brokk@127.0.0.1:3306/brokk_paging"\n'
elif [ "$mode" != file ]; then
  echo "MODE must be file or mysql" >&2; exit 2
fi
cases=${CASES:-"target/release/brokk:16777216 target/release/brokk:8589934592"}
dir=$(mktemp -d --suffix=-brokk-paging)
port=61910
trap 'pkill -9 -f -- "--stomp 127.0.0.1:$port " || true; sleep 0.2; rm -rf "$dir"' EXIT
# Waits up to 120 s for PATTERN in FILE (a broker that never starts fails the run).
wait_for() {
  local deadline=$((SECONDS + 120))
  until grep -q "$1" "$2" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "paging.sh: no '$1' in $2 after 120 s:" >&2; tail -5 "$2" >&2; exit 1; fi
    sleep 0.005
  done
}
hwm() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$1/status"; }
echo "backlog: $n x $size B ($mib MiB), mode $mode, $(nproc) cores, $(date -u +%F)"
for c in $cases; do
  bin=${c%%:*}; limit=${c##*:}
  rm -rf "$dir/data"; mkdir -p "$dir/data"
  if [ "$mode" = mysql ]; then
    mariadb -h127.0.0.1 -ubrokk -pbrokk -e "DROP DATABASE IF EXISTS brokk_paging; CREATE DATABASE brokk_paging"
  fi
  printf "[limits]\nmemory_limit_bytes = %s\n[store]\nlimit_bytes = 17179869184\n$store" "$limit" > "$dir/brokk.toml"
  serve() { BROKK_LOG=${BROKK_LOG:-warn} exec "$bin" serve --config "$dir/brokk.toml" --stomp 127.0.0.1:$port --admin 127.0.0.1:0 --shards 2 --data "$dir/data"; }
  serve > "$dir/out1" &
  m=$!
  wait_for "brokk listening" "$dir/out1"
  produced=$(target/release/bench --brokers 127.0.0.1:$port --producers 8 --consumers 0 --messages "$n" --size "$size" --window 64 --persistent | grep -E "sent\+" || true)
  master_hwm=$(hwm $m)
  serve > "$dir/out2" &
  s=$!
  wait_for "brokk standby" "$dir/out2"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  kill -9 $m; wait $m 2>/dev/null || true
  start=$(date +%s.%N)
  wait_for "brokk listening" "$dir/out2"
  end=$(date +%s.%N)
  takeover_hwm=$(hwm $s)
  if [ "$mode" = mysql ]; then
    # The takeover wrote the spool: drain it from disk, not the page cache.
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "paging.sh: cannot drop the page cache (not root)" >&2
  fi
  drained=$(target/release/bench --brokers 127.0.0.1:$port --drain --consumers 4 --prefetch 1000 --idle-timeout 3 | grep -E "drained" || true)
  echo "== $bin, memory_limit_bytes=$limit"
  echo "   produce: $produced"
  echo "   master peak RSS after producing: ${master_hwm} MiB"
  echo "   takeover (SIGKILL to serving): $(echo "$end $start" | awk '{printf "%.3f", $1 - $2}') s, standby peak RSS: ${takeover_hwm} MiB"
  echo "   $drained"
  echo "   new master peak RSS after draining: $(hwm $s) MiB"
  kill -9 $s; wait $s 2>/dev/null || true
done
