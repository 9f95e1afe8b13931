"""The error envelope: the body every failure answers with, and which API error an exception
that is not one stands for."""

from __future__ import annotations

import asyncpg
import orjson
import redis.exceptions
from aiohttp import web

from iotcore.platform import errors

# What a request meets when Redis or PostgreSQL is out or too slow. asyncpg opening a pool
# connection to a server that is down raises the socket's own error (ConnectionRefusedError).
DEPENDENCY_DOWN = (
    ConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    TimeoutError,
)

_HTTP_EXCEPTION_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.MalformedJson,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def error_response(error: errors.ApiError, request_id: str) -> web.Response:
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "request_id": request_id,
        }
    }
    return web.Response(
        body=orjson.dumps(body),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


def from_http_exception(exc: web.HTTPException) -> errors.ApiError:
    kind = _HTTP_EXCEPTION_ERRORS.get(exc.status)
    if kind is None:
        error = errors.ApiError(exc.reason or "HTTP error", code="http_error")
        error.status = exc.status
        return error
    error = kind()
    if exc.status == 405 and "Allow" in exc.headers:
        error.headers = {"Allow": exc.headers["Allow"]}
    return error
