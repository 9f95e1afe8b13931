-- Rollup reads answered from the index alone: a 90-day hourly aggregate reads 2,160 rows per
-- device and metric, which otherwise cost a heap page each (rollup rows of every device are
-- interleaved, written hour after hour). tenant_id is included because the views filter on it.
-- On TimescaleDB an index of a continuous aggregate lives beside its materialisation, in
-- _timescaledb_internal: found by name wherever it is.
DO $$
DECLARE
    idx text;
BEGIN
    FOR idx IN
        SELECT format('%I.%I', schemaname, indexname) FROM pg_indexes
        WHERE indexname IN ('telemetry_hourly_device', 'telemetry_daily_device')
    LOOP
        EXECUTE 'DROP INDEX ' || idx;
    END LOOP;
END
$$;
CREATE INDEX telemetry_hourly_covering ON telemetry_hourly (device_id, metric, bucket)
    INCLUDE (tenant_id, sum, count, min, max);
CREATE INDEX telemetry_daily_covering ON telemetry_daily (device_id, metric, bucket)
    INCLUDE (tenant_id, sum, count, min, max);
