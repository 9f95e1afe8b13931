"""Schemathesis fuzzes every documented endpoint of a live `iotcore api` process: no 5xx,
every status documented, every response matching its schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotcore.config import Settings
from tests.conftest import free_port, make_settings, read_log, start_iotcore

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _post_json(url: str, payload: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


@pytest.fixture(scope="module")
def live_api(database: str, mqtt_broker: str) -> Iterator[tuple[Settings, str]]:
    settings = make_settings(database, http_port=free_port(), mqtt_url=mqtt_broker)
    process = start_iotcore(settings, "api")
    base = f"http://127.0.0.1:{settings.http_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _get(base + "/api/v1/health/live")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(read_log(process))
    try:
        yield settings, base
    finally:
        process.terminate()
        process.wait(10)


def test_openapi_document_lists_every_route(live_api: tuple[Settings, str]) -> None:
    _, base = live_api
    status, raw = _get(base + "/api/v1/openapi.json")
    document = json.loads(raw)
    assert status == 200
    assert document["openapi"].startswith("3.1")
    for path in ("/api/v1/health/live", "/api/v1/health/ready", "/api/v1/auth/login"):
        assert path in document["paths"], path
    status, page = _get(base + "/api/v1/docs")
    assert status == 200 and b"/api/v1/health/ready" in page


def test_schemathesis_finds_no_server_error_or_schema_mismatch(
    live_api: tuple[Settings, str], tmp_path: Path
) -> None:
    _, base = live_api
    user = _post_json(
        base + "/api/v1/auth/register",
        {"email": "fuzz@example.com", "password": "fuzzing-is-fun-4242", "tenant_name": "Fuzz"},
    )
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [
        binary,
        "run",
        base + "/api/v1/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("IOT_FUZZ_EXAMPLES", "12"),
        "--seed",
        os.environ.get("IOT_FUZZ_SEED", "20261122"),
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        "-H",
        f"Authorization: Bearer {user['access_token']}",
        # Server-Sent Events never end; tests/dashboards covers the stream.
        "--exclude-path-regex",
        "^/api/v1/telemetry/stream$",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
