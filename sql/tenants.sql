-- Tenant deletion and device purges, in the caller's tenant (RLS).

-- name: tenant_name
SELECT name FROM tenants WHERE tenant_id = app_tenant_id()

-- name: device_known
SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)
    OR EXISTS (SELECT 1 FROM telemetry_v WHERE device_id = $1)
    OR EXISTS (SELECT 1 FROM device_releases WHERE device_id = $1)
