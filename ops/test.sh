#!/usr/bin/env bash
# Runs every check and test of the project on a fresh Debian 12 machine:
# installs what the tests need (a Python virtualenv with stomp.py for the
# interoperability test and selenium with Debian's chromium for the
# console's browser test, btrfs-progs for a full-disk test, ActiveMQ's JMS
# client jars for the OpenWire golden tests, MariaDB and
# PostgreSQL for the database modes, started by ops/services.sh), checks
# formatting and lints, then runs the Python interop suite and every Rust
# test. CI runs exactly this.
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

echo "== toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== python virtualenv for the stomp.py interop test"
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/pip install -q --disable-pip-version-check 'stomp.py>=8,<10' 'pytest>=7' 'selenium>=4.10,<5'

echo "== headless Chromium for the console's browser test (tests/console_browser)"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi

echo "== file-system tools for the full-disk tests (tests/disk_full.rs)"
if ! command -v mkfs.btrfs >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq btrfs-progs
fi

echo "== ActiveMQ's JMS client for the OpenWire golden tests (tests/openwire_codec.rs)"
# javac/java come with the machine image's Java 17; the jars from Debian.
# Without geronimo-j2ee-management the client fails with NoClassDefFoundError.
if [ ! -f /usr/share/java/activemq-client.jar ] || [ ! -f /usr/share/java/geronimo-jms_1.1_spec.jar ] \
  || [ ! -f /usr/share/java/hawtbuf.jar ] || [ ! -f /usr/share/java/slf4j-nop.jar ] \
  || [ ! -f /usr/share/java/geronimo-j2ee-management-1.1-spec.jar ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade \
    libactivemq-java libgeronimo-jms-1.1-spec-java libhawtbuf-java libslf4j-java \
    libgeronimo-j2ee-management-1.1-spec-java
fi

echo "== MariaDB, PostgreSQL and a 3-node ZooKeeper ensemble (tests/db_mode.rs, tests/zk_mode.rs)"
./ops/services.sh start mariadb postgres zookeeper

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== interop (stomp.py) and the console in headless Chromium, against brokk"
BROKK_BIN="$PWD/target/debug/brokk" .venv/bin/python -m pytest -q tests/interop tests/console_browser 2>&1 | tee -a "$log"

echo "== cargo test"
cargo test --workspace 2>&1 | tee -a "$log"

# One closing line over both runners (pytest's and cargo's).
passed=$(grep -oE '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
echo "${passed:-0} passed, ${failed:-0} failed"
