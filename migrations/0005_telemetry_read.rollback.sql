DROP INDEX IF EXISTS telemetry_device_ts;
