#!/usr/bin/env bash
# Runs the Kafka-layer tests (tests/kafka.rs) against each Apache Kafka release
# we support: the oldest and the pinned newest (configs/kafka/pom.xml), each on a
# broker of its own. Fetches each release once, like scripts/broker.sh.
#
#   scripts/kafka-versions.sh              the oldest supported and the pinned release
#   scripts/kafka-versions.sh 3.9.1 4.1.1  those releases
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
oldest=3.7.2
pinned=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' configs/kafka/pom.xml)
versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=("$oldest" "$pinned")

failed=()
for version in "${versions[@]}"; do
  echo "== tests/kafka.rs against Apache Kafka $version" >&2
  if EDA_KAFKA_VERSION=$version EDA_BROKER_KIND=kafka scripts/test.sh --test kafka; then
    echo "== Apache Kafka $version: passed" >&2
  else
    echo "== Apache Kafka $version: FAILED" >&2
    failed+=("$version")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed against Apache Kafka ${failed[*]}" >&2
  exit 1
fi
echo "passed against Apache Kafka ${versions[*]}" >&2
