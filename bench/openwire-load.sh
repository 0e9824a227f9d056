#!/bin/sh
# Compiles bench/openwire-java/Load.java against Debian's ActiveMQ client jars
# (libactivemq-java) and runs it:
#   bench/openwire-load.sh URL PRODUCERS CONSUMERS persistent|non-persistent BODY_BYTES SECONDS QUEUE
# e.g. bench/openwire-load.sh tcp://127.0.0.1:61616 64 8 persistent 1024 30 bench
set -eu
here=$(cd "$(dirname "$0")" && pwd)
J=/usr/share/java
cp="$J/activemq-client.jar:$J/geronimo-jms_1.1_spec.jar:$J/hawtbuf.jar:$J/slf4j-api.jar:$J/slf4j-nop.jar:$J/geronimo-j2ee-management-1.1-spec.jar"
for jar in $(echo "$cp" | tr : ' '); do
    [ -f "$jar" ] || { echo "missing $jar (apt-get install libactivemq-java libslf4j-java)" >&2; exit 1; }
done
out=${TMPDIR:-/tmp}/brokk-openwire-load
mkdir -p "$out"
if [ ! -f "$out/Load.class" ] || [ "$here/openwire-java/Load.java" -nt "$out/Load.class" ]; then
    javac -d "$out" -cp "$cp" "$here/openwire-java/Load.java"
fi
exec java -Xms512m -Xmx1g -cp "$out:$cp" Load "$@"
