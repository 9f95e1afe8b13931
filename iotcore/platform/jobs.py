"""Jobs: long work done by a worker in bounded, resumable steps (migrations/0011).

A worker (`iotcore maintain`, `iotcore run`, or a CLI command following its own job) takes
a job by a lease and renews it in the transaction of every step, together with the job's
progress. A worker that dies mid-way leaves a lease that runs out; the next worker resumes
from the recorded progress, so every step must be safe to repeat. Workers run as the owner
role: a job crosses what one tenant's transaction may touch (devices, telemetry tables).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from iotcore.config import Settings
from iotcore.platform.db import Connection, Pool, init_connection
from iotcore.platform.shutdown import close_pool
from iotcore.platform.sql import queries

log = logging.getLogger("iotcore.jobs")
MAX_ATTEMPTS = 5
RETRY_AFTER = timedelta(seconds=10)


class LeaseLost(Exception):
    """Another worker took the job over (this one stalled past its lease)."""


@dataclass
class Job:
    job_id: UUID
    tenant_id: UUID | None
    kind: str
    params: dict[str, Any]
    progress: dict[str, Any]
    requested_by: str
    created_at: datetime
    attempts: int
    done: bool = field(default=False)


class JobContext:
    """What a job handler works with: the owner pool and checkpointed steps."""

    def __init__(self, worker: JobWorker, job: Job) -> None:
        self.job = job
        self.pool = worker.pool
        self.settings = worker.settings
        self._worker = worker

    @property
    def progress(self) -> dict[str, Any]:
        return self.job.progress

    async def step(self, work: Callable[[Connection], Awaitable[Any]]) -> Any:
        """Run `work` in one transaction that also saves the progress (which `work` may
        change) and renews the lease; nothing of it commits if the lease was lost."""
        async with self.pool.acquire() as conn, conn.transaction():
            result = await work(conn)
            if not self.job.done:
                await self._checkpoint(conn)
        return result

    async def complete(self, conn: Connection) -> None:
        """Mark the job done inside the caller's transaction (with its last changes)."""
        sql = self._worker.sql
        row = await conn.fetchval(
            sql["complete"], self.job.job_id, self._worker.worker_id, self.job.progress
        )
        if row is None:
            raise LeaseLost(str(self.job.job_id))
        self.job.done = True

    async def _checkpoint(self, conn: Connection) -> None:
        row = await conn.fetchval(
            self._worker.sql["checkpoint"],
            self.job.job_id,
            self._worker.worker_id,
            self.job.progress,
            self._worker.lease,
        )
        if row is None:
            raise LeaseLost(str(self.job.job_id))

    async def pause(self) -> None:
        """Between batches: lets other work have the database (IOT_JOB_BATCH_PAUSE_S)."""
        await asyncio.sleep(self.settings.job_batch_pause_s)


Handler = Callable[[JobContext], Awaitable[None]]


class JobWorker:
    def __init__(self, settings: Settings, handlers: Mapping[str, Handler]) -> None:
        self.settings = settings
        self.sql = queries("jobs", settings.sql_dir)
        self.handlers = handlers
        self.lease = timedelta(seconds=settings.job_lease_s)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("JobWorker.start() was not awaited")
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.settings.database_owner_url,
            min_size=0,
            max_size=2,
            timeout=self.settings.database_timeout_s,
            command_timeout=self.settings.database_timeout_s * 12,
            init=init_connection,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await close_pool(self._pool)
            self._pool = None

    async def run_one(self, job_id: UUID | None = None) -> Job | None:
        """Take one job (the one named, or the oldest nobody holds) and run it to its end.
        None when there was nothing to take."""
        row = await self.pool.fetchrow(self.sql["claim"], self.worker_id, self.lease, job_id)
        if row is None:
            return None
        job = Job(**dict(row))
        handler = self.handlers.get(job.kind)
        log.info("job started", extra={"job_id": str(job.job_id), "kind": job.kind})
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {job.kind!r}")
            context = JobContext(self, job)
            await handler(context)
            if not job.done:
                async with self.pool.acquire() as conn, conn.transaction():
                    await context.complete(conn)
        except LeaseLost:
            log.warning("job lease lost; another worker has it", extra={"job_id": str(job.job_id)})
        except asyncio.CancelledError:
            # Shutting down: the lease runs out and another worker resumes the job.
            raise
        except Exception as exc:
            final = job.attempts >= MAX_ATTEMPTS
            log.exception("job step failed", extra={"job_id": str(job.job_id), "final": final})
            await self.pool.execute(
                self.sql["release"],
                job.job_id,
                self.worker_id,
                f"{type(exc).__name__}: {exc}"[:500],
                final,
                RETRY_AFTER,
            )
        else:
            log.info("job done", extra={"job_id": str(job.job_id), "kind": job.kind})
        return job

    async def run_forever(self, poll_s: float) -> None:
        while True:
            try:
                while await self.run_one() is not None:
                    pass
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("job worker: database unavailable", extra={"error": str(exc)})
            await asyncio.sleep(poll_s)
