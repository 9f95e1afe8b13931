"""The telemetry store: the SQL of the write path, the rejects table, and what a database
error means for a batch.

A batch is written in one transaction, one statement per tenant group. When the database
refuses it for a reason retrying will not fix, the batch is written again with a savepoint
per tenant group and, inside a group that fails, per submission: the offenders are recorded
in `ingest_rejects` (reason `storage_refused`, with the SQLSTATE) and everything else
commits. A transient error (the server is away, busy, read-only, or rolled us back) is
raised to the caller, which retries the whole batch. No metrics here: the writer counts.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from iotcore.platform.db import Database, set_tenant
from iotcore.telemetry.ingest.payload import Point

EXCERPT_CHARS = 256

# SQLSTATE classes retrying can fix: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention
# (admin shutdown, cannot connect now); and 25006, a read-only transaction (a standby, or a
# primary being failed over).
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57"})
TRANSIENT_STATES = frozenset({"25006"})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same write later may succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        return state[:2] in TRANSIENT_CLASSES or state in TRANSIENT_STATES
    if isinstance(exc, asyncpg.DataError):  # an argument asyncpg cannot encode
        return False
    # The connection broke or was never made: asyncpg's connection errors are
    # InterfaceErrors; the network's are OSErrors (ConnectionError is one).
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


def is_permanent(exc: BaseException) -> bool:
    """A refusal by the database that retrying will not fix (anything not transient)."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.DataError) and not is_transient(exc)


def sqlstate_of(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "XX000")


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str
    tenant_id: UUID | None = None
    device_id: UUID | None = None
    topic: str | None = None
    excerpt: str | None = None
    sqlstate: str | None = None


@dataclass(frozen=True)
class WriteResult:
    accepted: int
    stored: int
    duplicates: int
    rejected: int
    refused: str | None = None  # the SQLSTATE when the database refused the submission


@dataclass
class Submission:
    transport: str
    tenant_id: UUID | None
    device_id: UUID | None
    points: list[Point]
    rejects: list[Reject] = field(default_factory=list)
    topic: str | None = None
    received_at: float = field(default_factory=time.monotonic)
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = sum(len(p.metrics) for p in self.points)


class NotRecorded(Exception):
    """The database refused the rejects table too: the submission is neither stored nor
    recorded, so it must not be acknowledged."""


Outcome = WriteResult | NotRecorded


@dataclass
class Written:
    """What a batch came to: one outcome per submission, in batch order."""

    outcomes: list[Outcome]
    newest: list[list[Any]]  # [tenant_id, device_id, metric, ts_ms, value] became newest
    rows: int  # rows written (attempted), for the batch size histogram
    stored: list[int]  # rows stored per submission (exact where `detailed`)
    stored_total: int
    detailed: bool
    rejects: list[Reject]  # every reject recorded, refusals included


class _Columns:
    """One tenant group's rows, [device_id, metric, ts, value] each, as the statement takes
    them (one JSON array), and for each row (when per-submission counts are wanted) the
    index of its submission in the batch."""

    __slots__ = ("owners", "rows")

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.owners: list[int] = []

    def add(self, index: int, submission: Submission, detailed: bool) -> None:
        device_id = submission.device_id
        rows = self.rows
        for point in submission.points:
            ts = point.ts
            for metric, value in point.metrics.items():
                rows.append([device_id, metric, ts, value])
            if detailed:
                self.owners.extend([index] * len(point.metrics))


class _Tally:
    """Stored counts and newest values gathered over the statements of one transaction."""

    def __init__(self, size: int) -> None:
        self.stored = [0] * size
        self.stored_total = 0
        self.newest: list[list[Any]] = []

    def add(self, row: asyncpg.Record, columns: _Columns, detailed: bool) -> None:
        self.stored_total += row["stored"]
        if detailed:
            owners = columns.owners
            for ordinal in row["stored_ordinals"]:
                self.stored[owners[ordinal - 1]] += 1
        self.newest.extend(orjson.loads(row["newest"]))


class TelemetryStore:
    def __init__(self, db: Database, sql: dict[str, str]) -> None:
        self._db = db
        self._sql = sql

    async def write(self, batch: list[Submission]) -> Written:
        """Store a batch and record its rejects, in one transaction. Raises only what
        `is_transient` calls transient (retry the batch) or what is neither (a bug)."""
        # Per-submission stored counts are only needed where someone reads them: HTTP.
        detailed = any(s.transport == "http" for s in batch)
        groups: dict[UUID, list[int]] = defaultdict(list)
        for index, submission in enumerate(batch):
            if submission.tenant_id is not None and submission.device_id is not None:
                groups[submission.tenant_id].append(index)
        try:
            # BEGIN and the first group's tenant in one round trip (db.tenant_transaction).
            first = next(iter(groups), None)
            begin = self._db.transaction() if first is None else self._db.tenant_transaction(first)
            async with begin as conn:
                return await self._write_all(conn, batch, groups, detailed, first)
        except Exception as exc:
            if not is_permanent(exc):
                raise
        async with self._db.primary.acquire() as conn, conn.transaction():
            return await self._write_isolated(conn, batch, groups)

    async def _write_all(
        self,
        conn: asyncpg.Connection,
        batch: list[Submission],
        groups: dict[UUID, list[int]],
        detailed: bool,
        tenant_set: UUID | None,
    ) -> Written:
        """The usual case: one statement per tenant group, no savepoints. `tenant_set`: the
        tenant the transaction already has."""
        tally = _Tally(len(batch))
        rows = 0
        for tenant_id, indexes in groups.items():
            columns = _columns(batch, indexes, detailed)
            if tenant_id != tenant_set:
                await set_tenant(conn, tenant_id)
            tally.add(await self._statement(conn, columns, detailed), columns, detailed)
            rows += len(columns.rows)
        rejects = [r for s in batch for r in s.rejects]
        if rejects:
            await self._insert_rejects(conn, rejects)
        return _written(batch, tally, rows, detailed, rejects, {}, set())

    async def _write_isolated(
        self,
        conn: asyncpg.Connection,
        batch: list[Submission],
        groups: dict[UUID, list[int]],
    ) -> Written:
        """After a permanent error: a savepoint per tenant group, and per submission inside
        a group the database refuses, so that only the offenders are left out. Counts are
        per submission here, whatever the transports (the rare path)."""
        detailed = True
        tally = _Tally(len(batch))
        refused: dict[int, BaseException] = {}
        rows = 0
        for tenant_id, indexes in groups.items():
            columns = _columns(batch, indexes, detailed)
            rows += len(columns.rows)
            try:
                async with conn.transaction():
                    await set_tenant(conn, tenant_id)
                    row = await self._statement(conn, columns, detailed)
                tally.add(row, columns, detailed)
                continue
            except Exception as exc:
                if not is_permanent(exc):
                    raise
            for index in indexes:
                # Each submission alone; its stored count is exact whatever `detailed` says.
                single = _columns(batch, [index], True)
                try:
                    async with conn.transaction():
                        await set_tenant(conn, tenant_id)
                        row = await self._statement(conn, single, True)
                    tally.add(row, single, True)
                except Exception as exc:
                    if not is_permanent(exc):
                        raise
                    refused[index] = exc
        rejects = [r for s in batch for r in s.rejects]
        rejects.extend(_refusal(batch[i], exc) for i, exc in refused.items())
        unrecorded: set[int] = set()
        if rejects:
            try:
                async with conn.transaction():
                    await self._insert_rejects(conn, rejects)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                unrecorded = {i for i, s in enumerate(batch) if s.rejects or i in refused}
                rejects = []
        return _written(batch, tally, rows, detailed, rejects, refused, unrecorded)

    async def _statement(
        self, conn: asyncpg.Connection, columns: _Columns, detailed: bool
    ) -> asyncpg.Record:
        """write_readings, in a transaction whose tenant is set."""
        row = await conn.fetchrow(
            self._sql["write_readings"],
            columns.rows,  # the connection encodes json with orjson (platform/db.py)
            detailed,
        )
        assert row is not None
        return row

    async def _insert_rejects(self, conn: asyncpg.Connection, rejects: list[Reject]) -> None:
        now = datetime.now(UTC)
        await set_tenant(conn, "")
        await conn.execute(
            self._sql["insert_rejects"],
            [r.tenant_id for r in rejects],
            [r.device_id for r in rejects],
            [r.topic for r in rejects],
            [r.reason for r in rejects],
            [(r.excerpt or r.detail)[:EXCERPT_CHARS] for r in rejects],
            [now] * len(rejects),
            [r.sqlstate for r in rejects],
        )


def _columns(batch: list[Submission], indexes: list[int], detailed: bool) -> _Columns:
    columns = _Columns()
    for index in indexes:
        columns.add(index, batch[index], detailed)
    return columns


def _refusal(submission: Submission, exc: BaseException) -> Reject:
    message = str(getattr(exc, "message", None) or exc)
    detail = f"SQLSTATE {sqlstate_of(exc)}: {message}"
    return Reject(
        "storage_refused",
        detail,
        submission.tenant_id,
        submission.device_id,
        submission.topic,
        detail,
        sqlstate_of(exc),
    )


def _written(
    batch: list[Submission],
    tally: _Tally,
    rows: int,
    detailed: bool,
    rejects: list[Reject],
    refused: dict[int, BaseException],
    unrecorded: set[int],
) -> Written:
    outcomes: list[Outcome] = []
    for index, submission in enumerate(batch):
        if index in unrecorded:
            outcomes.append(NotRecorded("the rejects could not be recorded"))
            continue
        stored = tally.stored[index]
        failure = refused.get(index)
        outcomes.append(
            WriteResult(
                len(submission.points),
                stored,
                0 if failure is not None else submission.rows - stored,
                len(submission.rejects),
                sqlstate_of(failure) if failure is not None else None,
            )
        )
    return Written(
        outcomes, tally.newest, rows, tally.stored, tally.stored_total, detailed, rejects
    )
