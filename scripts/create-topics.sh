#!/usr/bin/env bash
# Creates the system's topics on the cluster in APP_KAFKA_BROKERS; idempotent
# (existing topics are left as they are).
#
#   APP_KAFKA_BROKERS=kafka1:9092 scripts/create-topics.sh
#   APP_KAFKA_TOPIC_PARTITIONS=12 APP_KAFKA_REPLICATION_FACTOR=3 scripts/create-topics.sh
#   scripts/create-topics.sh --config configs/local.env
#
# Topics: order.created, inventory.reserved, inventory.failed, notification.sent
# (APP_KAFKA_TOPIC_PARTITIONS partitions each, default 6, retention.ms=-1 because
# the services rebuild their state from them), the compacted consumer offsets topic
# __eda_offsets, and a .dlq topic per consumed topic.
#
# Any of the service binaries does the work (`<binary> create-topics`): the one in
# $EDA_BIN, on the PATH, in dist/, in target/release, or built with cargo
# (scripts/service-bin.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/service-bin.sh
source "$root/scripts/service-bin.sh"
exec "$bin" create-topics "$@"
