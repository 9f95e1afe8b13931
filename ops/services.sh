#!/usr/bin/env bash
# Make PostgreSQL, Redis and Mosquitto available on this machine: use them when running, start
# them when installed but stopped, install them (apt) when absent. Then create the iotcore
# roles and database. Safe to run again.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DB_NAME="${IOT_DB_NAME:-iotcore}"
DEV_PASSWORD="${IOT_DEV_DB_PASSWORD:-iotcore-dev}"
ADMIN_PORT=5432

pg_admin() {  # psql as the postgres superuser: peer auth over the socket when root
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- psql -X -p "$ADMIN_PORT" -v ON_ERROR_STOP=1 -qAt "$@"
  else
    psql -X -h 127.0.0.1 -p "$ADMIN_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"
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

ensure_roles_and_database() {  # [port]: the same roles and database on every cluster
  ADMIN_PORT="${1:-5432}"
  local role
  for role in owner service backup; do
    echo "SET iotcore.${role}_password = :'password';"
  done | cat - "$REPO_ROOT/ops/roles.sql" | pg_admin -d postgres -v password="$DEV_PASSWORD"
  if [ "$(pg_admin -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
    log "creating database $DB_NAME"
    pg_admin -d postgres -c "CREATE DATABASE $DB_NAME OWNER iotcore_owner"
  fi
  if [ "$(pg_admin -d postgres -c "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")" = "1" ]; then
    log "TimescaleDB available: enabling it in $DB_NAME"
    if pg_admin -d "$DB_NAME" -c "CREATE EXTENSION IF NOT EXISTS timescaledb"; then
      pg_admin -d "$DB_NAME" <"$REPO_ROOT/ops/timescaledb-privileges.sql"
    else
      log "TimescaleDB could not be enabled (is it in shared_preload_libraries?); using native partitioning"
    fi
  fi
}

# --- TimescaleDB: a second PostgreSQL 15 cluster with the extension preloaded ---------------
# Built from the vendored source archive (see shared/vendor/README.md) into a copy of the
# system PostgreSQL tree, so the system cluster never lists an extension it cannot load.
# The build is reused while the archive and the server version are the same.
TSDB_HOME="${IOT_TIMESCALEDB_HOME:-/var/lib/iotcore-timescaledb}"
PG_MAJOR=15


# Prints the prefix holding the copy of PostgreSQL with TimescaleDB installed (building it
# when needed).
timescaledb_prefix() {
  local source="$1" server_version key prefix build
  server_version="$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR")"
  key="$(sha256sum "$source" | cut -c1-16)-$(echo "$server_version" | tr -c 'A-Za-z0-9.\n' '_')"
  prefix="$TSDB_HOME/pg$PG_MAJOR-$key"
  if [ -f "$prefix/.installed" ]; then echo "$prefix"; return; fi
  local dev_version
  dev_version="$(dpkg-query -W -f='${Version}' "postgresql-server-dev-$PG_MAJOR" 2>/dev/null || true)"
  if [ "$dev_version" != "$server_version" ]; then
    log "installing postgresql-server-dev-$PG_MAJOR=$server_version (headers of the running server)"
    apt_install "postgresql-server-dev-$PG_MAJOR=$server_version"
  fi
  local pkg missing=()
  for pkg in cmake gcc make libssl-dev libkrb5-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then log "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
  log "building TimescaleDB from $(basename "$source") into $prefix (a few minutes)"
  rm -rf "$prefix" "$prefix.build"
  mkdir -p "$prefix.build" "$prefix/usr/lib/postgresql" "$prefix/usr/share/postgresql"
  tar -xzf "$source" -C "$prefix.build" --strip-components=1
  # The server finds its share and lib folders relative to its binary: a copy of both trees
  # is a PostgreSQL of its own, and `make install DESTDIR` fills the copy.
  cp -a "/usr/lib/postgresql/$PG_MAJOR" "$prefix/usr/lib/postgresql/"
  cp -a "/usr/share/postgresql/$PG_MAJOR" "$prefix/usr/share/postgresql/"
  build="$prefix.build"
  (
    cd "$build"
    ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DPG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >"$build/bootstrap.log" 2>&1
    cd build
    make -j"$(nproc)" >"$build/make.log" 2>&1
    make install DESTDIR="$prefix" >"$build/install.log" 2>&1
  ) || { log "TimescaleDB build failed: see $build/*.log"; exit 1; }
  rm -rf "$build"
  echo "$source $server_version" >"$prefix/.installed"
  echo "$prefix"
}

ensure_timescaledb() {
  local source prefix bin data
  source="$(timescaledb_source)"
  if [ -z "$source" ]; then
    log "TimescaleDB: no source archive (IOT_TIMESCALEDB_SOURCE or ../shared/vendor/timescaledb-*.tar.gz): native storage only"
    return 0
  fi
  prefix="$(timescaledb_prefix "$source")"
  bin="$prefix/usr/lib/postgresql/$PG_MAJOR/bin"
  data="$TSDB_HOME/data-$PG_MAJOR"
  if [ ! -f "$data/PG_VERSION" ]; then
    if pg_isready -q -h 127.0.0.1 -p "$TSDB_PORT"; then
      log "port $TSDB_PORT is taken by another server: set IOT_TIMESCALEDB_PORT"; exit 1
    fi
    log "creating the TimescaleDB cluster (port $TSDB_PORT)"
    mkdir -p "$data"; chown postgres:postgres "$TSDB_HOME" "$data"; chmod 700 "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 >/dev/null
    echo "include_if_exists = 'iotcore.conf'" >>"$data/postgresql.conf"
  fi
  # Rewritten every run; a change (or another build) restarts the cluster.
  local conf
  conf="# Written by ops/services.sh: the TimescaleDB test cluster.
port = $TSDB_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/var/run/postgresql'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
max_locks_per_transaction = 256
# No job scheduler: on PostgreSQL 15.20 the background jobs of 2.28.3 end in \"cannot drop
# portal\" (shared/vendor/README.md), and jobs firing during a test would race it (a chunk
# compressed under the test's feet). Tests run jobs explicitly (run_job, refreshes).
timescaledb.max_background_workers = 0
# build: $prefix"
  if pg_isready -q -h 127.0.0.1 -p "$TSDB_PORT"; then
    if [ "$(cat "$data/iotcore.conf" 2>/dev/null)" = "$conf" ]; then
      ensure_roles_and_database "$TSDB_PORT"
      TSDB_READY=1
      return 0
    fi
    log "restarting the TimescaleDB cluster (new build or settings)"
    local running
    running="$(sed -n 's/^# build: //p' "$data/iotcore.conf" 2>/dev/null)"
    [ -x "$running/usr/lib/postgresql/$PG_MAJOR/bin/pg_ctl" ] || running="$prefix"
    runuser -u postgres -- "$running/usr/lib/postgresql/$PG_MAJOR/bin/pg_ctl" \
      -D "$data" -m fast -w stop >/dev/null
  fi
  printf '%s\n' "$conf" >"$data/iotcore.conf"
  chown postgres:postgres "$data/iotcore.conf"
  mkdir -p /var/run/postgresql; chown postgres:postgres /var/run/postgresql
  log "starting the TimescaleDB cluster on port $TSDB_PORT"
  runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$TSDB_HOME/postgresql-$PG_MAJOR.log" -w start >/dev/null
  ensure_roles_and_database "$TSDB_PORT"
  TSDB_READY=1
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
# IOT_TIMESCALEDB=0 skips the TimescaleDB cluster (native storage only).
TSDB_READY=""
if [ "${IOT_TIMESCALEDB:-1}" != "0" ]; then ensure_timescaledb; fi
ensure_redis
if [ "${1:-}" != "--no-mqtt" ]; then ensure_mosquitto; fi
log "services ready: PostgreSQL 127.0.0.1:5432 (database $DB_NAME), Redis 127.0.0.1:6379"
if [ -n "$TSDB_READY" ]; then
  log "TimescaleDB: PostgreSQL $PG_MAJOR with TimescaleDB on 127.0.0.1:$TSDB_PORT (database $DB_NAME)"
fi
