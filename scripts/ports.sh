# Sourced by scripts/test.sh, scripts/bench.sh and scripts/dev.sh.
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

# wait_port PORT NAME PID [SECONDS]: waits until 127.0.0.1:PORT accepts a
# connection from the process PID started in the background (default 30 s).
# Fails naming NAME when the process exits first or the time runs out.
wait_port() {
  local port=$1 name=$2 pid=$3 deadline=$((SECONDS + ${4:-30}))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || { echo "$name (pid $pid) exited before listening on 127.0.0.1:$port" >&2; return 1; }
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name (pid $pid) was not listening on 127.0.0.1:$port after ${4:-30} s" >&2
  return 1
}
