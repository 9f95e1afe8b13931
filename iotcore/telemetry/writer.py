"""The one write path for MQTT and HTTP telemetry.

Submissions wait in a queue bounded by rows. One task takes them in batches (by size or
age), inserts every tenant's rows with app.tenant_id set, in one transaction, commits, and
only then resolves each submission's future: that is when MQTT acks and HTTP answers 202.
After the commit it updates the latest-values hashes and the live streams in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from iotcore.platform.context import Platform
from iotcore.platform.db import set_tenant
from iotcore.platform.errors import Overloaded
from iotcore.platform.metrics import (
    INGEST_LAG,
    INGEST_MESSAGES,
    INGEST_PUBLISH_LAG,
    INGEST_REJECTS,
    WRITER_BATCH_ROWS,
    WRITER_COMMIT_SECONDS,
    WRITER_QUEUE_DEPTH,
)
from iotcore.platform.sql import queries
from iotcore.telemetry.derived import LATEST_TTL_S, LIVE_TTL_S, LIVE_WINDOW_MS, latest_key, live_key
from iotcore.telemetry.payload import Point

log = logging.getLogger("iotcore.telemetry.writer")
SQL = queries("telemetry")
EXCERPT_CHARS = 256

# Keep the newest value per metric, for many devices in one call: KEYS = one hash per
# (tenant, device); ARGV = the hashes' TTL, then for each key a count n, then n times
# (metric, ts_ms, value_json).
_LATEST = """
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    local old = redis.call('HGET', KEYS[k], ARGV[a])
    if (not old) or tonumber(cjson.decode(old)[1]) < tonumber(ARGV[a + 1]) then
      redis.call('HSET', KEYS[k], ARGV[a], ARGV[a + 2])
    end
    a = a + 3
  end
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return 0
"""

TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str
    tenant_id: UUID | None = None
    device_id: UUID | None = None
    topic: str | None = None
    excerpt: str | None = None


@dataclass(frozen=True)
class WriteResult:
    accepted: int
    stored: int
    duplicates: int
    rejected: int


@dataclass
class Submission:
    transport: str
    tenant_id: UUID | None
    device_id: UUID | None
    points: list[Point]
    rejects: list[Reject] = field(default_factory=list)
    received_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future[WriteResult] | None = None
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = sum(len(p.metrics) for p in self.points)


@dataclass
class Committed:
    results: list[WriteResult]  # one per submission of the batch
    newest: list[list[Any]]  # [tenant_id, device_id, metric, ts_ms, value] that became newest


class StorageRefused(Exception):
    """The database refused the batch for a reason retrying will not fix."""


class TelemetryWriter:
    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self._platform = platform
        self._batch_rows = settings.writer_batch_rows
        self._batch_age_s = settings.writer_batch_age_ms / 1000
        self._capacity = settings.writer_queue_rows
        # Each item is one HTTP submission or one MQTT hand-off of many messages.
        self._queue: asyncio.Queue[list[Submission]] = asyncio.Queue()
        self._queued_rows = 0
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._latest = platform.redis.client.register_script(_LATEST)
        self.healthy = True

    # ------------------------------------------------------------------ submitting

    def _enqueue(self, item: list[Submission], rows: int) -> asyncio.Future[WriteResult]:
        # One future for the item, on its last submission: batches are written in queue
        # order, so when it resolves every submission of the item is committed.
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        item[-1].future = future
        self._queued_rows += rows
        WRITER_QUEUE_DEPTH.set(self._queued_rows)
        if self._queued_rows >= self._capacity:
            self._space.clear()
        self._queue.put_nowait(item)
        return future

    def submit_nowait(self, submission: Submission) -> asyncio.Future[WriteResult]:
        """For HTTP: a full queue is an immediate 503 overloaded."""
        rows = _weight(submission)
        if self._queued_rows + rows > self._capacity:
            raise Overloaded("The write queue is full; retry later.", retry_after_s=1)
        return self._enqueue([submission], rows)

    async def submit_many(self, submissions: list[Submission]) -> asyncio.Future[WriteResult]:
        """For MQTT: many messages in one hand-off, and a future that resolves when all of
        them are committed (with the last one's result). Waits for room, so that the
        consumer stops reading (and acking) instead of growing the queue."""
        rows = sum(_weight(s) for s in submissions)
        while self._queued_rows + rows > self._capacity and self._queued_rows:
            # Cleared first: the event may still be set (some room, not enough for this
            # hand-off), and waiting on a set event would spin without yielding.
            self._space.clear()
            await self._space.wait()
        return self._enqueue(submissions, rows)

    # ------------------------------------------------------------------ the batch loop

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(_STOP)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _next_batch(self) -> tuple[list[Submission], bool]:
        first = await self._queue.get()
        if first is _STOP:
            return [], True
        batch, rows = list(first), sum(s.rows for s in first)
        # Group commit: take what is queued now; while this batch is written the next one
        # gathers by itself, so batches grow with load and an idle writer adds no delay.
        # An optional linger (IOT_WRITER_BATCH_AGE_MS) waits for more when the queue is dry.
        deadline = time.monotonic() + self._batch_age_s
        while rows < self._batch_rows:
            remaining = deadline - time.monotonic()
            try:
                if not self._queue.empty() or remaining <= 0:
                    item = self._queue.get_nowait()
                else:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if item is _STOP:
                return batch, True
            batch.extend(item)
            rows += sum(s.rows for s in item)
        return batch, False

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = await self._next_batch()
            if batch:
                await self._write_until_done(batch)

    async def _write_until_done(self, batch: list[Submission]) -> None:
        delay = 0.1
        while True:
            try:
                committed = await self._write(batch)
                self.healthy = True
                break
            except TRANSIENT as exc:
                # Postgres is away: keep the batch, hold every ack, retry with backoff.
                self.healthy = False
                log.warning("batch write failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
            except asyncpg.PostgresError as exc:
                log.exception("batch refused by the database")
                self._settle(batch, exc=StorageRefused(type(exc).__name__))
                return
        self._settle(batch, results=committed.results)
        await self._after_commit(batch, committed.newest)

    def _settle(
        self,
        batch: list[Submission],
        results: list[WriteResult] | None = None,
        exc: Exception | None = None,
    ) -> None:
        for index, submission in enumerate(batch):
            self._queued_rows -= _weight(submission)
            future = submission.future
            if future is not None and not future.done():
                if results is not None:
                    future.set_result(results[index])
                elif exc is not None:
                    future.set_exception(exc)
        WRITER_QUEUE_DEPTH.set(self._queued_rows)
        if self._queued_rows < self._capacity:
            self._space.set()

    async def _write(self, batch: list[Submission]) -> Committed:
        """Insert and commit. Settles nothing: the caller does, after this returns."""
        started = time.perf_counter()
        # Per-submission stored counts are only needed where someone reads them: HTTP.
        detailed = any(s.transport == "http" for s in batch)
        columns: dict[UUID, tuple[list[UUID], list[str], list[datetime], list[float]]] = {}
        owners: dict[UUID, list[int]] = defaultdict(list)
        for index, submission in enumerate(batch):
            tenant_id, device_id = submission.tenant_id, submission.device_id
            if tenant_id is None or device_id is None:
                continue
            group = columns.get(tenant_id)
            if group is None:
                group = columns[tenant_id] = ([], [], [], [])
            devices, metrics, stamps, values = group
            for point in submission.points:
                ts = point.ts
                for metric, value in point.metrics.items():
                    devices.append(device_id)
                    metrics.append(metric)
                    stamps.append(ts)
                    values.append(value)
                if detailed:
                    owners[tenant_id].extend([index] * len(point.metrics))
        stored = [0] * len(batch)
        stored_total = 0
        newest: list[list[Any]] = []
        rejects = [r for s in batch for r in s.rejects]
        async with self._platform.db.primary.acquire() as conn, conn.transaction():
            for tenant_id, (devices, metrics, stamps, values) in columns.items():
                await set_tenant(conn, tenant_id)
                row = await conn.fetchrow(
                    SQL["write_readings"], devices, metrics, stamps, values, detailed
                )
                assert row is not None
                stored_total += row["stored"]
                if detailed:
                    owner = owners[tenant_id]
                    for ordinal in row["stored_ordinals"]:
                        stored[owner[ordinal - 1]] += 1
                newest.extend(orjson.loads(row["newest"]))
            if rejects:
                await self._insert_rejects(conn, rejects)
        elapsed = time.perf_counter() - started
        WRITER_COMMIT_SECONDS.observe(elapsed)
        WRITER_BATCH_ROWS.observe(sum(len(c[0]) for c in columns.values()))
        self._count(batch, stored, stored_total, detailed)
        results = [
            WriteResult(
                len(submission.points),
                stored[index],
                submission.rows - stored[index],
                len(submission.rejects),
            )
            for index, submission in enumerate(batch)
        ]
        return Committed(results, newest)

    def _count(
        self, batch: list[Submission], stored: list[int], stored_total: int, detailed: bool
    ) -> None:
        """Counters per transport and the lag histograms, once per batch where possible."""
        now = time.monotonic()
        wall = time.time()
        rows: dict[str, int] = defaultdict(int)
        stored_by: dict[str, int] = defaultdict(int)
        rejected: dict[str, int] = defaultdict(int)
        lag = INGEST_LAG.observe
        publish_lag = {t: INGEST_PUBLISH_LAG.labels(t).observe for t in ("mqtt", "http")}
        for index, submission in enumerate(batch):
            transport = submission.transport
            rows[transport] += submission.rows
            rejected[transport] += len(submission.rejects)
            if detailed:
                stored_by[transport] += stored[index]
            points = submission.points
            if points:
                lag(now - submission.received_at)
                published = points[0].ts if len(points) == 1 else max(p.ts for p in points)
                publish_lag[transport](max(0.0, wall - published.timestamp()))
        if not detailed:  # a batch without HTTP: one transport's total
            for transport in rows:
                stored_by[transport] = stored_total
        for transport, total in rows.items():
            INGEST_MESSAGES.labels(transport, "stored").inc(stored_by[transport])
            INGEST_MESSAGES.labels(transport, "duplicate").inc(total - stored_by[transport])
            INGEST_MESSAGES.labels(transport, "rejected").inc(rejected[transport])

    async def _insert_rejects(self, conn: asyncpg.Connection, rejects: list[Reject]) -> None:
        now = datetime.now(UTC)
        await set_tenant(conn, "")
        await conn.execute(
            SQL["insert_rejects"],
            [r.tenant_id for r in rejects],
            [r.device_id for r in rejects],
            [r.topic for r in rejects],
            [r.reason for r in rejects],
            [(r.excerpt or r.detail)[:EXCERPT_CHARS] for r in rejects],
            [now] * len(rejects),
        )
        for reject in rejects:
            INGEST_REJECTS.labels(reject.reason).inc()

    async def _after_commit(self, batch: list[Submission], newest: list[list[Any]]) -> None:
        """Latest values and live stream: a few Redis commands per batch, not per message.
        Best effort: the data is committed already, and the read API falls back to the
        database when the cache is missing."""
        redis = self._platform.redis
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
                for row in newest:
                    by_device[row[0], row[1]].append(row)
                keys = [latest_key(redis, *tenant_device) for tenant_device in by_device]
                args: list[str | bytes | int] = [LATEST_TTL_S]
                for rows in by_device.values():
                    args.append(len(rows))
                    for _, _, metric, ts_ms, value in rows:
                        args.extend((metric, ts_ms, orjson.dumps([ts_ms, value])))
                await self._latest(keys=keys, args=args, client=pipe)
            await pipe.execute()
        except Exception:
            log.warning("post-commit cache update failed", exc_info=True)


def _weight(submission: Submission) -> int:
    """What a submission counts against the queue bound: its rows, and at least 1 (rejects)."""
    return max(1, submission.rows)


_STOP: list[Submission] = []
