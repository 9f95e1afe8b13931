"""Rate limits kept in Redis, so every replica shares them.

- `AttemptLimiter`: attempts per subject in fixed windows, checked and counted atomically
  (logins, registrations, claims).
- `TokenBuckets`: several token buckets checked and charged in one Lua call (telemetry).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property

import orjson

from iotcore.platform.redis import Redis

# Attempt counters: KEYS = counters; ARGV = per key its limit, then its window (ms). If any
# counter is at its limit, counts nothing and returns the longest wait (ms); else counts the
# attempt on every key and returns 0. Check and count in one script: concurrent attempts
# cannot all pass a check made before any of them was counted.
_TAKE = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      ttl = tonumber(ARGV[2 * i])
      redis.call('PEXPIRE', key, ttl)
    end
    wait = math.max(wait, ttl)
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[2 * i]) end
end
return 0
"""

# Uncounts one attempt on every key (never below zero).
_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""

# Token buckets for one or many requests in one call: KEYS = every request's buckets in
# turn; ARGV[1] = now_ms, ARGV[2] = a JSON array with per request [cost, then (rate_per_s,
# burst) per bucket]: one argument for them all, as the client's cost is per argument. Each
# request is all or nothing: if any of its buckets lacks tokens, none is charged and its
# wait (ms) until they have them is returned (0 = allowed). Requests are charged one after
# the other, exactly as if each had made its own call.
_BUCKETS_MANY = """
local now = tonumber(ARGV[1])
local requests = cjson.decode(ARGV[2])
local k = 1
local out = {}
for r = 1, #requests do
  local request = requests[r]
  local cost = request[1]
  local n = (#request - 1) / 2
  local wait = 0
  local state = {}
  for i = 0, n - 1 do
    local rate = request[2 + 2 * i]
    local burst = request[3 + 2 * i]
    local v = redis.call('HMGET', KEYS[k + i], 't', 'ts')
    local tokens = tonumber(v[1]) or burst
    local ts = tonumber(v[2]) or now
    -- A call may carry an older clock than the last one (coalesced flushes race on
    -- different connections; replicas' clocks differ): no time passed, none taken back.
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
    ts = math.max(ts, now)
    if tokens < cost then
      wait = math.max(wait, math.ceil((cost - tokens) * 1000 / rate))
    end
    state[i] = {tokens, ts}
  end
  if wait == 0 then
    for i = 0, n - 1 do
      local rate = request[2 + 2 * i]
      local burst = request[3 + 2 * i]
      redis.call('HSET', KEYS[k + i], 't', state[i][1] - cost, 'ts', state[i][2])
      redis.call('PEXPIRE', KEYS[k + i], math.ceil(burst * 1000 / rate) + 1000)
    end
  end
  out[r] = wait
  k = k + n
end
return out
"""

MAX_COALESCED = 512


@dataclass(frozen=True)
class Limit:
    """At most `limit` attempts per `window_s` seconds for `subject`."""

    subject: str
    limit: int
    window_s: int


class AttemptLimiter:
    """Fixed-window attempt counters. An attempt is counted before it is evaluated, in the
    same Redis call as the check; a caller that succeeds hands its attempt back (`refund`),
    so only failures use up the limit."""

    def __init__(self, redis: Redis, name: str) -> None:
        self._redis = redis
        self._name = name
        self._take = redis.client.register_script(_TAKE)
        self._refund = redis.client.register_script(_REFUND)

    def _key(self, subject: str) -> str:
        return self._redis.key("rl", self._name, subject)

    async def take(self, *limits: Limit) -> int:
        """0 when the attempt may go ahead (and is counted), else seconds to wait."""
        args: list[int] = []
        for limit in limits:
            args.extend((limit.limit, limit.window_s * 1000))
        wait_ms = await self._take(keys=[self._key(lim.subject) for lim in limits], args=args)
        return -(-int(wait_ms) // 1000)

    async def refund(self, *limits: Limit) -> None:
        await self._refund(keys=[self._key(lim.subject) for lim in limits])


@dataclass(frozen=True)
class Bucket:
    key: str
    rate_per_s: float
    burst: float

    @cached_property
    def encoded_key(self) -> bytes:
        """The key as the client would encode it, once: a caller that keeps its buckets
        saves that on every call."""
        return self.key.encode()


class TokenBuckets:
    """Token buckets in Redis. The takes of concurrent requests that arrive in the same turn
    of the event loop go to Redis as one script call (each request still charged atomically
    and answered on its own): the Redis client's per-command cost is paid once per turn
    instead of once per request."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take_many = redis.client.register_script(_BUCKETS_MANY)
        self._pending: list[tuple[list[Bucket], int, float, asyncio.Future[float]]] = []
        self._flushing: set[asyncio.Future[list[float]]] = set()

    async def take(self, buckets: list[Bucket], now_ms: int, cost: float = 1) -> float:
        """Charge `cost` to every bucket, or to none; returns seconds to wait (0 = allowed)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((buckets, now_ms, cost, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending[:MAX_COALESCED], self._pending[MAX_COALESCED:]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        # Kept in _flushing until done (the loop holds only a weak reference).
        task = asyncio.ensure_future(self._many([(b, n, c) for b, n, c, _ in pending]))  # noqa: RUF006
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)
        task.add_done_callback(lambda done: _settle(done, [p[3] for p in pending]))

    async def _many(self, requests: list[tuple[list[Bucket], int, float]]) -> list[float]:
        keys: list[bytes] = []
        specs: list[list[float]] = []
        for buckets, _, cost in requests:
            spec = [cost]
            for bucket in buckets:
                keys.append(bucket.encoded_key)
                spec.append(bucket.rate_per_s)
                spec.append(bucket.burst)
            specs.append(spec)
        args = [repr(max(r[1] for r in requests)).encode(), orjson.dumps(specs)]
        waits = await self._take_many(keys=keys, args=args)
        return [int(w) / 1000 for w in waits]


def _settle(done: asyncio.Future[list[float]], futures: list[asyncio.Future[float]]) -> None:
    error = None if done.cancelled() else done.exception()
    for index, future in enumerate(futures):
        if future.done():
            continue
        if done.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[index])
