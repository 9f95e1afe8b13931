"""Each role exports the metrics it keeps: the fleet-wide connected-devices gauge comes from
the process that runs maintenance (`maintain`, the single node), and an API process does not
export it at 0."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from tests.conftest import free_port, make_settings, read_log, start_iotcore
from tests.support.node import single_node, stop, wait_until_ready

GAUGE = re.compile(r"^iotcore_devices_connected ([0-9.e+]+)$", re.M)


def scrape(url: str, process: object, wanted: str, within_s: float = 30) -> str:
    """The /metrics text once it holds `wanted` (a metric every such process exports)."""
    deadline = time.monotonic() + within_s
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
                text = response.read().decode()
            if wanted in text:
                return text
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {wanted} at {url}/metrics:\n{text[-2000:]}\n{read_log(process)}")


def test_the_api_role_does_not_export_the_connected_devices_gauge(database: str) -> None:
    settings = make_settings(database, http_port=free_port(), metrics_port=free_port())
    process = start_iotcore(settings, "api")
    try:
        wait_until_ready(f"http://127.0.0.1:{settings.http_port}", process)
        metrics = scrape(
            f"http://127.0.0.1:{settings.metrics_port}", process, "iotcore_http_requests_total"
        )
        assert "iotcore_db_pool_connections" in metrics  # the API's own metrics are there
        assert GAUGE.search(metrics) is None, "an API process exported a connected count"
    finally:
        stop(process)


def test_maintain_exports_the_connected_devices_gauge(database: str) -> None:
    settings = make_settings(database, metrics_port=free_port())
    process = start_iotcore(settings, "maintain")
    try:
        metrics = scrape(
            f"http://127.0.0.1:{settings.metrics_port}", process, "iotcore_devices_connected"
        )
        found = GAUGE.search(metrics)
        assert found is not None and float(found[1]) >= 0
    finally:
        stop(process)


def test_the_single_node_exports_the_connected_devices_gauge(database: str) -> None:
    with single_node(database) as node:
        metrics = scrape(node.internal, node.process, "iotcore_devices_connected")
        assert GAUGE.search(metrics) is not None
