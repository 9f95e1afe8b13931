"""A deprecated operation says so on its responses (RFC 9745 Deprecation, RFC 8594 Sunset)
and in the OpenAPI document, as docs/versioning.md promises; others say nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from iotcore.platform.http.endpoints import Endpoint, add_endpoints
from iotcore.platform.http.middleware import observe_middleware
from iotcore.platform.http.responses import json_response
from iotcore.platform.openapi import build_openapi
from iotcore.platform.versioning import Deprecation

SINCE = datetime(2027, 1, 1, tzinfo=UTC)
SUNSET = datetime(2028, 1, 1, tzinfo=UTC)


async def answer(request: web.Request) -> web.Response:
    return json_response({"ok": True})


ENDPOINTS = [
    Endpoint("GET", "/old", answer, "Old way", "test", deprecation=Deprecation(SINCE, SUNSET)),
    Endpoint("GET", "/new", answer, "New way", "test"),
]


async def test_deprecated_operation_carries_deprecation_and_sunset() -> None:
    app = web.Application(middlewares=[observe_middleware])
    add_endpoints(app, ENDPOINTS)
    async with TestClient(TestServer(app)) as client:
        old = await client.get("/old")
        new = await client.get("/new")
    assert old.status == 200
    assert old.headers["Deprecation"] == f"@{int(SINCE.timestamp())}"
    assert old.headers["Sunset"] == "Sat, 01 Jan 2028 00:00:00 GMT"
    assert 'rel="deprecation"' in old.headers["Link"]
    assert "Deprecation" not in new.headers and "Sunset" not in new.headers


def test_openapi_marks_only_the_deprecated_operation() -> None:
    paths = build_openapi(ENDPOINTS, "1.0.0")["paths"]
    assert paths["/old"]["get"]["deprecated"] is True
    assert "deprecated" not in paths["/new"]["get"]
