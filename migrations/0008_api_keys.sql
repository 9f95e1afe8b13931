-- API keys: for dashboards and integrations that cannot log in. A key is `iotk_` + 256 random
-- bits; only its SHA-256 is stored. Rotation keeps the old hash valid until
-- previous_valid_until. RLS as in 0002; the service role never reads a hash: the look-up by
-- hash (before any tenant is known) and rotation are SECURITY DEFINER functions.

CREATE TABLE api_keys (
    api_key_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name                 text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role                 text NOT NULL CHECK (role IN ('admin', 'viewer')),
    key_hash             bytea NOT NULL,
    previous_key_hash    bytea,
    previous_valid_until timestamptz,
    created_by           uuid,
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz,
    rotated_at           timestamptz,
    last_used_at         timestamptz,
    CONSTRAINT api_keys_hash_key UNIQUE (key_hash)
);
CREATE UNIQUE INDEX api_keys_previous_hash ON api_keys (previous_key_hash)
    WHERE previous_key_hash IS NOT NULL;
CREATE INDEX api_keys_tenant_page ON api_keys (tenant_id, created_at, api_key_id);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON api_keys TO CURRENT_USER USING (true) WITH CHECK (true);

GRANT SELECT (api_key_id, tenant_id, name, role, previous_valid_until, created_by, created_at,
              expires_at, rotated_at, last_used_at)
    ON api_keys TO iotcore_app;
GRANT INSERT, DELETE ON api_keys TO iotcore_app;

-- Authentication: the key whose current or previous hash this is. valid_until is the end of
-- the rotation grace for a previous hash, NULL for the current one.
CREATE FUNCTION api_key_lookup(p_hash bytea)
    RETURNS TABLE (api_key_id uuid, tenant_id uuid, role text, key_hash bytea,
                   expires_at timestamptz, valid_until timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT k.api_key_id, k.tenant_id, k.role, k.key_hash, k.expires_at, NULL::timestamptz
    FROM api_keys k WHERE k.key_hash = p_hash
    UNION ALL
    SELECT k.api_key_id, k.tenant_id, k.role, k.previous_key_hash, k.expires_at,
           k.previous_valid_until
    FROM api_keys k WHERE k.previous_key_hash = p_hash
$fn$;

-- Rotation: the current hash becomes the previous one for the grace period (a previous one
-- still in its grace is dropped). Only the key's own tenant may rotate it.
CREATE FUNCTION api_key_rotate(p_api_key_id uuid, p_tenant_id uuid, p_hash bytea,
                               p_grace interval)
    RETURNS TABLE (api_key_id uuid, name text, role text, created_at timestamptz,
                   expires_at timestamptz)
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    UPDATE api_keys k SET previous_key_hash = k.key_hash,
           previous_valid_until = now() + p_grace, key_hash = p_hash, rotated_at = now()
    WHERE k.api_key_id = p_api_key_id AND k.tenant_id = p_tenant_id
    RETURNING k.api_key_id, k.name, k.role, k.created_at, k.expires_at
$fn$;

-- last_used_at, written in batches by each API process (never once per request).
CREATE FUNCTION api_key_touch(p_ids uuid[], p_used_at timestamptz[])
    RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, t.used_at)
    FROM unnest(p_ids, p_used_at) AS t(id, used_at)
    WHERE k.api_key_id = t.id
$fn$;

REVOKE ALL ON FUNCTION api_key_lookup(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION api_key_rotate(uuid, uuid, bytea, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION api_key_touch(uuid[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_key_lookup(bytea) TO iotcore_app;
GRANT EXECUTE ON FUNCTION api_key_rotate(uuid, uuid, bytea, interval) TO iotcore_app;
GRANT EXECUTE ON FUNCTION api_key_touch(uuid[], timestamptz[]) TO iotcore_app;
