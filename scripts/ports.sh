# Sourced by scripts/test.sh and scripts/bench.sh.
#
# free_port [COUNT]: the first of COUNT (default 1) free ports in a row, taken
# below Linux's ephemeral range (32768 and up), where the local ends of outgoing
# connections would otherwise take them at random. A broker started by
# scripts/broker.sh needs broker_ports of them: each Apache Kafka node listens on
# three (clients, controller, internal).
free_port() {
  local count=${1:-1} p q taken
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 12000))
    taken=no
    for ((q = p; q < p + count; q++)); do
      (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null && taken=yes
    done
    [[ $taken == no ]] && { echo "$p"; return 0; }
  done
  echo "no $count free ports in a row found between 20000 and 32000" >&2
  return 1
}

broker_ports() { echo $((3 * ${EDA_BROKER_NODES:-1})); }
