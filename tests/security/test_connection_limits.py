"""Connections are bounded: a client that connects and sends nothing, sends half a request
head, or idles on keep-alive is cut after IOT_HTTP_IDLE_TIMEOUT_S; live streams are capped
per user and per tenant (429 beyond) and share a bounded set of Redis connections."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import ApiFactory

IDLE_S = 1.0


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (reading what it sent first)."""
    started = time.monotonic()
    while await asyncio.wait_for(reader.read(65536), seconds):
        pass
    return time.monotonic() - started


async def test_silent_half_sent_and_idle_connections_are_cut(api_with: ApiFactory) -> None:
    client = await api_with(http_idle_timeout_s=IDLE_S)
    port = client.port
    assert port is not None

    silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
    half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
    half_w.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ab")
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    idle_w.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
    for writer in (half_w, idle_w):
        await writer.drain()
    waits = await asyncio.gather(
        _closed_within(silent_r, 30), _closed_within(half_r, 30), _closed_within(idle_r, 30)
    )
    # Cut by the server (read() returned EOF), after about the timeout, not at once.
    assert all(w < 15 for w in waits), waits
    for writer in (silent_w, half_w, idle_w):
        writer.close()
    # A client that sends its request in time is answered as usual.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /api/v1/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 30)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    writer.close()
