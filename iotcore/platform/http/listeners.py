"""The internal listener: /metrics and the broker's hooks (/api/v1/mqtt/*) answer only on
IOT_METRICS_PORT, which a deployment keeps off the public network (Prometheus and EMQX reach
it inside). The public port answers 404 for them, as for any unknown path."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from iotcore.platform import errors
from iotcore.platform.http.endpoints import Endpoint, Handler

INTERNAL_PREFIXES = ("/metrics", "/api/v1/mqtt/")


def is_internal(path: str) -> bool:
    return path == "/metrics" or any(path.startswith(p) for p in INTERNAL_PREFIXES[1:])


def public_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    return [e for e in endpoints if not is_internal(e.path)]


def internal_only(internal_port: int) -> Middleware:
    """Middleware refusing internal paths on any port but `internal_port`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_internal(request.path):
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            if not sockname or sockname[1] != internal_port:
                raise errors.NotFound()
        return await handler(request)

    return middleware
