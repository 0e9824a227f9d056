#!/usr/bin/env bash
# The console's cost: bench against one broker binary (fresh data each run),
# without and with the admin port under load, alternating, ROUNDS times.
# The load: bench/console_poller.py (every console page's API call,
# /metrics and /healthz, each second) and, with BROWSER=1, also headless
# Chromium logged in to the console, on the next page every second
# (bench/console_browser_load.py).
#   ROUNDS=3 [BROWSER=1] BROKK_BIN=target/release/brokk bench/console-ab.sh
set -u
cd "$(dirname "$0")/.."
bin=${BROKK_BIN:-target/release/brokk}
cfg=$(mktemp --suffix .toml)
data=$(mktemp -d)
printf '[auth]\nallow_plaintext_passwords = true\n[[users]]\nlogin = "app"\npasscode = "app"\n[[users]]\nlogin = "ops"\npasscode = "secret"\ngroups = ["admins"]\n' >"$cfg"
admin=http://127.0.0.1:17161
for round in $(seq "${ROUNDS:-3}"); do
  for load in no yes; do
    for kind in persistent non-persistent; do
      rm -rf "$data"
      BROKK_LOG=error "$bin" serve -c "$cfg" --data "$data" --stomp 127.0.0.1:17613 \
        --admin 127.0.0.1:17161 --shards 2 >/dev/null 2>&1 &
      pid=$!
      sleep 1
      pflag=""
      [ "$kind" = persistent ] && pflag="--persistent"
      logs=()
      if [ "$load" = yes ]; then
        if [ "${BROWSER:-0}" = 1 ]; then
          .venv/bin/python bench/console_browser_load.py "$admin" ops secret 16 >"$data.browser" 2>&1 &
          logs+=("$data.browser")
        fi
        bench/console_poller.py "$admin" ops secret 14 >"$data.poller" 2>&1 &
        logs+=("$data.poller")
        sleep 3
      fi
      out=$(target/release/bench --brokers 127.0.0.1:17613 --login app --passcode app \
        --producers 16 --consumers 16 $pflag --duration 10 --size 1024 2>&1)
      rate=$(grep -oE "= +[0-9]+ msg/s" <<<"$out" | head -1 | tr -s ' ')
      line=$(grep -E "send->receipt" <<<"$out" | head -1 | tr -s ' ')
      extra=""
      if [ "$load" = yes ]; then
        wait $(jobs -p | grep -v "^$pid$") 2>/dev/null
        extra=$(cat "${logs[@]}" | tr '\n' ' ')
      fi
      echo "round $round admin-load=$load $kind $rate |$line $extra"
      kill "$pid"
      wait "$pid" 2>/dev/null
    done
  done
done
rm -rf "$cfg" "$data" "$data".*
