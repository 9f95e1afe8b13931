#!/usr/bin/env bash
# First start of the database container: the iotcore roles, database and TimescaleDB.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE iotcore_owner LOGIN CREATEDB CREATEROLE PASSWORD '${IOTCORE_OWNER_PASSWORD}';
CREATE ROLE iotcore_app NOLOGIN NOBYPASSRLS;
CREATE ROLE iotcore_service LOGIN NOBYPASSRLS PASSWORD '${IOTCORE_SERVICE_PASSWORD}';
GRANT iotcore_app TO iotcore_service;
CREATE ROLE iotcore_backup LOGIN BYPASSRLS PASSWORD '${IOTCORE_BACKUP_PASSWORD}';
GRANT pg_read_all_data TO iotcore_backup;
CREATE DATABASE iotcore OWNER iotcore_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname iotcore \
  -c "CREATE EXTENSION IF NOT EXISTS timescaledb" \
  -f /iotcore/timescaledb-privileges.sql
