"""The request middleware: request ids, the error envelope for every failure, request
metrics and the access log."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from random import getrandbits
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from iotcore.platform import errors
from iotcore.platform.http.envelope import DEPENDENCY_DOWN, error_response, from_http_exception
from iotcore.platform.http.listeners import is_internal, refuse_off_port
from iotcore.platform.http.server import SERVER_NAME
from iotcore.platform.logging import request_id_var
from iotcore.platform.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = logging.getLogger("iotcore.http")

REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Any other method (a client may send any token) is counted as "other": the metric's label
# values, and the cache below, stay a bounded set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# (method, route resource or None, status) -> the labelled children that count it: the
# label look-up (string conversions, a lock, a dict of tuples) is done once per combination.
_Observers = tuple[Any, Any]
_observers: dict[tuple[str, object, int], _Observers] = {}


def _route_resource(request: web.Request) -> web.AbstractResource | None:
    info = request.match_info
    if info.http_exception is not None:
        return None
    return info.route.resource


def _observers_for(method: str, resource: web.AbstractResource | None, status: int) -> _Observers:
    if method not in METHODS:
        method = "other"
    key = (method, resource, status)
    found = _observers.get(key)
    if found is None:
        route = "unmatched" if resource is None else resource.canonical
        found = _observers[key] = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route),
        )
    return found


def observe(internal_port: int | None = None) -> Middleware:
    """The middleware. With `internal_port`, the internal paths (/metrics, broker hooks)
    answer 404 on every other port (listeners.py): one middleware for both, as each layer
    costs every request."""

    @web.middleware
    async def observe_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Request id, the error envelope for every failure, request metrics and the access
        log."""
        incoming = request.headers.get("X-Request-ID", "")
        # Ids correlate log lines: unique is enough, unguessable is not needed (and
        # secrets.token_hex costs a system call a request).
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else f"{getrandbits(128):032x}"
        request[REQUEST_ID_KEY] = request_id
        token = request_id_var.set(request_id)
        started = perf_counter()
        status = 500
        try:
            try:
                if internal_port is not None and is_internal(request.path):
                    refuse_off_port(request, internal_port)
                response = await handler(request)
            except errors.ApiError as exc:
                response = error_response(exc, request_id)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = error_response(from_http_exception(exc), request_id)
            except DEPENDENCY_DOWN as exc:
                # Redis or PostgreSQL out or too slow (runbooks/redis-down.md): what needs it
                # is unavailable, not broken; paths that can do without it catch this
                # themselves.
                log.warning(
                    "dependency unavailable",
                    extra={"path": request.path, "error": type(exc).__name__},
                )
                response = error_response(errors.Unavailable(), request_id)
            except Exception:
                log.exception("unhandled error", extra={"path": request.path})
                response = error_response(errors.ApiError(), request_id)
            status = response.status
            return response
        finally:
            elapsed = perf_counter() - started
            resource = _route_resource(request)
            requests, latency = _observers_for(request.method, resource, status)
            requests.inc()
            latency.observe(elapsed)
            level = logging.INFO if status >= 400 or elapsed > 1.0 else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "request",
                    extra={
                        "method": request.method,
                        "route": "unmatched" if resource is None else resource.canonical,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    return observe_middleware


observe_middleware = observe()


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also reaches streamed responses, whose headers leave early."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers["X-Request-ID"] = request_id


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare for the API: add_request_id_header and server.hide_server_banner
    in one receiver (each receiver is a coroutine per response)."""
    headers = response.headers
    headers["Server"] = SERVER_NAME
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        headers["X-Request-ID"] = request_id
