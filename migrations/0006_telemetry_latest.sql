-- The last reading of each (device, metric), kept by the writer in the same transaction as
-- the readings. It answers the metric list and the latest values without a scan over the
-- device's partitions (a skip scan across daily partitions measured ~0.8 s per device on
-- 8.6 million rows). A plain table, so ordinary row-level security applies.

CREATE TABLE telemetry_latest (
    tenant_id uuid NOT NULL,
    device_id uuid NOT NULL,
    metric    text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (device_id, metric)
);

ALTER TABLE telemetry_latest ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_latest FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry_latest TO iotcore_app
    USING (tenant_id = app_tenant_id()) WITH CHECK (tenant_id = app_tenant_id());
CREATE POLICY definer_lookup ON telemetry_latest TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON telemetry_latest TO iotcore_app;

INSERT INTO telemetry_latest (tenant_id, device_id, metric, ts, value)
SELECT DISTINCT ON (device_id, metric) tenant_id, device_id, metric, ts, value
FROM telemetry
ORDER BY device_id, metric, ts DESC;
