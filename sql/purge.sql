-- Purge jobs (iotcore/tenants/purge.py), run as the owner role: RLS lets the owner see every
-- tenant, so every statement names the tenant.

-- name: delete_device_telemetry
-- One batch of a device's readings stored for a tenant (all, or older than $3).
WITH batch AS (
    SELECT device_id, metric, ts FROM telemetry
    WHERE device_id = $2 AND tenant_id = $1 AND ($3::timestamptz IS NULL OR ts < $3)
    ORDER BY ts
    LIMIT $4
), gone AS (
    DELETE FROM telemetry t USING batch b
    WHERE t.device_id = b.device_id AND t.metric = b.metric AND t.ts = b.ts
    RETURNING t.ts
), marked AS (
    -- The rollups' hours (migrations/0012): refreshed without these rows by maintain.
    INSERT INTO telemetry_rollup_dirty AS d (tenant_id, hour)
    SELECT DISTINCT $1::uuid,
           date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
    FROM gone
    ORDER BY 2
    ON CONFLICT (tenant_id, hour) DO UPDATE SET version = d.version + 1
)
SELECT count(*) AS deleted, min(ts) AS first_ts, max(ts) AS last_ts FROM gone

-- name: telemetry_leftover_device
-- The catch-all after the known devices: a device of any reading left with the tenant's id
-- (its readings then go by delete_device_telemetry).
SELECT device_id FROM telemetry WHERE tenant_id = $1 LIMIT 1

-- name: telemetry_devices
-- Devices whose readings a tenant may hold: claimed now, with latest values, released by a
-- reset, or named in the audit log (claims, resets, rotations).
SELECT device_id FROM devices WHERE tenant_id = $1
UNION
SELECT device_id FROM telemetry_latest WHERE tenant_id = $1
UNION
SELECT device_id FROM device_releases WHERE tenant_id = $1
UNION
SELECT subject::uuid FROM audit_log
WHERE tenant_id = $1
  AND action IN ('device_claimed', 'device_reset', 'secret_rotated', 'secret_delivered')
  AND subject ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

-- name: delete_device_latest
DELETE FROM telemetry_latest
WHERE tenant_id = $1 AND device_id = $2 AND ($3::timestamptz IS NULL OR ts < $3)

-- name: delete_device_rejects
WITH batch AS (
    SELECT reject_id FROM ingest_rejects
    WHERE tenant_id = $1 AND device_id = $2 AND ($3::timestamptz IS NULL OR received_at < $3)
    LIMIT $4
)
DELETE FROM ingest_rejects r USING batch b WHERE r.reject_id = b.reject_id

-- name: unclaim_devices
-- A batch of the tenant's devices back to the factory state, secrets revoked.
WITH batch AS (
    SELECT device_id FROM devices WHERE tenant_id = $1 ORDER BY device_id LIMIT $2 FOR UPDATE
)
UPDATE devices d SET tenant_id = NULL, status = 'unclaimed', claimed_at = NULL, name = NULL,
       labels = '{}'::jsonb, secret_hash = NULL, secret_issuable = false,
       previous_secret_hash = NULL, previous_valid_until = NULL, last_seen_at = NULL
FROM batch WHERE d.device_id = batch.device_id
RETURNING d.device_id

-- name: tenant_tables
-- Every plain table in public with a tenant_id, but those a purge handles itself.
SELECT c.oid::regclass::text AS name
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT c.relispartition
  AND c.relname NOT IN ('tenants', 'jobs', 'devices', 'telemetry', 'users')
ORDER BY 1

-- name: forget_rollups
-- The tenant's hourly and daily rollups and their marks (migrations/0012), once its readings
-- are gone.
SELECT telemetry_rollup_forget_tenant($1)

-- name: purge_rows
SELECT purge_tenant_rows($1::regclass, $2, $3)

-- name: tenant_exists
SELECT name FROM tenants WHERE tenant_id = $1

-- name: delete_tenant
DELETE FROM tenants WHERE tenant_id = $1

-- name: has_timescaledb
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')

-- name: device_tenant
SELECT tenant_id FROM devices WHERE device_id = $1
