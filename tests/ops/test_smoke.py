"""`iotcore smoke` passes against the single node and, with a dependency stopped, fails
naming the step."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT, free_port, settings_env
from tests.support.node import Node, single_node


@pytest.fixture(scope="module")
def node(database: str) -> Iterator[Node]:
    with single_node(database) as running:
        yield running


def smoke(node: Node, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotcore.cli", "smoke", *args],
        env={**settings_env(node.settings), **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_passes_against_the_single_node(node: Node) -> None:
    result = smoke(node, "--api", node.api, "--broker", node.broker)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "register",
        "provision",
        "claim",
        "fetch-secret",
        "publish-mqtt",
        "publish-http",
        "read-raw",
        "read-latest",
        "read-aggregate",
        "purge-tenant",
    ):
        assert f"ok    {name}" in result.stdout


def test_smoke_names_the_mqtt_step_when_the_broker_is_unreachable(node: Node) -> None:
    stopped_broker = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    result = smoke(node, "--api", node.api, "--broker", stopped_broker)
    assert result.returncode == 1
    assert "ok    fetch-secret" in result.stdout  # everything before the broker passed
    assert "FAIL  publish-mqtt:" in result.stderr
    assert "ok    publish-http" not in result.stdout


def test_smoke_names_the_first_step_when_the_api_is_unreachable(node: Node) -> None:
    result = smoke(node, "--api", f"http://127.0.0.1:{free_port()}", "--broker", node.broker)
    assert result.returncode == 1
    assert "FAIL  ready:" in result.stderr


def test_smoke_fails_the_provision_step_with_a_wrong_factory_key(node: Node) -> None:
    wrong_key = "not-the-factory-key-" * 2
    result = smoke(node, "--api", node.api, "--broker", node.broker, IOTCORE_FACTORY_KEY=wrong_key)
    assert result.returncode == 1
    assert "FAIL  provision: POST /api/v1/factory/devices answered 401" in result.stderr


def test_the_single_node_serves_the_console(node: Node) -> None:
    """README's run command (`iotcore run`) serves the console at / with nothing to build."""
    with urllib.request.urlopen(node.api + "/", timeout=10) as response:
        page = response.read().decode()
        csp = response.headers["Content-Security-Policy"]
    assert '<script type="module" src="/console/assets/js/main.js">' in page
    assert "script-src 'self'" in csp
    for asset in ("js/main.js", "vendor/uplot.iife.min.js", "console.css"):
        with urllib.request.urlopen(f"{node.api}/console/assets/{asset}", timeout=10) as response:
            assert response.status == 200 and len(response.read()) > 1000
