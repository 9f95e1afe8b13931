DROP FUNCTION IF EXISTS auth_revoke_family(bytea);
DROP FUNCTION IF EXISTS auth_rotate_refresh(bytea, bytea, interval);
DROP FUNCTION IF EXISTS auth_login_lookup(text);
DROP FUNCTION IF EXISTS auth_register(text, text, text);
DROP TABLE IF EXISTS audit_log;
DROP TABLE IF EXISTS refresh_tokens;
DROP TABLE IF EXISTS users;
DROP TABLE IF EXISTS tenants;
