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

-- name: rollup_dirty_ranges
-- The hours in [$1, $2) written since their rollups' last refresh (migrations/0012), as
-- ranges of consecutive hours [lo, hi).
SELECT min(hour) AS lo, max(hour) + INTERVAL '1 hour' AS hi
FROM (
    SELECT hour, hour - INTERVAL '1 hour' * row_number() OVER (ORDER BY hour) AS run
    FROM telemetry_rollup_dirty_v
    WHERE hour >= $1 AND hour < $2
) marked
GROUP BY run
ORDER BY lo

-- name: aggregate_rollup
-- Buckets of whole hours or days, partly from the rollups (migrations/0012). The caller
-- (aggregate_sources in iotcore/telemetry/read/service.py) has split the window into
-- disjoint ranges, each read from one source: the raw rows ($9/$10: lower and upper bounds
-- of up to 4 ranges: the window's edges and the hours marked in telemetry_rollup_dirty),
-- the hourly rollup ($11/$12: up to 6) and the daily one ($13/$14: up to 3). One arm per
-- range, with bounds that are constants when the statement is planned (the pool plans each
-- execution for its parameters): partitions, chunks and materialisation chunks outside them
-- are pruned at plan time, and an arm without a range (NULL bounds) is planned as empty.
-- $4..$8: whether avg, min, max, sum, count are asked for.
WITH raw AS (
    SELECT ts, value FROM telemetry_v
    WHERE device_id = $1 AND metric = $2
      AND ts >= ($9::timestamptz[])[1] AND ts < ($10::timestamptz[])[1]
    UNION ALL
    SELECT ts, value FROM telemetry_v
    WHERE device_id = $1 AND metric = $2
      AND ts >= ($9::timestamptz[])[2] AND ts < ($10::timestamptz[])[2]
    UNION ALL
    SELECT ts, value FROM telemetry_v
    WHERE device_id = $1 AND metric = $2
      AND ts >= ($9::timestamptz[])[3] AND ts < ($10::timestamptz[])[3]
    UNION ALL
    SELECT ts, value FROM telemetry_v
    WHERE device_id = $1 AND metric = $2
      AND ts >= ($9::timestamptz[])[4] AND ts < ($10::timestamptz[])[4]
), parts AS (
    SELECT date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS t,
           sum(value) AS sum, count(*) AS count, min(value) AS min, max(value) AS max
    FROM raw
    GROUP BY 1
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[1] AND bucket < ($12::timestamptz[])[1]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[2] AND bucket < ($12::timestamptz[])[2]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[3] AND bucket < ($12::timestamptz[])[3]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[4] AND bucket < ($12::timestamptz[])[4]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[5] AND bucket < ($12::timestamptz[])[5]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_hourly_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($11::timestamptz[])[6] AND bucket < ($12::timestamptz[])[6]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_daily_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($13::timestamptz[])[1] AND bucket < ($14::timestamptz[])[1]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_daily_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($13::timestamptz[])[2] AND bucket < ($14::timestamptz[])[2]
    UNION ALL
    SELECT bucket, sum, count, min, max FROM telemetry_daily_v
    WHERE device_id = $1 AND metric = $2
      AND bucket >= ($13::timestamptz[])[3] AND bucket < ($14::timestamptz[])[3]
)
SELECT string_agg(telemetry_bucket_json(bucket, avg, min, max, sum, count), ',' ORDER BY bucket)
           AS items,
       telemetry_device_readable($1) AS readable
FROM (
    SELECT date_bin($3::interval, t, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
           CASE WHEN $4 THEN sum(sum) / sum(count)::bigint END AS avg,
           CASE WHEN $5 THEN min(min) END AS min,
           CASE WHEN $6 THEN max(max) END AS max,
           CASE WHEN $7 THEN sum(sum) END AS sum,
           CASE WHEN $8 THEN sum(count)::bigint END AS count
    FROM parts
    GROUP BY 1
) buckets
