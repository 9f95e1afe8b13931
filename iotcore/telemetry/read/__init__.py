"""The read side of telemetry: metric list, raw pages, latest values, aggregates, live stream."""
