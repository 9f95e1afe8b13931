"""Every error the platform can produce comes back in the envelope with the right status."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, Field

from iotcore.platform.context import SETTINGS_KEY
from iotcore.platform.errors import Conflict
from iotcore.platform.http.endpoints import Endpoint, add_endpoints
from iotcore.platform.http.middleware import add_request_id_header, observe_middleware
from iotcore.platform.http.responses import json_response
from tests.conftest import make_settings


class Echo(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    count: int = Field(ge=0)


async def echo(request: web.Request, body: Echo) -> web.Response:
    return json_response(body)


async def conflict(request: web.Request) -> web.Response:
    raise Conflict(code="already_exists")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals must not leak")


@pytest.fixture
async def echo_client(database: str) -> Any:
    """A minimal app built from the platform pieces, with one endpoint of each kind."""
    app = web.Application(middlewares=[observe_middleware], client_max_size=2048)
    app[SETTINGS_KEY] = make_settings(database)
    app.on_response_prepare.append(add_request_id_header)
    add_endpoints(
        app,
        [
            Endpoint("POST", "/echo", echo, "echo", "test", body=Echo),
            Endpoint("POST", "/conflict", conflict, "conflict", "test"),
            Endpoint("GET", "/crash", crash, "crash", "test"),
        ],
    )
    async with TestClient(TestServer(app)) as client:
        yield client


def assert_envelope(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    assert body["error"]["request_id"]


async def test_unknown_route_is_404_envelope(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/api/v1/no-such-thing")
    assert response.status == 404
    assert_envelope(await response.json(), "not_found")


async def test_wrong_method_is_405_envelope_with_allow(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.delete("/api/v1/health/live")
    assert response.status == 405
    assert_envelope(await response.json(), "method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_malformed_json_is_400(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.post(
        "/echo", data=b'{"name": "x",', headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert_envelope(await response.json(), "malformed_json")


async def test_wrong_content_type_is_415(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.post(
        "/echo", data=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status == 415
    assert_envelope(await response.json(), "unsupported_media_type")


async def test_body_over_the_limit_is_413(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    big = b'{"name": "' + b"x" * 4096 + b'", "count": 1}'
    response = await echo_client.post(
        "/echo", data=big, headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert_envelope(await response.json(), "payload_too_large")


async def test_invalid_fields_are_422_with_one_detail_per_field(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.post("/echo", json={"name": "", "count": -1})
    assert response.status == 422
    body = await response.json()
    assert_envelope(body, "validation_error")
    assert {d["field"] for d in body["error"]["details"]} == {"name", "count"}
    assert all(d["problem"] for d in body["error"]["details"])


async def test_valid_body_passes_through(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.post("/echo", json={"name": "ok", "count": 3})
    assert response.status == 200
    assert await response.json() == {"name": "ok", "count": 3}


async def test_domain_error_keeps_its_code(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.post("/conflict")
    assert response.status == 409
    assert_envelope(await response.json(), "already_exists")


async def test_unexpected_error_is_500_envelope_without_internals(echo_client: TestClient) -> None:  # type: ignore[type-arg]
    response = await echo_client.get("/crash")
    assert response.status == 500
    text = await response.text()
    assert "secret internals" not in text and "Traceback" not in text
    assert_envelope(await response.json(), "internal_error")


async def test_request_id_is_echoed_or_generated(client: TestClient) -> None:  # type: ignore[type-arg]
    given = await client.get("/api/v1/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    generated = await client.get("/api/v1/no-such-thing")
    request_id = generated.headers["X-Request-ID"]
    assert len(request_id) == 32
    assert (await generated.json())["error"]["request_id"] == request_id


async def test_hostile_request_id_is_replaced(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/api/v1/health/live", headers={"X-Request-ID": "a b<script>"})
    assert response.headers["X-Request-ID"] != "a b<script>"
