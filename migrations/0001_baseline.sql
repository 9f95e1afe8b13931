-- Baseline: the service's group role, its schema access, and the tenant setting helper.
-- Run as the owner role (IOT_DATABASE_OWNER_URL); every later object is owned by that role.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_app') THEN
        -- NOLOGIN: the service logs in as a member of this role (iotcore_service), never as it.
        CREATE ROLE iotcore_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO iotcore_app;

-- Readiness compares the applied migrations with the files it ships.
GRANT SELECT ON TABLE _yoyo_migration TO iotcore_app;

-- The tenant of the current transaction, or NULL. After a SET LOCAL ends the setting reads
-- as '' rather than NULL, hence NULLIF before the cast.
CREATE OR REPLACE FUNCTION app_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $fn$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $fn$;

REVOKE ALL ON FUNCTION app_tenant_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_tenant_id() TO iotcore_app;
