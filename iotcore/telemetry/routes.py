"""HTTP handlers of the telemetry domain: the webhook (ingestion) plus the read API."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform.http import Endpoint
from iotcore.telemetry import read_routes

ENDPOINTS: list[Endpoint] = [*read_routes.ENDPOINTS]


def setup(app: web.Application) -> None:
    read_routes.setup(app)
