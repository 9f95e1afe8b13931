-- Run as a superuser in each iotcore database right after CREATE EXTENSION timescaledb
-- (ops/services.sh, ops/compose/initdb.sh, the test harness). TimescaleDB lets PUBLIC read
-- its catalog (hypertables, chunks, jobs and their settings, invalidation ranges): the
-- service role gets nothing inside TimescaleDB's schemas, like every other base object of
-- telemetry (ARCHITECTURE.md, Storage). The owner keeps reading the catalog; TimescaleDB
-- itself reads it without privilege checks, and its information views run as their owner.
-- pg_dump carries these privileges (they differ from the extension's initial ones).
REVOKE ALL ON ALL TABLES IN SCHEMA _timescaledb_catalog, _timescaledb_config,
    _timescaledb_cache, _timescaledb_internal FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA _timescaledb_catalog, _timescaledb_config,
    _timescaledb_cache, _timescaledb_internal FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA _timescaledb_catalog, _timescaledb_config,
    _timescaledb_cache TO iotcore_owner;
