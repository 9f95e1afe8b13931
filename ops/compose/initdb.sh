#!/usr/bin/env bash
# First start of the database container: the iotcore roles, database and TimescaleDB.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner="$IOTCORE_OWNER_PASSWORD" -v service="$IOTCORE_SERVICE_PASSWORD" \
  -v backup="$IOTCORE_BACKUP_PASSWORD" <<'SQL'
SET iotcore.owner_password = :'owner';
SET iotcore.service_password = :'service';
SET iotcore.backup_password = :'backup';
\i /iotcore/roles.sql
CREATE DATABASE iotcore OWNER iotcore_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname iotcore \
  -c "CREATE EXTENSION IF NOT EXISTS timescaledb" \
  -f /iotcore/timescaledb-privileges.sql
