"""Purge jobs: a device's telemetry (all of it, or older than a time) and a whole tenant.

Each runs as a job (iotcore/platform/jobs.py): bounded batches, each one short transaction
that also records the progress, so a purge killed half-way resumes where it stopped. The
phases are recorded in `progress["phase"]`; every batch is safe to repeat. What lives
outside PostgreSQL (Redis keys, every replica's caches, live MQTT sessions) is cleared after
the commit that made it stale; the devices concerned are recorded in the same commit
(`progress["pending_devices"]`), so a crash in between still clears them on resume.

Deleting telemetry marks nothing for the rollups here: the read path recomputes what it
needs from the raw rows (see runbooks/retention-and-purge.md for rollups and aggregates).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from iotcore.auth.api_keys import API_KEYS_CACHE
from iotcore.auth.service import USERS_CACHE
from iotcore.devices.registry import DeviceRegistry
from iotcore.devices.sessions import SessionKicker
from iotcore.platform.cache import SharedInvalidationCache
from iotcore.platform.context import Platform
from iotcore.platform.db import Connection
from iotcore.platform.jobs import Handler, JobContext, JobWorker
from iotcore.telemetry.derived import clear_device_state, live_key

log = logging.getLogger("iotcore.tenants.purge")

TENANT_PHASES = ["devices", "telemetry", "tables", "users", "caches", "tenant"]
DEVICE_PHASES = ["telemetry", "latest", "rejects", "caches"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Purges:
    """The job handlers, with what they need outside the database."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._redis = platform.redis
        self._sql = platform.queries("purge")
        self._jobs = platform.queries("jobs")
        self._registry = DeviceRegistry(platform)
        self._kicker = SessionKicker(platform.settings)

    def handlers(self) -> dict[str, Handler]:
        return {"purge_device": self.purge_device, "purge_tenant": self.purge_tenant}

    # ------------------------------------------------------------------ a device's telemetry

    async def purge_device(self, ctx: JobContext) -> None:
        if ctx.job.tenant_id is None:
            # The tenant was purged meanwhile, and this device's readings with it.
            ctx.progress["phase"] = "done"
            return
        tenant_id = ctx.job.tenant_id
        device_id = UUID(ctx.job.params["device_id"])
        before_text = ctx.job.params.get("before")
        before = datetime.fromisoformat(before_text) if before_text else None
        batch = ctx.settings.purge_batch_rows
        progress = _start(ctx, DEVICE_PHASES)
        if progress["phase"] == "telemetry":
            await self._delete_telemetry(ctx, tenant_id, device_id, before)
            await self._next_phase(ctx)
        if progress["phase"] == "latest":

            async def latest(conn: Connection) -> None:
                status = await conn.execute(
                    self._sql["delete_device_latest"], tenant_id, device_id, before
                )
                _count(ctx, "latest", _rows(status))

            await ctx.step(latest)
            await self._next_phase(ctx)
        if progress["phase"] == "rejects":
            await self._repeat(
                ctx,
                "rejects",
                lambda conn: conn.execute(
                    self._sql["delete_device_rejects"], tenant_id, device_id, before, batch
                ),
            )
            await self._next_phase(ctx)
        if progress["phase"] == "caches":
            await self._clear_device_keys(tenant_id, device_id, before)
            await self._next_phase(ctx)

    async def _delete_telemetry(
        self, ctx: JobContext, tenant_id: UUID, device_id: UUID, before: datetime | None
    ) -> int:
        """Delete in batches until a batch comes back short; returns how many were deleted."""
        batch = ctx.settings.purge_batch_rows
        total = 0
        while True:

            async def work(conn: Connection) -> int:
                row = await conn.fetchrow(
                    self._sql["delete_device_telemetry"], tenant_id, device_id, before, batch
                )
                _count(ctx, "telemetry", row["deleted"])
                _widen(ctx, row["first_ts"], row["last_ts"])
                return int(row["deleted"])

            deleted: int = await ctx.step(work)
            total += deleted
            if deleted < batch:
                return total
            await ctx.pause()

    # ------------------------------------------------------------------ a whole tenant

    async def purge_tenant(self, ctx: JobContext) -> None:
        tenant_id = _tenant(ctx)
        progress = _start(ctx, TENANT_PHASES)
        await self._finish_pending_devices(ctx)
        if progress["phase"] == "devices":
            await self._unclaim_devices(ctx, tenant_id)
            await self._next_phase(ctx)
        if progress["phase"] == "telemetry":
            async with ctx.pool.acquire() as conn:
                devices = [
                    r["device_id"]
                    for r in await conn.fetch(self._sql["telemetry_devices"], tenant_id)
                ]
            for device_id in devices:
                await self._delete_telemetry(ctx, tenant_id, device_id, None)
            while True:
                async with ctx.pool.acquire() as conn:
                    left = await conn.fetchval(self._sql["telemetry_leftover_device"], tenant_id)
                if left is None or not await self._delete_telemetry(ctx, tenant_id, left, None):
                    break
            await self._next_phase(ctx)
        if progress["phase"] == "tables":
            async with ctx.pool.acquire() as conn:
                _count(ctx, "rollups", await conn.fetchval(self._sql["forget_rollups"], tenant_id))
                tables = [r["name"] for r in await conn.fetch(self._sql["tenant_tables"])]
            for table in tables:
                await self._sweep(ctx, table, tenant_id)
            await self._next_phase(ctx)
        if progress["phase"] == "users":
            # Last but one: until here the tenant's users could follow the job's progress.
            await self._sweep(ctx, "users", tenant_id)
            await self._next_phase(ctx)
        if progress["phase"] == "caches":
            await self._clear_tenant_keys(tenant_id)
            await self._next_phase(ctx)
        if progress["phase"] == "tenant":
            await self._delete_tenant(ctx, tenant_id)

    async def _unclaim_devices(self, ctx: JobContext, tenant_id: UUID) -> None:
        batch = ctx.settings.purge_batch_rows
        while True:

            async def work(conn: Connection) -> int:
                rows = await conn.fetch(self._sql["unclaim_devices"], tenant_id, batch)
                ids = [str(r["device_id"]) for r in rows]
                ctx.progress["pending_devices"] = ids
                _count(ctx, "devices_unclaimed", len(ids))
                return len(ids)

            count = await ctx.step(work)
            await self._finish_pending_devices(ctx)
            if count < batch:
                return
            await ctx.pause()

    async def _finish_pending_devices(self, ctx: JobContext) -> None:
        """After the commit that revoked them: their live sessions end. Their Redis keys, all
        named after the tenant, go in the caches phase."""
        pending = [UUID(d) for d in ctx.progress.get("pending_devices", [])]
        if not pending:
            return
        await self._end_sessions(pending)

        async def done(conn: Connection) -> None:
            ctx.progress["pending_devices"] = []

        await ctx.step(done)

    async def _sweep(self, ctx: JobContext, table: str, tenant_id: UUID) -> None:
        batch = ctx.settings.purge_batch_rows
        counter = table.rsplit(".", 1)[-1]
        await self._repeat(
            ctx,
            counter,
            lambda conn: conn.fetchval(self._sql["purge_rows"], table, tenant_id, batch),
        )

    async def _delete_tenant(self, ctx: JobContext, tenant_id: UUID) -> None:
        async def work(conn: Connection) -> None:
            # A device claimed while the purge ran goes back to the factory state too.
            late = await conn.fetch(self._sql["unclaim_devices"], tenant_id, 1_000_000)
            ctx.progress["pending_devices"] = [str(r["device_id"]) for r in late]
            _count(ctx, "devices_unclaimed", len(late))
            name = await conn.fetchval(self._sql["tenant_exists"], tenant_id)
            await conn.execute(self._sql["delete_tenant"], tenant_id)
            await self._operator_audit(
                conn, ctx, "tenant_purged", f"tenant:{tenant_id}", {"name": name}
            )
            await ctx.complete(conn)

        await ctx.step(work)
        await self._finish_pending_devices_after_completion(ctx, tenant_id)

    async def _finish_pending_devices_after_completion(
        self, ctx: JobContext, tenant_id: UUID
    ) -> None:
        await self._end_sessions([UUID(d) for d in ctx.progress.get("pending_devices", [])])
        await self._clear_tenant_keys(tenant_id)

    async def _end_sessions(self, device_ids: list[UUID]) -> None:
        """Every replica forgets the devices' credentials (the embedded broker, told through
        the registry's channel, closes their sessions); EMQX is told through its REST API."""
        for device_id in device_ids:
            await self._registry.invalidate(device_id)
        await self._kicker.kick(device_ids)

    # ------------------------------------------------------------------ shared steps

    async def _operator_audit(
        self,
        conn: Connection,
        ctx: JobContext,
        action: str,
        subject: str,
        details: dict[str, Any],
    ) -> None:
        await conn.execute(
            self._jobs["operator_audit"],
            ctx.job.requested_by,
            action,
            subject,
            ctx.job.job_id,
            {
                **details,
                "requested_at": _iso(ctx.job.created_at),
                "deleted": ctx.progress.get("deleted", {}),
            },
        )

    async def _repeat(
        self, ctx: JobContext, counter: str, batch_work: Callable[[Connection], Awaitable[Any]]
    ) -> None:
        """Run a deleting batch until it deletes nothing, counting what it deleted."""
        while True:

            async def work(conn: Connection) -> int:
                result = await batch_work(conn)
                deleted = _rows(result) if isinstance(result, str) else int(result or 0)
                _count(ctx, counter, deleted)
                return deleted

            if await ctx.step(work) == 0:
                return
            await ctx.pause()

    async def _next_phase(self, ctx: JobContext) -> None:
        phases: list[str] = ctx.progress["phases"]
        index = phases.index(ctx.progress["phase"]) + 1
        ctx.progress["phase"] = phases[index] if index < len(phases) else "done"

        async def work(conn: Connection) -> None:
            if ctx.progress["phase"] == "done" and ctx.job.kind == "purge_device":
                await self._operator_audit(
                    conn,
                    ctx,
                    "device_purged",
                    f"device:{ctx.job.params['device_id']}",
                    {"tenant_id": str(ctx.job.tenant_id), "before": ctx.job.params.get("before")},
                )
                await ctx.complete(conn)

        await ctx.step(work)

    async def _clear_device_keys(
        self, tenant_id: UUID, device_id: UUID, before: datetime | None
    ) -> None:
        # The latest values refill from the database on the next read; the device's cached
        # ETags go, since any of its responses may include the purged readings.
        await clear_device_state(self._redis, tenant_id, device_id)
        await self._drop_live_entries(tenant_id, device_id, before)

    async def _drop_live_entries(
        self, tenant_id: UUID, device_id: UUID, before: datetime | None
    ) -> None:
        """The live stream keeps a few minutes for clients that reconnect: entries carrying
        the device's purged readings go (an entry holds one batch of several devices)."""
        key = live_key(self._redis, tenant_id)
        name = str(device_id)
        limit_ms = int(before.timestamp() * 1000) if before else None
        doomed: list[bytes] = []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.client.xrange(key)  # type: ignore[assignment]
        for entry_id, fields in entries:
            points = orjson.loads(fields.get(b"b", b"[]"))
            if any(
                p.get("device_id") == name and (limit_ms is None or p.get("ts", 0) < limit_ms)
                for p in points
            ):
                doomed.append(entry_id)
        if doomed:
            await self._redis.client.xdel(key, *doomed)

    async def _clear_tenant_keys(self, tenant_id: UUID) -> None:
        """Every Redis key naming the tenant (latest values, ETags, live stream, rate limits),
        and every replica's cached users and API keys."""
        await self._delete_keys(f"*{tenant_id}*")
        for name in (USERS_CACHE, API_KEYS_CACHE):
            await SharedInvalidationCache[Any](self._redis, name, 1.0).invalidate()

    async def _delete_keys(self, *patterns: str) -> int:
        client = self._redis.client
        deleted = 0
        for pattern in patterns:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=self._redis.prefix + pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await client.unlink(*batch)
        return deleted


def _tenant(ctx: JobContext) -> UUID:
    if ctx.job.tenant_id is None:
        raise RuntimeError("the job's tenant is gone; nothing left to purge")
    return ctx.job.tenant_id


def _start(ctx: JobContext, phases: list[str]) -> dict[str, Any]:
    progress = ctx.progress
    progress.setdefault("phases", phases)
    progress.setdefault("phase", phases[0])
    progress.setdefault("deleted", {})
    return progress


def _count(ctx: JobContext, counter: str, n: int) -> None:
    deleted: dict[str, int] = ctx.progress["deleted"]
    deleted[counter] = deleted.get(counter, 0) + int(n)


def _widen(ctx: JobContext, first: datetime | None, last: datetime | None) -> None:
    """The time range of the deleted readings (what rollups over it must forget)."""
    if first is None or last is None:
        return
    span = ctx.progress.get("range")
    if span:
        first = min(first, datetime.fromisoformat(span[0]))
        last = max(last, datetime.fromisoformat(span[1]))
    ctx.progress["range"] = [_iso(first), _iso(last)]


def _rows(status: str) -> int:
    """The row count of a command tag such as 'DELETE 42'."""
    return int(status.split()[-1]) if status and status.split()[-1].isdigit() else 0


async def run_worker(platform: Platform, *, once: bool = False) -> None:
    """Run purge jobs as they come (or, `once`, those pending now), as the owner role."""
    worker = JobWorker(platform.settings, Purges(platform).handlers())
    await worker.start()
    try:
        if once:
            while await worker.run_one() is not None:
                pass
        else:
            await worker.run_forever(platform.settings.job_poll_s)
    finally:
        await worker.close()
