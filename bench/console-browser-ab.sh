#!/usr/bin/env bash
# With and without a real browser (headless Chromium) on the console plus
# bench/console_poller.py, the same broker binary, fresh data each run.
set -u
cd "$(dirname "$0")/.."
cfg=/tmp/poll-ab.toml
printf "[auth]\nallow_plaintext_passwords = true\n[[users]]\nlogin = \"app\"\npasscode = \"app\"\n[[users]]\nlogin = \"ops\"\npasscode = \"secret\"\ngroups = [\"admins\"]\n" > $cfg
for round in 1 2; do
  for poll in no yes; do
    for kind in persistent non-persistent; do
      rm -rf /tmp/poll-ab-data
      BROKK_LOG=error ${BROKK_BIN:-target/release/brokk} serve -c $cfg --data /tmp/poll-ab-data --stomp 127.0.0.1:17613 --admin 127.0.0.1:17161 --shards 2 > /tmp/poll-ab.out 2>&1 &
      pid=$!
      sleep 1
      pflag=""; [ $kind = persistent ] && pflag="--persistent"
      if [ $poll = yes ]; then
        .venv/bin/python bench/console_browser_load.py http://127.0.0.1:17161 ops secret 16 > /tmp/browser.out 2>&1 &
        bench/console_poller.py http://127.0.0.1:17161 ops secret 14 > /tmp/poller.out 2>&1 &
        sleep 3
      fi
      out=$(target/release/bench --brokers 127.0.0.1:17613 --login app --passcode app --producers 16 --consumers 16 $pflag --duration 10 --size 1024 2>&1)
      rate=$(grep -oE "= +[0-9]+ msg/s" <<<"$out" | head -1 | tr -s ' ')
      line=$(grep -E "send->receipt" <<<"$out" | head -1 | tr -s ' ')
      extra=""; [ $poll = yes ] && { sleep 4; extra="$(cat /tmp/poller.out) $(cat /tmp/browser.out)"; }
      echo "round $round browser+prometheus=$poll $kind $rate |$line $extra"
      kill $pid; wait $pid 2>/dev/null
    done
  done
done
