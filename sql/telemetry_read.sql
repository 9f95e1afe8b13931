-- Dashboard reads. Every query runs in a transaction with app.tenant_id set, through
-- telemetry_v (and the rollups' views) and the RLS-protected tables.
--
-- Raw pages and aggregates come back as JSON text built here (telemetry_reading_json and
-- telemetry_bucket_json, migrations/0017), a whole page in one row, spliced into the response
-- as is: formatting a thousand timestamps and objects in Python, or decoding a thousand rows,
-- cost more than the query itself. The formatting is done above the LIMIT, on the rows that
-- are returned only.

-- name: metrics
-- Kept by the writer (migrations/0006, keyed by tenant since 0009): primary-key reads, however
-- many rows the device has; RLS keeps them to the tenant's own.
SELECT metric, ts AS last_ts, value AS last_value
FROM telemetry_latest
WHERE device_id = $1
ORDER BY metric

-- name: readable
-- Whether this tenant owns the device or held it until a reset (migrations/0009, 0017): it
-- may read its history. The raw pages and aggregates answer it themselves ("readable").
SELECT telemetry_device_readable($1)

-- The raw pages, one query per order, each one row: the page's readings as JSON ("items",
-- comma-separated; NULL for none), whether more follow, the keyset (ts, metric) of the
-- page's last reading, where the next page starts, and whether the device is readable. $6 is the page size + 1 (the extra reading
-- only tells that there is more); $7 the metric, or NULL for all. The keyset always has a
-- value (the window edge on the first page), so each query has one plan, an index-only scan
-- of telemetry_device_ts.

-- name: raw_asc
SELECT string_agg(telemetry_reading_json(metric, ts, value), ',' ORDER BY n)
           FILTER (WHERE n < $6) AS items,
       count(*) = $6 AS more,
       max(ts) FILTER (WHERE n = $6 - 1) AS last_ts,
       max(metric) FILTER (WHERE n = $6 - 1) AS last_metric,
       telemetry_device_readable($1) AS readable
FROM (
    SELECT metric, ts, value, row_number() OVER (ORDER BY ts, metric) AS n
    FROM telemetry_v
    WHERE device_id = $1 AND ($7::text IS NULL OR metric = $7) AND ts >= $2 AND ts < $3
      AND (ts, metric) > ($4::timestamptz, $5::text)
    ORDER BY ts, metric
    LIMIT $6
) page

-- name: raw_desc
SELECT string_agg(telemetry_reading_json(metric, ts, value), ',' ORDER BY n)
           FILTER (WHERE n < $6) AS items,
       count(*) = $6 AS more,
       max(ts) FILTER (WHERE n = $6 - 1) AS last_ts,
       max(metric) FILTER (WHERE n = $6 - 1) AS last_metric,
       telemetry_device_readable($1) AS readable
FROM (
    SELECT metric, ts, value, row_number() OVER (ORDER BY ts DESC, metric DESC) AS n
    FROM telemetry_v
    WHERE device_id = $1 AND ($7::text IS NULL OR metric = $7) AND ts >= $2 AND ts < $3
      AND (ts, metric) < ($4::timestamptz, $5::text)
    ORDER BY ts DESC, metric DESC
    LIMIT $6
) page

-- The aggregates: one row, the buckets as JSON ("items", comma-separated; NULL for none)
-- and whether the device is readable.
-- $6..$10: whether avg, min, max, sum, count are asked for (the others are left out).

-- name: aggregate
-- date_bin, not time_bucket: plain SQL on both storages; origin 2000-01-03 (a Monday) so
-- that week buckets match TimescaleDB's.
SELECT string_agg(telemetry_bucket_json(bucket, avg, min, max, sum, count), ',' ORDER BY bucket)
           AS items,
       telemetry_device_readable($1) AS readable
FROM (
    SELECT date_bin($3::interval, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
           CASE WHEN $6 THEN avg(value) END AS avg,
           CASE WHEN $7 THEN min(value) END AS min,
           CASE WHEN $8 THEN max(value) END AS max,
           CASE WHEN $9 THEN sum(value) END AS sum,
           CASE WHEN $10 THEN count(*) END AS count
    FROM telemetry_v
    WHERE device_id = $1 AND metric = $2 AND ts >= $4 AND ts < $5
    GROUP BY bucket
) buckets

-- name: aggregate_rollup
-- Buckets of whole hours or days, from the rollups (migrations/0012) where they are
-- complete: [$11, $12) is the whole hours of the window at or after the retention horizon,
-- [$13, $14) its whole days when the bucket is made of days (else empty). An hour marked in
-- telemetry_rollup_dirty (written since its last refresh) comes from the raw rows, and so do
-- its day's other hours instead of the daily row; the edges [$4, $11) and [$12, $5) too.
WITH dirty AS MATERIALIZED (
    SELECT hour, date_bin(INTERVAL '1 day', hour, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS day
    FROM telemetry_rollup_dirty_v
    WHERE hour >= $11 AND hour < $12
), parts AS (
    SELECT bucket AS t, sum, count, min, max FROM telemetry_daily_v
    WHERE device_id = $1 AND metric = $2 AND bucket >= $13 AND bucket < $14
      AND bucket NOT IN (SELECT day FROM dirty)
    UNION ALL
    -- Hours outside the whole days (two index ranges, not the days between them)...
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND ((bucket >= $11 AND bucket < $13) OR (bucket >= $14 AND bucket < $12))
      AND bucket NOT IN (SELECT hour FROM dirty)
    UNION ALL
    -- ...and the clean hours of whole days that have a marked hour.
    SELECT h.bucket, h.sum, h.count, h.min, h.max
    FROM (SELECT DISTINCT day FROM dirty WHERE day >= $13 AND day < $14) dd
    JOIN telemetry_hourly_v h ON h.device_id = $1 AND h.metric = $2
                             AND h.bucket >= dd.day AND h.bucket < dd.day + INTERVAL '1 day'
    WHERE h.bucket NOT IN (SELECT hour FROM dirty)
    UNION ALL
    SELECT date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
           sum(value), count(*), min(value), max(value)
    FROM telemetry_v
    WHERE device_id = $1 AND metric = $2
      AND ((ts >= $4 AND ts < $11) OR (ts >= $12 AND ts < $5))
    GROUP BY 1
    UNION ALL
    SELECT d.hour, sum(r.value), count(*), min(r.value), max(r.value)
    FROM dirty d
    JOIN telemetry_v r ON r.device_id = $1 AND r.metric = $2
                      AND r.ts >= d.hour AND r.ts < d.hour + INTERVAL '1 hour'
    GROUP BY 1
)
SELECT string_agg(telemetry_bucket_json(bucket, avg, min, max, sum, count), ',' ORDER BY bucket)
           AS items,
       telemetry_device_readable($1) AS readable
FROM (
    SELECT date_bin($3::interval, t, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
           CASE WHEN $6 THEN sum(sum) / sum(count)::bigint END AS avg,
           CASE WHEN $7 THEN min(min) END AS min,
           CASE WHEN $8 THEN max(max) END AS max,
           CASE WHEN $9 THEN sum(sum) END AS sum,
           CASE WHEN $10 THEN sum(count)::bigint END AS count
    FROM parts
    GROUP BY 1
) buckets
