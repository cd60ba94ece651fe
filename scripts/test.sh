#!/usr/bin/env bash
# Runs the whole test suite against real Apache Kafka, which this script starts
# and stops:
#
#   scripts/test.sh                 every test: the library's (the group and
#                                   exactly-once simulations), every integration
#                                   and end-to-end test, and the long runs (the
#                                   chaos run, one round of broker faults on a
#                                   three-node cluster, the API fuzzing)
#   scripts/test.sh --all           what CI runs: also the static x86_64 and
#                                   aarch64 builds, the end-to-end tests with the
#                                   aarch64 binaries under qemu, the benchmark
#                                   script on a few records, and the vendored
#                                   rskafka's own tests
#   scripts/test.sh --test kafka    arguments go to `cargo test`, as they are
#
# The broker is Apache Kafka (scripts/broker.sh fetches it from Maven Central on
# first use; it needs Java 17 and Maven). It gets a free port and a throwaway
# data folder, so a broker you run yourself is left alone. Tests that restart or
# secure a broker start their own the same way.
#
# The test programs are built once, then run in lanes side by side (each lane
# one program after another, its output in a log that is shown if it fails):
# most of a test's time is spent waiting on brokers, processes and timeouts,
# not computing. EDA_TEST_LANES=1 runs them one after another.
#
# With --all the builds the tests do not need (static binaries, the benchmark's
# peers, the vendored rskafka's tests) run in the background at the lowest CPU
# priority while the tests run, so they take only what the tests leave idle.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# shellcheck source=scripts/ports.sh
source "$root/scripts/ports.sh"

all=0
if [[ ${1:-} == --all ]]; then
  all=1
  shift
  [[ $# -eq 0 ]] || { echo "usage: scripts/test.sh [--all | cargo test arguments]" >&2; exit 64; }
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rust-eda-test.XXXXXX")
export EDA_BROKER_PORT=${EDA_BROKER_PORT:-$(free_port "$(broker_ports)")}
export EDA_BROKER_DATA=$scratch/broker
# The tests' brokers carry a light load: the quick JIT alone costs a node about
# 40 % less CPU to start (2.9 s instead of 4.9 s here), and the tests start many.
export EDA_KAFKA_JVM_OPTS=${EDA_KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}
background=()
cleanup() {
  local p
  for p in "${background[@]}"; do
    pkill -P "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  scripts/broker.sh stop >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
started=$SECONDS
say() { printf '== [%4ss] %s\n' "$((SECONDS - started))" "$*" >&2; }

# The broker and the test tools (schemathesis for tests/fuzz.rs, librdkafka for
# tests/interop.rs, each in a venv under target/) come up while the tests build.
(
  scripts/broker.sh start
  scripts/fuzz.sh --install
  scripts/interop-tools.sh >/dev/null
  if [[ $all == 1 ]] && ! command -v qemu-aarch64-static >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      echo "installing qemu-user-static for the ARM end-to-end tests"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static
    else
      echo "the ARM end-to-end tests need qemu-aarch64-static (Debian: qemu-user-static); install it, or run without --all"
      exit 1
    fi
  fi
) >"$scratch/prepare.log" 2>&1 &
prepare=$!
background+=("$prepare")
prepared() {
  if ! wait "$prepare"; then
    cat "$scratch/prepare.log" >&2
    echo "test.sh: starting the broker or installing the test tools failed (above)" >&2
    exit 1
  fi
}

if [[ $# -gt 0 ]]; then
  prepared
  export EDA_TEST_BROKERS=127.0.0.1:$EDA_BROKER_PORT
  cargo test "$@"
  exit
fi

say "building the tests"
cargo test --no-run --locked --message-format=json-render-diagnostics >"$scratch/build.json"
# kind:name path, for every test program the build made.
python3 - "$scratch/build.json" >"$scratch/programs" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(f'{m["target"]["kind"][0]}:{m["target"]["name"]} {m["executable"]}')
PY

if [[ $all == 1 ]]; then
  say "building the static binaries, the benchmark's peers and the vendored rskafka's tests in the background"
  (
    renice -n 19 -p "$BASHPID" >/dev/null
    # In target folders of their own: a cargo build holds its folder's lock.
    # Each step leaves a mark: what needs it starts once it is there. aarch64
    # first (the ARM end-to-end run), then what the benchmark smoke needs.
    CARGO_TARGET_DIR=$root/target/static scripts/build-static.sh --profile ci-static aarch64
    touch "$scratch/aarch64.built"
    scripts/bench-peers.sh >/dev/null
    # The bench crate builds the library without the tests' dev-dependency
    # features, in target/ but beside the tests' builds: no test program or
    # binary they run is written over.
    cargo build --quiet --manifest-path bench/Cargo.toml --target-dir "$root/target"
    touch "$scratch/bench.built"
    CARGO_TARGET_DIR=$root/target/static scripts/build-static.sh --profile ci-static x86_64
    CARGO_TARGET_DIR=$root/target/vendor-rskafka cargo test --no-run --manifest-path vendor/rskafka/Cargo.toml \
      --lib --no-default-features --features compression-gzip,compression-snappy,transport-socks5
  ) >"$scratch/background.log" 2>&1 &
  builds=$!
  background+=("$builds")
fi

prepared
export EDA_TEST_BROKERS=127.0.0.1:$EDA_BROKER_PORT

# The lanes, longest first in each, about as long as each other. Measured in
# three lanes on 2 cores (alone, one after another, in brackets): cluster_chaos
# 219 s (226), the library 189 s (47: it computes, the simulations), groups 163 s
# (119), interop 146 s (70), security 89 s (63), e2e 75 s (65), kafka 63 s (46),
# chaos 61 s (85), fuzz 43 s, idempotence 38 s (32), api 19 s, the rest under 11
# s each. A program not named here joins the last lane.
lane_plan=(
  "test:cluster_chaos test:chaos test:e2e"
  "lib:rust_eda test:groups test:exactly_once test:transactions test:api"
  "test:interop test:security test:kafka test:idempotence test:fuzz"
)
# The long runs are #[ignore]d for a plain `cargo test`: here they run.
long_runs=" test:chaos test:cluster_chaos test:fuzz "
lanes=${EDA_TEST_LANES:-${#lane_plan[@]}}
declare -a lane
for ((i = 0; i < lanes; i++)); do lane[i]=""; done
planned=" "
for ((i = 0; i < ${#lane_plan[@]}; i++)); do
  lane[i % lanes]+=" ${lane_plan[i]}"
  planned+="${lane_plan[i]} "
done
while read -r program _; do
  [[ $planned == *" $program "* ]] || lane[lanes - 1]+=" $program"
done <"$scratch/programs"

mkdir -p "$scratch/logs"
# passed failed ignored, from libtest's closing line in a log
# ("test result: ok. 19 passed; 0 failed; 1 ignored; ..."); 0 0 0 without one.
counts() {
  local c
  c=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$1" | tail -1)
  echo "${c:-0 0 0}"
}
run_program() { # label kind:name [environment...]: runs one test program, logs it, records its counts
  local label=$1 program=$2 exe args=() log status=0 took passed=0 failed=0 ignored=0
  shift 2
  exe=$(awk -v p="$program" '$1 == p {print $2}' "$scratch/programs")
  if [[ -z $exe ]]; then
    echo "$label 0 1 0 0 missing" >>"$scratch/results"
    say "$label: no such test program was built"
    return 0
  fi
  [[ $long_runs == *" $program "* ]] && args=(--ignored)
  log=$scratch/logs/$label.log
  local t0=$SECONDS
  # A hang fails the run, naming the program, instead of holding it for ever.
  env "$@" timeout --kill-after=30 1500 "$exe" "${args[@]}" >"$log" 2>&1 || status=$?
  took=$((SECONDS - t0))
  read -r passed failed ignored < <(counts "$log") || true
  if ((status != 0)); then
    ((failed > 0)) || failed=1 # it crashed or timed out before its own count
    echo "$label ${passed:-0} $failed ${ignored:-0} $took failed" >>"$scratch/results"
    say "$label FAILED (exit $status) after ${took}s; the end of its output:"
    tail -n 300 "$log" >&2
  else
    echo "$label ${passed:-0} ${failed:-0} ${ignored:-0} $took ok" >>"$scratch/results"
    say "$label: ok, ${passed:-0} passed in ${took}s"
  fi
}
run_lane() {
  local program
  for program in "$@"; do run_program "${program#*:}" "$program"; done
}

say "running the tests in $lanes lane(s)"
pids=()
for ((i = 0; i < lanes; i++)); do
  # shellcheck disable=SC2086 # the lane is a list of words
  run_lane ${lane[i]} &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

if [[ $all == 1 ]]; then
  background_failed() {
    cat "$scratch/background.log" >&2
    echo "test.sh: a background build failed (above)" >&2
    exit 1
  }
  built() { # mark what: waits until the background builds left the mark
    local deadline=$((SECONDS + 1800))
    say "waiting for $2"
    until [[ -f $scratch/$1.built ]]; do
      kill -0 "$builds" 2>/dev/null || { wait "$builds" || background_failed; }
      ((SECONDS < deadline)) || { echo "test.sh: $2 took over 30 minutes" >&2; exit 1; }
      sleep 1
    done
  }
  built aarch64 "the aarch64 build"
  say "the end-to-end tests with the aarch64 binaries under qemu"
  run_program e2e-aarch64 test:e2e EDA_E2E_BIN_DIR="$root/dist/aarch64-unknown-linux-musl" EDA_E2E_RUNNER=qemu-aarch64-static
  built bench "the benchmark's builds"
  say "the benchmark script on a few records (scripts/bench.sh --smoke)"
  # It checks the script and every peer's program, with the debug builds; the
  # numbers are not kept.
  t0=$SECONDS
  if scripts/bench.sh --smoke >"$scratch/logs/bench-smoke.log" 2>&1; then
    echo "bench-smoke 1 0 0 $((SECONDS - t0)) ok" >>"$scratch/results"
  else
    tail -n 100 "$scratch/logs/bench-smoke.log" >&2
    echo "bench-smoke 0 1 0 $((SECONDS - t0)) failed" >>"$scratch/results"
  fi
  say "waiting for the other background builds"
  wait "$builds" || background_failed
  grep -v '^ *Compiling' "$scratch/background.log" >&2 || true
  say "the vendored rskafka's unit tests"
  # Its own tests of its changed decoder (vendor/README.md), with the features the services use.
  t0=$SECONDS
  if CARGO_TARGET_DIR=$root/target/vendor-rskafka cargo test --manifest-path vendor/rskafka/Cargo.toml \
    --lib --no-default-features --features compression-gzip,compression-snappy,transport-socks5 \
    >"$scratch/logs/vendor-rskafka.log" 2>&1; then
    echo "vendor-rskafka $(counts "$scratch/logs/vendor-rskafka.log") $((SECONDS - t0)) ok" >>"$scratch/results"
  else
    tail -n 100 "$scratch/logs/vendor-rskafka.log" >&2
    echo "vendor-rskafka 0 1 0 $((SECONDS - t0)) failed" >>"$scratch/results"
  fi
fi

say "done"
sort -k5,5nr "$scratch/results" | awk '{printf "  %-28s %-7s %5s passed %3s failed %6ss\n", $1, $6, $2, $3, $5}' >&2
read -r passed failed < <(awk '{p += $2; f += $3} END {print p + 0, f + 0}' "$scratch/results")
bad=$(awk '$6 != "ok"' "$scratch/results" | wc -l)
echo "test.sh: $passed passed, $failed failed"
((failed == 0 && bad == 0))
