-- Telemetry: narrow rows, unique per (device, metric, ts) so a replayed message is stored once.
--
-- Not row-level security on this one table (ARCHITECTURE.md, "Storage"): on TimescaleDB,
-- RLS on a hypertable forbids compression and continuous aggregates, and chunks do not
-- inherit its policies. So the service role gets no privilege on the table (hence none on
-- its chunks or partitions) and goes through telemetry_v, a security_barrier view owned by
-- the owner, filtered on app.tenant_id, WITH CASCADED CHECK OPTION so that an insert for
-- another tenant fails. The same on native partitions (no TimescaleDB: bare machines, CI).

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $ddl$
            CREATE TABLE telemetry (
                tenant_id uuid NOT NULL,
                device_id uuid NOT NULL,
                metric    text NOT NULL,
                ts        timestamptz NOT NULL,
                value     double precision NOT NULL,
                CONSTRAINT telemetry_point_key UNIQUE (device_id, metric, ts)
            )
        $ddl$;
        PERFORM create_hypertable('telemetry', 'ts', chunk_time_interval => INTERVAL '1 day');
    ELSE
        EXECUTE $ddl$
            CREATE TABLE telemetry (
                tenant_id uuid NOT NULL,
                device_id uuid NOT NULL,
                metric    text NOT NULL,
                ts        timestamptz NOT NULL,
                value     double precision NOT NULL,
                CONSTRAINT telemetry_point_key UNIQUE (device_id, metric, ts)
            ) PARTITION BY RANGE (ts)
        $ddl$;
        -- A row outside every daily partition lands here instead of being refused;
        -- `iotcore maintain` creates the daily partitions ahead of time.
        EXECUTE 'CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT';
    END IF;
END
$$;

REVOKE ALL ON telemetry FROM PUBLIC;

-- Native partitioning: create the daily partitions from `from_day` for `days` days (no-op
-- on TimescaleDB, which makes chunks itself). Run as the owner by `iotcore maintain`.
CREATE FUNCTION telemetry_ensure_partitions(from_day date, days integer)
    RETURNS integer
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    d date;
    name text;
    created integer := 0;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN 0;
    END IF;
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        name := 'telemetry_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            -- A partition cannot be attached while the default holds rows of its range:
            -- move them out first (only after an outage of `maintain`).
            EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS)', name);
            EXECUTE format(
                'WITH moved AS (DELETE FROM telemetry_default WHERE ts >= %L AND ts < %L RETURNING *)
                 INSERT INTO %I SELECT * FROM moved',
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC', name);
            EXECUTE format(
                'ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$fn$;

-- Retention: drop whole daily partitions older than `keep_days` (never a slow DELETE).
CREATE FUNCTION telemetry_drop_partitions(keep_days integer)
    RETURNS integer
    LANGUAGE plpgsql SET search_path = public, pg_temp
AS $fn$
DECLARE
    part record;
    cutoff date := (now() AT TIME ZONE 'UTC')::date - keep_days;
    dropped integer := 0;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE format('SELECT count(*) FROM drop_chunks(%L, older_than => %L::timestamptz)',
                       'telemetry', cutoff::timestamp AT TIME ZONE 'UTC') INTO dropped;
        RETURN dropped;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_[0-9]{8}$'
    LOOP
        IF to_date(substring(part.relname FROM 11), 'YYYYMMDD') + 1 <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM telemetry_default WHERE ts < cutoff::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END
$fn$;

REVOKE ALL ON FUNCTION telemetry_ensure_partitions(date, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION telemetry_drop_partitions(integer) FROM PUBLIC;

DO $$ BEGIN PERFORM telemetry_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 2, 10); END $$;

CREATE VIEW telemetry_v WITH (security_barrier) AS
    SELECT tenant_id, device_id, metric, ts, value
    FROM telemetry
    WHERE tenant_id = app_tenant_id()
    WITH CASCADED CHECK OPTION;

GRANT SELECT, INSERT ON telemetry_v TO iotcore_app;

-- Rejected telemetry for operators: the service writes, only the owner reads.
CREATE TABLE ingest_rejects (
    reject_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid,
    device_id   uuid,
    topic       text,
    reason      text NOT NULL,
    excerpt     text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_rejects_received_at ON ingest_rejects (received_at);
GRANT INSERT ON ingest_rejects TO iotcore_app;
