"""A lean closed-loop load generator for HTTP/1.1 GETs on keep-alive connections.

aiohttp's client spends about as much CPU on a request as the server it measures; on a
2-core machine that CPU is taken from the API and the database, and it weighs on the API's
side of a comparison with bare SQL. This one writes the request bytes and reads each answer
by its Content-Length (every endpoint measured sends one; chunked answers are refused), so
that nearly all the machine goes to what is measured. Same LoadResult as httpload.run_load.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from httpload import LoadResult

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._end = -1  # where the answer in the buffer ends, once its head is read
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._end < 0:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self._buffer[: head_end + 2])
            length = _CONTENT_LENGTH.search(head)
            if length is None:
                self._fail(ConnectionError("an answer without Content-Length"))
                return
            self._status = int(head[9:12])
            self._end = head_end + 4 + int(length.group(1))
        if len(self._buffer) >= self._end:
            del self._buffer[: self._end]
            self._end = -1
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def get(self, request: bytes) -> int:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


async def closed_loop(
    name: str, clients: int, duration_s: float, call: Callable[[int], Awaitable[int]]
) -> LoadResult:
    """`clients` workers each awaiting `call(worker)` (which returns a status) back to back
    for `duration_s`."""
    result = LoadResult(name)
    deadline = time.perf_counter() + duration_s

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await call(index)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.statuses[status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def run_lean_load(
    name: str,
    base: str,
    path: Callable[[], str],
    headers: dict[str, str],
    concurrency: int,
    duration_s: float,
) -> LoadResult:
    """`concurrency` connections to `base` (http://host:port), each sending GET `path()`
    and waiting for the answer, back to back for `duration_s`."""
    host_port = base.removeprefix("http://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    loop = asyncio.get_running_loop()
    opened = [
        await loop.create_connection(_Connection, host, int(port)) for _ in range(concurrency)
    ]

    def get(index: int) -> Awaitable[int]:
        request = f"GET {path()} HTTP/1.1\r\nHost: {host_port}\r\n{extra}\r\n"
        return opened[index][1].get(request.encode())

    try:
        return await closed_loop(name, concurrency, duration_s, get)
    finally:
        for transport, _ in opened:
            transport.close()
