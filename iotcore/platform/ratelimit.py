"""Rate limits kept in Redis, so every replica shares them.

- `FixedWindow`: count events per key in a window (failed logins, claim attempts).
- `TokenBuckets`: several token buckets checked and charged in one Lua call (telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass

from iotcore.platform.redis import Redis

# KEYS: counters; ARGV[1]: window seconds. Increments every key, returns for each its count
# and remaining TTL (ms), in one round trip.
_HIT = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1] * 1000) end
  out[#out + 1] = n
  out[#out + 1] = redis.call('PTTL', key)
end
return out
"""

# KEYS: buckets; ARGV: now_ms, cost, then (rate_per_s, burst) per key. All or nothing: if any
# bucket lacks tokens nothing is charged and the wait (ms) until it has them is returned.
_BUCKETS = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local wait = 0
local state = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local v = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  if tokens < cost then
    wait = math.max(wait, math.ceil((cost - tokens) * 1000 / rate))
  end
  state[i] = tokens
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  redis.call('HSET', key, 't', state[i] - cost, 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
end
return 0
"""


@dataclass(frozen=True)
class WindowState:
    count: int
    retry_after_s: int


class FixedWindow:
    """At most `limit` events per `window_s` seconds per key."""

    def __init__(self, redis: Redis, name: str, limit: int, window_s: int) -> None:
        self._redis = redis
        self._name = name
        self.limit = limit
        self.window_s = window_s
        self._hit = redis.client.register_script(_HIT)

    def _key(self, subject: str) -> str:
        return self._redis.key("rl", self._name, subject)

    async def exceeded(self, *subjects: str) -> int:
        """Seconds to wait when any subject is at its limit already, else 0 (counts nothing)."""
        keys = [self._key(s) for s in subjects]
        pipe = self._redis.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        values = await pipe.execute()
        wait_ms = 0
        for count, ttl in zip(values[0::2], values[1::2], strict=True):
            if count is not None and int(count) >= self.limit:
                wait_ms = max(wait_ms, int(ttl) if int(ttl) > 0 else self.window_s * 1000)
        return -(-wait_ms // 1000)

    async def hit(self, *subjects: str) -> int:
        """Count one event for each subject; returns the seconds to wait if any went over."""
        raw = await self._hit(keys=[self._key(s) for s in subjects], args=[self.window_s])
        wait_ms = 0
        for count, ttl in zip(raw[0::2], raw[1::2], strict=True):
            if int(count) > self.limit:
                wait_ms = max(wait_ms, int(ttl))
        return -(-wait_ms // 1000)

    async def reset(self, *subjects: str) -> None:
        await self._redis.client.delete(*(self._key(s) for s in subjects))


@dataclass(frozen=True)
class Bucket:
    key: str
    rate_per_s: float
    burst: float


class TokenBuckets:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = redis.client.register_script(_BUCKETS)

    async def take(self, buckets: list[Bucket], now_ms: int, cost: float = 1) -> float:
        """Charge `cost` to every bucket, or to none; returns seconds to wait (0 = allowed)."""
        args: list[float] = [now_ms, cost]
        for bucket in buckets:
            args.extend((bucket.rate_per_s, bucket.burst))
        wait_ms = await self._take(keys=[b.key for b in buckets], args=args)
        return int(wait_ms) / 1000
