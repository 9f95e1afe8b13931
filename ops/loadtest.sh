#!/usr/bin/env bash
# The mixed load of loadtests/locustfile.py, headless (runbooks/load-test.md).
#   bash ops/loadtest.sh [--host URL] [locust options...]
# Without --host it starts its own `iotcore api` on a fresh, migrated database of the local
# PostgreSQL (dropped afterwards) and loads that. Defaults: 30 users, 30 s; later options
# override them (--users 200 --run-time 10m). Exits non-zero on any 5xx or more than 1% of
# requests failed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_venv "dev"
cd "$REPO_ROOT"

host=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --host=*) host="${1#--host=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

api_pid=""
database=""
cleanup() {
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
  if [ -n "$database" ]; then
    psql -X -q "${IOT_DATABASE_OWNER_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  fi
}
trap cleanup EXIT

if [ -z "$host" ]; then
  database="iotcore_load_$$"
  owner_base="${IOT_DATABASE_OWNER_URL%/*}"
  psql -X -q "$owner_base/postgres" -c "CREATE DATABASE $database"
  export IOT_DATABASE_OWNER_URL="$owner_base/$database"
  export IOT_DATABASE_URL="${IOT_DATABASE_URL%/*}/$database"
  iotcore migrate up >/dev/null
  port="$(free_port)"
  log "load test: iotcore api on 127.0.0.1:$port, database $database"
  # The load generator is one address: the set-up registers tenants and claims devices
  # from it faster than the per-address throttles allow.
  IOT_HTTP_PORT="$port" IOT_METRICS_PORT="$(free_port)" IOT_LOG_LEVEL=WARNING \
    IOT_REDIS_PREFIX="load:$$:" IOT_REGISTER_MAX_PER_IP=1000 IOT_CLAIM_MAX_FAILURES=1000 \
    iotcore api >"${TMPDIR:-/tmp}/iotcore-loadtest-$$.log" 2>&1 &
  api_pid=$!
  host="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fsS "$host/api/v1/health/live" >/dev/null 2>&1 && break
    kill -0 "$api_pid" 2>/dev/null || { cat "${TMPDIR:-/tmp}/iotcore-loadtest-$$.log"; exit 1; }
    sleep 0.3
  done
fi

locust -f loadtests/locustfile.py --headless --host "$host" --only-summary \
  --users 30 --spawn-rate 10 --run-time 30s "${args[@]}"
