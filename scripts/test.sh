#!/usr/bin/env bash
# Runs the whole test suite against a real broker that this script starts and stops.
#
#   scripts/test.sh                 everything, then the end-to-end tests again with
#                                   the static aarch64 binaries under qemu
#   scripts/test.sh --test kafka    arguments go to `cargo test` (no ARM run)
#
# The broker is Apache Kafka (scripts/broker.sh fetches it from Maven Central on
# first use; it needs Java 17 and Maven). It gets a free port and a throwaway
# data folder, so a broker you run yourself is left alone. Tests that restart or
# secure a broker start their own the same way.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# shellcheck source=scripts/ports.sh
source "$root/scripts/ports.sh"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rust-eda-test.XXXXXX")
export EDA_BROKER_PORT=${EDA_BROKER_PORT:-$(free_port "$(broker_ports)")}
export EDA_BROKER_DATA=$scratch/broker
cleanup() {
  scripts/broker.sh stop || true
  rm -rf "$scratch"
}
trap cleanup EXIT

scripts/broker.sh start
export EDA_TEST_BROKERS=127.0.0.1:$EDA_BROKER_PORT
# tests/api.rs fuzzes the API with schemathesis (PyPI), and tests/interop.rs
# talks to librdkafka (confluent-kafka from PyPI), each in a venv under target/.
scripts/fuzz.sh --install
scripts/interop-tools.sh >/dev/null
cargo test "$@"

# The long runs, ignored by a plain `cargo test`: the chaos run (1,000 orders
# while processes are killed), one round of broker faults on a three-node
# cluster (tests/cluster_chaos.rs) and the API fuzzing.
if [[ $# -eq 0 ]]; then
  echo "== the long runs: chaos, broker faults and fuzzing" >&2
  cargo test --test chaos --test cluster_chaos --test fuzz -- --ignored
fi

# The benchmark script on a few records: it builds the peers' own benchmark
# programs (librdkafka's, franz-go's; Kafka's Java tools come with the broker)
# and runs every section once. It checks the script; its numbers are not kept.
if [[ $# -eq 0 ]]; then
  echo "== the benchmark script, on a few records (scripts/bench.sh --smoke)" >&2
  scripts/bench.sh --smoke >/dev/null
fi

# The vendored rskafka carries changes to its decoder (vendor/README.md): its own
# unit tests, with the features the services build it with.
if [[ $# -eq 0 ]]; then
  echo "== the vendored rskafka's unit tests" >&2
  CARGO_TARGET_DIR=$root/target/vendor-rskafka cargo test --manifest-path vendor/rskafka/Cargo.toml \
    --lib --no-default-features --features compression-gzip,compression-snappy,transport-socks5
fi

# The whole suite also runs the end-to-end tests on ARM: the static aarch64
# binaries under qemu-aarch64-static. EDA_TEST_ARM=0 leaves that out.
if [[ $# -eq 0 && ${EDA_TEST_ARM:-1} != 0 ]]; then
  if ! command -v qemu-aarch64-static >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      echo "installing qemu-user-static for the ARM end-to-end tests" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static) >&2
    else
      echo "the ARM end-to-end tests need qemu-aarch64-static (Debian: qemu-user-static); install it, or run with EDA_TEST_ARM=0" >&2
      exit 1
    fi
  fi
  scripts/build-static.sh aarch64
  echo "== end-to-end tests with the aarch64 binaries under qemu" >&2
  EDA_E2E_BIN_DIR=dist/aarch64-unknown-linux-musl EDA_E2E_RUNNER=qemu-aarch64-static \
    cargo test --test e2e
elif [[ $# -eq 0 ]]; then
  echo "EDA_TEST_ARM=0: the ARM end-to-end tests were not run" >&2
fi
