"""iotcore: multi-tenant IoT telemetry backend."""
