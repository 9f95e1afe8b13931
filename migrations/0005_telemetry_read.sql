-- Read side of telemetry.
--
-- Both storages: one covering index answers every read shape (raw pages across metrics or of
-- one metric, both directions, and aggregates) with an index-only scan. Readings are stored
-- in arrival order, every device interleaved, so without INCLUDE each row read is a random
-- heap page: on the 8.6-million-row benchmark a 1,000-point page went from 8.5 ms (unique
-- key + 1,457 heap pages) to 2.1 ms (62 index pages, no heap fetch), a 7-day aggregate from
-- 20 ms to 4 ms. tenant_id is included because the views filter on it.
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts, metric) INCLUDE (tenant_id, value);

-- TimescaleDB only (accelerators; plain PostgreSQL answers every query from the raw table):
--  * compression of chunks older than telemetry_compress_after_days (segments per device and
--    metric, newest first, so a device's series stays one run inside a compressed chunk);
--  * retention: chunks older than telemetry_retention_days are dropped by a policy (without
--    TimescaleDB, `iotcore maintain` drops whole daily partitions);
--  * telemetry_hourly, a continuous aggregate (hourly sum, count, min, max per device and
--    metric; real-time, so the hours not yet materialised are computed from the raw rows),
--    used by the aggregate endpoint for buckets of whole hours. A continuous aggregate cannot
--    carry row-level security, so, like the raw table, the service role has no privilege on it
--    or on its materialisation hypertable, and reads it through telemetry_hourly_v, an
--    owner-owned security_barrier view filtered on app.tenant_id.
-- The day counts are the settings' defaults; telemetry_set_policies() changes them (the
-- runbook "retention-and-purge" says how), and is a no-op without TimescaleDB.
CREATE FUNCTION telemetry_set_policies(retention_days integer, compress_after_days integer)
    RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    PERFORM remove_compression_policy('telemetry', if_exists => true);
    PERFORM add_compression_policy('telemetry', make_interval(days => compress_after_days));
    PERFORM remove_retention_policy('telemetry', if_exists => true);
    PERFORM add_retention_policy('telemetry', make_interval(days => retention_days));
    PERFORM remove_retention_policy('telemetry_hourly', if_exists => true);
    PERFORM add_retention_policy('telemetry_hourly', make_interval(days => retention_days));
END
$fn$;
REVOKE ALL ON FUNCTION telemetry_set_policies(integer, integer) FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    EXECUTE $ddl$
        ALTER TABLE telemetry SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'device_id, metric',
            timescaledb.compress_orderby = 'ts DESC'
        )
    $ddl$;
    -- time_bucket's default origin for hours and days is 2000-01-03, the origin the shared
    -- queries give date_bin: hourly buckets here nest in the API's buckets of whole hours.
    EXECUTE $ddl$
        CREATE MATERIALIZED VIEW telemetry_hourly
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT tenant_id, device_id, metric,
               time_bucket(INTERVAL '1 hour', ts) AS bucket,
               sum(value) AS sum, count(*) AS count, min(value) AS min, max(value) AS max
        FROM telemetry
        GROUP BY tenant_id, device_id, metric, time_bucket(INTERVAL '1 hour', ts)
        WITH NO DATA
    $ddl$;
    EXECUTE 'REVOKE ALL ON telemetry_hourly FROM PUBLIC';
    EXECUTE $ddl$
        CREATE INDEX telemetry_hourly_device ON telemetry_hourly (device_id, metric, bucket)
    $ddl$;
    PERFORM add_continuous_aggregate_policy('telemetry_hourly',
        start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '15 minutes');
    PERFORM telemetry_set_policies(365, 7);
    EXECUTE $ddl$
        CREATE VIEW telemetry_hourly_v WITH (security_barrier) AS
            SELECT tenant_id, device_id, metric, bucket, sum, count, min, max
            FROM telemetry_hourly
            WHERE tenant_id = app_tenant_id()
    $ddl$;
    EXECUTE 'GRANT SELECT ON telemetry_hourly_v TO iotcore_app';
END
$$;
