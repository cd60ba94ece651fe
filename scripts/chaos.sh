#!/usr/bin/env bash
# The chaos run (tests/chaos.rs) at full size: a broker of its own, two instances
# of each service, 5,000 orders over a few minutes while instances are SIGKILLed
# and restarted every few seconds and the broker restarts once. Prints a table
# and exits non-zero if any order was lost or doubled, or the stock went wrong.
#
#   scripts/chaos.sh                   5,000 orders at 25/s, one seed
#   scripts/chaos.sh 20000 50          orders, orders per second
#   scripts/chaos.sh --seeds 5 1000    five runs in a row, seeds 1 to 5 (or from
#                                      EDA_CHAOS_SEED), stopping at the first failure
#   EDA_CHAOS_SEED=42 scripts/chaos.sh
#   scripts/chaos.sh --cluster         the broker faults instead (tests/cluster_chaos.rs):
#                                      a three-node Apache Kafka cluster, ten rounds of
#                                      leader kills, pauses, a rolling restart and two
#                                      nodes down, at 4 orders/s (about 25 minutes)
#   scripts/chaos.sh --cluster 3 2     rounds, orders per second
#
# scripts/test.sh runs the same test with 1,000 orders; a plain `cargo test`
# leaves it out (it is #[ignore]d for its length).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ ${1:-} == --cluster ]]; then
  export EDA_CHAOS_ROUNDS=${2:-10}
  export EDA_CHAOS_RATE=${3:-4}
  exec cargo test --release --test cluster_chaos -- --ignored --nocapture
fi
seeds=0
if [[ ${1:-} == --seeds ]]; then
  seeds=${2:?--seeds takes a count}
  shift 2
fi
export EDA_CHAOS_ORDERS=${1:-5000}
export EDA_CHAOS_RATE=${2:-25}
if [[ $seeds -eq 0 ]]; then
  exec cargo test --release --test chaos -- --ignored --nocapture
fi
first=${EDA_CHAOS_SEED:-1}
for ((seed = first; seed < first + seeds; seed++)); do
  echo "== chaos run with EDA_CHAOS_SEED=$seed" >&2
  EDA_CHAOS_SEED=$seed cargo test --release --test chaos -- --ignored --nocapture ||
    { echo "chaos run failed with EDA_CHAOS_SEED=$seed" >&2; exit 1; }
done
echo "chaos: seeds $first to $((first + seeds - 1)) passed" >&2
