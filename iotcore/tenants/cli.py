"""`iotcore purge tenant|device`: start a purge job and run it here (or follow the worker
that holds it), with a progress bar on a terminal and one line per phase otherwise."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from datetime import datetime
from typing import Any, TextIO
from uuid import UUID

from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.platform.jobs import JobWorker
from iotcore.platform.sql import queries
from iotcore.tenants.purge import Purges
from iotcore.tenants.service import start_job

BAR_WIDTH = 30
POLL_S = 0.2


def add_parser(roles: Any) -> None:
    purge = roles.add_parser("purge", help="delete a tenant, or a device's telemetry (a job)")
    targets = purge.add_subparsers(dest="target", required=True)
    tenant = targets.add_parser("tenant", help="delete a tenant and everything it holds")
    tenant.add_argument("id", type=UUID, metavar="TENANT_ID")
    tenant.add_argument("--yes", action="store_true", help="do not ask for the tenant's name")
    device = targets.add_parser("device", help="delete a device's telemetry")
    device.add_argument("id", type=UUID, metavar="DEVICE_ID")
    device.add_argument(
        "--before", type=_aware_time, default=None, help="only readings older than this time"
    )
    device.add_argument(
        "--tenant", type=UUID, default=None, help="the tenant whose readings (default: the owner)"
    )


def _aware_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-01-01T00:00:00Z")
    return value


async def run_purge(settings: Settings, args: argparse.Namespace) -> int:
    platform = Platform.from_settings(settings)
    await platform.start()
    worker = JobWorker(settings, Purges(platform).handlers())
    await worker.start()
    try:
        job_id = await _start(worker, args)
        if job_id is None:
            return 2
        print(f"purge job {job_id}", flush=True)
        return await _run_and_follow(worker, job_id, sys.stdout)
    finally:
        await worker.close()
        await platform.close()


async def _start(worker: JobWorker, args: argparse.Namespace) -> UUID | None:
    sql = queries("purge", worker.settings.sql_dir)
    requested_by = f"operator:{getpass.getuser()}"
    async with worker.pool.acquire() as conn, conn.transaction():
        if args.target == "tenant":
            name = await conn.fetchval(sql["tenant_exists"], args.id)
            if name is None:
                print(f"iotcore: no tenant {args.id}", file=sys.stderr)
                return None
            if not args.yes and not _confirmed(name):
                print("iotcore: not confirmed; nothing deleted", file=sys.stderr)
                return None
            return await start_job(conn, worker.sql, args.id, "purge_tenant", {}, requested_by)
        tenant_id = args.tenant or await conn.fetchval(sql["device_tenant"], args.id)
        if tenant_id is None:
            print("iotcore: the device has no tenant; name one with --tenant", file=sys.stderr)
            return None
        params: dict[str, Any] = {"device_id": str(args.id)}
        if args.before is not None:
            params["before"] = args.before.isoformat()
        return await start_job(conn, worker.sql, tenant_id, "purge_device", params, requested_by)


def _confirmed(name: str) -> bool:
    if not sys.stdin.isatty():
        print("iotcore: confirm with --yes when not on a terminal", file=sys.stderr)
        return False
    typed = input(f"This deletes the tenant {name!r} and everything it holds. Type its name: ")
    return typed == name


async def _run_and_follow(worker: JobWorker, job_id: UUID, out: TextIO) -> int:
    # Run it here; if another worker holds it, run_one returns at once and we follow it.
    runner = asyncio.create_task(worker.run_one(job_id))
    sql = worker.sql
    shown: tuple[str, str] | None = None
    try:
        while True:
            row = await worker.pool.fetchrow(sql["state"], job_id)
            status, progress = row["status"], row["progress"]
            shown = _render(out, status, progress, shown)
            if status in ("done", "failed"):
                if out.isatty():
                    out.write("\n")
                deleted = ", ".join(f"{k} {v:,}" for k, v in progress.get("deleted", {}).items())
                print(f"purge {status}: {deleted or 'nothing to delete'}", file=out, flush=True)
                if row["error"]:
                    print(f"error: {row['error']}", file=sys.stderr)
                return 0 if status == "done" else 1
            if runner.done() and runner.exception() is not None:
                raise runner.exception()  # type: ignore[misc]
            await asyncio.sleep(POLL_S)
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def _render(
    out: TextIO, status: str, progress: dict[str, Any], shown: tuple[str, str] | None
) -> tuple[str, str]:
    phases: list[str] = progress.get("phases") or ["queued"]
    phase = progress.get("phase", phases[0])
    done = phases.index(phase) if phase in phases else len(phases)
    rows = sum(progress.get("deleted", {}).values())
    if out.isatty():
        filled = BAR_WIDTH * done // len(phases)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        out.write(f"\r[{bar}] {done}/{len(phases)} {phase:<10} {rows:>12,} rows deleted")
        out.flush()
    elif shown != (status, phase):
        print(f"{status}: phase {phase} ({done}/{len(phases)}), {rows:,} rows deleted", file=out)
        out.flush()
    return status, phase
