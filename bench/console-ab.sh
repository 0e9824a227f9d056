#!/usr/bin/env bash
# With and without the console poller, the same broker binary, fresh data each run.
set -u
cd "$(dirname "$0")/.."
cfg=/tmp/poll-ab.toml
cat > $cfg <<'C'
[auth]
allow_plaintext_passwords = true
[[users]]
login = "app"
passcode = "app"
[[users]]
login = "ops"
passcode = "secret"
groups = ["admins"]
C
for round in 1 2 3; do
  for poll in no yes; do
    for kind in persistent non-persistent; do
      rm -rf /tmp/poll-ab-data
      BROKK_LOG=warn ${BROKK_BIN:-target/release/brokk} serve -c $cfg --data /tmp/poll-ab-data --stomp 127.0.0.1:17613 --admin 127.0.0.1:17161 --shards 2 > /tmp/poll-ab.out 2>&1 &
      pid=$!
      sleep 1
      pflag=""; [ $kind = persistent ] && pflag="--persistent"
      if [ $poll = yes ]; then bench/console_poller.py http://127.0.0.1:17161 ops secret 12 > /tmp/poller.out 2>&1 & fi
      out=$(target/release/bench --brokers 127.0.0.1:17613 --login app --passcode app --producers 16 --consumers 16 $pflag --duration 10 --size 1024 2>&1)
      rate=$(grep -oE "= +[0-9]+ msg/s" <<<"$out" | head -1 | tr -s ' ')
      line=$(grep -E "send->receipt" <<<"$out" | head -1 | tr -s ' ')
      wait_poll=""; [ $poll = yes ] && { sleep 3; wait_poll=$(cat /tmp/poller.out); }
      echo "round $round poll=$poll $kind $rate |$line $wait_poll"
      kill $pid; wait $pid 2>/dev/null
    done
  done
done
