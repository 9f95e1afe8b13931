"""Live telemetry as Server-Sent Events, fed by the writer's per-tenant Redis Stream.

The stream entry id is the SSE event id, so a client that reconnects with Last-Event-ID
resumes exactly where it stopped (the writer keeps the last five minutes). Browsers'
EventSource cannot send an Authorization header, so it authenticates with a short-lived,
single-use ticket obtained with the access token, instead of a long-lived token in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from iotcore.auth.principal import UserPrincipal
from iotcore.platform.context import Platform
from iotcore.platform.errors import Unauthenticated, ValidationFailed
from iotcore.platform.types import rfc3339_ms
from iotcore.telemetry.derived import live_key

TICKET_TTL_S = 60
HEARTBEAT_S = 15
BLOCK_MS = 5000
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class LiveStream:
    def __init__(self, platform: Platform) -> None:
        self._redis = platform.redis
        # Blocking reads need their own connections, with a timeout above the block time.
        self._reader = aioredis.Redis.from_url(
            platform.settings.redis_url,
            socket_timeout=BLOCK_MS / 1000 + 5,
            socket_connect_timeout=platform.settings.redis_timeout_s,
        )

    async def close(self) -> None:
        await self._reader.aclose()

    async def issue_ticket(self, principal: UserPrincipal) -> str:
        ticket = secrets.token_urlsafe(24)
        value = orjson.dumps(
            {"u": str(principal.user_id), "t": str(principal.tenant_id), "r": principal.role}
        )
        await self._redis.client.set(self._redis.key("ticket", ticket), value, ex=TICKET_TTL_S)
        return ticket

    async def redeem_ticket(self, ticket: str) -> UserPrincipal:
        raw = await self._redis.client.getdel(self._redis.key("ticket", ticket))
        if raw is None:
            raise Unauthenticated("The stream ticket is unknown, used or expired.")
        data = orjson.loads(raw)
        return UserPrincipal(UUID(data["u"]), UUID(data["t"]), data["r"])

    async def serve(
        self,
        request: web.Request,
        principal: UserPrincipal,
        device_ids: set[str],
        last_event_id: str | None,
    ) -> web.StreamResponse:
        if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
            raise ValidationFailed.field("Last-Event-ID", "not an event id of this stream")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        key = live_key(self._redis, principal.tenant_id)
        position = last_event_id or "$"
        idle = 0.0
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                answer: Any = await self._reader.xread({key: position}, count=500, block=BLOCK_MS)
                if not answer:
                    idle += BLOCK_MS / 1000
                    if idle >= HEARTBEAT_S:
                        await response.write(b": heartbeat\n\n")
                        idle = 0.0
                    continue
                idle = 0.0
                for entry_id, fields in answer[0][1]:
                    position = entry_id.decode()
                    chunk = _events(entry_id, fields, device_ids)
                    if chunk:
                        await response.write(chunk)
        return response


def _events(entry_id: bytes, fields: dict[bytes, bytes], device_ids: set[str]) -> bytes:
    """The SSE events of one stream entry: the writer adds one entry per tenant and batch
    ("b", a list of points; "p", one point, from before batching). The entry id goes on
    the entry's last event only: a client cut off inside an entry resumes from the previous
    entry and gets this one whole again, so nothing is skipped."""
    points = orjson.loads(fields[b"b"]) if b"b" in fields else [orjson.loads(fields[b"p"])]
    events = []
    for point in points:
        if device_ids and point["device_id"] not in device_ids:
            continue
        data = orjson.dumps(
            {
                "device_id": point["device_id"],
                "ts": rfc3339_ms_from_ms(point["ts"]),
                "metrics": point["metrics"],
            }
        )
        events.append(b"event: telemetry\ndata: " + data + b"\n\n")
    if events:
        events[-1] = b"id: " + entry_id + b"\n" + events[-1]
    return b"".join(events)


def rfc3339_ms_from_ms(ts_ms: int) -> str:
    return rfc3339_ms(datetime.fromtimestamp(ts_ms / 1000, UTC))


LIVE_STREAM_KEY = web.AppKey("live_stream", LiveStream)
