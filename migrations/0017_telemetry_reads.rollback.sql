DROP FUNCTION telemetry_bucket_json(
    timestamptz, double precision, double precision, double precision, double precision, bigint
);
DROP FUNCTION telemetry_reading_json(text, timestamptz, double precision);
DROP FUNCTION telemetry_device_readable(uuid);
