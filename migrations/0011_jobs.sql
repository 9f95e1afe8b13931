-- Jobs: long work started by a request (purges) and done by a worker in bounded steps. A
-- worker holds a job by a lease (lease_owner, lease_until) renewed at every step; a job whose
-- lease ran out (its worker died) is taken over and resumes from its recorded progress.
-- A tenant's purge deletes the tenant at its end: the job row then loses its tenant_id
-- (ON DELETE SET NULL) and stays, with operator_audit, as the operator's record.

CREATE TABLE jobs (
    job_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid REFERENCES tenants (tenant_id) ON DELETE SET NULL,
    kind         text NOT NULL CHECK (kind IN ('purge_tenant', 'purge_device')),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed')),
    progress     jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text,
    requested_by text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_until  timestamptz
);
CREATE INDEX jobs_pending ON jobs (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);

ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON jobs TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON jobs TO CURRENT_USER USING (true) WITH CHECK (true);

-- The service starts jobs and reads their progress; only workers (the owner role) run them.
GRANT SELECT (job_id, tenant_id, kind, params, status, progress, error, created_at,
              started_at, finished_at)
    ON jobs TO iotcore_app;
GRANT INSERT (tenant_id, kind, params, requested_by) ON jobs TO iotcore_app;

-- Operator-side record of destructive work (who, what, when, counts). Not a tenant's table:
-- it outlives the tenant it speaks of, and the service role has no privilege on it.
CREATE TABLE operator_audit (
    audit_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    subject    text NOT NULL,
    job_id     uuid,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX operator_audit_at ON operator_audit (at);
REVOKE ALL ON operator_audit FROM PUBLIC;

-- Purges run as the owner. Every plain table in public with a tenant_id column is swept by
-- this one function, so a table added later is purged without anyone listing it.
CREATE FUNCTION purge_tenant_rows(p_table regclass, p_tenant uuid, p_limit integer)
    RETURNS bigint
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    deleted bigint;
BEGIN
    EXECUTE format(
        'DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE tenant_id = $1 LIMIT $2))',
        p_table, p_table)
    USING p_tenant, p_limit;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$fn$;
REVOKE ALL ON FUNCTION purge_tenant_rows(regclass, uuid, integer) FROM PUBLIC;
