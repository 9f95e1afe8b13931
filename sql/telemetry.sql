-- Telemetry write path. The service role reaches telemetry only through telemetry_v.

-- name: insert_readings
-- One statement per tenant group: rows already present (a replay) are skipped and not
-- returned, so the caller counts stored versus duplicate rows.
WITH rows AS (
    INSERT INTO telemetry_v (tenant_id, device_id, metric, ts, value)
    SELECT app_tenant_id(), r.device_id, r.metric, r.ts, r.value
    FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[])
         AS r(device_id, metric, ts, value)
    ON CONFLICT (device_id, metric, ts) DO NOTHING
    RETURNING device_id, metric, ts
)
SELECT device_id, metric, ts FROM rows

-- name: upsert_latest
-- One row per (device, metric) in the arrays (the writer keeps the newest of its batch);
-- an older reading never replaces a newer one.
INSERT INTO telemetry_latest AS l (tenant_id, device_id, metric, ts, value)
SELECT app_tenant_id(), r.device_id, r.metric, r.ts, r.value
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[])
     AS r(device_id, metric, ts, value)
ON CONFLICT (device_id, metric) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
WHERE l.ts < EXCLUDED.ts

-- name: insert_rejects
INSERT INTO ingest_rejects (tenant_id, device_id, topic, reason, excerpt, received_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[])

-- name: ensure_partitions
SELECT telemetry_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, $1)

-- name: drop_partitions
SELECT telemetry_drop_partitions($1)

-- name: prune_rejects
DELETE FROM ingest_rejects WHERE received_at < now() - make_interval(days => $1)
