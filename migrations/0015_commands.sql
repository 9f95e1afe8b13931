-- Commands to devices (API.md "Commands"): pending -> sent -> succeeded | failed, or expired.
-- Tenant-isolated by RLS like every tenant table. The database enforces the transitions and
-- audits each one (audit_log, in the command's tenant), whoever makes it: the API (created),
-- the broker or the ingest consumer (sent, succeeded, failed) or `maintain` (expired). A new
-- command is announced on channel `iotcore_commands` at commit, for the process that holds
-- the MQTT connection to deliver it.

CREATE TABLE commands (
    command_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    device_id    uuid NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(params) = 'object'),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'sent', 'succeeded', 'failed', 'expired')),
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    completed_at timestamptz,
    expires_at   timestamptz NOT NULL,
    result       jsonb CHECK (result IS NULL OR jsonb_typeof(result) = 'object'),
    CONSTRAINT commands_expiry CHECK (expires_at > created_at),
    CONSTRAINT commands_completed CHECK ((status IN ('pending', 'sent')) = (completed_at IS NULL))
);
CREATE INDEX commands_device_page ON commands (tenant_id, device_id, created_at DESC, command_id DESC);
CREATE INDEX commands_open ON commands (device_id, created_at) WHERE status IN ('pending', 'sent');
CREATE INDEX commands_expiring ON commands (expires_at) WHERE status IN ('pending', 'sent');

ALTER TABLE commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE commands FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON commands TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON commands TO CURRENT_USER USING (true) WITH CHECK (true);

GRANT SELECT ON commands TO iotcore_app;
GRANT INSERT (tenant_id, device_id, name, params, created_by, expires_at) ON commands TO iotcore_app;
GRANT UPDATE (status, sent_at, completed_at, result) ON commands TO iotcore_app;

-- Only forward: pending -> sent | succeeded | failed | expired (a reply may be stored before
-- its delivery is), sent -> succeeded | failed | expired, and nothing after an end. Re-marking
-- `sent` (an external broker's delivery on a later connect) moves sent_at only.
CREATE FUNCTION commands_transition() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'pending' AND NEW.status IN ('sent', 'succeeded', 'failed', 'expired'))
        OR (OLD.status = 'sent' AND NEW.status IN ('succeeded', 'failed', 'expired'))
    ) THEN
        RAISE EXCEPTION 'command % cannot go from % to %', OLD.command_id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER commands_transition BEFORE UPDATE ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_transition();

-- The audit record of every status (created as pending included) and, at creation, the
-- announcement. Runs as the role making the change, under the same tenant policies.
CREATE FUNCTION commands_audit() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO audit_log (tenant_id, actor, action, subject, details)
        VALUES (NEW.tenant_id, CASE WHEN TG_OP = 'INSERT' THEN NEW.created_by END,
                'command_' || NEW.status, NEW.command_id::text,
                jsonb_build_object('device_id', NEW.device_id, 'name', NEW.name));
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('iotcore_commands', json_build_object(
            'tenant_id', NEW.tenant_id, 'device_id', NEW.device_id,
            'command_id', NEW.command_id)::text);
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER commands_audit AFTER INSERT OR UPDATE OF status ON commands
    FOR EACH ROW EXECUTE FUNCTION commands_audit();

-- The devices with open commands, of every tenant: what a dispatcher that (re)connects to
-- its broker owes, before any tenant is known. Ids only.
CREATE FUNCTION commands_open_devices()
    RETURNS TABLE (tenant_id uuid, device_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT DISTINCT c.tenant_id, c.device_id FROM commands c
    WHERE c.status IN ('pending', 'sent') AND c.expires_at > now()
$fn$;
REVOKE ALL ON FUNCTION commands_open_devices() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION commands_open_devices() TO iotcore_app;
