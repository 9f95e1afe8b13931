#!/usr/bin/env bash
# Restore a backup made by ops/backup.sh into a NEW database (never over a live one).
#   bash ops/restore.sh FILE TARGET_DB
# Then point IOT_DATABASE_URL / IOT_DATABASE_OWNER_URL at TARGET_DB (or rename databases
# during a maintenance window) — see runbooks/backup-and-restore.md.
# Runs as a superuser (IOT_ADMIN_URL, default: local postgres over the socket when root):
# restoring rows into tables with FORCE ROW LEVEL SECURITY needs one.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

file="${1:?usage: restore.sh FILE TARGET_DB}"
target="${2:?usage: restore.sh FILE TARGET_DB}"
[[ "$target" =~ ^[a-z_][a-z0-9_]*$ ]] || { log "TARGET_DB must be a plain lower-case name"; exit 2; }

admin() {
  if [ -n "${IOT_ADMIN_URL:-}" ]; then "$@" --dbname="$IOT_ADMIN_URL"
  elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  else "$@" --host=127.0.0.1 --username=postgres
  fi
}

exists="$(admin psql -X -qAt -c "SELECT 1 FROM pg_database WHERE datname = '$target'")"
if [ "$exists" = "1" ]; then log "database $target already exists: restore into a new name"; exit 2; fi
admin psql -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $target OWNER iotcore_owner"
if [ -n "${IOT_ADMIN_URL:-}" ]; then
  pg_restore --exit-on-error --no-password --dbname="${IOT_ADMIN_URL%/*}/$target" "$file"
elif [ "$(id -u)" -eq 0 ]; then
  runuser -u postgres -- pg_restore --exit-on-error --dbname="$target" < "$file"
else
  pg_restore --exit-on-error --host=127.0.0.1 --username=postgres --dbname="$target" "$file"
fi
log "restored $file into database $target"
