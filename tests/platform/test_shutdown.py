"""Shutdown is bounded: a connection never given back to the pool, or a task that ignores
cancellation, cannot hold a process (or the test suite) forever."""

from __future__ import annotations

import asyncio
import contextlib
import time

from iotcore.config import Settings
from iotcore.platform.db import Connection, Database
from iotcore.platform.shutdown import cancelling, stop_task


async def _backend_gone(owner_conn: Connection, pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not await owner_conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_closing_the_database_ends_although_a_connection_is_never_released(
    settings: Settings, owner_conn: Connection
) -> None:
    db = Database(settings)
    await db.connect()
    held = await db.primary.acquire()  # never released, as by a leaked or stuck request
    pid = await held.fetchval("SELECT pg_backend_pid()")
    assert db.primary.get_idle_size() == 0  # the fault is in place: nothing to give back
    started = time.monotonic()
    await db.close(timeout_s=1)
    # pool.close() alone waits for that connection forever; bounded, it gives up and ends it.
    assert 1 <= time.monotonic() - started < 10
    assert await _backend_gone(owner_conn, pid)


async def test_closing_the_database_closes_released_connections_at_once(
    settings: Settings, owner_conn: Connection
) -> None:
    db = Database(settings)
    await db.connect()
    async with db.primary.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    started = time.monotonic()
    await db.close(timeout_s=5)
    assert time.monotonic() - started < 5
    assert await _backend_gone(owner_conn, pid)


async def test_a_task_that_ignores_cancellation_does_not_hold_stop_task() -> None:
    release = asyncio.Event()
    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_task(task, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert cancellations == 1 and not task.done()
    release.set()
    await stop_task(task, timeout_s=5)
    assert task.done()


async def test_a_loop_ends_when_a_library_turns_its_cancellation_into_an_error() -> None:
    """The presence workers' case: the stop's CancelledError came back as an ordinary error,
    the loop logged it and waited for the next event; `cancelling()` still sees the stop."""
    rounds = 0

    async def library_call() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("connection lost") from None

    async def worker() -> None:
        nonlocal rounds
        while not cancelling():
            rounds += 1
            with contextlib.suppress(Exception):
                await library_call()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_task(task, timeout_s=30)
    assert time.monotonic() - started < 5
    assert task.done() and rounds == 1
