"""Live telemetry as Server-Sent Events, fed by the writer's per-tenant Redis Stream.

The stream entry id is the SSE event id, so a client that reconnects with Last-Event-ID
resumes exactly where it stopped (the writer keeps the last five minutes). Browsers'
EventSource cannot send an Authorization header, so it authenticates with a short-lived,
single-use ticket obtained with the access token, instead of a long-lived token in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from iotcore.auth.principal import UserPrincipal
from iotcore.platform.context import Platform
from iotcore.platform.errors import RateLimited, Unauthenticated, Unavailable, ValidationFailed
from iotcore.telemetry.derived import live_key, rfc3339_ms_from_ms

TICKET_TTL_S = 60
HEARTBEAT_S = 15
BLOCK_MS = 5000
# How often a stream checks that its client is still there, and renews its slot.
CHECK_S = 5
SLOT_LEASE_S = 60
# Entries buffered per stream; a client this far behind is cut and resumes with Last-Event-ID.
QUEUE_ENTRIES = 256
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
log = logging.getLogger("iotcore.stream")

# Stream slots, leased so a crashed replica's slots free themselves. KEYS: the user's and the
# tenant's sorted sets (member: slot id, score: lease end in ms); ARGV: now_ms, lease_ms, slot
# id, user cap, tenant cap. Returns 0 (slot taken), 1 (user at cap) or 2 (tenant at cap).
_OPEN_SLOT = """
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', key, ARGV[2])
end
return 0
"""

Entry = tuple[bytes, dict[bytes, bytes]]


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Feed:
    """One tenant's stream read once for every client of this process."""

    subscribers: set[asyncio.Queue[Entry | None]] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Slot:
    keys: tuple[str, str]
    slot_id: str


class LiveStream:
    """Every open stream of a tenant in this process shares one blocking read of the
    tenant's Redis Stream (a feed), and every feed draws from one bounded connection pool:
    Redis connections grow with active tenants up to the pool size, not with viewers.
    Open streams are capped per user and per tenant across replicas (leased slots)."""

    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self._redis = platform.redis
        self._max_per_user = settings.stream_max_per_user
        self._max_per_tenant = settings.stream_max_per_tenant
        # Blocking reads need a timeout above the block time; a feed waits for a free
        # connection rather than opening one more.
        self._reader = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.stream_redis_connections,
                timeout=BLOCK_MS / 1000 + 5,
                socket_timeout=BLOCK_MS / 1000 + 5,
                socket_connect_timeout=settings.redis_timeout_s,
                client_name=f"{settings.redis_prefix}live",
            )
        )
        self._feeds: dict[UUID, _Feed] = {}
        self._ending = False
        self._open_slot = self._redis.client.register_script(_OPEN_SLOT)

    async def end_streams(self) -> None:
        """On shutdown (before the server waits for its handlers): every open stream ends
        now, and no new one starts. EventSource reconnects on its own, with Last-Event-ID,
        to another replica or to this one once it is back, so nothing is lost; left open, a
        stream would hold shutdown for the server's whole grace period."""
        self._ending = True
        for feed in list(self._feeds.values()):
            for queue in list(feed.subscribers):
                _cut(feed, queue)

    async def close(self) -> None:
        for feed in list(self._feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
        self._feeds.clear()
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

    # slots -------------------------------------------------------------------------------

    async def _take_slot(self, principal: UserPrincipal) -> _Slot:
        slot = _Slot(
            (
                self._redis.key("streams", "user", str(principal.user_id)),
                self._redis.key("streams", "tenant", str(principal.tenant_id)),
            ),
            secrets.token_hex(8),
        )
        outcome = await self._open_slot(
            keys=list(slot.keys),
            args=[
                int(time.time() * 1000),
                SLOT_LEASE_S * 1000,
                slot.slot_id,
                self._max_per_user,
                self._max_per_tenant,
            ],
        )
        if outcome == 1:
            raise RateLimited(CHECK_S, "Too many live streams open for this user.")
        if outcome == 2:
            raise RateLimited(CHECK_S, "Too many live streams open for this tenant.")
        return slot

    async def _renew_slot(self, slot: _Slot) -> None:
        until = int(time.time() * 1000) + SLOT_LEASE_S * 1000
        pipe = self._redis.client.pipeline(transaction=False)
        for key in slot.keys:
            pipe.zadd(key, {slot.slot_id: until}, xx=True)
            pipe.pexpire(key, SLOT_LEASE_S * 1000)
        await pipe.execute()

    async def _release_slot(self, slot: _Slot) -> None:
        with contextlib.suppress(Exception):  # the lease frees it anyway
            pipe = self._redis.client.pipeline(transaction=False)
            for key in slot.keys:
                pipe.zrem(key, slot.slot_id)
            await pipe.execute()

    # feeds -------------------------------------------------------------------------------

    async def _subscribe(self, tenant_id: UUID) -> asyncio.Queue[Entry | None]:
        feed = self._feeds.get(tenant_id)
        if feed is None or feed.task is None or feed.task.done():
            feed = _Feed()
            self._feeds[tenant_id] = feed
            feed.task = asyncio.create_task(self._run_feed(tenant_id, feed), name="live-feed")
        queue: asyncio.Queue[Entry | None] = asyncio.Queue(QUEUE_ENTRIES)
        feed.subscribers.add(queue)
        # From here on every entry the feed reads reaches this queue.
        await asyncio.wait_for(feed.ready.wait(), BLOCK_MS / 1000 + 5)
        return queue

    def _unsubscribe(self, tenant_id: UUID, queue: asyncio.Queue[Entry | None]) -> None:
        feed = self._feeds.get(tenant_id)
        if feed is None:
            return
        feed.subscribers.discard(queue)
        if not feed.subscribers:
            del self._feeds[tenant_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _run_feed(self, tenant_id: UUID, feed: _Feed) -> None:
        key = live_key(self._redis, tenant_id)
        try:
            newest: Any = await self._reader.xrevrange(key, count=1)
            position = newest[0][0] if newest else b"0-0"
            feed.ready.set()
            while True:
                answer: Any = await self._reader.xread({key: position}, count=500, block=BLOCK_MS)
                for entry_id, fields in answer[0][1] if answer else ():
                    position = entry_id
                    for queue in list(feed.subscribers):
                        try:
                            queue.put_nowait((entry_id, fields))
                        except asyncio.QueueFull:
                            _cut(feed, queue)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Every client of the feed is cut; each reconnects with Last-Event-ID.
            log.warning("live feed failed", exc_info=True)
            for queue in list(feed.subscribers):
                _cut(feed, queue)
        finally:
            if self._feeds.get(tenant_id) is feed:
                del self._feeds[tenant_id]

    async def _catch_up(
        self, key: str, after: str, response: web.StreamResponse, device_ids: set[str]
    ) -> tuple[int, int]:
        """Entries after `after` already in the stream; returns the last one's id."""
        last = _entry_id(after)
        while True:
            entries: Any = await self._redis.client.xrange(key, min=f"({after}", max="+", count=500)
            for entry_id, fields in entries:
                last, after = _entry_id(entry_id), entry_id.decode()
                chunk = _events(entry_id, fields, device_ids)
                if chunk:
                    await response.write(chunk)
            if len(entries) < 500:
                return last

    # serving -----------------------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        principal: UserPrincipal,
        device_ids: set[str],
        last_event_id: str | None,
    ) -> web.StreamResponse:
        if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
            raise ValidationFailed.field("Last-Event-ID", "not an event id of this stream")
        if self._ending:
            raise Unavailable("The server is shutting down; reconnect.", retry_after_s=1)
        slot = await self._take_slot(principal)
        try:
            queue = await self._subscribe(principal.tenant_id)
            try:
                return await self._stream(
                    request, principal, queue, device_ids, last_event_id, slot
                )
            finally:
                self._unsubscribe(principal.tenant_id, queue)
        finally:
            await self._release_slot(slot)

    async def _stream(
        self,
        request: web.Request,
        principal: UserPrincipal,
        queue: asyncio.Queue[Entry | None],
        device_ids: set[str],
        last_event_id: str | None,
        slot: _Slot,
    ) -> web.StreamResponse:
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
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            sent = None
            if last_event_id is not None:
                sent = await self._catch_up(key, last_event_id, response, device_ids)
            last_write = renewed = time.monotonic()
            while request.transport is not None and not request.transport.is_closing():
                if time.monotonic() - renewed >= SLOT_LEASE_S / 4:
                    await self._renew_slot(slot)
                    renewed = time.monotonic()
                try:
                    item = await asyncio.wait_for(queue.get(), CHECK_S)
                except TimeoutError:
                    if time.monotonic() - last_write >= HEARTBEAT_S:
                        await response.write(b": heartbeat\n\n")
                        last_write = time.monotonic()
                    continue
                if item is None:
                    break  # cut: too far behind, or the feed failed
                entry_id, fields = item
                if sent is not None and _entry_id(entry_id) <= sent:
                    continue  # already sent by the catch-up
                sent = _entry_id(entry_id)
                chunk = _events(entry_id, fields, device_ids)
                if chunk:
                    await response.write(chunk)
                    last_write = time.monotonic()
        return response


def _cut(feed: _Feed, queue: asyncio.Queue[Entry | None]) -> None:
    feed.subscribers.discard(queue)
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


def _events(entry_id: bytes, fields: dict[bytes, bytes], device_ids: set[str]) -> bytes:
    """The SSE events of one stream entry: the writer adds one entry per tenant and batch
    ("b", its list of points); other events ("e": the kind, "d": its JSON) are one entry
    each. The entry id goes on the entry's last event only: a client cut off inside an entry
    resumes from the previous entry and gets this one whole again, so nothing is skipped."""
    if b"e" in fields:  # one event of another kind (derived.publish_event)
        data = fields[b"d"]
        device = orjson.loads(data).get("device_id")
        if device_ids and device not in device_ids:
            return b""
        return b"id: " + entry_id + b"\nevent: " + fields[b"e"] + b"\ndata: " + data + b"\n\n"
    points = orjson.loads(fields[b"b"])
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


LIVE_STREAM_KEY = web.AppKey("live_stream", LiveStream)
