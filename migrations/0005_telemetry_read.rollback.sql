DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    EXECUTE 'DROP VIEW IF EXISTS telemetry_hourly_v';
    EXECUTE 'DROP MATERIALIZED VIEW IF EXISTS telemetry_hourly';
    PERFORM remove_retention_policy('telemetry', if_exists => true);
    PERFORM remove_compression_policy('telemetry', if_exists => true);
    -- Compression cannot be switched off while a chunk is compressed.
    PERFORM decompress_chunk(c, if_compressed => true) FROM show_chunks('telemetry') c;
    EXECUTE 'ALTER TABLE telemetry SET (timescaledb.compress = false)';
END
$$;
DROP FUNCTION IF EXISTS telemetry_set_policies(integer, integer);
DROP INDEX IF EXISTS telemetry_device_ts;
