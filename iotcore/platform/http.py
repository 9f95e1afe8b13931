"""HTTP plumbing shared by every domain: endpoint declarations, request parsing, the error
envelope middleware, request ids, request metrics and JSON responses."""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar
from uuid import uuid4

import asyncpg
import orjson
import redis.exceptions
from aiohttp import web
from pydantic import BaseModel, ValidationError

from iotcore.config import Settings
from iotcore.platform import errors
from iotcore.platform.logging import request_id_var
from iotcore.platform.metrics import HTTP_LATENCY, HTTP_REQUESTS
from iotcore.platform.versioning import Deprecation

log = logging.getLogger("iotcore.http")

ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[..., Awaitable[web.StreamResponse]]

SETTINGS_KEY = web.AppKey("settings", Settings)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class Endpoint:
    """One route of the API. The same declaration registers the route, validates the request
    (`body`, `query`) and documents it in OpenAPI (`responses`, `errors`, `security`), so the
    document cannot drift from what the server does."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=lambda: {200: None})
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = ()
    response_content_type: str = "application/json"
    header_params: tuple[str, ...] = ()
    in_schema: bool = True
    # A body the handler parses itself (e.g. point by point), documented with this model.
    documented_body: type[BaseModel] | None = None
    # Set when the operation is deprecated (docs/versioning.md): headers and OpenAPI flag.
    deprecation: Deprecation | None = None

    def route_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = {}
            if self.query is not None:
                kwargs["query"] = parse_query(request, self.query)
            if self.body is not None:
                kwargs["body"] = await parse_body(request, self.body)
            response = await self.handler(request, **kwargs)
            if self.deprecation is not None and not response.prepared:
                response.headers.update(self.deprecation.headers())
            return response

        handle.__name__ = self.handler.__name__
        return handle


def add_endpoints(app: web.Application, endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.route_handler())


# ---------------------------------------------------------------------------- request parsing


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"field": location, "problem": err["msg"]})
    return details


def nul_characters(data: Any) -> list[dict[str, Any]]:
    """Where strings in `data` (keys included) hold a NUL: PostgreSQL text cannot store one,
    so no field may carry it."""
    found: list[dict[str, Any]] = []
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, location = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append({"field": location or "body", "problem": "contains a NUL character"})
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found.append({"field": location or "body", "problem": "a key holds a NUL"})
                stack.append((item, f"{location}.{key}".lstrip(".")))
        elif isinstance(value, list):
            stack.extend((item, f"{location}.{i}".lstrip(".")) for i, item in enumerate(value))
    return found


async def read_body(request: web.Request) -> bytes:
    """The raw body (cached by aiohttp, so signature checks and parsing can both read it)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge() from exc


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType()
    raw = await read_body(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJson() from exc
    return validate(model, data)


def validate(model: type[ModelT], data: Any) -> ModelT:
    nul = nul_characters(data)
    if nul:
        raise errors.ValidationFailed(details=nul)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.ValidationFailed(details=validation_details(exc)) from exc


def _is_list_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))


def parse_query(request: web.Request, model: type[ModelT]) -> ModelT:
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in request.query:
            continue
        data[key] = (
            request.query.getall(key) if _is_list_field(info.annotation) else request.query[key]
        )
    return validate(model, data)


def json_response(
    payload: BaseModel | Mapping[str, Any] | list[Any],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(by_alias=True).encode()
    else:
        body = orjson.dumps(payload)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def ascii_header(request: web.Request, name: str) -> str:
    """A header that carries credentials, ids or addresses: its value if printable ASCII,
    else "" as if absent. Raw non-ASCII bytes reach handlers as surrogates, which no
    credential can contain and which encoders (JWT, Redis, hashing) refuse with an error."""
    value = request.headers.get(name, "")
    return value if _PRINTABLE_ASCII.fullmatch(value) else ""


def client_ip(request: web.Request) -> str:
    """The caller's address; X-Forwarded-For is believed only for the configured proxy hops."""
    hops = request.app[SETTINGS_KEY].trusted_proxies
    if hops:
        forwarded = [p.strip() for p in ascii_header(request, "X-Forwarded-For").split(",")]
        forwarded = [p for p in forwarded if p]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.remote or "unknown"


# ---------------------------------------------------------------------------- middleware

DEPENDENCY_DOWN = (
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


def _from_http_exception(exc: web.HTTPException) -> errors.ApiError:
    kind = _HTTP_EXCEPTION_ERRORS.get(exc.status)
    if kind is None:
        error = errors.ApiError(exc.reason or "HTTP error", code="http_error")
        error.status = exc.status
        return error
    error = kind()
    if exc.status == 405 and "Allow" in exc.headers:
        error.headers = {"Allow": exc.headers["Allow"]}
    return error


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
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid4().hex
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
            response = error_response(_from_http_exception(exc), request_id)
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
