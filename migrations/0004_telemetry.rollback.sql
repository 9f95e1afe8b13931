DROP TABLE IF EXISTS ingest_rejects;
DROP VIEW IF EXISTS telemetry_v;
DROP FUNCTION IF EXISTS telemetry_drop_partitions(integer);
DROP FUNCTION IF EXISTS telemetry_ensure_partitions(date, integer);
DROP TABLE IF EXISTS telemetry CASCADE;
