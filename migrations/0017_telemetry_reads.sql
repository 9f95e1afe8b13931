-- What the dashboard reads (sql/telemetry_read.sql) share, written once. Plain SQL functions,
-- STABLE and SECURITY INVOKER: the planner inlines them into the queries, so they cost no
-- call per row, and row-level security applies as to the query itself.

-- Whether the tenant set in the transaction may read the device's stored telemetry: it owns
-- the device, or held it until a reset (migrations/0009). Asked in the same statement as the
-- readings: no round trip of its own.
CREATE FUNCTION telemetry_device_readable(p_device_id uuid)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
RETURN EXISTS (SELECT FROM devices WHERE device_id = p_device_id)
    OR EXISTS (SELECT FROM device_releases WHERE device_id = p_device_id);

-- The JSON of raw readings and buckets, spliced into the responses as is. Values are finite
-- doubles (the payload rules refuse NaN and infinities), whose text form is valid JSON.

CREATE FUNCTION telemetry_reading_json(p_metric text, p_ts timestamptz, p_value double precision)
    RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN '{"metric":' || to_json(p_metric)::text
    || ',"ts":"' || to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
    || '","value":' || p_value::text || '}';

-- A bucket: a NULL aggregate (one the caller did not ask for) is left out.
CREATE FUNCTION telemetry_bucket_json(
    p_bucket timestamptz,
    p_avg double precision,
    p_min double precision,
    p_max double precision,
    p_sum double precision,
    p_count bigint
)
    RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN '{"ts":"' || to_char(p_bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') || '"'
    || coalesce(',"avg":' || p_avg::text, '')
    || coalesce(',"min":' || p_min::text, '')
    || coalesce(',"max":' || p_max::text, '')
    || coalesce(',"sum":' || p_sum::text, '')
    || coalesce(',"count":' || p_count::text, '')
    || '}';

REVOKE ALL ON FUNCTION telemetry_device_readable(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION telemetry_reading_json(text, timestamptz, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION telemetry_bucket_json(
    timestamptz, double precision, double precision, double precision, double precision, bigint
) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION telemetry_device_readable(uuid) TO iotcore_app;
GRANT EXECUTE ON FUNCTION telemetry_reading_json(text, timestamptz, double precision)
    TO iotcore_app;
GRANT EXECUTE ON FUNCTION telemetry_bucket_json(
    timestamptz, double precision, double precision, double precision, double precision, bigint
) TO iotcore_app;
