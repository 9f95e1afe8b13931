-- Back to one latest-values row per (device, metric): only the current owner's rows can stay.
DELETE FROM telemetry_latest l
WHERE NOT EXISTS (
    SELECT 1 FROM devices d WHERE d.device_id = l.device_id AND d.tenant_id = l.tenant_id
);
DELETE FROM telemetry_latest l
USING telemetry_latest o
WHERE o.device_id = l.device_id AND o.metric = l.metric
  AND (o.ts, o.tenant_id) > (l.ts, l.tenant_id);
ALTER TABLE telemetry_latest DROP CONSTRAINT telemetry_latest_pkey;
ALTER TABLE telemetry_latest ADD PRIMARY KEY (device_id, metric);

CREATE OR REPLACE FUNCTION device_reset(p_device_id uuid, p_tenant_id uuid)
    RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    UPDATE devices SET tenant_id = NULL, status = 'unclaimed', claimed_at = NULL, name = NULL,
           labels = '{}'::jsonb, secret_hash = NULL, secret_issuable = false,
           previous_secret_hash = NULL, previous_valid_until = NULL, last_seen_at = NULL
    WHERE device_id = p_device_id AND tenant_id = p_tenant_id;
    RETURN FOUND;
END
$fn$;

DROP TABLE IF EXISTS device_releases;
