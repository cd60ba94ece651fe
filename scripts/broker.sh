#!/usr/bin/env bash
# The local broker for development and tests: Apache Kafka (scripts/kafka-broker.sh,
# one KRaft node or a cluster of three, from Maven Central's jars), or nisshi, a
# Kafka-compatible broker in Rust, for machines without Java (EDA_BROKER_KIND=nisshi;
# docs/brokers.md says what it does differently).
#
#   scripts/broker.sh install   fetch (Kafka) or build (nisshi) the broker if missing
#   scripts/broker.sh start     start it on 127.0.0.1 (installs first if needed)
#   scripts/broker.sh stop      stop it gracefully
#   scripts/broker.sh restart   stop, then start with the same data
#   scripts/broker.sh status    exit 0 if it runs, 3 if not
#   scripts/broker.sh path      print where the broker is installed
#   scripts/broker.sh version   print the broker and its release
#   scripts/broker.sh user NAME PASSWORD [scram256|scram512|plain]
#                               add a SASL user (see scripts/kafka-broker.sh; nisshi:
#                               SCRAM only, with the broker running without
#                               EDA_BROKER_AUTH, restarted with it after)
# Apache Kafka only: brokers, and stop-node, kill-node, pause-node, resume-node,
# start-node, restart-node N for one node of a cluster (EDA_BROKER_NODES=3);
# partition-node, heal-node N when its nodes run in network namespaces
# (EDA_BROKER_NETNS=1).
#
# Settings (environment):
#   EDA_BROKER_KIND     kafka | nisshi                     (default kafka)
#   EDA_BROKER_PORT     listener port                      (default 9092)
#   EDA_BROKER_DATA     data folder: logs, pid, output     (default .eda/broker)
#   EDA_BROKER_TLS      1: TLS only, with a CA and certificate made once in
#                       DATA/tls (clients trust DATA/tls/ca.pem)      (default 0)
#   EDA_BROKER_AUTH     1: clients must authenticate with SASL        (default 0)
#   EDA_BROKER_NODES    Apache Kafka: 1, or 3 for a cluster           (default 1)
#   EDA_BROKER_STORAGE  nisshi: sqlite | memory                       (default sqlite)
#   NISSHI_ROOT         where nisshi is installed (default ~/.local/share/rust-eda/nisshi-VERSION)
set -euo pipefail

case ${EDA_BROKER_KIND:-kafka} in
  kafka) exec "$(dirname "${BASH_SOURCE[0]}")/kafka-broker.sh" "$@" ;;
  nisshi) ;;
  *) printf 'broker: EDA_BROKER_KIND=%s: expected kafka or nisshi\n' "$EDA_BROKER_KIND" >&2; exit 1 ;;
esac

NISSHI_VERSION=0.8.1
# nisshi 0.8.1 needs a newer rustc than the project itself; rustup installs it beside.
NISSHI_TOOLCHAIN=1.96
NISSHI_FEATURES=dynostore,libsql

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${EDA_BROKER_PORT:-9092}
data=${EDA_BROKER_DATA:-$root/.eda/broker}
storage=${EDA_BROKER_STORAGE:-sqlite}
install_root=${NISSHI_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/rust-eda/nisshi-$NISSHI_VERSION}
bin=$install_root/bin/nisshi
pidfile=$data/broker.pid
logfile=$data/broker.log

say() { printf 'broker: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

stop_wait=15
# shellcheck source=scripts/broker-process.sh
source "$root/scripts/broker-process.sh"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

install() {
  if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return 0
  fi
  command -v rustup >/dev/null || die "rustup is needed to install nisshi (it needs rustc $NISSHI_TOOLCHAIN or newer)"
  say "installing nisshi $NISSHI_VERSION into $install_root (a one-time build of several minutes)"
  rustup toolchain install "$NISSHI_TOOLCHAIN" --profile minimal >&2
  cargo "+$NISSHI_TOOLCHAIN" install nisshi --version "$NISSHI_VERSION" --locked \
    --no-default-features --features "$NISSHI_FEATURES" --root "$install_root" >&2 \
    || die "cargo install nisshi $NISSHI_VERSION failed (see above)"
  [[ -x $bin ]] || die "nisshi was built but $bin is missing"
}

start() {
  if running; then
    # Perhaps still starting, by another caller: answered, or it fails.
    await_start nisshi 30 "already running (pid $(pid)) on 127.0.0.1:$port"
    return 0
  fi
  answers && die "port $port is taken by another process; set EDA_BROKER_PORT"
  install
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  pidfile=$data/broker.pid
  logfile=$data/broker.log
  local security=()
  if [[ ${EDA_BROKER_TLS:-0} == 1 ]]; then
    certificates "$data/tls"
    security+=(--cert "$data/tls/broker.pem" --key "$data/tls/broker.key")
  fi
  [[ ${EDA_BROKER_AUTH:-0} == 1 ]] && security+=(--authentication)
  case $storage in
    sqlite) engine="sqlite://nisshi.db" ;;  # relative: nisshi resolves it against its working directory
    memory) engine="memory://nisshi/" ;;
    *) die "EDA_BROKER_STORAGE=$storage: expected sqlite or memory" ;;
  esac
  # Run from the data folder: nisshi reads a .env from its working directory.
  # In a session of its own, so that Ctrl-C in the terminal that started it stops
  # the services first (scripts/dev.sh) and not the broker under them.
  (
    cd "$data"
    RUST_LOG=${RUST_LOG:-warn} setsid nohup "$bin" broker \
      --cluster-id rust-eda \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$engine" ${security[@]+"${security[@]}"} >>"$logfile" 2>&1 &
    echo $! >"$pidfile"
  )
  await_start nisshi 30 \
    "running (pid $(pid)) on 127.0.0.1:$port, $storage storage in $data${security[*]:+ (${security[*]})}"
}

user() {
  [[ $# -ge 2 ]] || die "usage: scripts/broker.sh user NAME PASSWORD [scram256|scram512]"
  running || die "start the broker (without EDA_BROKER_AUTH) first"
  "$bin" user create --broker "tcp://127.0.0.1:$port" --mechanism "${3:-scram512}" "$1" "$2" >&2 \
    || die "creating user $1 failed; the broker must run without EDA_BROKER_AUTH and EDA_BROKER_TLS"
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  path) install; echo "$bin" ;;
  version) install; "$bin" --version | head -1 ;;
  user) shift; user "$@" ;;
  *) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
