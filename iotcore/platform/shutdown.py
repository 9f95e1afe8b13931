"""Bounded shutdown: a close path never waits without a limit. An operator's SIGTERM and a
test's teardown both end in these, and an await with no timeout there (a pool waiting for a
connection nobody releases, a task that does not finish when cancelled) hangs the process
for good, with an idle event loop and nothing in the logs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("iotcore.shutdown")

# How long a pool may wait for its connections to come back, and a cancelled task to end.
CLOSE_TIMEOUT_S = 10.0


async def stop_task(task: asyncio.Task[Any], timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Cancel a background task and wait for it to end, at most `timeout_s`."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("task did not stop when cancelled", extra={"task": task.get_name()})
    elif not task.cancelled() and task.exception() is not None:
        log.warning("task failed while stopping", exc_info=task.exception())


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
