-- The role iotcore_app is cluster-wide and may serve other databases: it is left in place.
DROP FUNCTION IF EXISTS app_tenant_id();
REVOKE SELECT ON TABLE _yoyo_migration FROM iotcore_app;
REVOKE USAGE ON SCHEMA public FROM iotcore_app;
