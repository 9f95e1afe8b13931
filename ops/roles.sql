-- The iotcore roles, the same on every cluster: run as a superuser in any database by
-- ops/services.sh, ops/compose/initdb.sh and the test harness (tests/containers.py), after
-- setting the login passwords as iotcore.owner_password, iotcore.service_password and
-- iotcore.backup_password (session settings, so no caller splices them into SQL).
-- Safe to run again: existing roles keep their passwords and get their attributes back.
DO $$
DECLARE
    login record;
BEGIN
    FOR login IN
        SELECT * FROM (VALUES
            -- Migrations and maintenance; creates iotcore_app if missing (migrations/0001).
            ('iotcore_owner', 'LOGIN CREATEDB CREATEROLE NOBYPASSRLS', 'iotcore.owner_password'),
            -- The API and ingest: owns nothing, no BYPASSRLS, privileges only through
            -- iotcore_app.
            ('iotcore_service', 'LOGIN NOCREATEDB NOCREATEROLE NOBYPASSRLS',
             'iotcore.service_password'),
            -- Backups only: reads every row (RLS would hide them from any other role).
            ('iotcore_backup', 'LOGIN NOCREATEDB NOCREATEROLE BYPASSRLS',
             'iotcore.backup_password')
        ) AS roles (name, attributes, password_setting)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login.name) THEN
            EXECUTE format('CREATE ROLE %I %s PASSWORD %L', login.name, login.attributes,
                           current_setting(login.password_setting));
        ELSE
            EXECUTE format('ALTER ROLE %I %s', login.name, login.attributes);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotcore_app') THEN
        CREATE ROLE iotcore_app NOLOGIN NOBYPASSRLS;
    END IF;
END
$$;
GRANT iotcore_app TO iotcore_service;
GRANT pg_read_all_data TO iotcore_backup;
RESET iotcore.owner_password;
RESET iotcore.service_password;
RESET iotcore.backup_password;
