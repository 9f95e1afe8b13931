"""Security tests attack the API as production serves it: the same runner (timeouts, error
envelope for parser errors, banner) over real sockets, with settings chosen per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.http.server import ApiRunner
from tests.conftest import make_settings

Client = TestClient  # type: ignore[type-arg]
ApiFactory = Callable[..., Awaitable[Client]]


class ApiTestServer(TestServer):
    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self._settings = settings

    async def _make_runner(self, **kwargs: Any) -> ApiRunner:
        return ApiRunner(self.app, self._settings)


@pytest.fixture
async def api_with(database: str) -> AsyncIterator[ApiFactory]:
    """`await api_with(**settings)`: a client of a fresh API process-alike."""
    clients: list[Client] = []

    async def build(**overrides: Any) -> Client:
        settings = make_settings(database, **overrides)
        client = TestClient(ApiTestServer(create_app(settings), settings))
        await client.start_server()
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()
