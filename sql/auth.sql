-- Identity queries. Functions named auth_* are SECURITY DEFINER (migrations/0002).

-- name: register
SELECT tenant_id, user_id, created_at FROM auth_register($1, $2, $3)

-- name: login_lookup
SELECT user_id, tenant_id, password_hash, role FROM auth_login_lookup($1)

-- name: rotate_refresh
SELECT outcome, user_id, tenant_id, role, family_id FROM auth_rotate_refresh($1, $2, $3)

-- name: revoke_family
SELECT tenant_id, user_id FROM auth_revoke_family($1)

-- name: insert_refresh_token
INSERT INTO refresh_tokens (token_hash, tenant_id, user_id, family_id, expires_at)
VALUES ($1, $2, $3, $4, now() + $5::interval)

-- name: update_password_hash
UPDATE users SET password_hash = $2 WHERE user_id = $1

-- name: get_user
SELECT u.user_id, u.tenant_id, u.email, u.role, u.created_at, t.name AS tenant_name,
       t.created_at AS tenant_created_at
FROM users u JOIN tenants t USING (tenant_id)
WHERE u.user_id = $1

-- name: insert_user
INSERT INTO users (tenant_id, email, password_hash, role)
VALUES (app_tenant_id(), $1, $2, $3)
RETURNING user_id, tenant_id, email, role, created_at

-- name: list_users
SELECT user_id, tenant_id, email, role, created_at
FROM users
WHERE ($1::timestamptz IS NULL OR (created_at, user_id) > ($1::timestamptz, $2::uuid))
ORDER BY created_at, user_id
LIMIT $3

-- name: insert_audit
INSERT INTO audit_log (tenant_id, actor, action, subject, ip, details)
VALUES (app_tenant_id(), $1, $2, $3, $4, $5::jsonb)

-- name: prune_refresh_tokens
DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'
