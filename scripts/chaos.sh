#!/usr/bin/env bash
# The chaos run (tests/chaos.rs) at full size: a broker of its own, two instances
# of each service, 5,000 orders over a few minutes while instances are SIGKILLed
# and restarted every few seconds and the broker restarts once. Prints a table
# and exits non-zero if any order was lost or doubled, or the stock went wrong.
#
#   scripts/chaos.sh                 5,000 orders at 25/s
#   scripts/chaos.sh 20000 50        orders, orders per second
#   EDA_CHAOS_SEED=42 scripts/chaos.sh
#
# The test suite runs the same test with 1,000 orders.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export EDA_CHAOS_ORDERS=${1:-5000}
export EDA_CHAOS_RATE=${2:-25}
exec cargo test --release --test chaos -- --nocapture
