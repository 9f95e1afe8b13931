DROP FUNCTION IF EXISTS auth_user_state(uuid);
REVOKE DELETE ON users FROM iotcore_app;
