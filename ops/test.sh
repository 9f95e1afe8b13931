#!/usr/bin/env bash
# One command runs the whole test suite: services, virtualenv, lint, types, migration checks,
# then pytest against real PostgreSQL, Redis and MQTT brokers, on both storages: native
# partitions (PostgreSQL on 5432) and TimescaleDB (the second cluster ops/services.sh builds
# from ../shared/vendor/timescaledb-*.tar.gz or IOT_TIMESCALEDB_SOURCE; without the archive,
# native only, and it says so). Extra arguments go to pytest (both runs).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bash "$REPO_ROOT/ops/services.sh"
bash "$REPO_ROOT/ops/tools.sh"
# --- Browser tests (tests/console) drive Debian's Chromium through Playwright.
if [ ! -x "${IOT_CHROMIUM:-/usr/bin/chromium}" ]; then log "installing chromium"; apt_install chromium; fi
# ---
ensure_venv "dev"
cd "$REPO_ROOT"

log "ruff format --check";  ruff format --check .
log "ruff check";           ruff check .
log "mypy iotcore";         mypy iotcore
log "iotcore migrate check"; iotcore migrate check

timescaledb=""
if [ "${IOT_TIMESCALEDB:-1}" != "0" ] && [ -n "$(timescaledb_source)" ] \
    && pg_isready -q -h 127.0.0.1 -p "$TSDB_PORT"; then
  timescaledb=1
fi

declare -A outcome
status=0
run_pytest() {  # NAME, then environment assignments; the pytest arguments follow "--"
  local name="$1" rc
  shift
  log "pytest on $name"
  set +e
  env "$@" python -m pytest "${PYTEST_ARGS[@]}"
  rc=$?
  set -e
  case "$rc" in
    0) outcome[$name]="passed" ;;
    5) outcome[$name]="collected no tests"; status=5 ;;
    *) outcome[$name]="FAILED (pytest exit $rc)"; status=1 ;;
  esac
}
PYTEST_ARGS=("$@")

run_pytest "native partitions (PostgreSQL 127.0.0.1:5432)" IOT_TEST_STORAGE=native
# A 30 s smoke of the mixed load (loadtests/locustfile.py) against an API of its own, on
# native storage: any 5xx or more than 1% failed requests fails the run.
log "load test smoke (30 s, native storage)"
if bash "$REPO_ROOT/ops/loadtest.sh" --run-time 30s; then
  outcome["load test smoke (30 s)"]="passed"
else
  outcome["load test smoke (30 s)"]="FAILED"; status=1
fi
if [ -n "$timescaledb" ]; then
  ts="postgresql://%s@127.0.0.1:$TSDB_PORT/postgres"
  # shellcheck disable=SC2059
  run_pytest "TimescaleDB (127.0.0.1:$TSDB_PORT)" IOT_TEST_STORAGE=timescaledb \
    IOT_TEST_OWNER_URL="$(printf "$ts" iotcore_owner:iotcore-dev)" \
    IOT_TEST_SERVICE_URL="$(printf "$ts" iotcore_service:iotcore-dev)" \
    IOT_TEST_SUPERUSER_URL="$(printf "$ts" postgres)"
fi

log "outcomes:"
for name in "${!outcome[@]}"; do log "  $name: ${outcome[$name]}"; done
if [ -z "$timescaledb" ]; then
  log "  TimescaleDB: NOT tested (no source archive: set IOT_TIMESCALEDB_SOURCE or put timescaledb-*.tar.gz in ../shared/vendor/)"
fi
exit "$status"
