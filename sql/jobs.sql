-- Jobs (migrations/0011). The service starts them and reads them in its tenant; workers run
-- them as the owner role.

-- name: insert
INSERT INTO jobs (tenant_id, kind, params, requested_by)
VALUES ($1, $2, $3::jsonb, $4)
RETURNING job_id

-- name: pending_for_target
-- A job already under way for the same target, so a repeated request does not start another.
SELECT job_id FROM jobs
WHERE kind = $1 AND params = $2::jsonb AND status IN ('queued', 'running')
  AND tenant_id IS NOT DISTINCT FROM $3
ORDER BY created_at LIMIT 1

-- name: get
SELECT job_id, kind, status, progress, error, created_at, started_at, finished_at
FROM jobs WHERE job_id = $1

-- name: claim
-- The oldest job nobody holds (queued, or running under a lease that ran out), or the one
-- asked for ($3).
UPDATE jobs j SET status = 'running', lease_owner = $1, lease_until = now() + $2::interval,
       started_at = COALESCE(j.started_at, now()), attempts = j.attempts + 1
WHERE j.job_id = (
    SELECT job_id FROM jobs
    WHERE status IN ('queued', 'running') AND (lease_until IS NULL OR lease_until < now())
      AND ($3::uuid IS NULL OR job_id = $3)
    ORDER BY created_at LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING job_id, tenant_id, kind, params, progress, requested_by, created_at, attempts

-- name: checkpoint
-- Saves progress and renews the lease, in the transaction of a step; no row: the lease is lost.
UPDATE jobs SET progress = $3::jsonb, lease_until = now() + $4::interval
WHERE job_id = $1 AND lease_owner = $2 AND status = 'running'
RETURNING job_id

-- name: complete
UPDATE jobs SET status = 'done', progress = $3::jsonb, finished_at = now(),
       lease_owner = NULL, lease_until = NULL
WHERE job_id = $1 AND lease_owner = $2
RETURNING job_id

-- name: release
-- After an error: let the job be retried later, or fail it for good ($3 = error, $4 = final).
UPDATE jobs SET lease_owner = NULL,
       lease_until = CASE WHEN $4 THEN NULL ELSE now() + $5::interval END,
       status = CASE WHEN $4 THEN 'failed' ELSE status END,
       error = $3, finished_at = CASE WHEN $4 THEN now() ELSE NULL END
WHERE job_id = $1 AND lease_owner = $2

-- name: state
SELECT status, progress, error, lease_owner, lease_until > now() AS leased FROM jobs WHERE job_id = $1

-- name: operator_audit
INSERT INTO operator_audit (actor, action, subject, job_id, details)
VALUES ($1, $2, $3, $4, $5::jsonb)
