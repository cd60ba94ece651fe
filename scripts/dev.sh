#!/usr/bin/env bash
# Sets up and runs the whole system locally: the broker (installed on first use),
# then the three services built in release mode. Ctrl-C stops everything this
# script started.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

started_broker=no
if ! scripts/broker.sh status 2>/dev/null; then
  scripts/broker.sh start
  started_broker=yes
fi

cargo build --release --bins

set -a
# shellcheck source=../configs/local.env
source configs/local.env
set +a

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  [[ $started_broker == yes ]] && scripts/broker.sh stop
  exit 0
}
trap stop INT TERM EXIT

for service in order-service inventory-service notification-service; do
  "target/release/$service" &
  pids+=($!)
done

echo "running: broker on $APP_KAFKA_BROKERS and ${#pids[@]} services; Ctrl-C stops them" >&2
wait
