DO $$
DECLARE
    idx text;
BEGIN
    FOR idx IN
        SELECT format('%I.%I', schemaname, indexname) FROM pg_indexes
        WHERE indexname IN ('telemetry_hourly_covering', 'telemetry_daily_covering')
    LOOP
        EXECUTE 'DROP INDEX ' || idx;
    END LOOP;
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'CREATE INDEX telemetry_hourly_device ON telemetry_hourly (device_id, metric, bucket)';
        EXECUTE 'CREATE INDEX telemetry_daily_device ON telemetry_daily (device_id, metric, bucket)';
    END IF;
END
$$;
