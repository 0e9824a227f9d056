#!/usr/bin/env bash
# Runs Debian's ActiveMQ Classic in the foreground for side-by-side bench runs:
#   bench/activemq/run.sh [STOMP_PORT [OPENWIRE_PORT]]
#   (defaults 61623 and 61626, not 61616: a Brokk may hold that; KahaDB in a temp dir)
# Install it first: apt-get install -y activemq
set -euo pipefail
port=${1:-61623}
openwire_port=${2:-61626}
here=$(cd "$(dirname "$0")" && pwd)
base=$(mktemp -d --suffix=-activemq-bench)
mkdir -p "$base/conf" "$base/data" "$base/tmp"
sed -e "s#@STOMP_PORT@#$port#" -e "s#@OPENWIRE_PORT@#$openwire_port#" -e "s#@DATA@#$base/data#" "$here/activemq.xml" > "$base/conf/activemq.xml"
cp /etc/activemq/instances-available/main/log4j2.properties "$base/conf/" 2>/dev/null || true
export ACTIVEMQ_HOME=/usr/share/activemq ACTIVEMQ_BASE="$base" ACTIVEMQ_CONF="$base/conf" \
       ACTIVEMQ_DATA="$base/data" ACTIVEMQ_TMP="$base/tmp" ACTIVEMQ_USER=root
export ACTIVEMQ_OPTS="-Xms512M -Xmx512M"
exec /usr/bin/activemq console xbean:file:"$base/conf/activemq.xml"
