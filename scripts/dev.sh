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

# The secrets configs/local.env points at: random, made once, kept out of git.
mkdir -p .dev
for secret in jwt-hs256 idempotency; do
  if [[ ! -s .dev/$secret.secret ]]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >".dev/$secret.secret")
  fi
done
customer=customer-123
token=$(target/release/order-service mint-token "${config[@]}" --subject "$customer" --ttl 86400)
EDA_BIN=target/release/order-service scripts/create-topics.sh "${config[@]}"

pids=()
stop() { # exit status: 0 after Ctrl-C, else the script's own
  local status=$1
  trap - INT TERM EXIT
  echo "stopping..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  [[ $started_broker == yes ]] && scripts/broker.sh stop
  exit "$status"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

for service in order-service inventory-service notification-service; do
  "target/release/$service" "${config[@]}" &
  pids+=($!)
done

# Each service answers /ready once it serves: the order service on its API port,
# the other two on their operations ports (their defaults, docs/configuration.md).
port=$(sed -n 's/^APP_SERVER_PORT=//p' configs/local.env)
ready_ports=("$port" 9101 9102)
services=(order-service inventory-service notification-service)
for i in 0 1 2; do
  deadline=$((SECONDS + 60))
  until curl -fsS --max-time 2 "http://127.0.0.1:${ready_ports[$i]}/ready" >/dev/null 2>&1; do
    kill -0 "${pids[$i]}" 2>/dev/null ||
      { echo "${services[$i]} exited before it was ready (its log is above)" >&2; exit 1; }
    ((SECONDS < deadline)) ||
      { echo "${services[$i]} was not ready on port ${ready_ports[$i]} after 60 s (its log is above)" >&2; exit 1; }
    sleep 0.2
  done
done
cat >&2 <<MSG

The system runs: broker on localhost:9092, order API on http://127.0.0.1:$port,
metrics on http://127.0.0.1:9103/metrics. Stock is in configs/stock.json.
Callers authenticate with a bearer token; this one is $customer's for 24 hours
(mint another with: target/release/order-service mint-token --config configs/local.env --subject ID).
Try:

  token=$token
  curl -s -X POST http://127.0.0.1:$port/api/v1/orders -H "Authorization: Bearer \$token" \\
    -H 'Content-Type: application/json' \\
    -d '{"items":[{"product_id":"product-001","quantity":2,"price":99.99}]}'
  curl -s http://127.0.0.1:$port/api/v1/orders/<order_id> -H "Authorization: Bearer \$token"
  curl -s http://127.0.0.1:$port/health
  curl -s http://127.0.0.1:$port/ready

Ctrl-C stops everything.
MSG
wait
