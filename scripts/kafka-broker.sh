#!/usr/bin/env bash
# Apache Kafka as the local broker: one KRaft node (broker and controller) on
# 127.0.0.1, from the jars Maven Central publishes. scripts/broker.sh runs this
# when EDA_BROKER_KIND=kafka; the verbs and settings are the same.
#
#   install   resolve configs/kafka/pom.xml into the cache folder (once)
#   start     format the data folder if new, start, wait until it answers a Kafka request
#   stop      stop it gracefully (SIGTERM: a controlled shutdown)
#   restart   stop, then start with the same data
#   status    exit 0 if it runs, 3 if not
#   path      print the folder of its jars
#
# Settings (environment):
#   EDA_BROKER_PORT   listener port; the controller listens on the next one  (default 9092)
#   EDA_BROKER_DATA   data folder: logs, config, pid, output                  (default .eda/broker)
#   EDA_KAFKA_CACHE   where the jars go  (default ~/.cache/rust-eda/kafka-VERSION)
#   EDA_KAFKA_HEAP    the broker's heap (default 512m)
# Java 17 or newer comes from JAVA_HOME or the PATH.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pom=$root/configs/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
port=${EDA_BROKER_PORT:-9092}
controller_port=$((port + 1))
data=${EDA_BROKER_DATA:-$root/.eda/broker}
cache=${EDA_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rust-eda/kafka-$version}
libs=$cache/libs
pidfile=$data/broker.pid
logfile=$data/broker.log

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

java_bin() {
  local java=${JAVA_HOME:+$JAVA_HOME/bin/}java
  command -v "$java" >/dev/null || die "no java found: install a JDK 17 or newer (Debian: openjdk-17-jre-headless) or set JAVA_HOME"
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  [[ -n $major && $major -ge 17 ]] || die "Apache Kafka $version needs Java 17 or newer; $java is Java ${major:-unknown}: install a newer JDK or set JAVA_HOME"
  echo "$java"
}

stop_wait=30
# shellcheck source=scripts/broker-process.sh
source "$root/scripts/broker-process.sh"

# Whether the broker answers an ApiVersions request (v0, correlation id 1), not
# just a TCP connect: the listener opens before the broker can serve.
answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02eda' >&3
    [[ $(timeout 2 head -c 8 <&3 | wc -c) -eq 8 ]]
  ) 2>/dev/null
}

install() {
  if [[ -f $libs/.complete ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven is needed to fetch Apache Kafka $version from Maven Central (Debian: maven)"
  say "fetching Apache Kafka $version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" >&2 ||
    die "resolving $pom failed (see above)"
  touch "$libs/.complete"
}

start() {
  if running; then
    say "already running (pid $(pid)) on 127.0.0.1:$port"
    return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is taken by another process; set EDA_BROKER_PORT"
  local java
  java=$(java_bin)
  install
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  pidfile=$data/broker.pid
  logfile=$data/broker.log
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA@|$data|g" \
    "$root/configs/kafka/server.properties" >"$data/server.properties"
  if [[ ! -f $data/log/meta.properties ]]; then
    local id
    id=$("$java" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
    "$java" -cp "$libs/*" kafka.tools.StorageTool format -t "$id" -c "$data/server.properties" \
      --standalone >>"$logfile" 2>&1 || die "formatting $data/log failed (log: $logfile)"
  fi
  # In a session of its own, so that Ctrl-C in the terminal that started it stops
  # the services first (scripts/dev.sh) and not the broker under them.
  setsid nohup "$java" "-Xmx${EDA_KAFKA_HEAP:-512m}" -Xms128m -XX:+UseG1GC \
    -Djava.awt.headless=true -cp "$libs/*" kafka.Kafka "$data/server.properties" \
    >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
  await_start "Apache Kafka" 60 \
    "Apache Kafka $version running (pid $(pid)) on 127.0.0.1:$port, data in $data"
}

[[ ${EDA_BROKER_TLS:-0} == 1 || ${EDA_BROKER_AUTH:-0} == 1 ]] &&
  die "EDA_BROKER_TLS and EDA_BROKER_AUTH are not supported with EDA_BROKER_KIND=kafka yet"

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  path) install; echo "$libs" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
