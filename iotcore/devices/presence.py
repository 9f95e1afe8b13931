"""Presence: whether each device is connected now (docs/api.md, "Presence").

Three sources feed it: the embedded broker's own connections (iotcore/mqtt/broker/server.py),
EMQX's client.connected / client.disconnected events posted to `POST /api/v1/mqtt/events`,
and the device's retained `status` message (`{"online": true|false}`, also its last will),
read in-process by the embedded broker and by a subscriber in `iotcore ingest` elsewhere.
The database decides (migrations/0016_presence.sql): each event names the broker session it
belongs to, so events that arrive late or twice change nothing, and a transition is stored,
notified on channel `iotcore_presence` and, after the commit, published as a `presence` event
on the tenant's live stream. Nothing here runs per telemetry message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from iotcore.platform.context import Platform
from iotcore.platform.metrics import PRESENCE_EVENTS
from iotcore.platform.redis import Redis
from iotcore.platform.shutdown import cancelling, stop_tasks
from iotcore.platform.types import parse_uuid, rfc3339_ms
from iotcore.telemetry.derived import publish_event

log = logging.getLogger("iotcore.presence")

CHANNEL = "iotcore_presence"
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_STATUS_TOPIC = re.compile(rf"tenants/({_UUID})/devices/({_UUID})/status")
QUEUE_LIMIT = 100_000


@dataclass(frozen=True)
class PresenceEvent:
    tenant_id: UUID
    device_id: UUID
    source: str  # embedded, emqx, status
    connected: bool
    session: int | None  # the broker session's connect time (epoch ms) or generation
    at: datetime
    node: str | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def status_topic(topic: str) -> tuple[UUID, UUID] | None:
    """(tenant, device) of a device's status topic, canonical ids only."""
    match = _STATUS_TOPIC.fullmatch(topic)
    if match is None:
        return None
    tenant, device = parse_uuid(match.group(1)), parse_uuid(match.group(2))
    if tenant is None or device is None:
        return None
    return tenant, device


def parse_status(payload: bytes) -> bool | None:
    """`{"online": true|false}` (other fields are ignored); None for anything else. An empty
    payload clears a retained message and says nothing."""
    if not payload or len(payload) > 4096:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    online = data.get("online")
    return online if isinstance(online, bool) else None


def _live(
    device_id: UUID, connected: bool, connected_at: Any, disconnected_at: Any
) -> dict[str, Any]:
    return {
        "device_id": str(device_id),
        "connected": connected,
        "connected_at": rfc3339_ms(connected_at) if connected_at else None,
        "disconnected_at": rfc3339_ms(disconnected_at) if disconnected_at else None,
    }


class Presence:
    """Applies presence events through the database and publishes the transitions."""

    def __init__(self, platform: Platform) -> None:
        self._db = platform.db
        self._redis = platform.redis
        self._sql = platform.queries("presence")

    async def apply(self, event: PresenceEvent) -> str:
        """'changed', 'unchanged' or 'ignored' (unknown device, another tenant's, no
        credentials)."""
        try:
            row = await self._db.primary.fetchrow(
                self._sql["apply"],
                event.tenant_id,
                event.device_id,
                event.source,
                event.connected,
                event.session,
                event.at,
                event.node,
            )
        except Exception:
            PRESENCE_EVENTS.labels(event.source, "failed").inc()
            raise
        outcome = "ignored" if row is None else "changed" if row["changed"] else "unchanged"
        PRESENCE_EVENTS.labels(event.source, outcome).inc()
        if outcome == "changed":
            data = _live(
                event.device_id, row["connected"], row["connected_at"], row["disconnected_at"]
            )
            await publish_presence(self._redis, event.tenant_id, data)
        return outcome

    async def touch(self, node: str, device_ids: list[UUID]) -> None:
        if device_ids:
            await self._db.primary.fetchval(self._sql["touch"], node, device_ids)

    async def expire(self, node: str | None, stale_s: float | None, source: str) -> int:
        """Offline without an event: a restarted node's devices (`node`), or devices with no
        sign of life for `stale_s`. Returns how many changed."""
        stale = timedelta(seconds=stale_s) if stale_s is not None else None
        rows = await self._db.primary.fetch(self._sql["expire"], node, stale, source)
        await publish_expired(self._redis, rows, source)
        return len(rows)


async def publish_presence(redis: Redis, tenant_id: UUID, data: dict[str, Any]) -> None:
    await publish_event(redis, tenant_id, "presence", data)


async def publish_expired(redis: Redis, rows: list[Any], source: str) -> None:
    for row in rows:
        PRESENCE_EVENTS.labels(source, "changed").inc()
        await publish_presence(
            redis,
            row["tenant_id"],
            _live(row["device_id"], False, row["connected_at"], row["disconnected_at"]),
        )


class PresenceQueue:
    """Events handed over by code that must not wait (the embedded broker's connection
    callbacks), applied by a few workers. Order does not matter (the database orders them by
    session); the queue is bounded, and an event lost to it or to a database outage leaves
    at worst a device online until the staleness rule, never for ever."""

    def __init__(self, presence: Presence, workers: int = 4) -> None:
        self._presence = presence
        self._queue: asyncio.Queue[PresenceEvent] = asyncio.Queue(QUEUE_LIMIT)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def put(self, event: PresenceEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            PRESENCE_EVENTS.labels(event.source, "dropped").inc()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name="presence-worker") for _ in range(self._workers)
        ]

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a bounded time) until what was queued is applied."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []

    async def _work(self) -> None:
        # Not `while True`: a library that swallows the stop's cancellation (seen here) would
        # leave the worker waiting for the next event for ever.
        while not cancelling():
            event = await self._queue.get()
            try:
                await self._presence.apply(event)
            except Exception as exc:
                log.warning("presence event not applied", extra={"error": type(exc).__name__})
            finally:
                self._queue.task_done()
