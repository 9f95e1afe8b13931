"""The write side of telemetry: payload rules, the HTTP webhook, the batching writer and its SQL."""
