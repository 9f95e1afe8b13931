-- Dashboard reads. Every query runs in a transaction with app.tenant_id set, through
-- telemetry_v and the RLS-protected devices table.

-- name: device_visible
SELECT 1 FROM devices WHERE device_id = $1

-- name: metrics
-- Kept by the writer (migrations/0006): primary-key reads, however many rows the device has.
SELECT metric, ts AS last_ts, value AS last_value
FROM telemetry_latest
WHERE device_id = $1
ORDER BY metric

-- The four raw page shapes. The keyset (ts, metric) always has a value (the window edge on
-- the first page), so each query has one plan that walks an index.

-- name: raw_asc
SELECT metric, ts, value FROM telemetry_v
WHERE device_id = $1 AND ts >= $2 AND ts < $3 AND (ts, metric) > ($4::timestamptz, $5::text)
ORDER BY ts, metric
LIMIT $6

-- name: raw_desc
SELECT metric, ts, value FROM telemetry_v
WHERE device_id = $1 AND ts >= $2 AND ts < $3 AND (ts, metric) < ($4::timestamptz, $5::text)
ORDER BY ts DESC, metric DESC
LIMIT $6

-- name: raw_metric_asc
SELECT metric, ts, value FROM telemetry_v
WHERE device_id = $1 AND metric = $7 AND ts >= $2 AND ts < $3
  AND (ts, metric) > ($4::timestamptz, $5::text)
ORDER BY ts, metric
LIMIT $6

-- name: raw_metric_desc
SELECT metric, ts, value FROM telemetry_v
WHERE device_id = $1 AND metric = $7 AND ts >= $2 AND ts < $3
  AND (ts, metric) < ($4::timestamptz, $5::text)
ORDER BY ts DESC, metric DESC
LIMIT $6

-- name: aggregate
-- date_bin, not time_bucket: plain SQL on both storages; origin 2000-01-03 (a Monday) so
-- that week buckets match TimescaleDB's.
SELECT date_bin($3::interval, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       avg(value) AS avg, min(value) AS min, max(value) AS max, sum(value) AS sum,
       count(*) AS count
FROM telemetry_v
WHERE device_id = $1 AND metric = $2 AND ts >= $4 AND ts < $5
GROUP BY bucket
ORDER BY bucket
