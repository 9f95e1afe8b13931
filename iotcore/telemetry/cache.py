"""The writer's side of the telemetry cache in Redis (keys and lifetimes in derived.py, which
the read side shares): after each commit, the latest value of each metric of a (tenant,
device) (a hash), and the live stream of each tenant (one entry per tenant and batch). Best
effort: the data is committed already, and the read API falls back to the database when
the cache is missing."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any
from uuid import UUID

import orjson
from redis.exceptions import NoScriptError

from iotcore.platform.redis import Redis
from iotcore.telemetry.derived import LATEST_TTL_S, LIVE_TTL_S, LIVE_WINDOW_MS, latest_key, live_key
from iotcore.telemetry.ingest.store import Submission

log = logging.getLogger("iotcore.telemetry.cache")

# Keep the newest value per metric, for many devices in one call: KEYS = one hash per
# (tenant, device); ARGV[1] = the hashes' TTL, ARGV[2] = a JSON array with per key its
# [metric, ts_ms, value_json] rows (one argument for them all: the client's cost is per
# argument).
_LATEST = """
local rows = cjson.decode(ARGV[2])
for k = 1, #KEYS do
  local key = KEYS[k]
  for _, row in ipairs(rows[k]) do
    local old = redis.call('HGET', key, row[1])
    if (not old) or tonumber(cjson.decode(old)[1]) < row[2] then
      redis.call('HSET', key, row[1], row[3])
    end
  end
  redis.call('EXPIRE', key, ARGV[1])
end
return 0
"""


class TelemetryCache:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._latest = redis.client.register_script(_LATEST)

    async def after_commit(self, batch: list[Submission], newest: list[list[Any]]) -> None:
        """Latest values and live stream: a few Redis commands per batch, not per message."""
        redis = self._redis
        try:
            pipe = redis.client.pipeline(transaction=False)
            min_id = f"{int(time.time() * 1000) - LIVE_WINDOW_MS}"
            live: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
            names: dict[UUID, str] = {}
            for submission in batch:
                tenant_id, device_id = submission.tenant_id, submission.device_id
                if tenant_id is None or device_id is None or not submission.points:
                    continue
                name = names.get(device_id)
                if name is None:
                    name = names[device_id] = str(device_id)
                points = live[tenant_id]
                for point in submission.points:
                    ts_ms = int(point.ts.timestamp() * 1000)
                    points.append({"device_id": name, "ts": ts_ms, "metrics": point.metrics})
            for tenant_id, points in live.items():
                # One entry per tenant and batch; the stream turns it into one event a point.
                key = live_key(redis, tenant_id)
                pipe.xadd(key, {"b": orjson.dumps(points)}, minid=min_id, approximate=True)
                pipe.expire(key, LIVE_TTL_S)
            if newest:
                by_device: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)
                for tenant, device, metric, ts_ms, value in newest:
                    by_device[tenant, device].append(
                        [metric, ts_ms, orjson.dumps([ts_ms, value]).decode()]
                    )
                keys = [latest_key(redis, *tenant_device) for tenant_device in by_device]
                args: list[int | bytes] = [LATEST_TTL_S, orjson.dumps(list(by_device.values()))]
                # evalsha queued directly: the Script object on a pipeline makes every
                # execute ask SCRIPT EXISTS first, a round trip per batch.
                pipe.evalsha(self._latest.sha, len(keys), *keys, *args)
            try:
                await pipe.execute()
            except NoScriptError:
                # Redis lost its scripts (restarted, or SCRIPT FLUSH); the rest of the
                # pipeline ran. The Script object loads it again.
                await self._latest(keys=keys, args=args)
        except Exception:
            log.warning("post-commit cache update failed", exc_info=True)
