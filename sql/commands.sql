-- Commands to devices (migrations/0015). Tenant queries run with the tenant set; the
-- device must be the tenant's (RLS hides any other), and a device that changed hands since
-- (reset, re-claim) is not sent the old tenant's commands.

-- name: create_command
-- FOR SHARE: a reset of the device in flight (it locks the row) is waited for, and the row
-- then read again, so a command is either seen and ended by the reset or not created (the
-- device is no longer the tenant's: no row, 404).
INSERT INTO commands (tenant_id, device_id, name, params, created_by, expires_at)
SELECT app_tenant_id(), d.device_id, $2, $3::jsonb, $4, now() + make_interval(secs => $5)
FROM devices d WHERE d.device_id = $1
FOR SHARE
RETURNING command_id, device_id, name, params, status, created_at, sent_at, completed_at,
          expires_at, result

-- name: get_command
SELECT command_id, device_id, name, params, status, created_at, sent_at, completed_at,
       expires_at, result
FROM commands WHERE device_id = $1 AND command_id = $2

-- name: list_commands
-- Newest first, keyset on (created_at, command_id).
SELECT command_id, device_id, name, params, status, created_at, sent_at, completed_at,
       expires_at, result
FROM commands
WHERE tenant_id = app_tenant_id() AND device_id = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, command_id) < ($3::timestamptz, $4::uuid))
ORDER BY created_at DESC, command_id DESC
LIMIT $5

-- name: device_exists
SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = $1)

-- name: due_commands
-- What a device connected now should receive, oldest first: `pending` ones, and with
-- $2 also `sent` ones without an answer (an external broker may have dropped them).
SELECT c.command_id, c.device_id, c.name, c.params, c.status, c.created_at, c.sent_at,
       c.completed_at, c.expires_at, c.result
FROM commands c JOIN devices d ON d.device_id = c.device_id AND d.tenant_id = c.tenant_id
WHERE c.device_id = $1 AND c.expires_at > now()
  AND (c.status = 'pending' OR ($2 AND c.status = 'sent'))
ORDER BY c.created_at, c.command_id
LIMIT $3

-- name: mark_sent
-- Delivered (embedded broker: the device's PUBACK) or handed to an external broker; never
-- once expired. With $2 a `sent` one is marked again, if it was last sent over $3 s ago (so
-- that of several dispatchers only one sends it).
UPDATE commands SET status = 'sent', sent_at = now()
WHERE command_id = $1 AND expires_at > now()
  AND (status = 'pending'
       OR ($2 AND status = 'sent' AND sent_at < now() - make_interval(secs => $3)))
RETURNING command_id, device_id, name, params, status, created_at, sent_at, completed_at,
          expires_at, result

-- name: command_for_reply
SELECT command_id, device_id, name, params, status, created_at, sent_at, completed_at,
       expires_at, result, expires_at <= now() AS expired
FROM commands c WHERE command_id = $1
  -- Still the tenant's device: after a reset and another tenant's claim, nothing the device
  -- sends (on a broker without ACL, on its old topic) completes the old tenant's command.
  AND EXISTS (SELECT 1 FROM devices d WHERE d.device_id = c.device_id AND d.tenant_id = c.tenant_id)
FOR UPDATE

-- name: complete_command
UPDATE commands SET status = $2, completed_at = now(), result = $3::jsonb,
                    sent_at = COALESCE(sent_at, now())
WHERE command_id = $1 AND status IN ('pending', 'sent')
RETURNING command_id, device_id, name, params, status, created_at, sent_at, completed_at,
          expires_at, result

-- name: expire_command
UPDATE commands SET status = 'expired', completed_at = now()
WHERE command_id = $1 AND status IN ('pending', 'sent') AND expires_at <= now()
RETURNING command_id, device_id, name, params, status, created_at, sent_at, completed_at,
          expires_at, result

-- name: expire_commands
-- Run by `maintain` as the owner, every tenant at once.
UPDATE commands SET status = 'expired', completed_at = now()
WHERE command_id IN (
    SELECT command_id FROM commands
    WHERE status IN ('pending', 'sent') AND expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING tenant_id, command_id, device_id, name, params, status, created_at, sent_at,
          completed_at, expires_at, result

-- name: open_devices
SELECT tenant_id, device_id FROM commands_open_devices()

-- name: insert_reject
INSERT INTO ingest_rejects (tenant_id, device_id, topic, reason, excerpt)
VALUES ($1, $2, $3, $4, $5)
