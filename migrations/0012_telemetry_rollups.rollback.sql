DROP FUNCTION IF EXISTS telemetry_apply_policies(integer, integer, integer);
DROP FUNCTION IF EXISTS telemetry_rollup_drop(integer);
DROP FUNCTION IF EXISTS telemetry_rollup_forget_tenant(uuid);
DROP FUNCTION IF EXISTS telemetry_rollup_recompute(uuid[], timestamptz[]);
DROP FUNCTION IF EXISTS telemetry_rollup_mark(timestamptz, timestamptz);
DROP VIEW IF EXISTS telemetry_daily_v;
DROP VIEW IF EXISTS telemetry_hourly_v;
DROP VIEW IF EXISTS telemetry_rollup_dirty_v;
DROP TABLE IF EXISTS telemetry_rollup_dirty;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'DROP TABLE IF EXISTS telemetry_daily';
        EXECUTE 'DROP TABLE IF EXISTS telemetry_hourly';
        RETURN;
    END IF;
    EXECUTE 'DROP MATERIALIZED VIEW IF EXISTS telemetry_daily';
    PERFORM remove_continuous_aggregate_policy('telemetry_hourly', if_exists => true);
    PERFORM add_continuous_aggregate_policy('telemetry_hourly',
        start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '15 minutes');
    EXECUTE 'ALTER MATERIALIZED VIEW telemetry_hourly SET (timescaledb.materialized_only = false)';
    EXECUTE $ddl$
        CREATE VIEW telemetry_hourly_v WITH (security_barrier) AS
            SELECT tenant_id, device_id, metric, bucket, sum, count, min, max
            FROM telemetry_hourly
            WHERE tenant_id = app_tenant_id()
    $ddl$;
    EXECUTE 'GRANT SELECT ON telemetry_hourly_v TO iotcore_app';
    PERFORM telemetry_set_policies(365, 7);
END
$$;
