"""Derived device state in Redis: the latest-values hash, cached ETags and the live stream.

Every key names the tenant (ARCHITECTURE.md, "Derived state belongs to a tenant"): a device
changes hands on reset and re-claim, and a key of one tenant never answers another. Each key
expires; the database stays the truth (the read API refills the latest values from
telemetry_latest), so losing or clearing a key costs one read, never a wrong answer.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import orjson

from iotcore.platform.redis import Redis
from iotcore.platform.types import rfc3339_ms

log = logging.getLogger("iotcore.telemetry.derived")

# Refreshed on every write and refill: a quiet device's hash goes after a day.
LATEST_TTL_S = 86_400
# How long a late reading landing in an old window can go unseen behind a cached ETag.
ETAG_TTL_S = 300
# The live stream keeps five minutes of entries (the writer trims it on each write); a
# tenant that stops sending loses the key once they are all stale.
LIVE_WINDOW_MS = 5 * 60 * 1000
LIVE_TTL_S = 2 * LIVE_WINDOW_MS // 1000

# Deletes a device's ETags (listed in the index sorted set) and the index, in one call so
# that none is added in between. KEYS[1] = the index; ARGV[1] = the ETag keys' common prefix.
_CLEAR_ETAGS = """
local digests = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, digest in ipairs(digests) do
  redis.call('DEL', ARGV[1] .. digest)
end
return redis.call('DEL', KEYS[1])
"""


@functools.lru_cache(maxsize=8192)
def rfc3339_ms_from_ms(ts_ms: int) -> str:
    """An epoch-milliseconds time as the API writes times. Remembered: a device's metrics,
    and many devices, share the instants they were sent at, and the latest-values read
    formats each of them on every request."""
    return rfc3339_ms(datetime.fromtimestamp(ts_ms / 1000, UTC))


class HashReads:
    """HGETALL on a few Redis connections of its own, for the latest-values read that every
    dashboard repeats. The shared client's pool takes its lock, checks the connection for
    unread data and records metrics around each command, twice the work of the command
    itself; here each call takes an idle connection, sends, reads and puts it back. The
    connections are the client's own kind (its URL, TLS, credentials, timeouts and health
    checks); one that fails or is cancelled mid-command is disconnected by redis-py and
    connects again on its next use. With all `size` busy, the shared client answers."""

    def __init__(self, redis: Redis, size: int) -> None:
        self._client = redis.client
        self._size = size
        self._idle: list[Any] = []
        self._made: list[Any] = []

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        if self._idle:
            conn = self._idle.pop()
        elif len(self._made) < self._size:
            conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            self._made.append(conn)
        else:
            # decode_responses=False (platform/redis.py): names and values are bytes.
            return cast("dict[bytes, bytes]", await self._client.hgetall(key))
        try:
            await conn.send_command("HGETALL", key)
            reply = await conn.read_response()
        finally:
            self._idle.append(conn)
        if isinstance(reply, dict):  # RESP3: a map
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))  # RESP2: name, value, ...

    async def close(self) -> None:
        for conn in self._made:
            await conn.disconnect()
        self._made.clear()
        self._idle.clear()


def latest_key(redis: Redis, tenant_id: UUID | str, device_id: UUID | str) -> str:
    return redis.key("latest", str(tenant_id), str(device_id))


def live_key(redis: Redis, tenant_id: UUID | str) -> str:
    return redis.key("live", str(tenant_id))


async def publish_event(
    redis: Redis, tenant_id: UUID | str, kind: str, data: dict[str, Any]
) -> None:
    """One event other than telemetry (`command`, `presence`) on the tenant's live stream,
    after the change it reports is committed. `data` carries the `device_id` the stream's
    device filter matches on. Best effort, as for telemetry: the database stays the truth
    (a client that missed an event reads the resource again), so a Redis outage is logged,
    never raised into the committed change."""
    try:
        key = live_key(redis, tenant_id)
        min_id = f"{int(time.time() * 1000) - LIVE_WINDOW_MS}"
        pipe = redis.client.pipeline(transaction=False)
        pipe.xadd(key, {"e": kind, "d": orjson.dumps(data)}, minid=min_id, approximate=True)
        pipe.expire(key, LIVE_TTL_S)
        await pipe.execute()
    except Exception:
        log.warning("live event not published", extra={"kind": kind}, exc_info=True)


@dataclass(frozen=True)
class EtagSlot:
    """Where the ETag of one response (tenant, device, digest of path and query) is kept."""

    tenant_id: UUID
    device_id: UUID
    digest: str

    def index(self, redis: Redis) -> str:
        """The sorted set of the device's cached digests (score: expiry), for clearing."""
        return redis.key("etag", str(self.tenant_id), str(self.device_id))

    def key(self, redis: Redis) -> str:
        return self.index(redis) + ":" + self.digest


async def remember_etag(redis: Redis, slot: EtagSlot, etag: str) -> None:
    now_ms = int(time.time() * 1000)
    index = slot.index(redis)
    pipe = redis.client.pipeline(transaction=False)
    pipe.set(slot.key(redis), etag, ex=ETAG_TTL_S)
    pipe.zadd(index, {slot.digest: now_ms + ETAG_TTL_S * 1000})
    pipe.zremrangebyscore(index, "-inf", now_ms)  # the index holds live entries only
    pipe.expire(index, ETAG_TTL_S)
    await pipe.execute()


async def clear_device_state(redis: Redis, tenant_id: UUID, device_id: UUID) -> None:
    """Drop the tenant's latest values and ETags of the device (reset, claim). Best effort:
    every key is the tenant's own and expires, so a Redis outage here shows nothing to
    another tenant; the reset itself is already committed."""
    slot = EtagSlot(tenant_id, device_id, "")
    try:
        await redis.client.delete(latest_key(redis, tenant_id, device_id))
        await redis.client.eval(_CLEAR_ETAGS, 1, slot.index(redis), slot.key(redis))
    except Exception:
        log.warning("could not clear a device's cached state", exc_info=True)
