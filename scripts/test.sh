#!/usr/bin/env bash
# Runs the whole test suite against a real broker that this script starts and stops.
#
#   scripts/test.sh                 everything
#   scripts/test.sh --test kafka    arguments go to `cargo test`
#
# The broker (nisshi, installed on first use by scripts/broker.sh) gets a free port
# and a throwaway data folder, so a broker you run yourself is left alone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  echo "no free port found" >&2
  return 1
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/rust-eda-test.XXXXXX")
export EDA_BROKER_PORT=${EDA_BROKER_PORT:-$(free_port)}
export EDA_BROKER_DATA=$scratch/broker
cleanup() {
  scripts/broker.sh stop || true
  rm -rf "$scratch"
}
trap cleanup EXIT

scripts/broker.sh start
export EDA_TEST_BROKERS=127.0.0.1:$EDA_BROKER_PORT
cargo test "$@"
