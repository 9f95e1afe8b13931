#!/usr/bin/env bash
# Back up the iotcore database to a pg_dump custom-format file.
#   bash ops/backup.sh [FILE]        (default: backups/iotcore-YYYYmmddTHHMMSSZ.dump)
# Connects with IOT_BACKUP_URL: a superuser, or a role with BYPASSRLS that can read every
# table (`iotcore_backup`, from ops/roles.sql). The owner role cannot take the dump:
# with FORCE ROW LEVEL SECURITY even the owner sees no tenant's rows without app.tenant_id,
# and pg_dump refuses to dump a table that row security would filter.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BACKUP_URL="${IOT_BACKUP_URL:-postgresql://iotcore_backup:iotcore-dev@127.0.0.1:5432/iotcore}"
file="${1:-$REPO_ROOT/backups/iotcore-$(date -u +%Y%m%dT%H%M%SZ).dump}"
mkdir -p "$(dirname "$file")"
pg_dump --format=custom --compress=6 --dbname="$BACKUP_URL" --file="$file.partial"
mv "$file.partial" "$file"   # a file under the final name is always complete
pg_restore --list "$file" >/dev/null   # readable, or fail now rather than at restore time
log "backup written: $file ($(du -h "$file" | cut -f1))"
echo "$file"
