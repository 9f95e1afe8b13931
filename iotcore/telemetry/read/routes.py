"""HTTP handlers for dashboards: metric list, raw, latest, aggregate, live stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from aiohttp import web

from iotcore.auth.principal import UserPrincipal
from iotcore.auth.routes import require_user
from iotcore.devices.routes import DEVICE_REGISTRY_KEY
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.errors import NotFound
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import path_id
from iotcore.platform.http.responses import json_response
from iotcore.platform.types import parse_uuid
from iotcore.telemetry.read.schemas import (
    Aggregate,
    AggregateQuery,
    Latest,
    MetricList,
    RawPage,
    RawQuery,
    StreamQuery,
    StreamTicket,
)
from iotcore.telemetry.read.service import TELEMETRY_READER_KEY, TelemetryReader, time_range
from iotcore.telemetry.read.stream import LIVE_STREAM_KEY, TICKET_TTL_S, LiveStream

TAG = "telemetry"
CACHE_CONTROL = {"Cache-Control": "private, max-age=60"}


def _reader(request: web.Request) -> TelemetryReader:
    return request.app[TELEMETRY_READER_KEY]


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): `*` or a list of tags, compared weakly."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def _with_etag(
    request: web.Request,
    principal: UserPrincipal,
    device_id: UUID,
    past: bool,
    produce: Callable[[], Awaitable[bytes]],
) -> web.Response:
    """Windows wholly in the past get a strong ETag (a digest of the body). The tag is kept in
    Redis under the tenant, device, path and query for ETAG_TTL_S, so a repeated request whose
    If-None-Match matches is answered 304 from Redis without reading the database; the TTL
    bounds how long a late reading landing in an old window can go unseen."""
    reader = _reader(request)
    if not past:
        return web.Response(body=await produce(), content_type="application/json")
    await reader.ensure_history_visible(principal, device_id)
    if_none_match = request.headers.get("If-None-Match")
    slot = reader.etag_slot(principal, device_id, request)
    if if_none_match:
        known = await reader.known_etag(slot)
        if known is not None and _matches(if_none_match, known):
            return web.Response(status=304, headers={"ETag": known, **CACHE_CONTROL})
    body = await produce()
    etag = await reader.remember_etag(slot, body)
    if if_none_match and _matches(if_none_match, etag):
        return web.Response(status=304, headers={"ETag": etag, **CACHE_CONTROL})
    return web.Response(
        body=body,
        content_type="application/json",
        headers={"ETag": etag, **CACHE_CONTROL},
    )


async def metrics(request: web.Request) -> web.Response:
    principal = await require_user(request)
    items = await _reader(request).metrics(principal, path_id(request, "device_id", "device"))
    return json_response(MetricList.model_validate({"items": items}))


async def raw(request: web.Request, query: RawQuery) -> web.Response:
    principal = await require_user(request)
    device_id = path_id(request, "device_id", "device")
    span = time_range(query, request.app[PLATFORM_KEY].settings.telemetry_max_range_days)
    return await _with_etag(
        request,
        principal,
        device_id,
        span.in_the_past,
        lambda: _reader(request).raw(principal, device_id, query, span),
    )


async def latest(request: web.Request) -> web.Response:
    principal = await require_user(request)
    device_id = path_id(request, "device_id", "device")
    # path_id takes the canonical spelling only: the text is str(device_id), already made.
    text = request.match_info["device_id"]
    return json_response(await _reader(request).latest(principal, device_id, text))


async def aggregate(request: web.Request, query: AggregateQuery) -> web.Response:
    principal = await require_user(request)
    device_id = path_id(request, "device_id", "device")
    span = time_range(query, request.app[PLATFORM_KEY].settings.telemetry_max_range_days)
    return await _with_etag(
        request,
        principal,
        device_id,
        span.in_the_past,
        lambda: _reader(request).aggregate(principal, device_id, query, span),
    )


async def stream_ticket(request: web.Request) -> web.Response:
    principal = await require_user(request)
    ticket = await request.app[LIVE_STREAM_KEY].issue_ticket(principal)
    return json_response(StreamTicket(ticket=ticket, expires_in=TICKET_TTL_S), status=201)


async def stream(request: web.Request, query: StreamQuery) -> web.StreamResponse:
    live = request.app[LIVE_STREAM_KEY]
    if query.ticket:
        principal = await live.redeem_ticket(query.ticket)
    else:
        principal = await require_user(request)
    device_ids: set[str] = set()
    reader = _reader(request)
    for raw_id in query.device_id:
        device_id = parse_uuid(raw_id)
        if device_id is None:
            raise NotFound("No such device.")
        await reader.ensure_visible(principal, device_id)
        device_ids.add(str(device_id))
    last_event_id = request.headers.get("Last-Event-ID") or query.last_event_id
    return await live.serve(request, principal, device_ids, last_event_id)


DEVICE = "/api/v1/devices/{device_id}"
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        f"{DEVICE}/metrics",
        metrics,
        "Metrics of a device, with last values",
        TAG,
        responses={200: MetricList},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        f"{DEVICE}/telemetry",
        raw,
        "Raw readings, cursor-paginated",
        TAG,
        query=RawQuery,
        responses={200: RawPage, 304: None},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        f"{DEVICE}/telemetry/latest",
        latest,
        "Latest value of each metric",
        TAG,
        responses={200: Latest},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        f"{DEVICE}/telemetry/aggregate",
        aggregate,
        "Aggregates per time bucket",
        TAG,
        query=AggregateQuery,
        responses={200: Aggregate, 304: None},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/telemetry/stream/ticket",
        stream_ticket,
        "A short-lived single-use ticket for EventSource",
        TAG,
        responses={201: StreamTicket},
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/telemetry/stream",
        stream,
        "Live telemetry (Server-Sent Events)",
        TAG,
        query=StreamQuery,
        response_content_type="text/event-stream",
        errors=(404,),
        security=("bearer", "stream_ticket"),
    ),
]


def setup(app: web.Application) -> None:
    platform = app[PLATFORM_KEY]
    reader = TelemetryReader(platform, app[DEVICE_REGISTRY_KEY])
    app[TELEMETRY_READER_KEY] = reader
    live = LiveStream(platform)
    app[LIVE_STREAM_KEY] = live

    async def end_streams(app: web.Application) -> None:
        await live.end_streams()

    async def close(app: web.Application) -> None:
        await live.close()
        await reader.close()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close)
