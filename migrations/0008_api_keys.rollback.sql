DROP FUNCTION IF EXISTS api_key_touch(uuid[], timestamptz[]);
DROP FUNCTION IF EXISTS api_key_rotate(uuid, uuid, bytea, interval);
DROP FUNCTION IF EXISTS api_key_lookup(bytea);
DROP TABLE IF EXISTS api_keys;
