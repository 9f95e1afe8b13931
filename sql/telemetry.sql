-- Telemetry write path. The service role reaches telemetry only through telemetry_v.

-- name: write_readings
-- One statement per tenant group of a batch, inside the tenant transaction: the readings
-- (a row already present, a replay, is skipped), the newest value per device and metric
-- (an older reading never replaces a newer one), and devices' last_seen_at / status (a
-- claimed device becomes active on its first accepted telemetry; last_seen_at only moves
-- forward). Newest values are kept per tenant, and only for devices the tenant holds when
-- the device row is updated: that UPDATE waits for a reset holding the row, then no longer
-- sees the device, so a write racing a reset leaves no latest values behind. Returns how many
-- rows were stored; with $2, the ordinals (1-based, in $1) of the stored rows, so that the
-- caller can tell each submission its count; and the (tenant_id, device_id, metric, ts_ms,
-- value) that became newest, for the cache. The rows come as one JSON array of
-- [device_id, metric, ts (RFC 3339), value]: for the client, encoding four arrays of
-- objects cost several times more than the whole statement's JSON.
WITH r AS (
    SELECT (e->>0)::uuid AS device_id, e->>1 AS metric, (e->>2)::timestamptz AS ts,
           (e->>3)::float8 AS value, n
    FROM json_array_elements($1::json) WITH ORDINALITY AS j(e, n)
), ins AS (
    INSERT INTO telemetry_v (tenant_id, device_id, metric, ts, value)
    SELECT app_tenant_id(), device_id, metric, ts, value FROM r
    ON CONFLICT (device_id, metric, ts) DO NOTHING
    RETURNING device_id, metric, ts
), seen AS (
    UPDATE devices d
    SET last_seen_at = GREATEST(d.last_seen_at, s.seen),
        status = CASE WHEN d.status = 'claimed' THEN 'active' ELSE d.status END
    FROM (SELECT device_id, max(ts) AS seen FROM r GROUP BY device_id) AS s
    WHERE d.device_id = s.device_id
    RETURNING d.device_id
), newest AS (
    INSERT INTO telemetry_latest AS l (tenant_id, device_id, metric, ts, value)
    SELECT DISTINCT ON (device_id, metric) app_tenant_id(), device_id, metric, ts, value
    FROM r
    WHERE device_id IN (SELECT device_id FROM seen)
    ORDER BY device_id, metric, ts DESC
    ON CONFLICT (tenant_id, device_id, metric)
        DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
        WHERE l.ts < EXCLUDED.ts
    RETURNING tenant_id, device_id, metric, ts, value
), dirty AS (
    -- The hours whose rollups are now stale (migrations/0012): maintain refreshes them, and
    -- the aggregate endpoint reads them from the raw rows until then. Upserted in order,
    -- and the version bump locks each mark until this transaction commits.
    INSERT INTO telemetry_rollup_dirty_v AS m (tenant_id, hour)
    SELECT DISTINCT app_tenant_id(),
           date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
    FROM ins
    ORDER BY 2
    ON CONFLICT (tenant_id, hour) DO UPDATE SET version = m.version + 1
)
SELECT
    (SELECT count(*) FROM ins) AS stored,
    CASE WHEN $2::boolean THEN (
        SELECT coalesce(array_agg(first), '{}')
        FROM (
            SELECT min(r.n) AS first
            FROM ins JOIN r USING (device_id, metric, ts)
            GROUP BY ins.device_id, ins.metric, ins.ts
        ) AS f
    ) END AS stored_ordinals,
    (
        SELECT coalesce(
            json_agg(json_build_array(
                tenant_id, device_id, metric, floor(extract(epoch FROM ts) * 1000)::bigint, value
            ))::text,
            '[]'
        )
        FROM newest
    ) AS newest

-- name: insert_rejects
INSERT INTO ingest_rejects (tenant_id, device_id, topic, reason, excerpt, received_at, sqlstate)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::text[])

-- name: ensure_partitions
SELECT telemetry_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, $1)

-- name: drop_partitions
SELECT telemetry_drop_partitions($1)

-- name: prune_rejects
DELETE FROM ingest_rejects WHERE received_at < now() - make_interval(days => $1)

-- name: apply_policies
SELECT telemetry_apply_policies($1, $2, $3)

-- name: drop_rollups
SELECT telemetry_rollup_drop($1)

-- name: timescaledb
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')

-- name: rollup_marks
-- The oldest marks first; see migrations/0012 for the protocol.
SELECT tenant_id, hour, version FROM telemetry_rollup_dirty ORDER BY hour, tenant_id LIMIT $1

-- name: rollup_recompute
SELECT telemetry_rollup_recompute($1, $2)

-- name: rollup_unmark
-- Only the marks still at the version that was read, and none a writer holds (it is
-- bumping the version): those stay for the next refresh, which is never waited for.
DELETE FROM telemetry_rollup_dirty d
USING (
    SELECT tenant_id, hour FROM telemetry_rollup_dirty
    WHERE (tenant_id, hour, version) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[]))
    FOR UPDATE SKIP LOCKED
) s
WHERE d.tenant_id = s.tenant_id AND d.hour = s.hour

-- name: refresh_hourly
-- TimescaleDB; outside a transaction block. Forced: hours materialised before a purge or a
-- restore are recomputed too, not only those in TimescaleDB's invalidation log.
CALL refresh_continuous_aggregate('telemetry_hourly', $1::timestamptz, $2::timestamptz, true)

-- name: refresh_daily
CALL refresh_continuous_aggregate('telemetry_daily', $1::timestamptz, $2::timestamptz, true)
