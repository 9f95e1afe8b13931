"""The small app of the roles without the API (ingest, broker, maintain): health, metrics
and its OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform import docs, health, scrape
from iotcore.platform.context import PLATFORM_KEY, SETTINGS_KEY, Platform
from iotcore.platform.http.endpoints import add_endpoints
from iotcore.platform.http.middleware import observe_middleware
from iotcore.platform.http.server import hide_server_banner


def create_ops_app(platform: Platform) -> web.Application:
    """Health and metrics for roles without the API (ingest, broker, maintain)."""

    app = web.Application(middlewares=[observe_middleware])
    app[SETTINGS_KEY] = platform.settings
    app[PLATFORM_KEY] = platform
    app.on_response_prepare.append(hide_server_banner)
    health.install(app, platform)
    endpoints = [*health.ENDPOINTS, *scrape.ENDPOINTS, *docs.ENDPOINTS]
    endpoints = [e for e in endpoints if e.path != "/api/v1/docs"]
    add_endpoints(app, endpoints)
    docs.install_openapi(app, endpoints, "ops")
    return app
