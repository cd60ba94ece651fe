#!/usr/bin/env bash
# Runs the whole test suite against a real broker that this script starts and stops.
#
#   scripts/test.sh                 everything: also builds the static x86_64 and
#                                   aarch64 binaries, and runs the end-to-end tests
#                                   again with the aarch64 ones under qemu
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
  if [[ -n ${static_build:-} ]]; then pkill -P "$static_build" 2>/dev/null || true; kill "$static_build" 2>/dev/null || true; fi
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

# The whole suite builds the static binaries (scripts/build-static.sh, no C
# toolchain) and runs the end-to-end tests on ARM: the aarch64 ones under
# qemu-aarch64-static (EDA_TEST_ARM=0 leaves ARM out). They build in the
# background while the benchmark smoke and the vendored tests run, whose
# timings nothing checks; the timing-sensitive runs above are done by then.
arm=0 arches=x86_64
if [[ $# -eq 0 && ${EDA_TEST_ARM:-1} != 0 ]]; then
  arm=1 arches=all
  if ! command -v qemu-aarch64-static >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      echo "installing qemu-user-static for the ARM end-to-end tests" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static) >&2
    else
      echo "the ARM end-to-end tests need qemu-aarch64-static (Debian: qemu-user-static); install it, or run with EDA_TEST_ARM=0" >&2
      exit 1
    fi
  fi
fi
if [[ $# -eq 0 ]]; then
  echo "== building the static binaries ($arches) in the background" >&2
  scripts/build-static.sh "$arches" >"$scratch/build-static.log" 2>&1 &
  static_build=$!
fi

# The benchmark script on a few records: it builds the peers' own benchmark
# programs (librdkafka's, franz-go's; Kafka's Java tools come with the broker)
# and runs every section once, with the debug builds the tests made. It checks
# the script; its numbers are not kept.
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

if [[ $# -eq 0 ]]; then
  if ! wait "$static_build"; then
    cat "$scratch/build-static.log" >&2
    echo "building the static binaries failed (log above)" >&2
    exit 1
  fi
  grep -v '^ *Compiling' "$scratch/build-static.log" >&2 || true
fi
if [[ $arm == 1 ]]; then
  echo "== end-to-end tests with the aarch64 binaries under qemu" >&2
  EDA_E2E_BIN_DIR=dist/aarch64-unknown-linux-musl EDA_E2E_RUNNER=qemu-aarch64-static \
    cargo test --test e2e
elif [[ $# -eq 0 ]]; then
  echo "EDA_TEST_ARM=0: the ARM end-to-end tests were not run" >&2
fi
