"""`iotcore maintain` reports a failing pass: its readiness (compose's healthcheck) turns 503
naming the maintenance check, and its metrics count the failure."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from tests.conftest import free_port, make_settings, read_log, start_iotcore
from tests.support.node import stop


def test_maintain_is_unhealthy_while_its_passes_fail(database: str) -> None:
    # The owner's database (maintenance runs as the owner) is unreachable; the service's is fine.
    settings = make_settings(
        database,
        metrics_port=free_port(),
        database_owner_url=f"postgresql://iotcore_owner:x@127.0.0.1:{free_port()}/nowhere",
    )
    process = start_iotcore(settings, "maintain")
    url = f"http://127.0.0.1:{settings.metrics_port}"
    body: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/api/v1/health/ready", timeout=2)
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                if str(body["checks"].get("maintenance", "")).startswith("failing"):  # type: ignore[union-attr]
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(
                f"maintain never reported the failure: {body}\n{read_log(process)}"
            )
        assert body["checks"]["postgres"] == "ok"  # type: ignore[index]
        with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
            metrics = response.read().decode()
        failed = [
            line
            for line in metrics.splitlines()
            if line.startswith('iotcore_maintenance_runs_total{outcome="failed"}')
        ]
        assert failed and float(failed[0].split()[-1]) >= 1
        assert "iotcore_maintenance_last_success_timestamp_seconds 0.0" in metrics
    finally:
        stop(process)
