-- Hourly and daily rollups per device and metric that cannot disagree with the raw rows.
--
-- telemetry_hourly and telemetry_daily hold sum, count, min and max per (device, metric,
-- bucket): continuous aggregates on TimescaleDB (daily on top of hourly, materialized only:
-- no real-time part), plain tables on native partitions. Both are filled only by
-- `iotcore maintain`, from the hours listed in telemetry_rollup_dirty:
--  * the writer marks the hours of the rows it stores, in the same transaction (so a late
--    reading, up to the 30 accepted days, marks its old hour); the purges (sql/purge.sql)
--    and telemetry_rollup_mark() do the same for deletions and bulk loads; this migration marks
--    every hour that already has rows (history, `migrate down`/`up`);
--  * maintain reads marks, refreshes those hours (then their days), and deletes only the
--    marks whose version did not change meanwhile and that no writer holds (a writer's
--    upsert bumps the version and locks the mark until its commit), so a mark never
--    disappears before a refresh that saw its rows.
-- The aggregate endpoint reads a rollup row only for an hour (a day) without a mark and
-- newer than the retention horizon, and the raw rows for everything else: a rollup that is
-- not complete is never used.
--
-- As for the raw table, the service role has no privilege on the rollups, their
-- materialisation tables or the marks: it goes through tenant-filtered security_barrier
-- views owned by the owner.

CREATE TABLE telemetry_rollup_dirty (
    tenant_id uuid NOT NULL,
    hour      timestamptz NOT NULL,
    version   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour)
);
CREATE INDEX telemetry_rollup_dirty_hour ON telemetry_rollup_dirty (hour);
REVOKE ALL ON telemetry_rollup_dirty FROM PUBLIC;

CREATE VIEW telemetry_rollup_dirty_v WITH (security_barrier) AS
    SELECT tenant_id, hour, version
    FROM telemetry_rollup_dirty
    WHERE tenant_id = app_tenant_id()
    WITH CASCADED CHECK OPTION;
GRANT SELECT, INSERT, UPDATE ON telemetry_rollup_dirty_v TO iotcore_app;

-- Mark every hour in [from_ts, to_ts) that has rows (NULL: unbounded). For bulk loads and
-- this migration; the writer marks its own rows.
CREATE FUNCTION telemetry_rollup_mark(from_ts timestamptz, to_ts timestamptz)
    RETURNS bigint
    LANGUAGE sql SET search_path = public, pg_temp
AS $fn$
    WITH marked AS (
        INSERT INTO telemetry_rollup_dirty AS d (tenant_id, hour)
        SELECT DISTINCT tenant_id,
               date_bin(INTERVAL '1 hour', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
        FROM telemetry
        WHERE (from_ts IS NULL OR ts >= from_ts) AND (to_ts IS NULL OR ts < to_ts)
        ORDER BY 1, 2
        ON CONFLICT (tenant_id, hour) DO UPDATE SET version = d.version + 1
        RETURNING 1
    )
    SELECT count(*) FROM marked
$fn$;
REVOKE ALL ON FUNCTION telemetry_rollup_mark(timestamptz, timestamptz) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- 0005's view read the real-time aggregate; the rollups are now materialized only.
        EXECUTE 'DROP VIEW telemetry_hourly_v';
        EXECUTE 'ALTER MATERIALIZED VIEW telemetry_hourly SET (timescaledb.materialized_only = true)';
        EXECUTE $ddl$
            CREATE MATERIALIZED VIEW telemetry_daily
            WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
            SELECT tenant_id, device_id, metric,
                   time_bucket(INTERVAL '1 day', bucket) AS bucket,
                   sum(sum) AS sum, sum(count)::bigint AS count, min(min) AS min, max(max) AS max
            FROM telemetry_hourly
            GROUP BY tenant_id, device_id, metric, time_bucket(INTERVAL '1 day', bucket)
            WITH NO DATA
        $ddl$;
        EXECUTE 'REVOKE ALL ON telemetry_daily FROM PUBLIC';
        EXECUTE 'CREATE INDEX telemetry_daily_device ON telemetry_daily (device_id, metric, bucket)';
    ELSE
        EXECUTE $ddl$
            CREATE TABLE telemetry_hourly (
                tenant_id uuid NOT NULL,
                device_id uuid NOT NULL,
                metric    text NOT NULL,
                bucket    timestamptz NOT NULL,
                sum       double precision NOT NULL,
                count     bigint NOT NULL,
                min       double precision NOT NULL,
                max       double precision NOT NULL,
                PRIMARY KEY (device_id, metric, bucket, tenant_id)
            )
        $ddl$;
        EXECUTE 'CREATE INDEX telemetry_hourly_tenant ON telemetry_hourly (tenant_id, bucket)';
        EXECUTE 'CREATE TABLE telemetry_daily (LIKE telemetry_hourly INCLUDING ALL)';
        EXECUTE 'REVOKE ALL ON telemetry_hourly, telemetry_daily FROM PUBLIC';
    END IF;
END
$$;

CREATE VIEW telemetry_hourly_v WITH (security_barrier) AS
    SELECT tenant_id, device_id, metric, bucket, sum, count, min, max
    FROM telemetry_hourly
    WHERE tenant_id = app_tenant_id();
CREATE VIEW telemetry_daily_v WITH (security_barrier) AS
    SELECT tenant_id, device_id, metric, bucket, sum, count, min, max
    FROM telemetry_daily
    WHERE tenant_id = app_tenant_id();
GRANT SELECT ON telemetry_hourly_v, telemetry_daily_v TO iotcore_app;

-- Native partitions: recompute the marked (tenant, hour) pairs from the raw rows, then the
-- days they fall in from the hourly rows. One statement per day, with the day's bounds as
-- constants, so each reads one daily partition. (TimescaleDB: maintain calls
-- refresh_continuous_aggregate, which cannot run inside a function.)
CREATE FUNCTION telemetry_rollup_recompute(tenants uuid[], hours timestamptz[])
    RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    day timestamptz;
BEGIN
    FOR day IN
        SELECT DISTINCT date_bin(INTERVAL '1 day', h, TIMESTAMPTZ '2000-01-03 00:00:00+00')
        FROM unnest(hours) AS h ORDER BY 1
    LOOP
        EXECUTE format($q$
            DELETE FROM telemetry_hourly r
            USING unnest($1, $2) AS m(tenant_id, hour)
            WHERE m.hour >= %1$L AND m.hour < %2$L
              AND r.tenant_id = m.tenant_id AND r.bucket = m.hour
        $q$, day, day + INTERVAL '1 day') USING tenants, hours;
        EXECUTE format($q$
            INSERT INTO telemetry_hourly (tenant_id, device_id, metric, bucket, sum, count, min, max)
            SELECT t.tenant_id, t.device_id, t.metric,
                   date_bin(INTERVAL '1 hour', t.ts, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
                   sum(t.value), count(*), min(t.value), max(t.value)
            FROM telemetry t
            WHERE t.ts >= %1$L AND t.ts < %2$L
              AND (t.tenant_id,
                   date_bin(INTERVAL '1 hour', t.ts, TIMESTAMPTZ '2000-01-03 00:00:00+00'))
                  IN (SELECT * FROM unnest($1, $2))
            GROUP BY 1, 2, 3, 4
        $q$, day, day + INTERVAL '1 day') USING tenants, hours;
    END LOOP;
    DELETE FROM telemetry_daily r
    USING (SELECT DISTINCT tenant_id,
                  date_bin(INTERVAL '1 day', hour, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS day
           FROM unnest(tenants, hours) AS m(tenant_id, hour)) m
    WHERE r.tenant_id = m.tenant_id AND r.bucket = m.day;
    INSERT INTO telemetry_daily (tenant_id, device_id, metric, bucket, sum, count, min, max)
    SELECT h.tenant_id, h.device_id, h.metric,
           date_bin(INTERVAL '1 day', h.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00'),
           sum(h.sum), sum(h.count)::bigint, min(h.min), max(h.max)
    FROM telemetry_hourly h
    JOIN (SELECT DISTINCT tenant_id,
                 date_bin(INTERVAL '1 day', hour, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS day
          FROM unnest(tenants, hours) AS m(tenant_id, hour)) m
      ON h.tenant_id = m.tenant_id AND h.bucket >= m.day AND h.bucket < m.day + INTERVAL '1 day'
    GROUP BY 1, 2, 3, 4;
END
$fn$;
REVOKE ALL ON FUNCTION telemetry_rollup_recompute(uuid[], timestamptz[]) FROM PUBLIC;

-- A tenant's purge (sql/purge.sql, after its readings are gone): its rollup rows, in the
-- materialisations too, and its marks. It waits for a refresh in progress (maintain holds
-- this advisory lock while refreshing), so no refresh that still saw the readings commits
-- after it.
CREATE FUNCTION telemetry_rollup_forget_tenant(p_tenant uuid)
    RETURNS bigint
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    rel text;
    n bigint;
    gone bigint := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(281018375);  -- REFRESH_LOCK of iotcore/maintenance/jobs.py
    DELETE FROM telemetry_rollup_dirty WHERE tenant_id = p_tenant;
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        FOR rel IN
            EXECUTE 'SELECT format(''%I.%I'', materialization_hypertable_schema,
                                   materialization_hypertable_name)
                     FROM timescaledb_information.continuous_aggregates
                     WHERE view_name IN (''telemetry_hourly'', ''telemetry_daily'')'
        LOOP
            EXECUTE format('DELETE FROM %s WHERE tenant_id = $1', rel) USING p_tenant;
            GET DIAGNOSTICS n = ROW_COUNT;
            gone := gone + n;
        END LOOP;
        RETURN gone;
    END IF;
    DELETE FROM telemetry_hourly WHERE tenant_id = p_tenant;
    GET DIAGNOSTICS n = ROW_COUNT;
    gone := n;
    DELETE FROM telemetry_daily WHERE tenant_id = p_tenant;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN gone + n;
END
$fn$;
REVOKE ALL ON FUNCTION telemetry_rollup_forget_tenant(uuid) FROM PUBLIC;

-- Retention of the rollups and the marks, with the raw rows' (the endpoint never reads a
-- rollup older than the retention horizon anyway).
CREATE FUNCTION telemetry_rollup_drop(keep_days integer)
    RETURNS void
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    cutoff timestamptz := ((now() AT TIME ZONE 'UTC')::date - keep_days)::timestamp AT TIME ZONE 'UTC';
BEGIN
    DELETE FROM telemetry_rollup_dirty WHERE hour < cutoff;
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM drop_chunks('telemetry_daily', older_than => cutoff);
        PERFORM drop_chunks('telemetry_hourly', older_than => cutoff);
        RETURN;
    END IF;
    DELETE FROM telemetry_hourly WHERE bucket < cutoff;
    DELETE FROM telemetry_daily WHERE bucket < cutoff;
END
$fn$;
REVOKE ALL ON FUNCTION telemetry_rollup_drop(integer) FROM PUBLIC;

-- TimescaleDB policies from the settings (no-op without TimescaleDB): compression after
-- compress_after_days, retention after retention_days (raw rows and rollups), background
-- refresh of the rollups every refresh_seconds (a safety net: maintain refreshes the marked
-- hours itself). Changes only what differs; returns what it changed.
CREATE FUNCTION telemetry_apply_policies(
    retention_days integer, compress_after_days integer, refresh_seconds integer
)
    RETURNS text[]
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    changed text[] := '{}';
    relation text;
    wanted interval;
    current_config jsonb;
    current_schedule interval;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN changed;
    END IF;
    SELECT config INTO current_config FROM timescaledb_information.jobs
    WHERE proc_name = 'policy_compression' AND hypertable_name = 'telemetry';
    wanted := make_interval(days => compress_after_days);
    IF current_config IS NULL OR (current_config->>'compress_after')::interval <> wanted THEN
        PERFORM remove_compression_policy('telemetry', if_exists => true);
        PERFORM add_compression_policy('telemetry', wanted);
        changed := changed || ('telemetry compression after ' || wanted);
    END IF;
    wanted := make_interval(days => retention_days);
    FOREACH relation IN ARRAY ARRAY['telemetry', 'telemetry_hourly', 'telemetry_daily'] LOOP
        SELECT config INTO current_config FROM timescaledb_information.jobs
        WHERE proc_name = 'policy_retention' AND hypertable_name = relation;
        IF current_config IS NULL OR (current_config->>'drop_after')::interval <> wanted THEN
            PERFORM remove_retention_policy(relation, if_exists => true);
            PERFORM add_retention_policy(relation, wanted);
            changed := changed || (relation || ' retention ' || wanted);
        END IF;
    END LOOP;
    wanted := make_interval(secs => refresh_seconds);
    FOREACH relation IN ARRAY ARRAY['telemetry_hourly', 'telemetry_daily'] LOOP
        SELECT schedule_interval INTO current_schedule FROM timescaledb_information.jobs
        WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_name = relation;
        IF current_schedule IS NULL OR current_schedule <> wanted THEN
            PERFORM remove_continuous_aggregate_policy(relation, if_exists => true);
            PERFORM add_continuous_aggregate_policy(relation,
                start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
                schedule_interval => wanted);
            changed := changed || (relation || ' refresh every ' || wanted);
        END IF;
    END LOOP;
    RETURN changed;
END
$fn$;
REVOKE ALL ON FUNCTION telemetry_apply_policies(integer, integer, integer) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- 0005 dropped and re-added the policies; from here on they follow the settings.
        PERFORM remove_retention_policy('telemetry_hourly', if_exists => true);
        PERFORM telemetry_apply_policies(365, 7, 900);
    END IF;
END
$$;

-- History: every hour that has rows is refreshed by the next `maintain`; until then the
-- endpoint answers those hours from the raw rows.
DO $$ BEGIN PERFORM telemetry_rollup_mark(NULL, NULL); END $$;
