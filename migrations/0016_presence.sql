-- Presence: whether a device is connected to the broker now, from three sources (the
-- embedded broker's connections, EMQX's client.connected/disconnected events, the device's
-- retained status message and last will). Stored on the device row, so it follows the
-- device's tenant (RLS as in 0003); written only through the SECURITY DEFINER functions
-- below, which every source calls.
--
-- Ordering: every event names the broker session it belongs to (`p_session`, the session's
-- connect time in epoch milliseconds, EMQX's `connected_at`; the embedded broker's own
-- connection generation). A connect counts only for a session newer than the stored one; a
-- disconnect only for the stored session or a newer one. So a disconnect that arrives after
-- a newer connect (EMQX delivers webhooks concurrently; a session taken over ends after its
-- successor began) changes nothing. Status messages carry no session: they are believed only
-- while no broker-level source has spoken for the device (Mosquitto), in arrival order.
--
-- Every transition notifies channel iotcore_presence in the same transaction, with exactly
-- {"tenant_id", "device_id", "connected"} (commands deliver pending commands on connect).

ALTER TABLE devices
    ADD COLUMN connected         boolean NOT NULL DEFAULT false,
    ADD COLUMN connected_at      timestamptz,
    ADD COLUMN disconnected_at   timestamptz,
    -- The session the stored state belongs to (epoch ms), where it came from ('embedded',
    -- 'emqx', 'status', 'stale', 'reconcile') and which broker node holds it.
    ADD COLUMN presence_session  bigint,
    ADD COLUMN presence_source   text,
    ADD COLUMN presence_node     text,
    -- The last sign of life of a connected device (connect, status, the embedded broker's
    -- heartbeat); with last_seen_at (telemetry), what the staleness rule looks at.
    ADD COLUMN presence_seen_at  timestamptz;

CREATE INDEX devices_connected ON devices (presence_seen_at) WHERE connected;

GRANT SELECT (connected, connected_at, disconnected_at) ON devices TO iotcore_app;

-- A device that changes hands starts with no presence: the previous tenant's sessions
-- (ended by the reset) can never mark it online for the next one.
CREATE FUNCTION devices_presence_follows_tenant() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
BEGIN
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        NEW.connected := false;
        NEW.connected_at := NULL;
        NEW.disconnected_at := NULL;
        NEW.presence_session := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
        NEW.presence_source := NULL;
        NEW.presence_node := NULL;
        NEW.presence_seen_at := NULL;
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER devices_presence_follows_tenant BEFORE UPDATE OF tenant_id ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_presence_follows_tenant();

CREATE FUNCTION presence_notify(p_tenant uuid, p_device uuid, p_connected boolean) RETURNS void
    LANGUAGE sql SET search_path = public, pg_temp
AS $fn$
    SELECT pg_notify('iotcore_presence', json_build_object(
        'tenant_id', p_tenant, 'device_id', p_device, 'connected', p_connected)::text)
$fn$;

-- One event. Returns the stored state and whether it changed (a transition); no row when
-- the event was ignored (unknown device, another tenant's, a device without credentials).
CREATE FUNCTION presence_apply(
    p_tenant uuid, p_device uuid, p_source text, p_connected boolean, p_session bigint,
    p_at timestamptz, p_node text
)
    RETURNS TABLE (changed boolean, connected boolean, connected_at timestamptz,
                   disconnected_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    d devices%ROWTYPE;
    v_session bigint;
    v_broker boolean := p_source IN ('embedded', 'emqx');
BEGIN
    SELECT * INTO d FROM devices x WHERE x.device_id = p_device FOR UPDATE;
    IF NOT FOUND OR d.tenant_id IS DISTINCT FROM p_tenant OR d.status = 'unclaimed'
       OR (d.secret_hash IS NULL AND d.previous_secret_hash IS NULL) THEN
        RETURN;
    END IF;
    IF NOT v_broker THEN
        -- A status message: only where no broker reports this device's sessions.
        IF d.presence_source IN ('embedded', 'emqx') OR p_connected = d.connected THEN
            IF p_connected AND d.connected AND d.presence_source = 'status' THEN
                UPDATE devices x SET presence_seen_at = now() WHERE x.device_id = p_device;
            END IF;
            RETURN QUERY SELECT false, d.connected, d.connected_at, d.disconnected_at;
            RETURN;
        END IF;
        v_session := GREATEST(COALESCE(d.presence_session, 0) + 1, p_session);
    ELSIF p_connected THEN
        IF d.presence_session IS NOT NULL AND p_session <= d.presence_session THEN
            RETURN QUERY SELECT false, d.connected, d.connected_at, d.disconnected_at;
            RETURN;
        END IF;
        v_session := p_session;
    ELSE
        v_session := COALESCE(p_session, d.presence_session, 0);
        IF d.presence_session IS NOT NULL AND (v_session < d.presence_session
                OR (v_session = d.presence_session AND NOT d.connected)) THEN
            RETURN QUERY SELECT false, d.connected, d.connected_at, d.disconnected_at;
            RETURN;
        END IF;
    END IF;
    IF p_connected THEN
        UPDATE devices x SET connected = true, connected_at = p_at, presence_session = v_session,
               presence_source = p_source, presence_node = p_node, presence_seen_at = now()
        WHERE x.device_id = p_device;
    ELSE
        UPDATE devices x SET connected = false, disconnected_at = p_at,
               presence_session = v_session, presence_source = p_source,
               presence_node = p_node, presence_seen_at = now()
        WHERE x.device_id = p_device;
    END IF;
    IF p_connected IS DISTINCT FROM d.connected THEN
        PERFORM presence_notify(d.tenant_id, p_device, p_connected);
    END IF;
    RETURN QUERY SELECT p_connected IS DISTINCT FROM d.connected, p_connected,
        CASE WHEN p_connected THEN p_at ELSE d.connected_at END,
        CASE WHEN p_connected THEN d.disconnected_at ELSE p_at END;
END
$fn$;

-- The devices a broker node still holds: their last sign of life is now.
CREATE FUNCTION presence_touch(p_node text, p_devices uuid[]) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    WITH touched AS (
        UPDATE devices x SET presence_seen_at = now()
        WHERE x.device_id = ANY (p_devices) AND x.connected AND x.presence_node = p_node
        RETURNING 1
    )
    SELECT count(*) FROM touched
$fn$;

-- Offline, without an event: every device a restarted broker node held (`p_node`), or every
-- connected device with no sign of life for `p_stale` (`p_node` NULL).
CREATE FUNCTION presence_expire(p_node text, p_stale interval, p_source text)
    RETURNS TABLE (tenant_id uuid, device_id uuid, connected_at timestamptz,
                   disconnected_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
BEGIN
    RETURN QUERY
    WITH expired AS (
        UPDATE devices x SET connected = false, disconnected_at = now(),
               presence_source = p_source
        WHERE x.connected
          AND ((p_node IS NOT NULL AND x.presence_node = p_node)
            OR (p_node IS NULL AND GREATEST(x.presence_seen_at, x.last_seen_at) < now() - p_stale))
        RETURNING x.tenant_id, x.device_id, x.connected_at, x.disconnected_at
    ), notified AS (
        SELECT e.*, presence_notify(e.tenant_id, e.device_id, false) FROM expired e
    )
    SELECT n.tenant_id, n.device_id, n.connected_at, n.disconnected_at FROM notified n;
END
$fn$;

REVOKE ALL ON FUNCTION presence_notify(uuid, uuid, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION presence_apply(uuid, uuid, text, boolean, bigint, timestamptz, text)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION presence_touch(text, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION presence_expire(text, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION presence_apply(uuid, uuid, text, boolean, bigint, timestamptz, text)
    TO iotcore_app;
GRANT EXECUTE ON FUNCTION presence_touch(text, uuid[]) TO iotcore_app;
GRANT EXECUTE ON FUNCTION presence_expire(text, interval, text) TO iotcore_app;
