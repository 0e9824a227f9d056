#!/usr/bin/env bash
# Runs Debian's ActiveMQ Classic in the foreground with JDBC persistence on the
# local MariaDB (127.0.0.1:3306, user brokk/brokk), for comparison with Brokk's
# database mode:
#   bench/activemq/run-jdbc.sh [STOMP_PORT] [DB_NAME]   (defaults 61623 brokk_amq)
# The database is created if absent (tables are created by ActiveMQ on startup).
# Start a second one on another port with the same DB_NAME for a JDBC
# master/slave pair. Install first:
#   apt-get install -y activemq libmariadb-java libcommons-dbcp2-java libcommons-pool2-java mariadb-client
set -euo pipefail
port=${1:-61623}
db=${2:-brokk_amq}
here=$(cd "$(dirname "$0")" && pwd)
for jar in mariadb-java-client commons-dbcp2 commons-pool2; do
    [ -e /usr/share/java/$jar.jar ] || { echo "missing /usr/share/java/$jar.jar (see header)" >&2; exit 1; }
done
mariadb -h127.0.0.1 -P3306 -ubrokk -pbrokk -e "CREATE DATABASE IF NOT EXISTS \`$db\`"
base=$(mktemp -d --suffix=-activemq-jdbc-bench)
mkdir -p "$base/conf" "$base/data" "$base/tmp"
sed -e "s#@STOMP_PORT@#$port#" -e "s#@DATA@#$base/data#" -e "s#@DB@#$db#" \
    "$here/activemq-jdbc.xml" > "$base/conf/activemq.xml"
# Debian's broker logs through log4j 1.2 (slf4j-log4j12), so log4j2.properties is
# ignored; $ACTIVEMQ_CONF is on the classpath, so this log4j.properties is used
cat > "$base/conf/log4j.properties" <<'LOG'
log4j.rootLogger=INFO, stdout
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1} - %m%n
LOG
echo "run-jdbc.sh: ACTIVEMQ_BASE=$base stomp=127.0.0.1:$port db=$db" >&2
# /usr/bin/activemq sources /usr/share/activemq/activemq-options, which resets
# ACTIVEMQ_BASE to /var/lib/activemq/ and ACTIVEMQ_OPTS, so $ACTIVEMQ_BASE/lib is
# not usable: the jars go in through ACTIVEMQ_USER_CLASSPATH (-> activemq.classpath).
# A pidfile per instance, or a second broker refuses to start ("already running").
export ACTIVEMQ_HOME=/usr/share/activemq ACTIVEMQ_BASE="$base" ACTIVEMQ_CONF="$base/conf" \
       ACTIVEMQ_DATA="$base/data" ACTIVEMQ_TMP="$base/tmp" ACTIVEMQ_USER=root \
       ACTIVEMQ_PIDFILE="$base/activemq.pid" \
       ACTIVEMQ_USER_CLASSPATH=/usr/share/java/mariadb-java-client.jar:/usr/share/java/commons-dbcp2.jar:/usr/share/java/commons-pool2.jar
export ACTIVEMQ_OPTS="-Xms512M -Xmx512M"
exec /usr/bin/activemq console xbean:file:"$base/conf/activemq.xml"
