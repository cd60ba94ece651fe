#!/usr/bin/env bash
# Apache Kafka as the local broker, from the jars Maven Central publishes: one
# KRaft node (broker and controller in one process) on 127.0.0.1, or a cluster
# of three. scripts/broker.sh runs this unless EDA_BROKER_KIND=nisshi.
#
#   install            resolve configs/kafka/pom.xml into the cache folder (once)
#   start              format new data folders, start, wait until every node
#                      answers a Kafka request (not just a TCP connect)
#   stop               stop gracefully (SIGTERM: a controlled shutdown)
#   restart            stop, then start with the same data
#   status             exit 0 if every node runs, 3 if not
#   path               print the folder of the jars
#   version            print the release, e.g. "Apache Kafka 4.4.0"
#   brokers            print the bootstrap list (host:port,…)
#   user NAME PASSWORD [scram256|scram512|plain]
#                      add a SASL user: SCRAM users with Kafka's kafka-configs
#                      tool (the broker must run), PLAIN users at the next start
#   stop-node N | kill-node N | pause-node N | resume-node N | start-node N | restart-node N
#                      one node of the cluster, by number (1 to EDA_BROKER_NODES):
#                      SIGTERM, SIGKILL, SIGSTOP, SIGCONT, start, stop and start
#   partition-node N | heal-node N
#                      with EDA_BROKER_NETNS=1: cut node N off from the other nodes
#                      and from every client (its link to the bridge goes down), or
#                      join it again
#
# Settings (environment):
#   EDA_BROKER_PORT   client port of node 1 (default 9092). Node N uses
#                     PORT+3(N-1) for clients, the next port for its controller,
#                     and the one after for the other nodes and admin commands
#   EDA_BROKER_NODES  1, or 3: a cluster with default.replication.factor=3 and
#                     min.insync.replicas=2                              (default 1)
#   EDA_BROKER_NETNS  1 (a cluster, as root, with iproute2): each node runs in a
#                     network namespace of its own, on an address of its own
#                     (10.249.X.2-4), joined to the others and to this host by a
#                     bridge (10.249.X.1), so that one node can be cut off from
#                     everything (partition-node); `brokers` prints the addresses.
#                     The namespaces and the bridge go with `stop`   (default 0)
#   EDA_BROKER_DATA   data folder: logs, config, pid, output (node-N/ in a cluster)
#                                                                (default .eda/broker)
#   EDA_BROKER_TLS    1: clients connect with TLS, with a CA and certificate made
#                     once in DATA/tls (clients trust DATA/tls/ca.pem)    (default 0)
#   EDA_BROKER_AUTH   1: clients authenticate with SASL (PLAIN, SCRAM-SHA-256,
#                     SCRAM-SHA-512)                                      (default 0)
#   EDA_BROKER_ADVERTISED_PORT  the client port metadata names for node 1, when a
#                     proxy listens there in front of it (tests that cut or
#                     delay a connection's answers)       (default: its own port)
#   EDA_KAFKA_VERSION the Apache Kafka release (default: pinned in configs/kafka/pom.xml)
#   EDA_KAFKA_CACHE   where the jars go  (default ~/.cache/rust-eda/kafka-VERSION)
#   EDA_KAFKA_HEAP    each node's heap   (default 512m)
#   EDA_KAFKA_JVM_OPTS  more JVM options for each node (scripts/test.sh: the
#                     quick JIT only, as the tests' light load needs no more)
# Java 17 or newer comes from JAVA_HOME or the PATH.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pom=$root/configs/kafka/pom.xml
pinned=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
version=${EDA_KAFKA_VERSION:-$pinned}
base_port=${EDA_BROKER_PORT:-9092}
nodes=${EDA_BROKER_NODES:-1}
data=${EDA_BROKER_DATA:-$root/.eda/broker}
cache=${EDA_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rust-eda/kafka-$version}
libs=$cache/libs
tls=${EDA_BROKER_TLS:-0}
auth=${EDA_BROKER_AUTH:-0}

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $nodes == 1 || $nodes == 3 ]] || die "EDA_BROKER_NODES=$nodes: expected 1 or 3"
netns=${EDA_BROKER_NETNS:-0}
[[ $netns == 0 || $nodes == 3 ]] || die "EDA_BROKER_NETNS=1 needs a cluster (EDA_BROKER_NODES=3)"
# The network's names, from the data folder: one cluster's never meet another's.
net_id=$(printf '%s' "$data" | sha256sum | cut -c1-6)
subnet=10.249.$((16#${net_id:0:2}))
bridge=ebr$net_id

# The address node $1 listens on.
host_of() {
  if [[ $netns == 1 ]]; then echo "$subnet.$(($1 + 1))"; else echo 127.0.0.1; fi
}

# Points the process helpers at node $1: its ports, data folder, pid and log.
node() {
  n=$1
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le $nodes ]] || die "no node $n: the cluster has $nodes (EDA_BROKER_NODES)"
  host=$(host_of "$n")
  netns_name=eda-$net_id-$n
  veth=ev${net_id}h$n
  port=$((base_port + 3 * (n - 1)))
  controller_port=$((port + 1))
  internal_port=$((port + 2))
  if [[ $nodes == 1 ]]; then ndata=$data; else ndata=$data/node-$n; fi
  pidfile=$ndata/broker.pid
  logfile=$ndata/broker.log
}
node 1

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

# Whether the node answers an ApiVersions request (v0, correlation id 1) on its
# internal listener, which speaks plain Kafka whatever the client listener
# needs: the listeners open before the node can serve.
answers() {
  # One time limit over connecting and answering: a connect to a node cut off
  # from the network would otherwise wait for TCP's own timeout.
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02eda" >&3
    [[ $(head -c 8 <&3 | wc -c) -eq 8 ]]' _ "$host" "$internal_port" 2>/dev/null
}

install() {
  # A change to the pom fetches again.
  local marker
  marker=$libs/.complete-$(sha256sum "$pom" | cut -c1-12)
  if [[ -f $marker ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven is needed to fetch Apache Kafka $version from Maven Central (Debian: maven)"
  say "fetching Apache Kafka $version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  # Maven colours even a quiet, batch-mode run's few lines; the sed takes that out.
  mvn -q -B -Dstyle.color=never -f "$pom" -Dkafka.version="$version" dependency:copy-dependencies \
    -DoutputDirectory="$libs" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 ||
    die "resolving Apache Kafka $version ($pom) failed (see above)"
  touch "$marker"
}

# The client listener's protocol, from EDA_BROKER_TLS and EDA_BROKER_AUTH.
client_protocol() {
  case $tls$auth in
    00) echo PLAINTEXT ;;
    10) echo SSL ;;
    01) echo SASL_PLAINTEXT ;;
    11) echo SASL_SSL ;;
    *) die "EDA_BROKER_TLS and EDA_BROKER_AUTH take 0 or 1" ;;
  esac
}

# Writes node $n's server.properties: the template, then its listeners.
configure() {
  local voters="" i
  for ((i = 1; i <= nodes; i++)); do
    voters+="${voters:+,}$i@$(host_of "$i"):$((base_port + 3 * (i - 1) + 1))"
  done
  local replicas=$nodes min_isr=$((nodes > 1 ? 2 : 1))
  local protocol
  protocol=$(client_protocol)
  mkdir -p "$ndata"
  {
    sed -e "s|@NODE_ID@|$n|g" -e "s|@VOTERS@|$voters|g" -e "s|@DATA@|$ndata|g" \
      -e "s|@REPLICAS@|$replicas|g" -e "s|@MIN_ISR@|$min_isr|g" \
      "$root/configs/kafka/server.properties"
    echo "listeners=CLIENT://$host:$port,CONTROLLER://$host:$controller_port,INTERNAL://$host:$internal_port"
    local advertised=$port
    if [[ $n == 1 && -n ${EDA_BROKER_ADVERTISED_PORT:-} ]]; then
      advertised=$EDA_BROKER_ADVERTISED_PORT
    fi
    echo "advertised.listeners=CLIENT://$host:$advertised,INTERNAL://$host:$internal_port"
    echo "listener.security.protocol.map=CLIENT:$protocol,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT"
    if [[ $tls == 1 ]]; then
      echo "listener.name.client.ssl.keystore.type=PEM"
      echo "listener.name.client.ssl.keystore.location=$data/tls/broker-keystore.pem"
    fi
    if [[ $auth == 1 ]]; then
      echo "listener.name.client.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
      printf 'listener.name.client.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required'
      if [[ -f $data/plain-users ]]; then
        local name password
        while read -r name password; do
          printf ' user_%s="%s"' "$name" "$password"
        done <"$data/plain-users"
      fi
      echo ';'
      echo "listener.name.client.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      echo "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    fi
  } >"$ndata/server.properties"
}

# Starts node $n's process (formatting its storage if new), without waiting.
launch() {
  local java=$1
  if running; then
    say "node $n already running (pid $(pid)) on $host:$port"
    return 0
  fi
  local p
  for p in "$port" "$controller_port" "$internal_port"; do
    (exec 3<>"/dev/tcp/$host/$p") 2>/dev/null &&
      die "port $p is taken by another process; node $n needs $port to $internal_port: set EDA_BROKER_PORT"
  done
  configure
  if [[ ! -f $ndata/log/meta.properties ]]; then
    "$java" -cp "$libs/*" -Dlog4j2.configurationFile="$root/configs/kafka/log4j2.properties" \
      kafka.tools.StorageTool format -t "$(cluster_id "$java")" -c "$ndata/server.properties" \
      >>"$logfile" 2>&1 || die "formatting $ndata/log failed (log: $logfile)"
  fi
  # In a session of its own, so that Ctrl-C in the terminal that started it stops
  # the services first (scripts/dev.sh) and not the broker under them.
  local in_netns=()
  [[ $netns == 1 ]] && in_netns=(ip netns exec "$netns_name")
  "${in_netns[@]}" setsid nohup "$java" "-Xmx${EDA_KAFKA_HEAP:-512m}" -Xms128m -XX:+UseG1GC ${EDA_KAFKA_JVM_OPTS:-} \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$root/configs/kafka/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$ndata/server.properties" >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

# The cluster's id, made once and shared by its nodes.
cluster_id() {
  if [[ ! -f $data/cluster-id ]]; then
    "$1" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null >"$data/cluster-id"
  fi
  cat "$data/cluster-id"
}

start() {
  local java i
  java=$(java_bin)
  install
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  [[ $tls == 1 ]] && certificates "$data/tls"
  [[ $netns == 1 ]] && net_up
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    launch "$java"
  done
  # The nodes elect a controller among themselves: all run before any answers.
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    await_start "Apache Kafka node $i" 90 \
      "Apache Kafka $version node $i running (pid $(pid)) on $host:$port ($(client_protocol)), data in $ndata"
  done
}

stop_all() {
  local i p pids=()
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    if running; then
      pids+=("$(pid)")
      kill -TERM "$(pid)" 2>/dev/null || true
    fi
  done
  # All at once: nodes stopping one by one would each wait for leaderships to move.
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    stop >/dev/null 2>&1
  done
  [[ $netns == 1 ]] && net_down
  say "stopped${pids[*]:+ (pid ${pids[*]})}"
}

# The bridge, and a namespace per node joined to it by a veth pair (made once).
net_up() {
  [[ $(id -u) == 0 ]] || die "EDA_BROKER_NETNS=1 needs root: it makes network namespaces and veth pairs"
  command -v ip >/dev/null || die "EDA_BROKER_NETNS=1 needs the ip command (Debian: iproute2)"
  ip link show "$bridge" >/dev/null 2>&1 && return 0
  {
    ip link add "$bridge" type bridge &&
      ip addr add "$subnet.1/24" dev "$bridge" &&
      ip link set "$bridge" up
  } || die "cannot make the bridge $bridge ($subnet.1/24): is CAP_NET_ADMIN allowed here?"
  local i
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    {
      ip netns add "$netns_name" &&
        ip link add "$veth" type veth peer name "ev${net_id}n$i" &&
        ip link set "$veth" master "$bridge" &&
        ip link set "$veth" up &&
        ip link set "ev${net_id}n$i" netns "$netns_name" &&
        ip netns exec "$netns_name" ip link set "ev${net_id}n$i" name eth0 &&
        ip netns exec "$netns_name" ip addr add "$host/24" dev eth0 &&
        ip netns exec "$netns_name" ip link set eth0 up &&
        ip netns exec "$netns_name" ip link set lo up
    } || die "cannot make the network namespace $netns_name for node $i"
  done
  say "nodes in network namespaces eda-$net_id-1..$nodes on $subnet.2-$((nodes + 1)), bridge $bridge"
}

net_down() {
  local i
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    ip netns del "$netns_name" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}

status_all() {
  local i down=0
  for ((i = 1; i <= nodes; i++)); do
    node "$i"
    status || down=1
  done
  return $((down * 3))
}

brokers() {
  local list="" i
  for ((i = 1; i <= nodes; i++)); do
    list+="${list:+,}$(host_of "$i"):$((base_port + 3 * (i - 1)))"
  done
  echo "$list"
}

user() {
  [[ $# -ge 2 ]] || die "usage: scripts/broker.sh user NAME PASSWORD [scram256|scram512|plain]"
  local name=$1 password=$2 mechanism=${3:-scram512}
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "user names here are letters, digits, '.', '_' and '-'"
  case $mechanism in
    plain)
      [[ $password != *[\"\\[:space:]]* ]] || die "a PLAIN password here has no quotes, backslashes or spaces"
      mkdir -p "$data"
      touch "$data/plain-users"
      grep -v "^$name " "$data/plain-users" >"$data/plain-users.new" || true
      echo "$name $password" >>"$data/plain-users.new"
      mv "$data/plain-users.new" "$data/plain-users"
      say "PLAIN user $name added; it can log in once the broker (re)starts with EDA_BROKER_AUTH=1"
      ;;
    scram256 | scram512)
      local sha=SCRAM-SHA-${mechanism#scram}
      running || die "start the broker first: SCRAM users are stored in the cluster"
      "$(java_bin)" -cp "$libs/*" -Dlog4j2.configurationFile="$root/configs/kafka/log4j2.properties" \
        org.apache.kafka.tools.ConfigCommand --bootstrap-server "$host:$internal_port" \
        --alter --entity-type users --entity-name "$name" \
        --add-config "$sha=[iterations=8192,password=$password]" >/dev/null ||
        die "creating $sha user $name failed (see above)"
      say "$sha user $name added"
      ;;
    *) die "mechanism $mechanism: expected scram256, scram512 or plain" ;;
  esac
}

# One node of the cluster: $1 the verb, $2 its number.
one_node() {
  local verb=$1
  [[ $# -ge 2 ]] || die "usage: scripts/broker.sh $verb N"
  node "$2"
  case $verb in
    stop-node) stop ;;
    kill-node)
      if running; then kill -KILL "$(pid)" || true; fi
      rm -f "$pidfile"
      say "node $n killed"
      ;;
    partition-node | heal-node)
      [[ $netns == 1 ]] || die "$verb needs the nodes in network namespaces (EDA_BROKER_NETNS=1)"
      if [[ $verb == partition-node ]]; then
        ip link set "$veth" down
        say "node $n cut off from the other nodes and the clients"
      else
        ip link set "$veth" up
        say "node $n joined again"
      fi
      ;;
    pause-node) running || die "node $n is not running"; kill -STOP "$(pid)"; say "node $n paused" ;;
    resume-node) running || die "node $n is not running"; kill -CONT "$(pid)"; say "node $n resumed" ;;
    start-node | restart-node)
      local java
      java=$(java_bin)
      [[ $verb == restart-node ]] && stop
      data=$(cd "$data" && pwd)
      node "$2"
      launch "$java"
      await_start "Apache Kafka node $n" 90 "node $n running (pid $(pid)) on $host:$port"
      ;;
  esac
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop_all ;;
  restart) stop_all; start ;;
  status) status_all ;;
  path) install; echo "$libs" ;;
  version) echo "Apache Kafka $version" ;;
  brokers) brokers ;;
  user) shift; user "$@" ;;
  stop-node | kill-node | pause-node | resume-node | start-node | restart-node | partition-node | heal-node)
    one_node "$@"
    ;;
  *) sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
