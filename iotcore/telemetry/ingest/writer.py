"""The one write path for MQTT and HTTP telemetry: batching and backpressure.

Submissions wait in a queue bounded by rows, one sub-queue per tenant. One task takes them in
batches (by size or age), round-robin over the tenants, has the store write each batch in one
transaction, and only then settles each submission: that is when MQTT acks and HTTP answers
202. A tenant holds at most `writer_tenant_queue_rows` of the queue: over it, that tenant's
HTTP posts get 503 and the MQTT consumer waits, while every other tenant still gets in.

A transient database error holds the batch (and every ack behind it) and retries it with
backoff; a permanent one is isolated by the store. After the commit the cache (latest
values, live stream) is updated, best effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Hashable

from iotcore.platform.backoff import Backoff
from iotcore.platform.context import Platform
from iotcore.platform.errors import Overloaded
from iotcore.platform.metrics import (
    INGEST_LAG,
    INGEST_MESSAGES,
    INGEST_PUBLISH_LAG,
    INGEST_REJECTS,
    WRITER_BATCH_ROWS,
    WRITER_COMMIT_SECONDS,
    WRITER_QUEUE_DEPTH,
    WRITER_REFUSED,
)
from iotcore.platform.shutdown import CLOSE_TIMEOUT_S, stop_task
from iotcore.telemetry.cache import TelemetryCache
from iotcore.telemetry.ingest.store import (
    NotRecorded,
    Outcome,
    Reject,
    Submission,
    TelemetryStore,
    WriteResult,
    Written,
    is_transient,
)

__all__ = ["Outcome", "Reject", "Submission", "TelemetryWriter", "Ticket", "WriteResult"]

log = logging.getLogger("iotcore.telemetry.writer")

# Waits between attempts at a batch while the database is away (platform/backoff.py).
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class Ticket:
    """One hand-off (an HTTP submission, or many MQTT messages): its future resolves, with
    one outcome per submission, once every one of them is settled."""

    __slots__ = ("future", "outcomes", "pending")

    def __init__(self, count: int) -> None:
        self.future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self.outcomes: list[Outcome | None] = [None] * count
        self.pending = count

    def settle(self, slot: int, outcome: Outcome) -> None:
        self.outcomes[slot] = outcome
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(self.outcomes)  # type: ignore[arg-type]


class _Queued:
    __slots__ = ("slot", "submission", "ticket", "weight")

    def __init__(self, submission: Submission, ticket: Ticket, slot: int) -> None:
        self.submission = submission
        self.ticket = ticket
        self.slot = slot
        self.weight = _weight(submission)


class TelemetryWriter:
    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self._store = TelemetryStore(platform.db, platform.queries("telemetry"))
        self.cache = TelemetryCache(platform.redis)
        self._batch_rows = settings.writer_batch_rows
        self._batch_age_s = settings.writer_batch_age_ms / 1000
        self._capacity = settings.writer_queue_rows
        self._tenant_cap = min(settings.writer_tenant_queue_rows, settings.writer_queue_rows)
        # Waiting submissions per tenant (rejects-only ones under None); the dict's order is
        # the round-robin ring (a tenant served goes to the back).
        self._waiting: dict[Hashable, deque[_Queued]] = {}
        # Rows per tenant from enqueue until settled (a batch being written still counts).
        self._held: dict[Hashable, int] = defaultdict(int)
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    # ------------------------------------------------------------------ submitting

    def _fits(self, tenant: Hashable, rows: int, active: int) -> bool:
        """A tenant gets in while under its own cap and either the queue has room or the
        tenant holds less than an even share of it: another tenant's flood fills the queue
        only up to its own cap, and never shuts out one that holds little."""
        held = self._held.get(tenant, 0)
        if held == 0 and self._queued_rows == 0:
            return True  # an empty queue takes anything, however big
        if held + rows > self._tenant_cap and held > 0:
            return False
        if self._queued_rows + rows <= self._capacity:
            return True
        return held + rows <= self._capacity // max(1, active)

    def _enqueue(self, submissions: list[Submission]) -> Ticket:
        ticket = Ticket(len(submissions))
        for slot, submission in enumerate(submissions):
            item = _Queued(submission, ticket, slot)
            tenant = submission.tenant_id
            self._held[tenant] += item.weight
            self._queued_rows += item.weight
            waiting = self._waiting.get(tenant)
            if waiting is None:
                waiting = self._waiting[tenant] = deque()
            waiting.append(item)
        WRITER_QUEUE_DEPTH.set(self._queued_rows)
        self._arrived.set()
        return ticket

    def submit_nowait(self, submission: Submission) -> asyncio.Future[list[Outcome]]:
        """For HTTP: a tenant over its share (or a full queue) is an immediate 503."""
        tenant = submission.tenant_id
        active = len(self._held) + (0 if tenant in self._held else 1)
        if not self._fits(tenant, _weight(submission), active):
            raise Overloaded("The write queue is full; retry later.", retry_after_s=1)
        return self._enqueue([submission]).future

    async def submit_many(self, submissions: list[Submission]) -> asyncio.Future[list[Outcome]]:
        """For MQTT: many messages in one hand-off, and a future that resolves when all of
        them are settled. Waits for room (for each tenant of the hand-off), so that the
        consumer stops reading (and acking) instead of growing the queue."""
        rows: dict[Hashable, int] = defaultdict(int)
        for submission in submissions:
            rows[submission.tenant_id] += _weight(submission)
        while True:
            active = len(self._held | rows)
            if all(self._fits(t, r, active) for t, r in rows.items()):
                break
            # Cleared first: the event may still be set (some room, not enough for this
            # hand-off), and waiting on a set event would spin without yielding.
            self._space.clear()
            await self._space.wait()
        return self._enqueue(submissions).future

    # ------------------------------------------------------------------ the batch loop

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def stop(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, then stop. With PostgreSQL away the queue cannot be written,
        and past `timeout_s` the writer stops without it: nothing queued was acknowledged (a
        202 or a PUBACK waits for the commit), so devices send it again."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._arrived.set()
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if not done:
            log.warning(
                "stopping with readings not written (none was acknowledged)",
                extra={"rows": self._queued_rows},
            )
            await stop_task(task, timeout_s)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _take(self) -> _Queued:
        """The next submission, round-robin over the tenants."""
        tenant = next(iter(self._waiting))
        waiting = self._waiting.pop(tenant)
        item = waiting.popleft()
        if waiting:
            self._waiting[tenant] = waiting  # to the back of the ring
        return item

    async def _next_batch(self) -> list[_Queued]:
        while not self._waiting:
            if self._stopping:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        # Group commit: take what is queued now; while this batch is written the next one
        # gathers by itself, so batches grow with load and an idle writer adds no delay.
        # An optional linger (IOT_WRITER_BATCH_AGE_MS) waits for more when the queue is dry.
        batch: list[_Queued] = []
        rows = 0
        deadline = time.monotonic() + self._batch_age_s
        while rows < self._batch_rows:
            if not self._waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                continue
            item = self._take()
            batch.append(item)
            rows += item.submission.rows
        return batch

    async def _run(self) -> None:
        while batch := await self._next_batch():
            await self._write_until_done(batch)

    async def _write_until_done(self, batch: list[_Queued]) -> None:
        submissions = [item.submission for item in batch]
        backoff: Backoff | None = None
        while True:
            try:
                started = time.perf_counter()
                written = await self._store.write(submissions)
                break
            except Exception as exc:
                if not is_transient(exc):  # nor a refusal: a bug; answer, don't ack
                    log.exception("batch write failed")
                    self._settle(batch, [NotRecorded(str(exc))] * len(batch))
                    return
                # Postgres is away: keep the batch, hold every ack, retry with backoff.
                self.healthy = False
                log.warning("batch write failed; retrying", extra={"error": type(exc).__name__})
                backoff = backoff or Backoff(RETRY_FIRST_S, RETRY_MAX_S)
                await backoff.wait()
        self.healthy = True
        WRITER_COMMIT_SECONDS.observe(time.perf_counter() - started)
        self._settle(batch, written.outcomes)
        _count(submissions, written)
        kept = [
            s
            for s, outcome in zip(submissions, written.outcomes, strict=True)
            if isinstance(outcome, WriteResult) and outcome.refused is None
        ]
        await self.cache.after_commit(kept, written.newest)

    def _settle(self, batch: list[_Queued], outcomes: list[Outcome]) -> None:
        for item, outcome in zip(batch, outcomes, strict=True):
            tenant = item.submission.tenant_id
            self._queued_rows -= item.weight
            held = self._held[tenant] - item.weight
            if held > 0:
                self._held[tenant] = held
            else:
                del self._held[tenant]
            item.ticket.settle(item.slot, outcome)
        WRITER_QUEUE_DEPTH.set(self._queued_rows)
        self._space.set()


def _count(batch: list[Submission], written: Written) -> None:
    """Counters per transport and the lag histograms, once per batch where possible."""
    WRITER_BATCH_ROWS.observe(written.rows)
    now = time.monotonic()
    wall = time.time()
    rows: dict[str, int] = defaultdict(int)
    stored_by: dict[str, int] = defaultdict(int)
    rejected: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = defaultdict(int)
    lag = INGEST_LAG.observe
    publish_lag = {t: INGEST_PUBLISH_LAG.labels(t).observe for t in ("mqtt", "http")}
    stored, detailed = written.stored, written.detailed
    for index, submission in enumerate(batch):
        transport = submission.transport
        outcome = written.outcomes[index]
        if isinstance(outcome, WriteResult) and outcome.refused is not None:
            refused[outcome.refused] += 1
            continue
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
            stored_by[transport] = written.stored_total
    for transport, total in rows.items():
        INGEST_MESSAGES.labels(transport, "stored").inc(stored_by[transport])
        INGEST_MESSAGES.labels(transport, "duplicate").inc(total - stored_by[transport])
        INGEST_MESSAGES.labels(transport, "rejected").inc(rejected[transport])
    for sqlstate, count in refused.items():
        WRITER_REFUSED.labels(sqlstate).inc(count)
    for reject in written.rejects:
        INGEST_REJECTS.labels(reject.reason).inc()


def _weight(submission: Submission) -> int:
    """What a submission counts against the queue bound: its rows, and at least 1 (rejects)."""
    return max(1, submission.rows)
