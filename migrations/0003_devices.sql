-- Devices: provisioned by the factory (no tenant), claimed by a tenant, authenticated by a
-- secret of which only the SHA-256 is stored. RLS as in 0002: tenant_isolation for the
-- service role, definer_lookup for the SECURITY DEFINER functions that serve the paths
-- where no tenant is known yet (factory, device-signed requests, MQTT/HTTP device auth).

CREATE TABLE devices (
    device_id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid REFERENCES tenants (tenant_id) ON DELETE SET NULL,
    serial_number         text NOT NULL CHECK (length(serial_number) BETWEEN 1 AND 128),
    model                 text NOT NULL CHECK (length(model) BETWEEN 1 AND 128),
    hardware_rev          text,
    key_id                text NOT NULL,
    name                  text,
    labels                jsonb NOT NULL DEFAULT '{}'::jsonb,
    status                text NOT NULL DEFAULT 'unclaimed'
                          CHECK (status IN ('unclaimed', 'claimed', 'active', 'rekey_pending')),
    claimed_at            timestamptz,
    last_seen_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- The current secret, and whether the device may still fetch one (after claim/rotate).
    secret_hash           bytea,
    secret_issuable       boolean NOT NULL DEFAULT false,
    -- During a rotation: the old secret, valid until the new one is used or this time.
    previous_secret_hash  bytea,
    previous_valid_until  timestamptz,
    CONSTRAINT devices_serial_key UNIQUE (serial_number),
    CONSTRAINT devices_claimed_has_tenant CHECK (status = 'unclaimed' OR tenant_id IS NOT NULL)
);
CREATE INDEX devices_tenant_page ON devices (tenant_id, created_at, device_id);

ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON devices TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON devices TO CURRENT_USER USING (true) WITH CHECK (true);

GRANT SELECT (device_id, tenant_id, serial_number, model, hardware_rev, key_id, name, labels,
              status, claimed_at, last_seen_at, created_at, previous_secret_hash)
    ON devices TO iotcore_app;
GRANT UPDATE (name, labels, status, last_seen_at) ON devices TO iotcore_app;

-- Factory: create what does not exist yet (idempotent by serial) and return every device.
CREATE FUNCTION device_provision(p_serials text[], p_models text[], p_revs text[], p_key_id text)
    RETURNS TABLE (device_id uuid, serial_number text, key_id text, created boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT s, m, r FROM unnest(p_serials, p_models, p_revs) AS i(s, m, r)
    ), inserted AS (
        INSERT INTO devices (serial_number, model, hardware_rev, key_id)
        SELECT s, m, r, p_key_id FROM input
        ON CONFLICT ON CONSTRAINT devices_serial_key DO NOTHING
        RETURNING devices.device_id, devices.serial_number, devices.key_id
    )
    SELECT i.device_id, i.serial_number, i.key_id, true FROM inserted i
    UNION ALL
    SELECT d.device_id, d.serial_number, d.key_id, false
    FROM devices d JOIN input ON input.s = d.serial_number
    WHERE NOT EXISTS (SELECT 1 FROM inserted i WHERE i.serial_number = d.serial_number);
END
$fn$;

-- Device-signed requests and claims: the few facts needed to check a signature or a code.
CREATE FUNCTION device_lookup(p_device_id uuid, p_serial text)
    RETURNS TABLE (device_id uuid, tenant_id uuid, serial_number text, key_id text,
                   status text, secret_issuable boolean, has_secret boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT d.device_id, d.tenant_id, d.serial_number, d.key_id, d.status, d.secret_issuable,
           d.secret_hash IS NOT NULL
    FROM devices d
    WHERE (p_device_id IS NOT NULL AND d.device_id = p_device_id)
       OR (p_serial IS NOT NULL AND d.serial_number = p_serial)
$fn$;

-- Claim: only an unclaimed device, or one this tenant already holds (idempotent).
CREATE FUNCTION device_claim(p_device_id uuid, p_tenant_id uuid, p_name text)
    RETURNS TABLE (outcome text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    v_tenant uuid;
BEGIN
    SELECT d.tenant_id INTO v_tenant FROM devices d WHERE d.device_id = p_device_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text;
    ELSIF v_tenant IS NULL THEN
        UPDATE devices SET tenant_id = p_tenant_id, status = 'claimed', claimed_at = now(),
               name = p_name, secret_issuable = true, secret_hash = NULL,
               previous_secret_hash = NULL, previous_valid_until = NULL
        WHERE devices.device_id = p_device_id;
        RETURN QUERY SELECT 'claimed'::text;
    ELSIF v_tenant = p_tenant_id THEN
        RETURN QUERY SELECT 'already_yours'::text;
    ELSE
        RETURN QUERY SELECT 'claimed_by_other'::text;
    END IF;
END
$fn$;

-- Secret delivery: store the hash of a fresh secret once per claim or rotation.
CREATE FUNCTION device_issue_secret(p_device_id uuid, p_hash bytea)
    RETURNS TABLE (outcome text, tenant_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    d devices%ROWTYPE;
BEGIN
    SELECT * INTO d FROM devices x WHERE x.device_id = p_device_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid;
    ELSIF d.tenant_id IS NULL THEN
        RETURN QUERY SELECT 'not_claimed'::text, NULL::uuid;
    ELSIF NOT d.secret_issuable THEN
        RETURN QUERY SELECT 'already_delivered'::text, d.tenant_id;
    ELSE
        UPDATE devices SET secret_hash = p_hash, secret_issuable = false
        WHERE devices.device_id = p_device_id;
        RETURN QUERY SELECT 'issued'::text, d.tenant_id;
    END IF;
END
$fn$;

-- Device authentication (MQTT and HTTP): the hashes to compare, nothing else.
CREATE FUNCTION device_credentials(p_device_id uuid)
    RETURNS TABLE (tenant_id uuid, status text, secret_hash bytea, previous_secret_hash bytea,
                   previous_valid_until timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT d.tenant_id, d.status, d.secret_hash, d.previous_secret_hash, d.previous_valid_until
    FROM devices d WHERE d.device_id = p_device_id AND d.tenant_id IS NOT NULL
$fn$;

-- The new secret was used: the old one stops working, the rotation is complete.
CREATE FUNCTION device_secret_used(p_device_id uuid)
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    UPDATE devices SET previous_secret_hash = NULL, previous_valid_until = NULL,
           status = CASE WHEN status = 'rekey_pending'
                         THEN CASE WHEN last_seen_at IS NULL THEN 'claimed' ELSE 'active' END
                         ELSE status END
    WHERE device_id = p_device_id AND (previous_secret_hash IS NOT NULL OR status = 'rekey_pending')
      AND secret_hash IS NOT NULL
$fn$;

-- Reset: back to the factory state; only the tenant that holds the device may do it.
CREATE FUNCTION device_reset(p_device_id uuid, p_tenant_id uuid)
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

-- Rotation: the current secret becomes the previous one, valid for the grace period; the
-- device may fetch a new one. Only the tenant that holds the device may do it.
CREATE FUNCTION device_rotate(p_device_id uuid, p_tenant_id uuid, p_grace interval)
    RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    UPDATE devices SET
        previous_secret_hash = COALESCE(secret_hash, previous_secret_hash),
        previous_valid_until = CASE WHEN secret_hash IS NOT NULL THEN now() + p_grace
                                    ELSE previous_valid_until END,
        secret_hash = NULL, secret_issuable = true, status = 'rekey_pending'
    WHERE device_id = p_device_id AND tenant_id = p_tenant_id;
    RETURN FOUND;
END
$fn$;

REVOKE ALL ON FUNCTION device_rotate(uuid, uuid, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION device_rotate(uuid, uuid, interval) TO iotcore_app;
REVOKE ALL ON FUNCTION device_provision(text[], text[], text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_lookup(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_claim(uuid, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_issue_secret(uuid, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_credentials(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_secret_used(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION device_reset(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION device_provision(text[], text[], text[], text) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_lookup(uuid, text) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_claim(uuid, uuid, text) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_issue_secret(uuid, bytea) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_credentials(uuid) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_secret_used(uuid) TO iotcore_app;
GRANT EXECUTE ON FUNCTION device_reset(uuid, uuid) TO iotcore_app;
