DROP TABLE IF EXISTS telemetry_latest;
