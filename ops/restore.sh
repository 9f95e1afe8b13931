#!/usr/bin/env bash
# Restore a backup made by ops/backup.sh into a NEW database (never over a live one).
#   bash ops/restore.sh FILE TARGET_DB
# Then point IOT_DATABASE_URL / IOT_DATABASE_OWNER_URL at TARGET_DB (or rename databases
# during a maintenance window) — see runbooks/backup-and-restore.md.
# Runs as a superuser (IOT_ADMIN_URL, e.g. postgresql://postgres@db:5432/postgres; default:
# local postgres over the socket when root): restoring rows into tables with FORCE ROW LEVEL
# SECURITY needs one, and so does TimescaleDB's restore mode.
# A TimescaleDB backup is restored between timescaledb_pre_restore() and
# timescaledb_post_restore() (background jobs stopped, catalog and chunks restored as they
# were); the server needs the same TimescaleDB version as the one backed up.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

file="${1:?usage: restore.sh FILE TARGET_DB}"
target="${2:?usage: restore.sh FILE TARGET_DB}"
[[ "$target" =~ ^[a-z_][a-z0-9_]*$ ]] || { log "TARGET_DB must be a plain lower-case name"; exit 2; }

# admin DB COMMAND ARGS...: a client program as the superuser, connected to database DB.
admin() {
  local db="$1"; shift
  if [ -n "${IOT_ADMIN_URL:-}" ]; then "$@" --no-password --dbname="${IOT_ADMIN_URL%/*}/$db"
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@" --dbname="$db"
  else "$@" --host=127.0.0.1 --username=postgres --dbname="$db"
  fi
}

exists="$(admin postgres psql -X -qAt -c "SELECT 1 FROM pg_database WHERE datname = '$target'")"
if [ "$exists" = "1" ]; then log "database $target already exists: restore into a new name"; exit 2; fi
lists="$(mktemp -d)"
trap 'rm -rf "$lists"' EXIT
pg_restore --list "$file" >"$lists/all"
timescaledb=""
if grep -qE ' EXTENSION - timescaledb( |$)' "$lists/all"; then timescaledb=1; fi

admin postgres psql -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $target OWNER iotcore_owner"
if [ -n "$timescaledb" ]; then
  admin "$target" psql -X -q -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION IF NOT EXISTS timescaledb" -c "SELECT timescaledb_pre_restore()" >/dev/null
fi
# pg_restore reads the file from standard input: the postgres user may not read its path.
if [ -z "$timescaledb" ]; then
  admin "$target" pg_restore --exit-on-error < "$file"
else
  # Every session that writes the restore runs in TimescaleDB's restoring mode, asked for
  # by the session itself (PGOPTIONS) and not only by the database default that
  # timescaledb_pre_restore() sets: a COPY into a chunk outside that mode goes through
  # TimescaleDB's own COPY, whose continuous-aggregate invalidation looks the hypertable up
  # in a catalog not restored yet and fails ("could not find hypertable with id 1").
  # The catalog's rows still go in first, by a session of their own.
  export PGOPTIONS="${PGOPTIONS:-} -c timescaledb.restoring=on"
  mode="$(admin "$target" psql -X -qAt -c "SHOW timescaledb.restoring")"
  [ "$mode" = "on" ] || { log "restore sessions are not in TimescaleDB's restoring mode"; exit 1; }
  grep -E 'TABLE DATA _timescaledb_(catalog|config) ' "$lists/all" >"$lists/catalog" || true
  grep -vE 'TABLE DATA _timescaledb_(catalog|config) ' "$lists/all" >"$lists/rest"
  chmod -R a+rX "$lists"
  admin "$target" pg_restore --exit-on-error --section=pre-data < "$file"
  admin "$target" pg_restore --exit-on-error --section=data --use-list="$lists/catalog" < "$file"
  admin "$target" pg_restore --exit-on-error --section=data --use-list="$lists/rest" < "$file"
  admin "$target" pg_restore --exit-on-error --section=post-data < "$file"
  PGOPTIONS="${PGOPTIONS% -c timescaledb.restoring=on}"
  admin "$target" psql -X -q -v ON_ERROR_STOP=1 -c "SELECT timescaledb_post_restore()" >/dev/null
  admin "$target" psql -X -q -v ON_ERROR_STOP=1 <"$REPO_ROOT/ops/timescaledb-privileges.sql"
fi
log "restored $file into database $target$([ -n "$timescaledb" ] && echo " (TimescaleDB)")"
