"""The /metrics endpoint: gauges read at scrape time, then Prometheus' text format."""

from __future__ import annotations

import prometheus_client
from aiohttp import web

from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.health import PROBE_KEY, observe_readiness
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.metrics import DB_POOL_CONNECTIONS, WRITER_QUEUE_CAPACITY


async def metrics(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    WRITER_QUEUE_CAPACITY.set(platform.settings.writer_queue_rows)
    for pool, sizes in platform.db.pool_sizes().items():
        for state, value in sizes.items():
            DB_POOL_CONNECTIONS.labels(pool, state).set(value)
    # The readiness checks (coalesced with the probes) give every scrape the dependencies'
    # state, so alerts and dashboards do not depend on someone polling /health/ready.
    observe_readiness(await request.app[PROBE_KEY].check())
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


ENDPOINTS = [
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        "operations",
        response_content_type="text/plain",
    ),
]
