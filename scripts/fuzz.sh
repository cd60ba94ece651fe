#!/usr/bin/env bash
# Fuzzes the order API from its own OpenAPI document with schemathesis (PyPI):
# thousands of generated requests, valid and invalid, plus stateful sequences
# (create an order, then read it back). Fails on any 5xx other than the
# documented 503, an answer that breaks the document, or a 405 without Allow.
#
#   scripts/fuzz.sh --install                 installs schemathesis in target/fuzz-venv
#   scripts/fuzz.sh http://localhost:8080     fuzzes a running order-service
#   EDA_FUZZ_EXAMPLES=1000 EDA_FUZZ_SEED=7 scripts/fuzz.sh http://localhost:8080
#   EDA_FUZZ_TOKEN=$(order-service mint-token --subject c-1) scripts/fuzz.sh URL
#
# With EDA_FUZZ_TOKEN every request carries it as a bearer token, and the
# ignored_auth check also sends each operation without it, expecting a 401.
# Every check runs but positive_data_acceptance: a schema-valid request can be
# refused on purpose (an Idempotency-Key reused for another order gets 422).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=4.32.5
venv=${EDA_FUZZ_VENV:-$root/target/fuzz-venv}
st=$venv/bin/st

if [[ ${1:-} == --install ]]; then
  if [[ -x $st ]] && "$st" --version 2>/dev/null | grep -q "$version"; then exit 0; fi
  echo "installing schemathesis $version in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
  exit 0
fi
if [[ $# -ne 1 || $1 == -* ]]; then
  echo "usage: scripts/fuzz.sh --install | scripts/fuzz.sh BASE_URL" >&2
  exit 64
fi
if [[ ! -x $st ]]; then
  echo "schemathesis is not installed: run scripts/fuzz.sh --install" >&2
  exit 1
fi
auth=()
[[ -n ${EDA_FUZZ_TOKEN:-} ]] && auth=(--header "Authorization: Bearer $EDA_FUZZ_TOKEN")
exec "$st" run "${1%/}/api/v1/openapi.json" "${auth[@]}" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${EDA_FUZZ_EXAMPLES:-100}" --seed "${EDA_FUZZ_SEED:-20261124}" \
  --no-color
