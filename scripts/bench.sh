#!/usr/bin/env bash
# Benchmarks, side by side in one run on one Apache Kafka broker, written to
# bench/results.md (tables, with the machine, the broker and every client's
# settings, and each target met or missed) and bench/results.json:
#   1. producer and consumer: ours, raw rskafka, and each peer through its own
#      benchmark program: the Java client through Kafka's kafka-producer-perf-test
#      and kafka-consumer-perf-test, librdkafka through rdkafka_performance, and
#      franz-go (bench/franz). 100 B and 1 KiB records; none, snappy, lz4 and
#      zstd where the client writes them; 6 partitions, acks=all. Each peer runs
#      twice: at its authors' throughput settings and at ours (linger 5 ms, 1 MiB
#      batches). Every consumer reads the same topic, the clients taking turns;
#   2. producer latency: every client paced at half the slowest one's records/s;
#   3. a slower link: producers through a proxy adding 5 ms each way;
#   4. the pipeline: saturation, and POST → webhook latency at half of it, hop by
#      hop, with the CPU of every service and of the broker per order, under
#      exactly-once and at-least-once processing, with 1, 2 and 3 inventories;
#   5. HTTP: POST /api/v1/orders against GET /health;
#   6. footprint: RSS idle and under load, binary sizes, start to /ready, and the
#      order view rebuilt from 100,000 orders.
#
#   scripts/bench.sh            full size (1,000,000 × 100 B and 200,000 × 1 KiB)
#   scripts/bench.sh --quick    a tenth of the records, shorter load phases
#   scripts/bench.sh --smoke    a few records, one size, two codecs: checks the
#                               script itself (CI runs it), not the numbers, with
#                               debug builds, which the tests' build has made
#
# It starts its own broker (Apache Kafka, one node, its data on /dev/shm when
# there is one, heap EDA_KAFKA_HEAP, default 1g here), builds the services, the
# bench crate and the peers (scripts/bench-peers.sh: gcc, make, Go), and writes
# bench/results.* (with --smoke, into the scratch folder only).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

mode=full small=1000000 large=200000 load_seconds=20 latency_seconds=10 turns=3 seed=100000 warm_seconds=20
profile=release
sizes=(100 1024) codecs=(none snappy lz4 zstd)
case ${1:-} in
  --quick) mode=quick small=100000 large=20000 load_seconds=8 latency_seconds=5 warm_seconds=10 ;;
  --smoke) mode=smoke small=5000 large=1000 load_seconds=3 latency_seconds=2 turns=1 seed=2000 warm_seconds=1
    profile=debug
    sizes=(100) codecs=(none lz4) ;;
  "") ;;
  *) echo "usage: scripts/bench.sh [--quick|--smoke]" >&2; exit 2 ;;
esac

# shellcheck source=scripts/ports.sh
source "$root/scripts/ports.sh"

echo "== building the services, the bench crate and the peers' programs" >&2
release=()
[[ $profile == release ]] && release=(--release)
cargo build "${release[@]}" --bins --quiet
# In the services' target folder, with their profile: the bench reuses every
# crate they compiled, the library included, instead of building them again.
cargo build "${release[@]}" --quiet --manifest-path bench/Cargo.toml --target-dir "$root/target"
peers=$(scripts/bench-peers.sh)
bench=$root/target/$profile/rust-eda-bench
bin=$root/target/$profile
export BENCH_PEERS=$peers BENCH_BIN=$bench

# The broker's data on the fastest storage there is: memory, when /dev/shm is.
fast=${TMPDIR:-/tmp}
[[ -d /dev/shm && -w /dev/shm ]] && fast=/dev/shm
scratch=$(mktemp -d "${TMPDIR:-/tmp}/rust-eda-bench.XXXXXX")
results=$scratch/results.jsonl
pids=()
export EDA_BROKER_PORT=$(free_port "$(broker_ports)")
export EDA_BROKER_DATA=$(mktemp -d "$fast/rust-eda-bench-broker.XXXXXX")
export EDA_BROKER_KIND=kafka EDA_KAFKA_HEAP=${EDA_KAFKA_HEAP:-1g}
brokers=127.0.0.1:$EDA_BROKER_PORT
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/broker.sh stop >/dev/null 2>&1 || true
  rm -rf "$EDA_BROKER_DATA"
  if [[ $ok == 1 ]]; then rm -rf "$scratch"; else echo "bench failed; logs kept in $scratch" >&2; fi
}
ok=0
trap cleanup EXIT

# A measurement that fails is a row of its own, section "failed", with the
# command's exit status and the tail of its output; the run goes on to the next
# one and exits non-zero at the end (so the smoke run in the tests still fails).
failed=0
record() { # section, extra JSON fields, command...
  local section=$1 extra=$2 out status=0
  shift 2
  out=$("$@" 2>"$scratch/stderr") || status=$?
  cat "$scratch/stderr" >&2
  if ((status != 0)); then
    failed=$((failed + 1))
    python3 -c 'import json,sys
d = json.loads(sys.argv[2]); d.update(section="failed", of=sys.argv[1], status=int(sys.argv[3]),
    command=" ".join(sys.argv[6:]), tail=(sys.argv[4] + sys.argv[5]).strip().splitlines()[-20:])
print(json.dumps(d))' "$section" "$extra" "$status" "$out" "$(cat "$scratch/stderr")" "$@" >>"$results"
    echo "   $section $extra: FAILED, exit $status (kept as a failed row; the run goes on)" >&2
    return 0
  fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); d["section"]=sys.argv[3]; print(json.dumps(d))' \
    "$out" "$extra" "$section" >>"$results"
  echo "   $section $extra: $(cut -c1-160 <<<"$out")" >&2
}

broker() { # a fresh broker: no topic or backlog of one phase carries into the next
  scripts/broker.sh stop >/dev/null 2>&1 || true
  rm -rf "${EDA_BROKER_DATA:?}"/*
  scripts/broker.sh start >&2
}
broker
python3 - "$EDA_BROKER_DATA" "$EDA_KAFKA_HEAP" "$fast" "$(scripts/broker.sh version)" >>"$results" <<'PY'
import glob, json, subprocess, sys
data, heap, fast, version = sys.argv[1:5]
props = [l.strip() for f in glob.glob(f"{data}/**/server.properties", recursive=True) for l in open(f)
         if l.strip() and not l.startswith("#")]
fs = subprocess.run(["df", "--output=fstype", fast], capture_output=True, text=True).stdout.split()[-1]
print(json.dumps({"section": "broker", "version": version, "heap": heap, "data": f"{fast} ({fs})",
                  "settings": props}))
PY

# Clients and the settings each runs at: client:settings[:idempotence].
# Ours with idempotence on (its default) and off; raw rskafka has none.
producers=(ours:ours:true ours:ours:false rskafka:ours java:authors java:ours rdkafka:authors rdkafka:ours
  franz-go:authors franz-go:ours)
consumers=(ours:ours rskafka:ours java:authors java:ours rdkafka:authors rdkafka:ours franz-go:authors franz-go:ours)
writes() { # client codec: whether the client writes that codec here
  case $1:$2 in
    ours:lz4 | ours:zstd | rskafka:lz4 | rskafka:zstd) return 1 ;; # pure-Rust writers: none, gzip, snappy
  esac
}
reads() { # client codec: whether the client reads that codec here
  case $1:$2 in
    rskafka:lz4 | rskafka:zstd) return 1 ;; # rskafka's lz4 and zstd codecs compile C
  esac
}
peer() { # section extra client mode key=value...
  local section=$1 extra=$2
  shift 2
  record "$section" "$extra" python3 "$root/scripts/bench-peer.py" "$@"
}
clients_round() { # size codec records
  local size=$1 codec=$2 n=$3 shared="" v client settings idem t turn
  local extra="{\"size\":$size,\"compression\":\"$codec\"}"
  for turn in $(seq 1 "$turns"); do
    local topics=()
    for v in "${producers[@]}"; do
      IFS=: read -r client settings idem <<<"$v"
      if ! writes "$client" "$codec"; then
        [[ $turn == 1 ]] && echo "{\"section\":\"producer\",\"size\":$size,\"compression\":\"$codec\",\"client\":\"$client\",\"settings\":\"$settings\",\"idempotence\":\"${idem:-}\",\"skipped\":\"does not write $codec\"}" >>"$results"
        continue
      fi
      t=bench-$client-$settings-$size-$codec-$RANDOM
      "$bench" create brokers="$brokers" topic="$t" partitions=6 >/dev/null
      # Every consumer reads the same records: those Kafka's own producer wrote
      # at its authors' settings in the first turn, the reference client's batches.
      if [[ $v == java:authors && -z $shared ]]; then shared=$t; else topics+=("$t"); fi
      peer producer "{\"size\":$size,\"compression\":\"$codec\",\"idempotence\":\"${idem:-}\"}" \
        "$client" produce brokers="$brokers" topic="$t" records="$n" size="$size" compression="$codec" \
        settings="$settings" ${idem:+idempotence=$idem}
    done
    "$bench" delete brokers="$brokers" topics="$(IFS=,; echo "${topics[*]}")" >/dev/null
  done
  for _ in $(seq 1 "$turns"); do
    for v in "${consumers[@]}"; do
      IFS=: read -r client settings <<<"$v"
      if ! reads "$client" "$codec"; then
        echo "{\"section\":\"consumer\",\"size\":$size,\"compression\":\"$codec\",\"client\":\"$client\",\"settings\":\"$settings\",\"skipped\":\"does not read $codec\"}" >>"$results"
        continue
      fi
      peer consumer "$extra" "$client" consume brokers="$brokers" topic="$shared" records="$n" size="$size" \
        settings="$settings" group="bench-$client-$RANDOM"
    done
  done
  "$bench" delete brokers="$brokers" topics="$shared" >/dev/null
}

echo "== producers and consumers" >&2
for size in "${sizes[@]}"; do
  for codec in "${codecs[@]}"; do
    n=$small
    [[ $size -gt 100 ]] && n=$large
    clients_round "$size" "$codec" "$n"
  done
done

echo "== producer latency at half the slowest client's records/s" >&2
# The slowest producer at our settings, 100 B, none, sets the pace for all.
rate=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = [x["records_per_s"] for x in rows if x["section"] == "producer" and x.get("size") == 100
     and x.get("compression") == "none" and x.get("settings") == "ours" and "records_per_s" in x]
print(max(1, int(min(r) / 2)) if r else 1000)' "$results")
for _ in $(seq 1 "$turns"); do
  for v in "${producers[@]}"; do
    IFS=: read -r client settings idem <<<"$v"
    t=bench-latency-$client-$RANDOM
    "$bench" create brokers="$brokers" topic="$t" partitions=6 >/dev/null
    peer latency "{\"size\":100,\"compression\":\"none\",\"rate\":$rate,\"idempotence\":\"${idem:-}\"}" \
      "$client" produce brokers="$brokers" topic="$t" records=$((rate * latency_seconds)) size=100 \
      compression=none settings="$settings" rate="$rate" ${idem:+idempotence=$idem}
    "$bench" delete brokers="$brokers" topics="$t" >/dev/null
  done
done

echo "== producers across a slower link (5 ms each way)" >&2
# The broker names the proxy's port in its metadata, so every connection of
# every client goes through it. Ours also with one request in flight per
# partition instead of five, and with 16 KiB batches (Java's default
# batch.size), where a batch fills before its predecessor's answer is back.
proxy_port=$(free_port)
EDA_BROKER_ADVERTISED_PORT=$proxy_port broker
"$bench" delay-proxy listen="$proxy_port" target="$EDA_BROKER_PORT" delay_ms=5 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_port "$proxy_port" "the delay proxy" "$proxy_pid"
slow=127.0.0.1:$proxy_port
for _ in $(seq 1 "$turns"); do
  for setting in "ours 5 1048576" "ours 1 1048576" "ours 5 16384" "ours 1 16384" "java - -" "rdkafka - -" "franz-go - -"; do
    read -r client in_flight batch_bytes <<<"$setting"
    t=bench-slow-$client-$RANDOM
    "$bench" create brokers="$slow" topic="$t" partitions=6 >/dev/null
    extra=()
    [[ $client == ours ]] && extra=(in_flight="$in_flight" batch_bytes="$batch_bytes")
    peer slow_link "{\"delay_ms\":5,\"size\":100,\"in_flight\":\"$in_flight\",\"batch_bytes\":\"$batch_bytes\"}" \
      "$client" produce brokers="$slow" topic="$t" records="$large" size=100 compression=none settings=ours \
      idempotence=true "${extra[@]}"
    "$bench" delete brokers="$slow" topics="$t" >/dev/null
  done
done
kill "$proxy_pid" 2>/dev/null || true
EDA_BROKER_ADVERTISED_PORT='' broker

# The services, as a user runs them.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_ready() { # port name pid → milliseconds until /ready answered 200 (at most 60 s)
  local start=$(date +%s%N) deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    kill -0 "$3" 2>/dev/null || { echo "$2 exited before it was ready; its log:" >&2; tail -20 "$scratch/$2.log" >&2; return 1; }
    if curl -sf --max-time 2 "http://127.0.0.1:$1/ready" >/dev/null 2>&1; then
      echo $(( ($(date +%s%N) - start) / 1000000 )); return 0
    fi
    sleep 0.05
  done
  echo "$2 was not ready on port $1 after 60 s; its log:" >&2; tail -20 "$scratch/$2.log" >&2; return 1
}
webhook_port=$(free_port)
api_port=$(free_port)
api=http://127.0.0.1:$api_port
guarantee=exactly_once
common_env() {
  export APP_KAFKA_PROCESSING_GUARANTEE=$guarantee
  export APP_KAFKA_BROKERS=$brokers APP_SERVER_HOST=127.0.0.1 APP_LOGGER_LEVEL=warn \
    APP_KAFKA_TOPIC_PARTITIONS=6 \
    APP_INVENTORY_STOCK_FILE=$scratch/stock.json \
    APP_NOTIFICATION_WEBHOOK_URL=http://127.0.0.1:$webhook_port/hook \
    APP_METRICS_PORT=0
  # The API as deployed: every request authenticated; no per-client rate limit
  # or connection cap, which would cap the load generator's one customer and
  # address.
  export APP_AUTH_MODE=jwt APP_AUTH_JWT_HS256_SECRET=$jwt_secret \
    APP_ORDER_IDEMPOTENCY_SECRET=$id_secret APP_SERVER_RATE_LIMIT_PER_SECOND=0 \
    APP_SERVER_MAX_CONNECTIONS_PER_CLIENT=0
}
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
id_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
EDA_BENCH_TOKEN=$(common_env; "$bin/order-service" mint-token --subject bench-customer --ttl 86400)
export EDA_BENCH_TOKEN
echo '{"product-001":1000000000,"product-002":1000000000,"product-003":1000000000,"product-004":1000000000,"product-005":1000000000}' >"$scratch/stock.json"
declare -A svc_pid svc_port
start_service() { # section name binary port-variable port [VAR=value...]: records start to /ready
  ( common_env; export "$4=$5" "${@:6}"; exec "$bin/$3" ) >"$scratch/$2.log" 2>&1 &
  pids+=($!); svc_pid[$2]=$!; svc_port[$2]=$5
  local ms; ms=$(wait_ready "$5" "$2" "${svc_pid[$2]}")
  echo "{\"section\":\"$1\",\"service\":\"$2\",\"ready_ms\":$ms}" >>"$results"
}
stop_service() { kill "${svc_pid[$1]}" 2>/dev/null || true; wait "${svc_pid[$1]}" 2>/dev/null || true; }
# A fresh broker and fresh services for each phase, so that no phase measures
# the backlog or the consumer lag the one before left behind.
pipeline_services() { # inventory instances, section for the start-up times
  for s in "${!svc_pid[@]}"; do stop_service "$s"; done
  svc_pid=() svc_port=()
  broker
  start_service "$2" order order-service APP_SERVER_PORT "$api_port"
  start_service "$2" inventory inventory-service APP_METRICS_PORT "$(free_port)"
  for n in $(seq 2 "$1"); do
    start_service "$2" "inventory-$n" inventory-service APP_METRICS_PORT "$(free_port)"
  done
  start_service "$2" notification notification-service APP_METRICS_PORT "$(free_port)"
  sleep 3
  # A fresh JVM compiles its hot code in its first minute under load, and that
  # is not what a running broker does: a saturation run nobody records first.
  "$bench" pipeline apis="$api" webhook="$webhook_port" rate=0 concurrency=64 seconds="$warm_seconds" >/dev/null
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

echo "== the pipeline" >&2
pipeline_services 1 start
sleep 2
for s in order inventory notification; do
  echo "{\"section\":\"rss_idle\",\"service\":\"$s\",\"kib\":$(rss_kib "${svc_pid[$s]}")}" >>"$results"
done

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
# Half of the last saturation measured (of the guarantee given), or 50 orders/s
# when that measurement failed.
half_of_saturation() {
  python3 -c 'import json,sys
r = [json.loads(l) for l in open(sys.argv[1])]
r = [x for x in r if x["section"] == "pipeline" and x.get("phase") == "saturation" and x.get("guarantee") == sys.argv[2]]
print(max(1, int(r[-1]["orders_per_s"] / 2)) if r else 50)' "$results" "$1"
}
saturation=$(half_of_saturation exactly_once)
pipeline_services 1 restart
pipeline_run '{"instances":1,"phase":"half"}' "$saturation"

echo "== at-least-once processing" >&2
guarantee=at_least_once
pipeline_services 1 restart
pipeline_run '{"instances":1,"phase":"saturation"}' 0
alo_half=$(half_of_saturation at_least_once)
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

echo "== the order view rebuilt from $seed orders" >&2
# Alone on the broker: the services stop, so that only the seeding loads it.
for s in "${!svc_pid[@]}"; do stop_service "$s"; done
"$bench" seed-orders brokers="$brokers" count="$seed" >/dev/null
# The count is on the operations port: the public /ready says ready or not.
rebuild_ops_port=$(free_port)
start_service rebuild order-rebuild order-service APP_SERVER_PORT "$api_port" APP_METRICS_PORT="$rebuild_ops_port"
curl -s "http://127.0.0.1:$rebuild_ops_port/ready" | python3 -c 'import json,sys; print(json.dumps({"section": "orders_in_view", "orders": json.load(sys.stdin)["orders"]}))' >>"$results"

echo "== binary sizes" >&2
for b in order-service inventory-service notification-service; do
  for dir in dist/x86_64-unknown-linux-musl dist/aarch64-unknown-linux-musl "target/$profile"; do
    [[ -f $dir/$b ]] && echo "{\"section\":\"size\",\"binary\":\"$b\",\"where\":\"$dir\",\"bytes\":$(stat -c %s "$dir/$b")}" >>"$results"
  done
done

# A smoke run checks the script, and its numbers mean nothing: they stay out of bench/.
out=bench
[[ $mode == smoke ]] && out=$scratch
python3 "$root/scripts/bench-report.py" "$results" "$out/results.md" "$out/results.json" \
  "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m)" \
  "$(scripts/broker.sh version 2>/dev/null)" \
  "$(rustc --version)" "$small" "$large" "$mode"
cat "$out/results.md"
((failed == 0)) && ok=1
if ((failed > 0)); then
  echo "bench: $failed measurement(s) failed; see \"Failed measurements\" in $out/results.md" >&2
  exit 1
fi
