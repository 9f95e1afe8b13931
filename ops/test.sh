#!/usr/bin/env bash
# One command runs the whole test suite: services, virtualenv, lint, types, migration checks,
# then pytest against real PostgreSQL, Redis and MQTT brokers. Extra arguments go to pytest.
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
log "pytest"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then log "pytest collected no tests"; fi
exit "$status"
