"""What a hung test was waiting for. pytest-timeout (pyproject.toml) ends a test that runs
past its limit and prints every thread's stack; for an asyncio test those show only the
event loop idling in select(). Shortly before that, this prints every asyncio task's stack,
which names the await that never returns."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading

import pytest

# Seconds before pytest-timeout's limit at which the tasks are printed.
AHEAD_S = 15.0


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running()
    ]


def _describe(loop: asyncio.AbstractEventLoop) -> str:
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    out.write(f"--- {len(tasks)} asyncio tasks of {loop!r}\n")
    for task in tasks:
        task.print_stack(file=out)
    return out.getvalue()


def _tasks_of(loop: asyncio.AbstractEventLoop) -> str:
    """Read in the loop's own thread when it is idle (a hang); from here when it is busy."""
    printed = threading.Event()
    text: list[str] = []

    def in_loop() -> None:
        text.append(_describe(loop))
        printed.set()

    loop.call_soon_threadsafe(in_loop)
    if printed.wait(5):
        return text[0]
    for _ in range(3):
        try:
            return _describe(loop)
        except RuntimeError:  # the task set changed while it was read
            continue
    return f"--- tasks of {loop!r} could not be read\n"


def _dump(nodeid: str) -> None:
    out = sys.__stderr__
    if out is None:
        return
    out.write(f"\n+++ {nodeid}: near its timeout; asyncio tasks follow\n")
    for loop in _running_loops():
        out.write(_tasks_of(loop))
    out.flush()


def start(item: pytest.Item) -> threading.Timer | None:
    marker = item.get_closest_marker("timeout")
    timeout = (
        float(marker.args[0])
        if marker and marker.args
        else float(item.config.getini("timeout") or 0)
    )
    if timeout <= AHEAD_S:
        return None
    timer = threading.Timer(timeout - AHEAD_S, _dump, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    return timer
