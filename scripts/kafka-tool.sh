#!/usr/bin/env bash
# Apache Kafka's own command-line tools, from the jars scripts/broker.sh fetched
# (the same release as the local broker), with no Kafka installation:
#
#   scripts/kafka-tool.sh consumer-groups --describe --group inventory-service
#   scripts/kafka-tool.sh topics --describe --topic order.created
#   scripts/kafka-tool.sh console-consumer --topic order.created --from-beginning
#   scripts/kafka-tool.sh configs --describe --entity-type topics --entity-name __eda_offsets
#
# Tools: topics, consumer-groups, console-consumer, console-producer, configs,
# get-offsets, transactions, dump-log, metadata-quorum, producer-perf-test,
# consumer-perf-test, verifiable-producer, storage. Each takes the options of the
# kafka-<tool>.sh script of the same name in a Kafka download.
#
# Without --bootstrap-server, the tools that take one get the local broker's
# (127.0.0.1:EDA_BROKER_PORT, default 9092), or BOOTSTRAP when set: point it at
# any cluster, with --command-config FILE for its security settings.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 ]] || usage
tool=$1
shift
bootstrap=yes
case $tool in
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
  configs) class=org.apache.kafka.tools.ConfigCommand ;;
  get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
  transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
  verifiable-producer) class=org.apache.kafka.tools.VerifiableProducer ;;
  producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance; bootstrap=no ;;
  consumer-perf-test) class=org.apache.kafka.tools.ConsumerPerformance ;;
  metadata-quorum) class=org.apache.kafka.tools.MetadataQuorumCommand ;;
  dump-log) class=org.apache.kafka.tools.DumpLogSegments; bootstrap=no ;;
  storage) class=kafka.tools.StorageTool; bootstrap=no ;;
  -h | --help | help) usage ;;
  *) printf 'kafka-tool: no tool %s\n' "$tool" >&2; usage ;;
esac

libs=$(EDA_BROKER_KIND=kafka "$root/scripts/broker.sh" path)
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
args=("$@")
if [[ $bootstrap == yes && " $* " != *" --bootstrap-server "* && " $* " != *" --bootstrap-controller "* ]]; then
  args=(--bootstrap-server "${BOOTSTRAP:-127.0.0.1:${EDA_BROKER_PORT:-9092}}" "$@")
fi
exec "$java" -cp "$libs/*" -Dlog4j2.configurationFile="$root/configs/kafka/log4j2.properties" \
  "$class" "${args[@]}"
