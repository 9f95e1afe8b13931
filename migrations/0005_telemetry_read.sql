-- Read side: raw pages across metrics walk (device_id, ts, metric) in either direction;
-- per-metric reads and aggregates use the unique key (device_id, metric, ts) from 0004.
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts, metric);
