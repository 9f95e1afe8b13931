"""Alert rules and dashboards against a real Prometheus (Debian's `prometheus`, `promtool`,
`amtool`; ops/tools.sh installs them): the rules pass `promtool check rules` and their unit
tests, Alertmanager's configuration passes `amtool check-config`, and a Prometheus scraping
the single node and `iotcore maintain` under a little load finds data for every expression
used by an alert or a dashboard panel."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
import yaml

from iotcore.tools.smoke import STEPS, SmokeRun, run_smoke
from tests.conftest import REPO_ROOT, free_port, make_settings, start_iotcore
from tests.support.node import Node, single_node, stop, wait_until_ready

PROMETHEUS_DIR = REPO_ROOT / "ops" / "prometheus"
DASHBOARDS = sorted((REPO_ROOT / "ops" / "grafana" / "dashboards").glob("*.json"))
# Series that exist only where this test cannot produce them; promtool's unit tests cover
# the alerts on them (ops/prometheus/tests/).
NOT_SCRAPED_HERE = {
    "emqx": "EMQX is not run by the tests (the embedded broker stands in for it)",
}
COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `bash ops/tools.sh` (ops/test.sh does)")
    return path


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_promtool_checks_the_rules_and_the_configuration() -> None:
    result = run_tool(tool("promtool"), "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_tool(tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_cover_every_alert_firing_and_not() -> None:
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    result = run_tool(tool("promtool"), "test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {name for name, _ in alert_expressions()}
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"


def test_alertmanager_configuration_is_valid_and_prometheus_routes_to_it() -> None:
    config = REPO_ROOT / "ops" / "alertmanager" / "alertmanager.yml"
    result = run_tool(tool("amtool"), "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return found


def comparison_sides(expr: str) -> list[str]:
    """An alert's expression split at its top-level comparison: each side must have data
    (the comparison itself is empty whenever the alert is quiet, as it is here)."""
    depth, quoted = 0, False
    for index, char in enumerate(expr):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "({[":
            depth += 1
        elif not quoted and char in ")}]":
            depth -= 1
        elif not quoted and depth == 0:
            match = COMPARISON.match(expr, index)
            if match:
                return [expr[:index].strip(), expr[match.end() :].strip()]
    return [expr.strip()]


def queries_to_check() -> dict[str, str]:
    """Query -> where it comes from. Offsets are dropped: a fresh Prometheus has no past."""
    checks: dict[str, str] = {}
    for name, expr in alert_expressions():
        for side in comparison_sides(expr):
            if not re.fullmatch(r"[\d\s.*+/-]+", side):
                checks[re.sub(r"\s+offset\s+\w+", "", side)] = f"alert {name}"
    for where, expr in dashboard_expressions():
        checks[expr] = f"dashboard {where}"
    return {
        query: where
        for query, where in checks.items()
        if not any(marker in query for marker in NOT_SCRAPED_HERE)
    }


@pytest.fixture(scope="module")
def node(database: str) -> Iterator[Node]:
    # A small device rate limit (two requests at once, at the default per-request floor of 5
    # readings, then one a second), so the load includes rate-limited requests.
    limits = {"rate_limit_device_per_s": 5, "rate_limit_device_burst": 10}
    with single_node(database, rate_limit_request_floor=5, **limits) as running:
        yield running


@pytest.fixture(scope="module")
def maintain(database: str) -> Iterator[str]:
    settings = make_settings(database, metrics_port=free_port())
    process = start_iotcore(settings, "maintain")
    url = f"http://127.0.0.1:{settings.metrics_port}"
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def prometheus(
    node: Node, maintain: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "iotcore-api", "static_configs": [{"targets": [node.internal[7:]]}]},
            {"job_name": "iotcore-maintain", "static_configs": [{"targets": [maintain[7:]]}]},
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (directory / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError((directory / "prometheus.log").read_text()[-3000:])
        yield url
    finally:
        stop(process)
        log.close()


def query(prometheus: str, expr: str) -> list[object]:
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return result if body["data"]["resultType"] == "vector" else [result]


async def refuse_one_reading(node: Node, headers: dict[str, str]) -> None:
    """The database refuses a reading for good (a CHECK constraint on a metric name no row
    has, SQLSTATE 23514), as in tests/telemetry/test_write_faults.py: the refused-batch alert
    then has data."""
    owner = await asyncpg.connect(node.settings.database_owner_url)
    metric = f"refused_{uuid.uuid4().hex[:8]}"
    try:
        await owner.execute(
            f"ALTER TABLE telemetry ADD CONSTRAINT {metric} CHECK (metric <> '{metric}')"
        )
        async with aiohttp.ClientSession(node.api) as session:
            for _ in range(20):  # the device is rate limited by the load before: wait its turn
                async with session.post(
                    "/api/v1/telemetry", json={"metrics": {metric: 1}}, headers=headers
                ) as response:
                    if response.status != 429:
                        assert response.status == 422, await response.text()
                        break
                    await asyncio.sleep(float(response.headers["Retry-After"]))
            else:
                raise AssertionError("still rate limited")
    finally:
        await owner.execute(f"ALTER TABLE telemetry DROP CONSTRAINT IF EXISTS {metric}")
        await owner.close()


async def a_little_load(node: Node) -> None:
    """The smoke test's critical path (MQTT and HTTP telemetry, reads), then a burst of HTTP
    telemetry past the device's rate limit, one bad point, one bad password and one reading
    the database refuses."""
    settings = node.settings
    run = SmokeRun(
        node.api,
        node.broker,
        settings.manufacturing_signing_key_id,
        settings.manufacturing_key_ring[settings.manufacturing_signing_key_id],
    )
    await run_smoke(run, [step for step in STEPS if step[0] != "purge-tenant"])  # keep the device
    credentials = run.state["credentials"]
    token = base64.b64encode(f"{credentials['device_id']}:{credentials['secret']}".encode())
    headers = {"Authorization": f"Basic {token.decode()}"}
    statuses = []
    async with aiohttp.ClientSession(node.api) as session:
        body = {"points": [{"metrics": {"load": 1}}, {"metrics": {}}]}  # the second is rejected
        async with session.post("/api/v1/telemetry", json=body, headers=headers) as response:
            statuses.append(response.status)
        for value in range(6):
            body = {"metrics": {"load": value}}
            async with session.post("/api/v1/telemetry", json=body, headers=headers) as response:
                statuses.append(response.status)
        wrong = {"Authorization": "Basic " + base64.b64encode(b"nobody:wrong").decode()}
        async with session.post("/api/v1/telemetry", json=body, headers=wrong) as response:
            statuses.append(response.status)
    assert 202 in statuses and 429 in statuses and 401 in statuses, statuses
    await refuse_one_reading(node, headers)


async def test_every_alert_and_dashboard_expression_returns_data(
    node: Node, prometheus: str
) -> None:
    await a_little_load(node)
    pending = queries_to_check()
    assert len(pending) > 20  # the alerts' and the dashboards' queries are really collected
    deadline = time.monotonic() + 45
    while pending and time.monotonic() < deadline:
        pending = {q: where for q, where in pending.items() if not query(prometheus, q)}
        if pending:
            await asyncio.sleep(1)
    assert pending == {}, "expressions without data:\n" + "\n".join(
        f"{where}: {q}" for q, where in pending.items()
    )


def test_prometheus_loaded_every_alert_rule(prometheus: str) -> None:
    with urllib.request.urlopen(prometheus + "/api/v1/rules", timeout=5) as response:
        groups = json.loads(response.read())["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {name for name, _ in alert_expressions()}
    assert all(rule["health"] != "err" for group in groups for rule in group["rules"])


def test_dashboards_are_provisioned_from_the_datasource_prometheus() -> None:
    assert DASHBOARDS, "no dashboard in ops/grafana/dashboards"
    datasources = yaml.safe_load(
        (REPO_ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = datasources["datasources"][0]["uid"]
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"], panel["title"]
