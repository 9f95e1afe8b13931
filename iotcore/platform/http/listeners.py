"""The internal listener: /metrics and the broker's hooks (/api/v1/mqtt/*) answer only on
IOT_METRICS_PORT, which a deployment keeps off the public network (Prometheus and EMQX reach
it inside). The public port answers 404 for them, as for any unknown path (the check runs in
middleware.observe)."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform import errors
from iotcore.platform.http.endpoints import Endpoint


def is_internal(path: str) -> bool:
    return path == "/metrics" or path.startswith("/api/v1/mqtt/")


def public_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    return [e for e in endpoints if not is_internal(e.path)]


def refuse_off_port(request: web.Request, internal_port: int) -> None:
    """NotFound unless `request` came in on `internal_port`."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname or sockname[1] != internal_port:
        raise errors.NotFound()
