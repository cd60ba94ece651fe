#!/usr/bin/env bash
# Sets up and runs the whole system locally: the broker (Apache Kafka, fetched
# from Maven Central on first use), the topics, and the three services built in
# release mode, with configs/local.env.
# Prints curl examples; Ctrl-C stops everything this script started.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

started_broker=no
if ! scripts/broker.sh status 2>/dev/null; then
  scripts/broker.sh start
  started_broker=yes
fi

cargo build --release --bins
config=(--config configs/local.env)
EDA_BIN=target/release/order-service scripts/create-topics.sh "${config[@]}"

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
  "target/release/$service" "${config[@]}" &
  pids+=($!)
done

port=$(sed -n 's/^APP_SERVER_PORT=//p' configs/local.env)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
cat >&2 <<MSG

The system runs: broker on localhost:9092, order API on http://127.0.0.1:$port.
Stock is in configs/stock.json. Try:

  curl -s -X POST http://127.0.0.1:$port/api/v1/orders -H 'Content-Type: application/json' \\
    -d '{"customer_id":"customer-123","items":[{"product_id":"product-001","quantity":2,"price":99.99}]}'
  curl -s http://127.0.0.1:$port/api/v1/orders/<order_id>
  curl -s http://127.0.0.1:$port/health
  curl -s http://127.0.0.1:$port/ready

Ctrl-C stops everything.
MSG
wait
