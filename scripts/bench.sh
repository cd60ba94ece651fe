#!/usr/bin/env bash
# Benchmarks, side by side in one run on one broker, written to bench/results.md
# (tables, with the machine and settings) and bench/results.json:
#   1. producer and 2. consumer: ours, raw rskafka with hand-made batches, and
#      librdkafka (rust-rdkafka), 6 partitions, acks=all, linger 5 ms, none and snappy;
#      each client reads back five times, taking turns, and its median run counts;
#   3. the pipeline: saturation, and POST → webhook latency at half of it;
#   4. HTTP: POST /api/v1/orders against GET /health;
#   5. footprint: RSS idle and under load, binary sizes, start to /ready, and the
#      order view rebuilt from 100,000 orders;
#   6. scaling: the pipeline with 1, 2 and 3 inventory instances;
#   7. delivery guarantees: our producer and librdkafka with idempotence on and
#      off (ours also with one request in flight per partition instead of five,
#      on loopback and across a proxy adding 5 ms each way), and the pipeline
#      under exactly-once and at-least-once processing.
#
#   scripts/bench.sh            full size (1,000,000 × 100 B and 200,000 × 1 KiB)
#   scripts/bench.sh --quick    a tenth of the records, shorter load phases
#   scripts/bench.sh --smoke    a few records, to check the script itself
#
# It starts its own broker (Apache Kafka; with EDA_BROKER_KIND=nisshi, nisshi with
# memory storage, sqlite once), builds the services and the bench crate (bench/, kept
# out of the services' build because librdkafka is C), and needs gcc and make
# for librdkafka.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

small=1000000 large=200000 load_seconds=20
case ${1:-} in
  --quick) small=100000 large=20000 load_seconds=8 ;;
  --smoke) small=5000 large=1000 load_seconds=3 ;; # checks the script itself
esac

# shellcheck source=scripts/ports.sh
source "$root/scripts/ports.sh"

echo "== building the services and the bench crate" >&2
cargo build --release --bins --quiet
cargo build --release --quiet --manifest-path bench/Cargo.toml
bench=$root/bench/target/release/rust-eda-bench
bin=$root/target/release

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rust-eda-bench.XXXXXX")
results=$scratch/results.jsonl
pids=()
export EDA_BROKER_PORT=$(free_port "$(broker_ports)")
export EDA_BROKER_DATA=$scratch/broker
brokers=127.0.0.1:$EDA_BROKER_PORT
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/broker.sh stop >/dev/null 2>&1 || true
  if [[ $ok == 1 ]]; then rm -rf "$scratch"; else echo "bench failed; logs kept in $scratch" >&2; fi
}
ok=0
trap cleanup EXIT

record() { # section, extra JSON fields, command...
  local section=$1 extra=$2
  shift 2
  local out
  out=$("$@")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); d["section"]=sys.argv[3]; print(json.dumps(d))' \
    "$out" "$extra" "$section" >>"$results"
  echo "   $section $extra: $out" >&2
}

broker() { # storage
  scripts/broker.sh stop >/dev/null 2>&1 || true
  rm -rf "$EDA_BROKER_DATA"
  EDA_BROKER_STORAGE=$1 scripts/broker.sh start >&2
}

clients=(ours rskafka rdkafka)
# Reading back takes a fraction of a second, the shortest measurement here and
# so the noisiest: each client reads its topic this many times, the clients
# taking turns, and the report shows each client's median run with the range.
consume_runs=5
kafka_round() { # storage, records, size, compression
  local storage=$1 n=$2 size=$3 comp=$4
  local extra="{\"storage\":\"$storage\",\"size\":$size,\"compression\":\"$comp\"}"
  local -A topic
  for client in "${clients[@]}"; do
    topic[$client]=bench-$storage-$client-$size-$comp-$RANDOM
    "$bench" create brokers="$brokers" topic="${topic[$client]}" partitions=6 >/dev/null
    # Raw rskafka cannot be idempotent: all three write plainly here, and the
    # idempotence section measures what it costs.
    record producer "$extra" "$bench" produce client="$client" brokers="$brokers" topic="${topic[$client]}" \
      records="$n" size="$size" compression="$comp" idempotence=false
  done
  for _ in $(seq 1 "$consume_runs"); do
    for client in "${clients[@]}"; do
      record consumer "$extra" "$bench" consume client="$client" brokers="$brokers" topic="${topic[$client]}" records="$n"
    done
  done
}

echo "== producer and consumer, memory storage" >&2
broker memory
for comp in none snappy; do
  kafka_round memory "$small" 100 "$comp"
  kafka_round memory "$large" 1024 "$comp"
done
echo "== producer and consumer, sqlite storage" >&2
broker sqlite
kafka_round sqlite "$large" 100 none

echo "== idempotence on and off" >&2
broker memory
# The clients take turns, each setting three times; the report takes medians.
# Ours also with one request in flight per partition instead of five.
for _ in 1 2 3; do
  for setting in "ours true 5" "rdkafka true 5" "ours true 1" "ours false 5" "rdkafka false 5"; do
    read -r client idempotence in_flight <<<"$setting"
    t=bench-idempotence-$client-$idempotence-$RANDOM
    "$bench" create brokers="$brokers" topic="$t" partitions=6 >/dev/null
    record idempotence "{\"idempotence\":$idempotence,\"in_flight\":$in_flight,\"size\":100}" "$bench" produce \
      client="$client" brokers="$brokers" topic="$t" records="$large" size=100 compression=none \
      idempotence="$idempotence" in_flight="$in_flight"
  done
done

echo "== idempotence across a slower link (5 ms each way)" >&2
# The broker names the proxy's port in its metadata, so every connection of
# every client goes through it.
proxy_port=$(free_port)
EDA_BROKER_ADVERTISED_PORT=$proxy_port broker memory
"$bench" delay-proxy listen="$proxy_port" target="$EDA_BROKER_PORT" delay_ms=5 &
proxy_pid=$!
pids+=("$proxy_pid")
slow=127.0.0.1:$proxy_port
# Ours also with 16 KiB batches (Java's batch.size), where a batch fills
# before its predecessor's answer is back and requests in flight matter.
for _ in 1 2 3; do
  for setting in "ours 5 1048576" "ours 1 1048576" "rdkafka 5 1048576" "ours 5 16384" "ours 1 16384"; do
    read -r client in_flight batch_bytes <<<"$setting"
    t=bench-slow-$client-$in_flight-$RANDOM
    "$bench" create brokers="$slow" topic="$t" partitions=6 >/dev/null
    record slow_link "{\"delay_ms\":5,\"in_flight\":$in_flight,\"batch_bytes\":$batch_bytes,\"size\":100}" \
      "$bench" produce client="$client" brokers="$slow" topic="$t" records="$large" size=100 \
      compression=none idempotence=true in_flight="$in_flight" batch_bytes="$batch_bytes"
  done
done
kill "$proxy_pid" 2>/dev/null || true

# The services, as a user runs them.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_ready() { # port → milliseconds until /ready answered 200
  local start=$(date +%s%N)
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1; then
      echo $(( ($(date +%s%N) - start) / 1000000 )); return 0
    fi
    sleep 0.05
  done
  echo "a service on port $1 did not become ready" >&2; return 1
}
webhook_port=$(free_port)
api_port=$(free_port)
guarantee=exactly_once
common_env() {
  export APP_KAFKA_PROCESSING_GUARANTEE=$guarantee
  export APP_KAFKA_BROKERS=$brokers APP_SERVER_HOST=127.0.0.1 APP_LOGGER_LEVEL=warn \
    APP_KAFKA_FETCH_MAX_WAIT_MS=20 APP_KAFKA_TOPIC_PARTITIONS=6 \
    APP_INVENTORY_STOCK_FILE=$scratch/stock.json \
    APP_NOTIFICATION_WEBHOOK_URL=http://127.0.0.1:$webhook_port/hook
}
echo '{"product-001":1000000000,"product-002":1000000000,"product-003":1000000000,"product-004":1000000000,"product-005":1000000000}' >"$scratch/stock.json"
declare -A svc_pid svc_port
start_service() { # section name binary port-variable port: records start to /ready
  ( common_env; export "$4=$5"; exec "$bin/$3" ) >"$scratch/$2.log" 2>&1 &
  pids+=($!); svc_pid[$2]=$!; svc_port[$2]=$5
  local ms; ms=$(wait_ready "$5")
  echo "{\"section\":\"$1\",\"service\":\"$2\",\"ready_ms\":$ms}" >>"$results"
}
stop_service() { kill "${svc_pid[$1]}" 2>/dev/null || true; wait "${svc_pid[$1]}" 2>/dev/null || true; }
# A fresh broker and fresh services for each phase: nisshi's memory engine reads
# a partition in time proportional to its number of batches (docs/brokers.md), so
# a phase after another would measure the log the one before left behind.
pipeline_services() { # inventory instances, section for the start-up times
  for s in "${!svc_pid[@]}"; do stop_service "$s"; done
  svc_pid=() svc_port=()
  broker memory
  start_service "$2" order order-service APP_SERVER_PORT "$api_port"
  start_service "$2" inventory inventory-service APP_METRICS_PORT "$(free_port)"
  for n in $(seq 2 "$1"); do
    start_service "$2" "inventory-$n" inventory-service APP_METRICS_PORT "$(free_port)"
  done
  start_service "$2" notification notification-service APP_METRICS_PORT "$(free_port)"
  sleep 3
}
pipeline_run() { # extra JSON fields, rate (0: saturation)
  local extra
  extra=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["guarantee"]=sys.argv[2]; print(json.dumps(d))' "$1" "$guarantee")
  record pipeline "$extra" "$bench" pipeline apis="$api" webhook="$webhook_port" brokers="$brokers" \
    rate="$2" concurrency=64 seconds="$load_seconds"
}
# A saturation run with the CPU time of the broker and of every service over it:
# which one bounds the pipeline on this machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
saturation_run() { # inventory instances
  local -A before
  local broker_pid s p started wall
  broker_pid=$(cat "$EDA_BROKER_DATA/broker.pid")
  for s in "${!svc_pid[@]}"; do before[$s]=$(cpu_ticks "${svc_pid[$s]}"); done
  before[broker]=$(cpu_ticks "$broker_pid")
  started=$(date +%s%N)
  pipeline_run "{\"instances\":$1,\"phase\":\"saturation\"}" 0
  wall=$(( ($(date +%s%N) - started) / 1000000 ))
  for s in "${!before[@]}"; do
    p=${svc_pid[$s]:-$broker_pid}
    echo "{\"section\":\"cpu\",\"instances\":$1,\"process\":\"$s\",\"ticks\":$(( $(cpu_ticks "$p") - ${before[$s]} )),\"wall_ms\":$wall,\"hz\":$(getconf CLK_TCK)}" >>"$results"
  done
}

echo "== the pipeline, memory storage" >&2
pipeline_services 1 start
sleep 2
for s in order inventory notification; do
  echo "{\"section\":\"rss_idle\",\"service\":\"$s\",\"kib\":$(rss_kib "${svc_pid[$s]}")}" >>"$results"
done
api=http://127.0.0.1:$api_port

peak=$scratch/peak
( while true; do
    for s in order inventory notification; do echo "$s $(rss_kib "${svc_pid[$s]}")"; done
    sleep 0.5
  done >"$peak" ) &
sampler=$!; pids+=($sampler)
saturation_run 1
kill $sampler
for s in order inventory notification; do
  kib=$(awk -v s="$s" '$1==s && $2>m {m=$2} END {print m+0}' "$peak")
  echo "{\"section\":\"rss_load\",\"service\":\"$s\",\"kib\":$kib}" >>"$results"
done
saturation=$(python3 -c 'import json,sys; print(max(1, int([json.loads(l) for l in open(sys.argv[1]) if "saturation" in l][-1]["orders_per_s"] / 2)))' "$results")
pipeline_services 1 restart
pipeline_run '{"instances":1,"phase":"half"}' "$saturation"

echo "== at-least-once processing" >&2
guarantee=at_least_once
pipeline_services 1 restart
pipeline_run '{"instances":1,"phase":"saturation"}' 0
alo_half=$(python3 -c 'import json,sys; print(max(1, int([json.loads(l) for l in open(sys.argv[1]) if "\"saturation\"" in l and "at_least_once" in l][-1]["orders_per_s"] / 2)))' "$results")
pipeline_services 1 restart
pipeline_run '{"instances":1,"phase":"half"}' "$alo_half"
guarantee=exactly_once

echo "== scaling the inventory" >&2
for n in 2 3; do
  pipeline_services "$n" restart
  saturation_run "$n"
done
pipeline_services 1 restart

# Last while the services run: the POSTs outpace the pipeline and leave a
# backlog, which would delay any pipeline measurement after them.
echo "== HTTP" >&2
record http '{}' "$bench" http url="$api" target=health concurrency=32 seconds=$((load_seconds / 2))
record http '{}' "$bench" http url="$api" target=order concurrency=32 seconds=$((load_seconds / 2))

echo "== the order view rebuilt from 100,000 orders" >&2
# Alone on the broker: the services stop, so that only the seeding loads it.
for s in "${!svc_pid[@]}"; do stop_service "$s"; done
"$bench" seed-orders brokers="$brokers" count=100000 >/dev/null
start_service rebuild order-rebuild order-service APP_SERVER_PORT "$api_port"
curl -s "$api/ready" | python3 -c 'import json,sys; print(json.dumps({"section": "orders_in_view", "orders": json.load(sys.stdin)["orders"]}))' >>"$results"

echo "== binary sizes" >&2
for b in order-service inventory-service notification-service; do
  for dir in dist/x86_64-unknown-linux-musl dist/aarch64-unknown-linux-musl target/release; do
    [[ -f $dir/$b ]] && echo "{\"section\":\"size\",\"binary\":\"$b\",\"where\":\"$dir\",\"bytes\":$(stat -c %s "$dir/$b")}" >>"$results"
  done
done

mkdir -p bench
python3 "$root/scripts/bench-report.py" "$results" bench/results.md bench/results.json \
  "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m)" \
  "$(scripts/broker.sh version 2>/dev/null)" \
  "$(rustc --version)" "$small" "$large"
ok=1
cat bench/results.md
