"""Credentials never reach a log line or an error body. A header that aiohttp's parser refuses
(a control character after a valid bearer token or Basic credentials) is answered with the
error envelope, without echoing the header; nothing is logged with the credential, by our
loggers or aiohttp's; and no response names the server's software version."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import pytest

from iotcore.platform.logging import configure_logging
from tests.conftest import ApiFactory
from tests.support import rawhttp
from tests.support.users import register


@pytest.fixture
def production_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The production log configuration, writing to a buffer; caplog keeps every record of
    every logger (aiohttp's included) as well, at DEBUG."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_factory = logging.getLogRecordFactory()
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.setLogRecordFactory(saved_factory)


async def test_a_malformed_credential_header_is_neither_logged_nor_echoed(
    api_with: ApiFactory, production_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    client = await api_with()
    user = await register(client)
    token = user.access_token
    basic = base64.b64encode(b"3f1c2a4e-0000-4000-8000-000000000001:device-secret-value").decode()
    for credential in (f"Bearer {token}", f"Basic {basic}"):
        for bad in (b"\x01", b"\x7f", b"\x00x"):
            request = rawhttp.build(
                "GET", "/api/v1/auth/me", [(b"Authorization", credential.encode() + bad)]
            )
            answer = await rawhttp.send(client.port, request)
            assert answer.status == 400, answer
            error = answer.json()["error"]  # type: ignore[index]
            assert error["code"] == "malformed_request"
            secret = credential.split()[1]
            assert secret.encode() not in answer.body
            assert secret[:20] not in production_logs.getvalue()
            assert secret[:20] not in caplog.text
            assert "aiohttp" not in answer.headers.get("server", "")
    # The requests were refused by the parser and that was logged: the checks above looked
    # at real log output, not at an empty buffer.
    assert "refused malformed request" in production_logs.getvalue()


async def test_credentials_logged_by_any_library_are_redacted(
    production_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl"
    lines = {
        "aiohttp.server": ("Error handling request: Authorization: Bearer %s", token),
        "aiohttp.access": ('"GET / HTTP/1.1" Authorization: Basic %s', "dXNlcjpwYXNzd29yZA=="),
        "aiohttp.web": ("api key %s", "iotk_0123456789abcdef0123456789"),
        "amqtt": ("CONNECT password=%s", "s3cret-device-pass"),
        "iotcore.auth": ('body {"password": "%s"}', "correct-horse-battery"),
    }
    for name, (message, secret) in lines.items():
        logging.getLogger(name).error(message, secret)
        assert secret not in production_logs.getvalue(), name
        assert secret not in caplog.text, name
    try:
        raise ValueError(f"bad header b'Bearer {token}\\x01'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    assert "Error handling request" in production_logs.getvalue()
    assert token not in production_logs.getvalue()
    assert token not in caplog.text


async def test_no_response_names_the_server_software(api_with: ApiFactory) -> None:
    client = await api_with()
    for path in ("/api/v1/health/live", "/api/v1/nope", "/api/v1/auth/me"):
        response = await client.get(path)
        assert response.headers["Server"] == "iotcore", path
    refused = await rawhttp.send(client.port, b"BREW / HTCPCP/1.0\r\n\r\n")
    assert refused.headers["server"] == "iotcore"
