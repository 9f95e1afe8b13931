DROP FUNCTION IF EXISTS presence_expire(text, interval, text);
DROP FUNCTION IF EXISTS presence_touch(text, uuid[]);
DROP FUNCTION IF EXISTS presence_apply(uuid, uuid, text, boolean, bigint, timestamptz, text);
DROP FUNCTION IF EXISTS presence_notify(uuid, uuid, boolean);
DROP TRIGGER IF EXISTS devices_presence_follows_tenant ON devices;
DROP FUNCTION IF EXISTS devices_presence_follows_tenant();
DROP INDEX IF EXISTS devices_connected;
ALTER TABLE devices
    DROP COLUMN IF EXISTS presence_seen_at,
    DROP COLUMN IF EXISTS presence_node,
    DROP COLUMN IF EXISTS presence_source,
    DROP COLUMN IF EXISTS presence_session,
    DROP COLUMN IF EXISTS disconnected_at,
    DROP COLUMN IF EXISTS connected_at,
    DROP COLUMN IF EXISTS connected;
