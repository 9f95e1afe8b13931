"""HTTP handlers of the telemetry domain: parse, call the service, shape the response."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform.http import Endpoint

ENDPOINTS: list[Endpoint] = []


def setup(app: web.Application) -> None:
    """Create this domain's services on the app; nothing to create yet."""
