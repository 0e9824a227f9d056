#!/usr/bin/env bash
# Installs, starts, stops and reports the external services that brokk's
# `db` and `zk` store modes (and their tests) need, on one Debian 12 machine,
# loopback only:
#
#   ops/services.sh start|stop|status SERVICE...
#
#   SERVICE   mariadb             MariaDB on 127.0.0.1:3306, database `brokk`,
#                                 user brokk / password brokk
#             postgres            PostgreSQL 15 (Debian cluster 15/main) on
#                                 127.0.0.1:5432, database `brokk`, role brokk /
#                                 password brokk
#             zookeeper           a ZooKeeper ensemble of BROKK_ZK_NODES nodes
#                                 (default 3); node N serves clients on
#                                 127.0.0.1:2181N (21811, 21812, 21813)
#             zookeeper-node N    one node of that ensemble (tests stop and
#                                 restart single nodes)
#             all                 mariadb postgres zookeeper
#
# URLs:  mysql://brokk:brokk@127.0.0.1:3306/brokk
#        postgres://brokk:brokk@127.0.0.1:5432/brokk
#        127.0.0.1:21811,127.0.0.1:21812,127.0.0.1:21813
#
# Every action is idempotent: `start` on a running service only re-checks it
# (and re-applies the database grants), `stop` on a stopped one does nothing.
# `start` waits until the service answers (MariaDB ping, pg_isready, srvr of
# every ZooKeeper node). Missing packages are installed with
# `apt-get install --no-upgrade` (a named package that is installed is never
# upgraded, though apt may upgrade a dependency a new package needs). Start
# and stop must run as root; status need not.
#
# Notes for clients:
#   - Use 127.0.0.1, not localhost: the servers listen on 127.0.0.1 only, and
#     MariaDB runs with --skip-name-resolve, so a TCP client is always
#     'brokk'@'127.0.0.1' ('brokk'@'localhost' is the unix-socket account).
#   - MariaDB user brokk has ALL on `brokk%`.* (databases brokk, brokk_test
#     and any brokk_xxx a test creates). It may KILL connections of the same
#     account (brokk@127.0.0.1 kills brokk@127.0.0.1) but not of the other
#     (brokk@localhost): MariaDB's "owner of thread" is user@host.
#   - PostgreSQL role brokk (LOGIN CREATEDB) owns database brokk and may
#     pg_terminate_backend() its own other sessions without extra grants.
#     Logins over 127.0.0.1 use scram-sha-256 (Debian's pg_hba.conf); the
#     Debian cluster has ssl = on, so sslmode=prefer clients get TLS.
#   - `start zookeeper-node N` while fewer than a quorum of nodes run starts
#     the node and returns without waiting (it cannot serve yet).
#
# Environment:
#   BROKK_SERVICES_DIR   state directory (default /var/lib/brokk-services);
#                        MariaDB's data directory and the ZooKeeper nodes live
#                        here. PostgreSQL uses the Debian cluster 15/main
#                        (/var/lib/postgresql/15/main) instead.
#   BROKK_MARIADB_PORT   default 3306
#   BROKK_POSTGRES_PORT  default 5432 (written to the cluster's
#                        postgresql.conf; the cluster is restarted if it
#                        changes)
#   BROKK_ZK_NODES       1 (standalone) or 3 (ensemble, default); change it
#                        only while ZooKeeper is stopped
#   BROKK_ZK_BIND        the address ZooKeeper's client ports listen on
#                        (default 127.0.0.1). The zk-mode partition test
#                        runs a private ensemble inside a network namespace
#                        of its own with 0.0.0.0, so brokers in other
#                        namespaces reach it over veth pairs.
#
# Exit status: 0 success; 1 a service failed to install/start/stop; 2 usage;
# `status` exits 3 when any named service is not running.
set -euo pipefail

# Runs "$@" with every file descriptor above 2 closed: a daemon started from
# a caller that holds a lock file open (e.g. `flock LOCK cargo test`, whose
# tests start services) must not keep that lock for its whole life.
without_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] 2>/dev/null; then
      eval "exec $fd>&-" 2>/dev/null || true
    fi
  done
  exec "$@"
}

prog=services.sh
STATE=${BROKK_SERVICES_DIR:-/var/lib/brokk-services}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
MARIADB_PORT=${BROKK_MARIADB_PORT:-3306}
PG_PORT=${BROKK_POSTGRES_PORT:-5432}
PG_VERSION=15
PG_CLUSTER=main
ZK_NODES=${BROKK_ZK_NODES:-3}
ZK_CLASSPATH=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
MARIADB_TIMEOUT=30
POSTGRES_TIMEOUT=30
ZK_TIMEOUT=60
STOP_TIMEOUT=30

say() { echo "$prog: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() {
  cat >&2 <<EOF
usage: $0 start|stop|status SERVICE...
  SERVICE: mariadb | postgres | zookeeper | zookeeper-node N | all
EOF
  exit 2
}

now_ms() { date +%s%3N; }
elapsed() { # start_ms -> "1.234s"
  local ms
  ms=$(($(now_ms) - $1))
  printf '%d.%03ds' $((ms / 1000)) $((ms % 1000))
}

# A live (not zombie) process?
alive() {
  local pid=$1 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# PID from FILE if that process is alive and its command line contains NEEDLE
# (protects against a recycled PID); prints nothing otherwise.
live_pid() {
  local file=$1 needle=$2 pid
  [ -s "$file" ] || return 0
  pid=$(tr -dc '0-9' <"$file")
  alive "$pid" || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle" || return 0
  echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# TERM, wait up to STOP_TIMEOUT s, then KILL.
stop_pid() {
  local pid=$1 what=$2 deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$what (pid $pid) did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
}

log_tail() { # file (ZooKeeper logs every srvr probe of ours; leave those out)
  if [ -f "$1" ]; then
    say "last lines of $1:"
    grep -v 'Processing srvr command' "$1" | tail -n 25 >&2 || true
  fi
}

# ---------------------------------------------------------------- packages

apt_updated=0
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
ensure_pkg() {
  local pkg
  for pkg in "$@"; do
    installed "$pkg" && continue
    if [ "$apt_updated" = 0 ]; then
      say "apt-get update (to install $pkg)"
      apt-get update -qq || die "apt-get update failed"
      apt_updated=1
    fi
    say "installing $pkg"
    # Keep the package's own service (e.g. the system MariaDB on port 3306)
    # from being started by its postinst: policy-rc.d exit 101 = "don't".
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      made_policy=1
    fi
    local rc=0
    mkdir -p "$STATE"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade "$pkg" 9>&- >>"$STATE/apt.log" 2>&1 || rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { log_tail "$STATE/apt.log"; die "apt-get install $pkg failed (exit $rc; full output in $STATE/apt.log)"; }
    say "installed $pkg (apt output in $STATE/apt.log)"
  done
}

# ---------------------------------------------------------------- MariaDB

MDB_DIR=$STATE/mariadb
mdb_bin() { # name -> path (the sbin tools are not always on PATH)
  local d
  if command -v "$1" 2>/dev/null; then return 0; fi
  for d in /usr/sbin /usr/bin; do
    if [ -x "$d/$1" ]; then
      echo "$d/$1"
      return 0
    fi
  done
  die "$1 not found"
}
mdb_pid() { live_pid "$MDB_DIR/pid" "--datadir=$MDB_DIR"; }
mdb_ping() { "$(mdb_bin mariadb-admin)" --no-defaults --connect-timeout=2 --socket="$MDB_DIR/sock" -uroot ping >/dev/null 2>&1; }
mdb_root_sql() { "$(mdb_bin mariadb)" --no-defaults --socket="$MDB_DIR/sock" -uroot -e "$1"; }

mariadb_start() {
  local t0 pid deadline
  t0=$(now_ms)
  pid=$(mdb_pid)
  if [ -n "$pid" ] && mdb_ping; then
    mariadb_grants
    say "mariadb already running (pid $pid, 127.0.0.1:$MARIADB_PORT)"
    return 0
  fi
  ensure_pkg mariadb-server
  mkdir -p "$STATE"
  if [ -z "$pid" ]; then
    if port_open "$MARIADB_PORT"; then
      die "mariadb: port 127.0.0.1:$MARIADB_PORT is already in use by another process (not ours; see: ss -ltnp 'sport = :$MARIADB_PORT')"
    fi
    if [ ! -e "$MDB_DIR/.brokk-initialized" ]; then
      say "mariadb: initializing data directory $MDB_DIR"
      rm -rf "$MDB_DIR"
      mkdir -p "$MDB_DIR"
      "$(mdb_bin mariadb-install-db)" --no-defaults --datadir="$MDB_DIR" --user=root \
        --auth-root-authentication-method=socket --skip-test-db >"$MDB_DIR/install.log" 2>&1 9>&- ||
        { log_tail "$MDB_DIR/install.log"; die "mariadb-install-db failed"; }
      touch "$MDB_DIR/.brokk-initialized"
    fi
    rm -f "$MDB_DIR/pid" "$MDB_DIR/sock"
    say "mariadb: starting on 127.0.0.1:$MARIADB_PORT (log $MDB_DIR/log)"
    (without_inherited_fds setsid nohup "$(mdb_bin mariadbd)" --no-defaults --user=root --datadir="$MDB_DIR" \
      --socket="$MDB_DIR/sock" --pid-file="$MDB_DIR/pid" --port="$MARIADB_PORT" \
      --bind-address=127.0.0.1 --skip-name-resolve --innodb-buffer-pool-size=256M \
      </dev/null >>"$MDB_DIR/log" 2>&1) &
    pid=$!
    echo "$pid" >"$MDB_DIR/pid"
  fi
  deadline=$((SECONDS + MARIADB_TIMEOUT))
  until mdb_ping; do
    if ! alive "$pid"; then
      log_tail "$MDB_DIR/log"
      die "mariadb exited during startup (see $MDB_DIR/log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$MDB_DIR/log"
      die "mariadb did not answer ping within ${MARIADB_TIMEOUT}s (pid $pid still running; see $MDB_DIR/log)"
    fi
    sleep 0.2
  done
  mariadb_grants
  say "mariadb ready in $(elapsed "$t0") (pid $pid): mysql://brokk:brokk@127.0.0.1:$MARIADB_PORT/brokk"
}

mariadb_grants() {
  # `brokk%` is a pattern: brokk, brokk_test and any brokk_xxx a test creates.
  # A user may KILL its own (same user name) connections without extra grants.
  # PROCESS: the tests watch a broker's statement wait for a lock in
  # information_schema.PROCESSLIST, which hides it from a user without it.
  local host sql="CREATE DATABASE IF NOT EXISTS brokk; CREATE DATABASE IF NOT EXISTS brokk_test;"
  for host in 127.0.0.1 localhost; do
    sql+=" CREATE USER IF NOT EXISTS 'brokk'@'$host' IDENTIFIED BY 'brokk';"
    sql+=" ALTER USER 'brokk'@'$host' IDENTIFIED BY 'brokk';"
    sql+=" GRANT ALL PRIVILEGES ON \`brokk%\`.* TO 'brokk'@'$host';"
    sql+=" GRANT PROCESS ON *.* TO 'brokk'@'$host';"
  done
  mdb_root_sql "$sql" || die "mariadb: creating database/user brokk failed"
  "$(mdb_bin mariadb)" --no-defaults -h127.0.0.1 -P"$MARIADB_PORT" -ubrokk -pbrokk brokk -Nse 'select 1' >/dev/null ||
    die "mariadb: user brokk cannot log in over 127.0.0.1:$MARIADB_PORT"
}

mariadb_stop() {
  local pid
  pid=$(mdb_pid)
  if [ -z "$pid" ]; then
    say "mariadb already stopped"
    return 0
  fi
  say "mariadb: stopping pid $pid"
  stop_pid "$pid" mariadb
  rm -f "$MDB_DIR/pid"
  say "mariadb stopped"
}

mariadb_status() {
  local pid
  pid=$(mdb_pid)
  if [ -n "$pid" ] && mdb_ping; then
    echo "mariadb: running pid $pid port $MARIADB_PORT datadir $MDB_DIR"
  elif [ -n "$pid" ]; then
    echo "mariadb: not ready (pid $pid alive but not answering ping) port $MARIADB_PORT"
    return 1
  else
    echo "mariadb: stopped"
    return 1
  fi
}

# ---------------------------------------------------------------- PostgreSQL

pg_cluster_exists() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c { f = 1 } END { exit !f }'; }
pg_online() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c && $4 ~ /^online/ { f = 1 } END { exit !f }'; }
pg_datadir() { pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show data_directory 2>/dev/null || echo "/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER"; }
pg_pid() { # "?" when postmaster.pid is not readable (status as non-root)
  local f
  f="$(pg_datadir)/postmaster.pid"
  if [ -r "$f" ]; then head -n1 "$f"; else echo '?'; fi
}
pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }
pg_sql() (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d "${2:-postgres}" -c "$1" 9>&-)

# Sets the cluster's listen address and port; prints "changed" if it did.
pg_configure() {
  local cur conf_d="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d"
  # listen_addresses goes into a conf.d file (read after postgresql.conf, so
  # it wins): `pg_conftool set listen_addresses 127.0.0.1` would write the
  # value unquoted (it looks numeric), which PostgreSQL rejects.
  # max_wal_size: with the default 1 GB a broker's write volume (about 70
  # MB/s of WAL at 70k msg/s) forces a checkpoint every few seconds, and a
  # checkpoint's fsyncs stall every commit for up to half a second: a
  # failover that lands in one took 240-470 ms instead of 50-70
  # (bench/RESULTS.md, 2026-11-28).
  local want="listen_addresses = '127.0.0.1'   # ops/services.sh: loopback only
max_wal_size = '8GB'   # ops/services.sh: fewer checkpoints under a broker's writes"
  mkdir -p "$conf_d"
  if [ "$(cat "$conf_d/brokk-services.conf" 2>/dev/null)" != "$want" ]; then
    echo "$want" >"$conf_d/brokk-services.conf"
    chown postgres:postgres "$conf_d/brokk-services.conf" 2>/dev/null || true
    echo changed
  fi
  # The port stays in postgresql.conf: pg_lsclusters and pg_ctlcluster read it
  # from there.
  cur=$(pg_conftool -s "$PG_VERSION" "$PG_CLUSTER" show port 2>/dev/null || true)
  if [ "$cur" != "$PG_PORT" ]; then
    pg_conftool "$PG_VERSION" "$PG_CLUSTER" set port "$PG_PORT" >&2
    echo changed
  fi
  # Password (scram-sha-256/md5) logins over 127.0.0.1: Debian's default
  # pg_hba.conf has `host all all 127.0.0.1/32 scram-sha-256`. Add a line for
  # brokk only when there is no 127.0.0.1/32 line at all.
  local hba
  hba="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/pg_hba.conf"
  if [ -f "$hba" ] && ! grep -Eq '^[[:space:]]*host[[:space:]].*[[:space:]]127\.0\.0\.1/32[[:space:]]' "$hba"; then
    say "postgres: adding a 127.0.0.1/32 scram-sha-256 line for brokk to $hba"
    echo 'host    all    brokk    127.0.0.1/32    scram-sha-256' >>"$hba"
    echo changed
  fi
}

postgres_start() {
  local t0 changed deadline
  t0=$(now_ms)
  ensure_pkg "postgresql-$PG_VERSION"
  if ! pg_cluster_exists; then
    say "postgres: creating cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster -p "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >&2 9>&- || die "pg_createcluster failed"
  fi
  changed=$(pg_configure)
  if pg_online; then
    if [ -n "$changed" ]; then
      say "postgres: configuration changed; restarting $PG_VERSION/$PG_CLUSTER"
      (without_inherited_fds setsid -w pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast >&2) || die "pg_ctlcluster restart failed"
    elif pg_ready; then
      postgres_grants
      say "postgres already running (pid $(pg_pid), 127.0.0.1:$PG_PORT)"
      return 0
    fi
  else
    if port_open "$PG_PORT"; then
      die "postgres: port 127.0.0.1:$PG_PORT is already in use by another process"
    fi
    say "postgres: starting cluster $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
    # setsid: the postmaster must not share the caller's process group/session.
    (without_inherited_fds setsid -w pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2) ||
      { log_tail "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; die "pg_ctlcluster start failed"; }
  fi
  deadline=$((SECONDS + POSTGRES_TIMEOUT))
  until pg_ready; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
      die "postgres not ready on 127.0.0.1:$PG_PORT within ${POSTGRES_TIMEOUT}s"
    fi
    sleep 0.2
  done
  postgres_grants
  say "postgres ready in $(elapsed "$t0") (pid $(pg_pid)): postgres://brokk:brokk@127.0.0.1:$PG_PORT/brokk"
}

postgres_grants() {
  # A role may pg_terminate_backend() sessions of its own role without
  # pg_signal_backend (PostgreSQL >= 9.x), so no extra grant is needed.
  pg_sql "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'brokk') THEN
        CREATE ROLE brokk LOGIN CREATEDB PASSWORD 'brokk';
      ELSE
        ALTER ROLE brokk LOGIN CREATEDB PASSWORD 'brokk';
      END IF;
    END \$\$;" || die "postgres: creating role brokk failed"
  if [ "$(cd / && runuser -u postgres -- psql -X -At -p "$PG_PORT" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'brokk'" 9>&-)" != 1 ]; then
    pg_sql "CREATE DATABASE brokk OWNER brokk" || die "postgres: creating database brokk failed"
  fi
  [ "$(PGPASSWORD=brokk PGCONNECT_TIMEOUT=5 psql -X -At -h 127.0.0.1 -p "$PG_PORT" -U brokk -d brokk -c 'select 1' 9>&-)" = 1 ] ||
    die "postgres: role brokk cannot log in with its password over 127.0.0.1:$PG_PORT (check pg_hba.conf)"
}

postgres_stop() {
  if ! command -v pg_lsclusters >/dev/null || ! pg_online; then
    say "postgres already stopped"
    return 0
  fi
  say "postgres: stopping cluster $PG_VERSION/$PG_CLUSTER"
  pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast 9>&- >&2 || die "pg_ctlcluster stop failed"
  say "postgres stopped"
}

postgres_status() {
  if command -v pg_lsclusters >/dev/null && pg_online && pg_ready; then
    echo "postgres: running pid $(pg_pid) port $PG_PORT cluster $PG_VERSION/$PG_CLUSTER datadir $(pg_datadir)"
  elif command -v pg_lsclusters >/dev/null && pg_online; then
    echo "postgres: not ready (cluster $PG_VERSION/$PG_CLUSTER online but not accepting on 127.0.0.1:$PG_PORT)"
    return 1
  else
    echo "postgres: stopped"
    return 1
  fi
}

# ---------------------------------------------------------------- ZooKeeper

ZK_DIR=$STATE/zookeeper
zk_port() { echo "2181$1"; }
zk_pid() { live_pid "$ZK_DIR/n$1/pid" "$ZK_DIR/n$1/zoo.cfg"; }

# The node's "Mode:" (leader, follower, standalone) from the srvr four-letter
# word; empty when it is down or not serving (e.g. no quorum).
zk_mode() {
  local out
  out=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$(zk_port "$1") && printf srvr >&3 && cat <&3" 2>/dev/null) || true
  sed -n 's/^Mode: //p' <<<"$out"
}

zk_check_nodes_setting() {
  [ "$ZK_NODES" = 1 ] || [ "$ZK_NODES" = 3 ] || die "BROKK_ZK_NODES must be 1 or 3 (got '$ZK_NODES')"
}

zk_write_config() {
  local n=$1 d="$ZK_DIR/n$1" i
  mkdir -p "$d/data"
  echo "$n" >"$d/data/myid"
  {
    echo "tickTime=500"
    echo "initLimit=10"
    echo "syncLimit=5"
    echo "dataDir=$d/data"
    echo "clientPort=$(zk_port "$n")"
    echo "clientPortAddress=${BROKK_ZK_BIND:-127.0.0.1}"
    echo "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons"
    echo "admin.enableServer=false"
    echo "minSessionTimeout=1000"
    if [ "$ZK_NODES" -gt 1 ]; then
      for ((i = 1; i <= ZK_NODES; i++)); do
        echo "server.$i=127.0.0.1:2888$i:3888$i"
      done
    fi
  } >"$d/zoo.cfg.new"
  mv "$d/zoo.cfg.new" "$d/zoo.cfg"
}

# Launches node N unless it runs; does not wait.
zk_launch() {
  local n=$1 d="$ZK_DIR/n$1" pid p
  pid=$(zk_pid "$n")
  if [ -n "$pid" ]; then
    return 0
  fi
  for p in "$(zk_port "$n")" "2888$n" "3888$n"; do
    [ "$ZK_NODES" = 1 ] && [ "$p" != "$(zk_port "$n")" ] && continue
    if port_open "$p"; then
      die "zookeeper node $n: port 127.0.0.1:$p is already in use by another process"
    fi
  done
  zk_write_config "$n"
  say "zookeeper node $n: starting on 127.0.0.1:$(zk_port "$n") (log $d/log)"
  (without_inherited_fds setsid nohup java -Xmx256m -cp "$ZK_CLASSPATH" org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" \
    </dev/null >>"$d/log" 2>&1) &
  echo "$!" >"$d/pid"
}

# Waits until every node in "$@" reports a mode.
zk_wait() {
  local deadline n mode pending
  deadline=$((SECONDS + ZK_TIMEOUT))
  while :; do
    pending=()
    for n in "$@"; do
      [ -n "$(zk_pid "$n")" ] || { log_tail "$ZK_DIR/n$n/log"; die "zookeeper node $n exited during startup (see $ZK_DIR/n$n/log)"; }
      mode=$(zk_mode "$n")
      [ -n "$mode" ] || pending+=("$n")
    done
    [ "${#pending[@]}" = 0 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      for n in "${pending[@]}"; do log_tail "$ZK_DIR/n$n/log"; done
      die "zookeeper node(s) ${pending[*]} not serving within ${ZK_TIMEOUT}s (left running; an ensemble node serves only with a quorum: $((ZK_NODES / 2 + 1)) of $ZK_NODES nodes)"
    fi
    sleep 0.3
  done
}

zk_prereqs() {
  zk_check_nodes_setting
  ensure_pkg zookeeper libslf4j-java
  command -v java >/dev/null || ensure_pkg default-jre-headless
  local f jars
  IFS=: read -ra jars <<<"$ZK_CLASSPATH"
  for f in "${jars[@]}"; do
    [ -r "$f" ] || die "zookeeper: $f is missing"
  done
}

zk_nodes_string() {
  local n s=""
  for ((n = 1; n <= ZK_NODES; n++)); do
    s+="${s:+,}127.0.0.1:$(zk_port "$n")"
  done
  echo "$s"
}

zookeeper_start() {
  local t0 n nodes=()
  t0=$(now_ms)
  zk_prereqs
  for ((n = 1; n <= ZK_NODES; n++)); do nodes+=("$n"); done
  local all_up=1
  for n in "${nodes[@]}"; do
    if [ -z "$(zk_pid "$n")" ] || [ -z "$(zk_mode "$n")" ]; then all_up=0; fi
  done
  if [ "$all_up" = 1 ]; then
    say "zookeeper already running ($ZK_NODES node(s): $(zk_nodes_string))"
    return 0
  fi
  for n in "${nodes[@]}"; do zk_launch "$n"; done
  zk_wait "${nodes[@]}"
  local modes=""
  for n in "${nodes[@]}"; do modes+=" n$n=$(zk_mode "$n")"; done
  say "zookeeper ready in $(elapsed "$t0"):$modes; connect string $(zk_nodes_string)"
}

zookeeper_node_start() {
  local n=$1 t0
  t0=$(now_ms)
  zk_prereqs
  [ "$n" -le "$ZK_NODES" ] || die "zookeeper-node $n: BROKK_ZK_NODES is $ZK_NODES"
  if [ -n "$(zk_pid "$n")" ] && [ -n "$(zk_mode "$n")" ]; then
    say "zookeeper node $n already running (pid $(zk_pid "$n"), 127.0.0.1:$(zk_port "$n"))"
    return 0
  fi
  zk_launch "$n"
  local i live=0 quorum=$((ZK_NODES / 2 + 1))
  for ((i = 1; i <= ZK_NODES; i++)); do
    [ -n "$(zk_pid "$i")" ] && live=$((live + 1))
  done
  if [ "$live" -lt "$quorum" ]; then
    say "zookeeper node $n started (pid $(zk_pid "$n")) but only $live of $ZK_NODES nodes run: it serves clients once $quorum do (start another node, or: $prog start zookeeper)"
    return 0
  fi
  zk_wait "$n"
  say "zookeeper node $n ready in $(elapsed "$t0"): $(zk_mode "$n")"
}

zookeeper_node_stop() {
  local n=$1 pid
  pid=$(zk_pid "$n")
  if [ -z "$pid" ]; then
    say "zookeeper node $n already stopped"
    return 0
  fi
  say "zookeeper node $n: stopping pid $pid"
  stop_pid "$pid" "zookeeper node $n"
  rm -f "$ZK_DIR/n$n/pid"
  say "zookeeper node $n stopped"
}

zookeeper_stop() {
  local n any=0
  # All three possible nodes, whatever BROKK_ZK_NODES says now.
  for n in 1 2 3; do
    if [ -n "$(zk_pid "$n")" ]; then
      zookeeper_node_stop "$n"
      any=1
    fi
  done
  if [ "$any" = 1 ]; then say "zookeeper stopped"; else say "zookeeper already stopped"; fi
}

zk_node_status_word() { # n -> "n1 pid 123 port 21811 leader" or "n1 stopped"
  local n=$1 pid mode
  pid=$(zk_pid "$n")
  if [ -z "$pid" ]; then
    echo "n$n stopped"
    return 1
  fi
  mode=$(zk_mode "$n")
  echo "n$n pid $pid port $(zk_port "$n") ${mode:-not-serving}"
  [ -n "$mode" ]
}

zookeeper_status() {
  local n ok=1 parts=() w
  zk_check_nodes_setting
  for ((n = 1; n <= ZK_NODES; n++)); do
    w=$(zk_node_status_word "$n") || ok=0
    parts+=("$w")
  done
  local IFS=';'
  if [ "$ok" = 1 ]; then
    echo "zookeeper: running ($ZK_NODES node(s)):${parts[*]/#/ }"
  else
    echo "zookeeper: not running (${ZK_NODES} node(s)):${parts[*]/#/ }"
    return 1
  fi
}

zookeeper_node_status() {
  local n=$1 w
  if w=$(zk_node_status_word "$n"); then
    echo "zookeeper-node $n: running ${w#n"$n" }"
  else
    echo "zookeeper-node $n: ${w#n"$n" }"
    return 1
  fi
}

# ---------------------------------------------------------------- main

[ $# -ge 2 ] || usage
action=$1
shift
case $action in start | stop | status) ;; *) usage ;; esac

# Parse the service list into words like "mariadb" or "zookeeper-node:2".
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    mariadb | mysql) targets+=(mariadb) ;;
    postgres | postgresql) targets+=(postgres) ;;
    zookeeper | zk) targets+=(zookeeper) ;;
    all) targets+=(mariadb postgres zookeeper) ;;
    zookeeper-node)
      if [ $# -lt 2 ] || ! [[ $2 =~ ^[1-3]$ ]]; then
        say "zookeeper-node needs a node number 1..3"
        usage
      fi
      targets+=("zookeeper-node:$2")
      shift
      ;;
    *)
      say "unknown service '$1'"
      usage
      ;;
  esac
  shift
done

if [ "$action" = status ]; then
  rc=0
  for t in "${targets[@]}"; do
    case $t in
      mariadb) mariadb_status || rc=3 ;;
      postgres) postgres_status || rc=3 ;;
      zookeeper) zookeeper_status || rc=3 ;;
      zookeeper-node:*) zookeeper_node_status "${t#*:}" || rc=3 ;;
    esac
  done
  exit "$rc"
fi

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and manages system services)"
mkdir -p "$STATE"
# One start/stop at a time. Every daemon is launched with fd 9 closed so that
# it does not inherit (and hold) this lock.
exec 9>"$STATE/.lock"
flock -w 600 9 || die "another $prog start/stop holds $STATE/.lock"

for t in "${targets[@]}"; do
  case $action:$t in
    start:mariadb) mariadb_start ;;
    stop:mariadb) mariadb_stop ;;
    start:postgres) postgres_start ;;
    stop:postgres) postgres_stop ;;
    start:zookeeper) zookeeper_start ;;
    stop:zookeeper) zookeeper_stop ;;
    start:zookeeper-node:*) zookeeper_node_start "${t#*:}" ;;
    stop:zookeeper-node:*) zookeeper_node_stop "${t#*:}" ;;
  esac
done
