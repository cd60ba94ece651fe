#!/usr/bin/env bash
# Installs librdkafka (confluent-kafka from PyPI, which ships it built) in a venv
# under target/, for tests/interop.rs, and prints that venv's python. A test
# tool: the services never link librdkafka.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=2.16.1
venv=${EDA_INTEROP_VENV:-$root/target/interop-venv}
python=$venv/bin/python
if ! [[ -x $python ]] || ! "$python" -c "import confluent_kafka, sys; sys.exit(confluent_kafka.__version__ != '$version')" 2>/dev/null; then
  echo "installing confluent-kafka $version (librdkafka) in $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "confluent-kafka==$version" >&2
fi
echo "$python"
