-- Queries of `iotcore maintain` that report on the schema rather than change it.

-- name: default_partition_exists
SELECT to_regclass('telemetry_default') IS NOT NULL

-- name: default_partition_rows
-- Readings that fell outside every daily partition (maintenance behind). Capped: the count
-- is an alarm, not an inventory, and must stay cheap when the default partition is huge.
SELECT count(*) FROM (SELECT 1 FROM telemetry_default LIMIT 100000) AS capped
