"""The aiohttp application factory: platform, middleware, and every domain's endpoints."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from iotcore.auth import routes as auth_routes
from iotcore.commands import routes as commands_routes
from iotcore.config import Settings
from iotcore.console import routes as console_routes
from iotcore.devices import routes as devices_routes
from iotcore.platform import docs, health, scrape
from iotcore.platform.context import PLATFORM_KEY, SETTINGS_KEY, Platform
from iotcore.platform.http import listeners
from iotcore.platform.http.endpoints import Endpoint, add_endpoints
from iotcore.platform.http.middleware import add_response_headers, observe
from iotcore.platform.openapi import CONTRACT_VERSION
from iotcore.telemetry.ingest import routes as telemetry_ingest_routes
from iotcore.telemetry.read import routes as telemetry_read_routes
from iotcore.tenants import routes as tenants_routes


def package_version() -> str:
    try:
        return version("iotcore")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings, platform: Platform | None = None, *, internal_port: int | None = None
) -> web.Application:
    """Build the API. A `platform` passed in is shared with other roles of the process and is
    then started and closed by its owner, not by the app. With `internal_port`, /metrics and
    the broker hooks answer only on that port and the public OpenAPI leaves them out."""
    app = web.Application(
        middlewares=[observe(internal_port)], client_max_size=settings.http_max_body_bytes
    )
    owns_platform = platform is None
    platform = platform or Platform.from_settings(settings)
    app[SETTINGS_KEY] = settings
    app[PLATFORM_KEY] = platform
    app.on_response_prepare.append(add_response_headers)
    health.install(app, platform)

    if owns_platform:

        async def start_platform(app: web.Application) -> None:
            await app[PLATFORM_KEY].start()

        async def close_platform(app: web.Application) -> None:
            await app[PLATFORM_KEY].close()

        app.on_startup.append(start_platform)

    endpoints: list[Endpoint] = [*health.ENDPOINTS, *scrape.ENDPOINTS, *docs.ENDPOINTS]
    domains = (
        auth_routes,
        devices_routes,
        commands_routes,
        telemetry_ingest_routes,
        telemetry_read_routes,
        tenants_routes,
        console_routes,
    )
    for domain in domains:
        domain.setup(app)
        endpoints.extend(domain.ENDPOINTS)
    if owns_platform:
        # After the domains' own clean-up (the writer flushes through the pools).
        app.on_cleanup.append(close_platform)
    # Resolution tries the routes under a common prefix (/api/v1/devices has eleven) one by
    # one in registration order: the dashboard reads, a device's busiest paths, go first.
    # The document keeps the domains' order.
    hot = telemetry_read_routes.ENDPOINTS
    add_endpoints(app, [*hot, *(e for e in endpoints if not any(e is h for h in hot))])
    documented = endpoints if internal_port is None else listeners.public_endpoints(endpoints)
    docs.install_openapi(app, documented, CONTRACT_VERSION, package_version())
    return app
