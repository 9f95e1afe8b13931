-- Identity: tenants, users, refresh tokens, audit log.
--
-- Row-level security on every table, FORCEd so that the owner is subject to it too. Two
-- policies per table:
--   tenant_isolation  TO iotcore_app: rows of the tenant in app.tenant_id, reads and writes;
--   definer_lookup    TO the owner (CURRENT_USER at migration time): the SECURITY DEFINER
--                     functions below run as the owner and must see across tenants to do the
--                     few look-ups that happen before a tenant is known (login by e-mail,
--                     registration, refresh-token rotation). They return only what the
--                     caller needs. The service role can call them but never read the tables
--                     outside its tenant.

CREATE TABLE tenants (
    tenant_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    user_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    email         text NOT NULL CHECK (email = lower(email) AND length(email) <= 320),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);
CREATE INDEX users_tenant_page ON users (tenant_id, created_at, user_id);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    parent_hash bytea,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    spent_at    timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);

CREATE TABLE audit_log (
    audit_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    actor      uuid,
    action     text NOT NULL,
    subject    text,
    ip         text,
    at         timestamptz NOT NULL DEFAULT now(),
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON tenants TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON users TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON refresh_tokens TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON audit_log TO CURRENT_USER USING (true) WITH CHECK (true);

GRANT SELECT ON tenants TO iotcore_app;
GRANT SELECT, INSERT ON users TO iotcore_app;
GRANT UPDATE (password_hash, role) ON users TO iotcore_app;
GRANT SELECT, INSERT ON refresh_tokens TO iotcore_app;
GRANT UPDATE (spent_at, revoked_at) ON refresh_tokens TO iotcore_app;
GRANT SELECT, INSERT ON audit_log TO iotcore_app;

-- Registration: a new tenant and its owner, before any tenant exists for the caller.
CREATE FUNCTION auth_register(p_tenant_name text, p_email text, p_password_hash text)
    RETURNS TABLE (tenant_id uuid, user_id uuid, created_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    v_tenant uuid;
BEGIN
    INSERT INTO tenants (name) VALUES (p_tenant_name) RETURNING tenants.tenant_id INTO v_tenant;
    RETURN QUERY
        INSERT INTO users (tenant_id, email, password_hash, role)
        VALUES (v_tenant, p_email, p_password_hash, 'owner')
        RETURNING users.tenant_id, users.user_id, users.created_at;
END
$fn$;

-- Login: what verifying a password needs, by e-mail, across tenants.
CREATE FUNCTION auth_login_lookup(p_email text)
    RETURNS TABLE (user_id uuid, tenant_id uuid, password_hash text, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT u.user_id, u.tenant_id, u.password_hash, u.role FROM users u WHERE u.email = p_email
$fn$;

-- Refresh: rotate a token atomically. Outcomes: ok, unknown, expired, revoked, reused.
-- A token presented after it was spent revokes its whole family (the thief's and the
-- victim's copies alike) and says 'reused'.
CREATE FUNCTION auth_rotate_refresh(p_old_hash bytea, p_new_hash bytea, p_ttl interval)
    RETURNS TABLE (outcome text, user_id uuid, tenant_id uuid, role text, family_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    t refresh_tokens%ROWTYPE;
    v_role text;
BEGIN
    SELECT * INTO t FROM refresh_tokens r WHERE r.token_hash = p_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid, NULL::uuid, NULL::text, NULL::uuid;
        RETURN;
    END IF;
    IF t.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, t.user_id, t.tenant_id, NULL::text, t.family_id;
        RETURN;
    END IF;
    IF t.spent_at IS NOT NULL THEN
        UPDATE refresh_tokens r SET revoked_at = now()
            WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
        RETURN QUERY SELECT 'reused'::text, t.user_id, t.tenant_id, NULL::text, t.family_id;
        RETURN;
    END IF;
    IF t.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired'::text, t.user_id, t.tenant_id, NULL::text, t.family_id;
        RETURN;
    END IF;
    SELECT u.role INTO v_role FROM users u WHERE u.user_id = t.user_id;
    UPDATE refresh_tokens r SET spent_at = now() WHERE r.token_hash = p_old_hash;
    INSERT INTO refresh_tokens (token_hash, tenant_id, user_id, family_id, parent_hash, expires_at)
        VALUES (p_new_hash, t.tenant_id, t.user_id, t.family_id, p_old_hash, now() + p_ttl);
    RETURN QUERY SELECT 'ok'::text, t.user_id, t.tenant_id, v_role, t.family_id;
END
$fn$;

-- Logout: revoke the family of a token; returns the tenant for the audit trail, or nothing.
CREATE FUNCTION auth_revoke_family(p_hash bytea)
    RETURNS TABLE (tenant_id uuid, user_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    t refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO t FROM refresh_tokens r WHERE r.token_hash = p_hash;
    IF FOUND THEN
        UPDATE refresh_tokens r SET revoked_at = now()
            WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
        RETURN QUERY SELECT t.tenant_id, t.user_id;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION auth_register(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION auth_login_lookup(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION auth_rotate_refresh(bytea, bytea, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION auth_revoke_family(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_register(text, text, text) TO iotcore_app;
GRANT EXECUTE ON FUNCTION auth_login_lookup(text) TO iotcore_app;
GRANT EXECUTE ON FUNCTION auth_rotate_refresh(bytea, bytea, interval) TO iotcore_app;
GRANT EXECUTE ON FUNCTION auth_revoke_family(bytea) TO iotcore_app;
