"""The request middleware: request ids, the error envelope for every failure, request
metrics and the access log."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from secrets import token_hex
from time import perf_counter

from aiohttp import web

from iotcore.platform import errors
from iotcore.platform.http.envelope import DEPENDENCY_DOWN, error_response, from_http_exception
from iotcore.platform.logging import request_id_var
from iotcore.platform.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = logging.getLogger("iotcore.http")

REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _route_template(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


@web.middleware
async def observe_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, the error envelope for every failure, request metrics and the access log."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else token_hex(16)
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    started = perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except errors.ApiError as exc:
            response = error_response(exc, request_id)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(from_http_exception(exc), request_id)
        except DEPENDENCY_DOWN as exc:
            # Redis or PostgreSQL out or too slow (runbooks/redis-down.md): what needs it is
            # unavailable, not broken; paths that can do without it catch this themselves.
            log.warning(
                "dependency unavailable", extra={"path": request.path, "error": type(exc).__name__}
            )
            response = error_response(errors.Unavailable(), request_id)
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            response = error_response(errors.ApiError(), request_id)
        status = response.status
        return response
    finally:
        elapsed = perf_counter() - started
        route = _route_template(request)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(elapsed)
        level = logging.INFO if status >= 400 or elapsed > 1.0 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
        request_id_var.reset(token)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: also reaches streamed responses, whose headers leave early."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers["X-Request-ID"] = request_id
