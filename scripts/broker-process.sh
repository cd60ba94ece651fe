# Sourced by scripts/broker.sh and scripts/kafka-broker.sh: the broker process
# behind $pidfile, on 127.0.0.1:$port, logging to $logfile, and its TLS
# certificate. The caller defines say(), die() and answers() (whether the broker
# serves), and sets $stop_wait, the seconds a graceful stop may take before SIGKILL.

pid() { [[ -f $pidfile ]] && cat "$pidfile" || true; }
running() { local p; p=$(pid); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

stop() {
  if ! running; then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  local p; p=$(pid)
  kill -TERM "$p" 2>/dev/null || true
  local deadline=$((SECONDS + stop_wait))
  while ((SECONDS < deadline)); do
    kill -0 "$p" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return 0; }
    sleep 0.1
  done
  say "no exit $stop_wait s after SIGTERM; killing"
  kill -KILL "$p" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  if running; then
    say "running (pid $(pid)) on 127.0.0.1:$port"
  else
    say "not running"
    return 3
  fi
}

# Waits up to $2 seconds for the broker just started, named $1, to answer; says
# $3 once it does. Stops it and fails if it exits or never answers.
await_start() {
  local name=$1 seconds=$2 ready=$3 deadline=$((SECONDS + $2))
  # A deadline on the clock: one probe of a node that takes connections but
  # does not answer may itself take a few seconds.
  while ((SECONDS < deadline)); do
    if ! running; then
      tail -n 30 "$logfile" >&2 || true
      rm -f "$pidfile"
      die "$name exited during start (log: $logfile)"
    fi
    if answers; then
      say "$ready"
      return 0
    fi
    sleep 0.1
  done
  stop
  die "$name did not answer on 127.0.0.1:$port within $seconds s (log: $logfile)"
}

# A throwaway CA and a broker certificate for localhost and 127.0.0.1 in $1, made
# once with the openssl command (a development tool; the services themselves need
# no C): ca.pem for clients; broker.pem and broker.key (nisshi), and both in one
# PEM file, broker-keystore.pem, with the key in PKCS#8 (Kafka).
certificates() {
  local dir=$1
  [[ -f $dir/broker-keystore.pem && -f $dir/ca.pem ]] && return 0
  command -v openssl >/dev/null || die "EDA_BROKER_TLS=1 needs the openssl command (Debian: openssl)"
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -keyout ca.key -out ca.pem -subj "/CN=rust-eda local CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -out broker.pem -extfile broker.ext
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.pk8
    cat broker.pk8 broker.pem >broker-keystore.pem
  ) >/dev/null 2>&1 || die "making the TLS certificates in $dir failed"
  say "TLS: clients trust $dir/ca.pem"
}
