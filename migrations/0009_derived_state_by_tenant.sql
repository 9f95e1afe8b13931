-- Derived state belongs to a tenant, not to a device (ARCHITECTURE.md, "Guarantees at the
-- edges"). A device changes hands on reset and re-claim, so:
--  * telemetry_latest is keyed by (tenant_id, device_id, metric). Under the old key a new
--    owner's first reading met the former owner's row, which RLS hides from it, and the whole
--    batch was refused;
--  * device_releases records that a tenant held a device until a reset. Stored telemetry
--    stays with the tenant that owned it (API.md), and this row is what lets the former owner
--    keep reading its own history (docs/device-ownership.md);
--  * device_reset deletes the former owner's latest values of the device and records the
--    release, in the reset's transaction.

CREATE TABLE device_releases (
    tenant_id   uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    device_id   uuid NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    released_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

ALTER TABLE device_releases ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_releases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_releases TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON device_releases TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT ON device_releases TO iotcore_app;

-- Leftovers of resets made before this migration: latest values of a tenant that no longer
-- holds the device. They become releases (the tenant's history stays readable), then go.
INSERT INTO device_releases (tenant_id, device_id)
SELECT DISTINCT l.tenant_id, l.device_id
FROM telemetry_latest l
JOIN devices d ON d.device_id = l.device_id
JOIN tenants t ON t.tenant_id = l.tenant_id
WHERE d.tenant_id IS DISTINCT FROM l.tenant_id;

DELETE FROM telemetry_latest l
WHERE NOT EXISTS (
    SELECT 1 FROM devices d WHERE d.device_id = l.device_id AND d.tenant_id = l.tenant_id
);

ALTER TABLE telemetry_latest DROP CONSTRAINT telemetry_latest_pkey;
ALTER TABLE telemetry_latest ADD PRIMARY KEY (tenant_id, device_id, metric);

-- Reset: back to the factory state; only the tenant that holds the device may do it. The
-- tenant's readings stay; its latest values of the device go, its past tenure is recorded.
CREATE OR REPLACE FUNCTION device_reset(p_device_id uuid, p_tenant_id uuid)
    RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    UPDATE devices SET tenant_id = NULL, status = 'unclaimed', claimed_at = NULL, name = NULL,
           labels = '{}'::jsonb, secret_hash = NULL, secret_issuable = false,
           previous_secret_hash = NULL, previous_valid_until = NULL, last_seen_at = NULL
    WHERE device_id = p_device_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM telemetry_latest WHERE tenant_id = p_tenant_id AND device_id = p_device_id;
    INSERT INTO device_releases (tenant_id, device_id) VALUES (p_tenant_id, p_device_id)
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET released_at = EXCLUDED.released_at;
    RETURN true;
END
$fn$;
