-- Identity queries. Functions named auth_* are SECURITY DEFINER (migrations/0002).

-- name: register
SELECT tenant_id, user_id, created_at FROM auth_register($1, $2, $3)

-- name: login_lookup
SELECT user_id, tenant_id, password_hash, role FROM auth_login_lookup($1)

-- name: rotate_refresh
SELECT outcome, user_id, tenant_id, role, family_id FROM auth_rotate_refresh($1, $2, $3)

-- name: revoke_family
SELECT tenant_id, user_id, family_id FROM auth_revoke_family($1)

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

-- name: user_state
SELECT tenant_id, role FROM auth_user_state($1)

-- name: lock_owners
-- Role changes and removals take the tenant's owners in a fixed order first: two concurrent
-- demotions then run one after the other, and the second sees the first's result.
SELECT user_id FROM users WHERE role = 'owner' ORDER BY user_id FOR UPDATE

-- name: get_user_for_update
SELECT user_id, role FROM users WHERE user_id = $1 FOR UPDATE

-- name: get_password_hash
SELECT email, password_hash FROM users WHERE user_id = $1

-- name: change_role
-- No row when this would leave the tenant without an owner.
UPDATE users u SET role = $2
WHERE u.user_id = $1
  AND (u.role <> 'owner' OR $2 = 'owner'
       OR EXISTS (SELECT 1 FROM users o WHERE o.role = 'owner' AND o.user_id <> $1))
RETURNING user_id, tenant_id, email, role, created_at

-- name: delete_user
-- No row when this would leave the tenant without an owner. Refresh tokens cascade.
DELETE FROM users u
WHERE u.user_id = $1
  AND (u.role <> 'owner'
       OR EXISTS (SELECT 1 FROM users o WHERE o.role = 'owner' AND o.user_id <> $1))
RETURNING user_id

-- name: revoke_other_families
-- Every refresh-token family of the user but the caller's ($2, NULL for none).
UPDATE refresh_tokens SET revoked_at = now()
WHERE user_id = $1 AND revoked_at IS NULL AND family_id IS DISTINCT FROM $2
RETURNING family_id
