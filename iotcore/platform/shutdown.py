"""Bounded shutdown: a close path never waits without a limit. An operator's SIGTERM and a
test's teardown both end in these, and an await with no timeout there (a pool waiting for a
connection nobody releases, a task that does not finish when cancelled) hangs the process
for good, with an idle event loop and nothing in the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("iotcore.shutdown")

# How long a pool may wait for its connections to come back, and a cancelled task to end.
CLOSE_TIMEOUT_S = 10.0


async def stop_task(task: asyncio.Task[Any], timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Cancel a background task and wait for it to end, at most `timeout_s`."""
    await stop_tasks([task], timeout_s)


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any]], timeout_s: float = CLOSE_TIMEOUT_S
) -> None:
    """Cancel background tasks and wait (together, at most `timeout_s`) for them to end. A
    task can fail to end when cancelled: a library that turns the CancelledError into an
    error of its own, caught by a loop that carries on, swallows the cancellation (seen with
    the presence workers: the embedded broker's stop then waited for them for ever)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    done, stuck = await asyncio.wait(pending, timeout=timeout_s)
    for task in stuck:
        log.warning("task did not stop when cancelled", extra={"task": task.get_name()})
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("task failed while stopping", exc_info=task.exception())


def cancelling() -> bool:
    """In a loop that carries on after an error: whether this task was asked to stop. True
    also when a library swallowed the CancelledError (the request stays counted), so the loop
    ends instead of waiting for work that will never come."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def close_pool(pool: Any, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close an asyncpg pool. pool.close() waits, without a limit, for every acquired
    connection to be released; a connection that is never released (a request cancelled
    mid-query, a leaked acquire) would hold shutdown forever. Past `timeout_s` the pool's
    connections are terminated instead (what asyncpg recommends)."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("database pool did not close in time: connections terminated")
        pool.terminate()
