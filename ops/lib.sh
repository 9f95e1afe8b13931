# Shared by ops/*.sh: the virtualenv and the local development settings.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IOT_VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

# Local development credentials: they work with trust and with password authentication.
# Production takes its own from the environment (docker-compose.yml, .env).
export IOT_DATABASE_URL="${IOT_DATABASE_URL:-postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/iotcore}"
export IOT_DATABASE_OWNER_URL="${IOT_DATABASE_OWNER_URL:-postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/iotcore}"
export IOT_REDIS_URL="${IOT_REDIS_URL:-redis://127.0.0.1:6379/0}"

log() { printf '\033[1m[iotcore]\033[0m %s\n' "$*" >&2; }

ensure_python() {
  if ! command -v "$PYTHON_BIN" >/dev/null 2>&1 || ! "$PYTHON_BIN" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing python3 and venv"
    apt_install python3 python3-venv python3-pip
  fi
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    log "Python 3.11 or newer is required ($PYTHON_BIN is $("$PYTHON_BIN" -V))"; exit 1; }
}

# ensure_venv EXTRAS: create .venv and install the package (editable) when pyproject changed.
ensure_venv() {
  local extras="${1:-}" spec="." stamp
  [ -n "$extras" ] && spec=".[$extras]"
  ensure_python
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  stamp="$VENV/.iotcore-installed-$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)-${extras:-base}"
  if [ ! -f "$stamp" ]; then
    log "installing iotcore$([ -n "$extras" ] && echo "[$extras]") into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT$( [ "$spec" != "." ] && echo "${spec#.}")"
    touch "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

APT_UPDATED=""
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    log "need root to install: $* (install them, or run as root)"; exit 1
  fi
  if [ -z "$APT_UPDATED" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The TimescaleDB test cluster (ops/services.sh builds it from the vendored source archive).
TSDB_PORT="${IOT_TIMESCALEDB_PORT:-5433}"
timescaledb_source() {  # the source archive, or nothing when there is none
  if [ -n "${IOT_TIMESCALEDB_SOURCE:-}" ]; then
    [ -f "$IOT_TIMESCALEDB_SOURCE" ] && echo "$IOT_TIMESCALEDB_SOURCE"
    return 0
  fi
  ls "$REPO_ROOT"/../shared/vendor/timescaledb-*.tar.gz 2>/dev/null | sort -V | tail -n1 || true
}
