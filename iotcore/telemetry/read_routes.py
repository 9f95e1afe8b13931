"""HTTP handlers for dashboards: raw, latest, aggregate, metric list, live stream."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform.http import Endpoint

ENDPOINTS: list[Endpoint] = []


def setup(app: web.Application) -> None:
    """Create the read services on the app; nothing to create yet."""
