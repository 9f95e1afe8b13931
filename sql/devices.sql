-- Device queries. Functions named device_* are SECURITY DEFINER (migrations/0003).

-- name: provision
SELECT device_id, serial_number, key_id, created FROM device_provision($1, $2, $3, $4)

-- name: lookup
SELECT device_id, tenant_id, serial_number, key_id, status, secret_issuable, has_secret
FROM device_lookup($1, $2)

-- name: claim
SELECT outcome FROM device_claim($1, $2, $3)

-- name: issue_secret
SELECT outcome, tenant_id FROM device_issue_secret($1, $2)

-- name: credentials
SELECT tenant_id, status, secret_hash, previous_secret_hash, previous_valid_until
FROM device_credentials($1)

-- name: secret_used
SELECT device_secret_used($1)

-- name: rotate
SELECT device_rotate($1, $2, $3)

-- name: reset
SELECT device_reset($1, $2)

-- name: expire_open_commands
-- In the reset's transaction, as the tenant: the device leaves it, so its commands still
-- pending or sent can no longer reach it on the tenant's behalf; they end `expired` now
-- rather than at their own expiry.
UPDATE commands SET status = 'expired', completed_at = now()
WHERE tenant_id = app_tenant_id() AND device_id = $1 AND status IN ('pending', 'sent')
RETURNING command_id, device_id, name, params, status, created_at, sent_at, completed_at,
          expires_at, result

-- name: get_device
SELECT device_id, serial_number, model, hardware_rev, name, labels, status, claimed_at,
       last_seen_at, created_at, connected, connected_at, disconnected_at
FROM devices WHERE device_id = $1

-- name: list_devices
SELECT device_id, serial_number, model, hardware_rev, name, labels, status, claimed_at,
       last_seen_at, created_at, connected, connected_at, disconnected_at
FROM devices
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::timestamptz IS NULL OR (created_at, device_id) > ($2::timestamptz, $3::uuid))
ORDER BY created_at, device_id
LIMIT $4

-- name: patch_device
UPDATE devices SET name = CASE WHEN $2 THEN $3 ELSE name END,
                   labels = COALESCE($4::jsonb, labels)
WHERE device_id = $1
RETURNING device_id, serial_number, model, hardware_rev, name, labels, status, claimed_at,
          last_seen_at, created_at, connected, connected_at, disconnected_at

-- name: expire_rotation_grace
-- Run by maintenance as the owner: old secrets whose grace has passed are forgotten, and the
-- devices returned so that their sessions on EMQX are ended.
UPDATE devices SET previous_secret_hash = NULL, previous_valid_until = NULL
WHERE previous_valid_until <= now()
RETURNING device_id
