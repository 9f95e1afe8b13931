-- Presence (migrations/0016): the functions are SECURITY DEFINER, callable without a tenant
-- (brokers and hooks act for every tenant; each event names its tenant and is checked).

-- name: apply
SELECT changed, connected, connected_at, disconnected_at
FROM presence_apply($1, $2, $3, $4, $5, $6, $7)

-- name: touch
SELECT presence_touch($1, $2)

-- name: expire
SELECT tenant_id, device_id, connected_at, disconnected_at FROM presence_expire($1, $2, $3)

-- name: connected_count
-- Run by maintenance as the owner, for the devices-connected gauge.
SELECT count(*) FROM devices WHERE connected
