"""Prometheus metrics. Labels are low-cardinality only: never a device, user or tenant id."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "iotcore_http_requests_total", "HTTP requests handled", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "iotcore_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
READY = Gauge("iotcore_ready", "1 when every readiness check passes")
INGEST_MESSAGES = Counter(
    "iotcore_ingest_messages_total",
    "Telemetry rows by transport and outcome",
    ["transport", "outcome"],
)
INGEST_REJECTS = Counter("iotcore_ingest_rejects_total", "Rejected telemetry by reason", ["reason"])
WRITER_BATCH_ROWS = Histogram(
    "iotcore_writer_batch_rows",
    "Rows per committed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000),
)
WRITER_COMMIT_SECONDS = Histogram(
    "iotcore_writer_commit_seconds",
    "Time to insert and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WRITER_REFUSED = Counter(
    "iotcore_writer_refused_total",
    "Submissions the database refused for good (recorded as storage_refused rejects)",
    ["sqlstate"],
)
WRITER_QUEUE_DEPTH = Gauge("iotcore_writer_queue_depth", "Points waiting for the batch writer")
INGEST_LAG = Histogram(
    "iotcore_ingest_lag_seconds",
    "From receipt by iotcore to commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGEST_PUBLISH_LAG = Histogram(
    "iotcore_ingest_publish_lag_seconds",
    "From a message's newest reading ts (the device's clock when it published) to commit",
    ["transport"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300),
)
DEVICE_LOOKUPS = Counter(
    "iotcore_device_credential_lookups_total",
    "Device credential look-ups that went to the database (cache misses; concurrent misses "
    "for one device share one)",
)
RATE_LIMITED = Counter("iotcore_rate_limited_total", "Requests refused by a rate limit", ["scope"])

# Read at scrape time (iotcore.platform.scrape.metrics), not kept up to date by the hot path.
DB_POOL_CONNECTIONS = Gauge(
    "iotcore_db_pool_connections",
    "Database pool connections by pool (primary, read) and state (in_use, idle, max)",
    ["pool", "state"],
)
WRITER_QUEUE_CAPACITY = Gauge(
    "iotcore_writer_queue_capacity_rows", "The writer queue's bound (IOT_WRITER_QUEUE_ROWS)"
)
READY_CHECK = Gauge(
    "iotcore_ready_check", "1 when this readiness check (postgres, redis, ...) passes", ["check"]
)

MAINTENANCE_RUNS = Counter(
    "iotcore_maintenance_runs_total", "Maintenance passes by outcome (ok, failed)", ["outcome"]
)
MAINTENANCE_LAST_SUCCESS = Gauge(
    "iotcore_maintenance_last_success_timestamp_seconds",
    "Unix time of the last maintenance pass that completed",
)
MAINTENANCE_SECONDS = Gauge(
    "iotcore_maintenance_duration_seconds", "How long the last maintenance pass took"
)
DEFAULT_PARTITION_ROWS = Gauge(
    "iotcore_telemetry_default_partition_rows",
    "Rows in telemetry_default (native partitioning): readings no daily partition covered "
    "(counted up to 100,000)",
)
BROKER_CONNECTIONS = Gauge("iotcore_broker_connections", "Open embedded-broker connections")
BROKER_REFUSED = Counter(
    "iotcore_broker_refused_total",
    "Embedded broker: connections refused or ended, and packets denied, by reason",
    ["reason"],
)
SESSION_KICKS = Counter(
    "iotcore_emqx_session_kicks_total", "EMQX kick-out calls by outcome", ["outcome"]
)
COMMANDS = Counter(
    "iotcore_commands_total",
    "Commands reaching each status (pending when created, sent, succeeded, failed, expired)",
    ["status"],
)
COMMAND_ROUND_TRIP = Histogram(
    "iotcore_command_round_trip_seconds",
    "From a command's creation (the POST's commit) to the device's stored answer: delivery, "
    "the device's work and its reply; for a device offline at first, its time away too",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
COMMAND_REPLIES_REJECTED = Counter(
    "iotcore_command_replies_rejected_total",
    "Command replies refused (recorded in ingest_rejects) by reason",
    ["reason"],
)


@functools.cache
def devices_connected() -> Gauge:
    """The fleet-wide count of connected devices, registered by the first process that sets
    it (maintenance, in `maintain` or the single node) and exported by that process only: an
    API or ingest process exporting it at 0 would read as "no device connected" in any
    panel or sum that is not a max()."""
    return Gauge(
        "iotcore_devices_connected",
        "Devices connected to a broker, all tenants (set by maintenance from the database)",
    )


PRESENCE_EVENTS = Counter(
    "iotcore_presence_events_total",
    "Presence events by source (embedded, emqx, status, stale, reconcile) and outcome "
    "(changed, unchanged, ignored, failed)",
    ["source", "outcome"],
)
