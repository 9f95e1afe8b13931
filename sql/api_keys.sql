-- API keys. Functions named api_key_* are SECURITY DEFINER (migrations/0008).

-- name: lookup
SELECT api_key_id, tenant_id, role, key_hash, expires_at, valid_until FROM api_key_lookup($1)

-- name: insert
INSERT INTO api_keys (tenant_id, name, role, key_hash, created_by, expires_at)
VALUES (app_tenant_id(), $1, $2, $3, $4, $5)
RETURNING api_key_id, name, role, created_at, expires_at

-- name: rotate
SELECT api_key_id, name, role, created_at, expires_at FROM api_key_rotate($1, $2, $3, $4)

-- name: get_role
SELECT role FROM api_keys WHERE api_key_id = $1

-- name: delete
DELETE FROM api_keys WHERE api_key_id = $1 RETURNING name, role

-- name: list
SELECT api_key_id, name, role, created_by, created_at, expires_at, rotated_at,
       previous_valid_until, last_used_at
FROM api_keys
WHERE ($1::timestamptz IS NULL OR (created_at, api_key_id) > ($1::timestamptz, $2::uuid))
ORDER BY created_at, api_key_id
LIMIT $3

-- name: touch
SELECT api_key_touch($1, $2)
