#!/usr/bin/env bash
# Puts dead-lettered records back on the topic they came from, once the cause of
# their failure is fixed. Records already replayed are not copied again. Without
# --execute it only says what it would copy. It reads <topic>.dlq topics only,
# and writes only to the system's event topics.
#
#   APP_KAFKA_BROKERS=kafka1:9092 scripts/replay-dlq.sh order.created.dlq
#   scripts/replay-dlq.sh inventory.reserved.dlq --execute
#   scripts/replay-dlq.sh order.created.dlq --to order.created --config configs/local.env --execute
#
# Each record goes back with its key (so to its order's partition), its value and
# its headers, without the dlq.* ones, plus dlq.replayed_from. How far each
# dead-letter topic was replayed is kept in the offsets topic (group eda-dlq-replay).
#
# Any of the service binaries does the work (`<binary> replay-dlq`): the one in
# $EDA_BIN, on the PATH, in dist/, in target/release, or built with cargo
# (scripts/service-bin.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/service-bin.sh
source "$root/scripts/service-bin.sh"
exec "$bin" replay-dlq "$@"
