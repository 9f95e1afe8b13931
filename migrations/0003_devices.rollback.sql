DROP FUNCTION IF EXISTS device_rotate(uuid, uuid, interval);
DROP FUNCTION IF EXISTS device_reset(uuid, uuid);
DROP FUNCTION IF EXISTS device_secret_used(uuid);
DROP FUNCTION IF EXISTS device_credentials(uuid);
DROP FUNCTION IF EXISTS device_issue_secret(uuid, bytea);
DROP FUNCTION IF EXISTS device_claim(uuid, uuid, text);
DROP FUNCTION IF EXISTS device_lookup(uuid, text);
DROP FUNCTION IF EXISTS device_provision(text[], text[], text[], text);
DROP TABLE IF EXISTS devices;
