#!/usr/bin/env bash
# Make PostgreSQL, Redis and Mosquitto available on this machine: use them when running, start
# them when installed but stopped, install them (apt) when absent. Then create the iotcore
# roles and database. Safe to run again.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DB_NAME="${IOT_DB_NAME:-iotcore}"
DEV_PASSWORD="${IOT_DEV_DB_PASSWORD:-iotcore-dev}"

pg_admin() {  # psql as the postgres superuser: peer auth over the socket when root
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -qAt "$@"
  else
    psql -X -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"
  fi
}

ensure_postgres() {
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version="$(pg_lsclusters -h | awk '$2=="main"{print $1; exit}')"
    if [ -z "$version" ]; then
      version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
      log "creating PostgreSQL $version cluster"
      pg_createcluster "$version" main >/dev/null
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
  fi
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not come up"; exit 1; }
}

ensure_roles_and_database() {
  pg_admin -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_owner') THEN
    CREATE ROLE iotcore_owner LOGIN CREATEDB CREATEROLE PASSWORD '$DEV_PASSWORD';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_app') THEN
    CREATE ROLE iotcore_app NOLOGIN NOBYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_service') THEN
    -- The service's login: owns nothing, no BYPASSRLS, privileges only through iotcore_app.
    CREATE ROLE iotcore_service LOGIN NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '$DEV_PASSWORD';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_backup') THEN
    -- Backups only: reads every row (RLS would hide them from any other role).
    CREATE ROLE iotcore_backup LOGIN BYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '$DEV_PASSWORD';
  END IF;
END
\$\$;
GRANT iotcore_app TO iotcore_service;
GRANT pg_read_all_data TO iotcore_backup;
SQL
  if [ "$(pg_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
    log "creating database $DB_NAME"
    pg_admin -d postgres -c "CREATE DATABASE $DB_NAME OWNER iotcore_owner"
  fi
  if [ "$(pg_admin -d postgres -c "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")" = "1" ]; then
    log "TimescaleDB available: enabling it in $DB_NAME"
    pg_admin -d "$DB_NAME" -c "CREATE EXTENSION IF NOT EXISTS timescaledb" \
      || log "TimescaleDB could not be enabled (is it in shared_preload_libraries?); using native partitioning"
  fi
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    apt_install redis-server
  fi
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile "${TMPDIR:-/tmp}/iotcore-redis.log"
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 0.25; done
  log "Redis did not come up"; exit 1
}

ensure_mosquitto() {
  # Tests run their own Mosquitto on a free port; the binary (and the clients, for the
  # benchmark baseline) must exist.
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    log "installing Mosquitto"
    apt_install mosquitto mosquitto-clients
  elif ! command -v mosquitto_sub >/dev/null 2>&1; then
    apt_install mosquitto-clients
  fi
}

ensure_postgres
ensure_roles_and_database
ensure_redis
if [ "${1:-}" != "--no-mqtt" ]; then ensure_mosquitto; fi
log "services ready: PostgreSQL 127.0.0.1:5432 (database $DB_NAME), Redis 127.0.0.1:6379"
