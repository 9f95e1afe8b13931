"""Schemathesis fuzzes every documented operation of a live `iotcore api` process, each with
valid credentials of the kind it declares, path ids of real devices, and its stateful phase:
no 5xx, every status documented, every response matching its schema.

Credentials and seeds are applied by tests/fuzz/schemathesis_hooks.py inside the schemathesis
process; this module arranges the state they name (two tenants, devices with telemetry, a
device holding a secret, one with a signature key, refresh tokens, claimable serials) and
reads back the record of every call to prove each operation was reached with credentials
that were accepted.

IOT_FUZZ_EXAMPLES (cases per operation), IOT_FUZZ_SEED (explore other cases than CI's fixed
ones) and IOT_FUZZ_CHECKS (schemathesis checks, comma-separated) tune a run; the defaults
take about two minutes.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iotcore.config import Settings
from iotcore.tools import factory_client
from tests.conftest import REPO_ROOT, free_port, make_settings, read_log, start_iotcore
from tests.support.node import stop

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
# Operations schemathesis does not fuzz, each with the test that covers it here.
NOT_FUZZED = {
    # Schemathesis leaves out the document it was loaded from.
    "GET /api/v1/openapi.json": "test_openapi_document_lists_every_route",
}
SCHEMATHESIS_CONFIG = """
# Schemathesis would otherwise register a user of its own and send its token.
[auth]
auto-signup = false

# Ids learned from responses would let the early phases reset every seeded device (the hooks
# keep one device for resets); the stateful phase still follows ids from responses.
[phases.examples.extra-data-sources]
responses = false
[phases.coverage.extra-data-sources]
responses = false
[phases.fuzzing.extra-data-sources]
responses = false

# An event stream never ends: read it for a second, at most one event.
[[operations]]
include-path = "/api/v1/telemetry/stream"
request-timeout = 1.0
max-stream-events = 1
"""
# Every fuzzed operation with inputs must have been answered this many times with credentials
# accepted (one without parameters or body has a single request to send).
MIN_ACCEPTED_CALLS = 3


@dataclass
class Api:
    settings: Settings
    base: str

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        return status, json.loads(raw) if raw else None

    def json(self, method: str, path: str, payload: Any, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, answer = self.call(method, path, json.dumps(payload).encode(), headers)
        assert status < 300, (method, path, status, answer)
        return answer


@pytest.fixture(scope="module")
def live_api(database: str, mqtt_broker: str) -> Iterator[Api]:
    # Wrong claim codes are throttled per tenant (tested in tests/devices); here the fuzzer's
    # guesses must not hide the claim logic behind 429s.
    # One port for the public API and the internal listener (/metrics, the broker's hooks):
    # the document then lists every operation, the hooks included, and the fuzz reaches all.
    port = free_port()
    settings = make_settings(
        database,
        http_port=port,
        metrics_port=port,
        mqtt_url=mqtt_broker,
        claim_max_failures=100_000,
    )
    process = start_iotcore(settings, "api")
    api = Api(settings, f"http://127.0.0.1:{settings.http_port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if api.call("GET", "/api/v1/health/live")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(read_log(process))
    try:
        yield api
    finally:
        # Killed if an open event stream holds the graceful shutdown (not this test's
        # subject): the database cannot be dropped under a live connection.
        stop(process)


def _register(api: Api, label: str) -> dict[str, Any]:
    password = f"fuzz-{uuid.uuid4().hex}"
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.com"
    # A long random tenant name: the fuzz cannot guess a tenant deletion's confirmation.
    answer = api.json(
        "POST",
        "/api/v1/auth/register",
        {"email": email, "password": password, "tenant_name": f"{label} {uuid.uuid4().hex}"},
    )
    return {**answer, "email": email, "password": password}


def _provision(api: Api, count: int) -> list[dict[str, Any]]:
    key_id = api.settings.manufacturing_signing_key_id
    secret = api.settings.manufacturing_key_ring[key_id]
    serials = [f"FUZZ-{uuid.uuid4().hex[:12].upper()}" for _ in range(count)]
    path, body, headers = factory_client.factory_request(
        key_id, secret, [{"serial_number": s, "model": "fuzz-sensor"} for s in serials]
    )
    status, answer = api.call("POST", path, body, headers)
    assert status == 201, answer
    devices: list[dict[str, Any]] = answer["devices"]
    return devices


def _claim(api: Api, token: str, device: dict[str, Any]) -> None:
    api.json(
        "POST",
        "/api/v1/devices/claim",
        {"serial_number": device["serial_number"], "claim_code": device["claim_code"]},
        token,
    )


def _fetch_secret(api: Api, device: dict[str, Any]) -> str:
    key = base64.urlsafe_b64decode(device["device_key"] + "=" * (-len(device["device_key"]) % 4))
    path, body, headers = factory_client.device_request(
        device["device_id"], key, "/api/v1/devices/secret"
    )
    status, answer = api.call("POST", path, body, headers)
    assert status == 200, answer
    secret: str = answer["secret"]
    return secret


def _send_telemetry(api: Api, device_id: str, secret: str) -> None:
    basic = base64.b64encode(f"{device_id}:{secret}".encode()).decode()
    points = [
        {"ts": int(time.time() * 1000) - i * 60_000, "metrics": {"temp": 20.0 + i, "on": True}}
        for i in range(5)
    ]
    status, answer = api.call(
        "POST",
        "/api/v1/telemetry",
        json.dumps({"points": points}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
    )
    assert status == 202, answer


def _user(api: Api, token: str, role: str) -> dict[str, Any]:
    password = f"fuzz-{uuid.uuid4().hex}"
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    user = api.json(
        "POST", "/api/v1/users", {"email": email, "password": password, "role": role}, token
    )
    return {**user, "email": email, "password": password}


def _api_key(api: Api, token: str, name: str) -> dict[str, Any]:
    key: dict[str, Any] = api.json(
        "POST", "/api/v1/api-keys", {"name": name, "role": "admin"}, token
    )
    return key


def _pools(keep: list[str], spare: str) -> dict[str, list[str]]:
    """Path ids by use: reads and writes see all; resets and deletions only the spare one."""
    return {"read": [*keep, spare], "write": [*keep, spare], "destroy": [spare]}


def arrange(api: Api, record: Path) -> dict[str, Any]:
    """Tenant A is the fuzzing user's: its devices carry telemetry and are the path ids.
    Tenant B holds the devices whose credentials the fuzz uses, out of A's reach, so that no
    generated reset or rotation can revoke them mid-run. Refresh tokens come from a user of
    A that no path id names, so that the owner's password changes do not revoke them."""
    owner = _register(api, "fuzz-owner")
    holder = _register(api, "fuzz-holder")
    doomed = _register(api, "fuzz-doomed")  # the tenant the fuzz may delete
    token = owner["access_token"]
    mine = _provision(api, 6)
    for device in mine[:4]:
        _claim(api, token, device)
        _send_telemetry(api, device["device_id"], _fetch_secret(api, device))
    basic_device, signing_device = _provision(api, 2)
    _claim(api, holder["access_token"], basic_device)
    _claim(api, holder["access_token"], signing_device)
    viewer, spare_user, sessions = (_user(api, token, r) for r in ("viewer", "viewer", "admin"))
    # Separate families: refreshing or logging out one leaves the others alone.
    refresh_tokens = [
        api.json(
            "POST",
            "/api/v1/auth/login",
            {"email": sessions["email"], "password": sessions["password"]},
        )["refresh_token"]
        for _ in range(6)
    ]
    auth_key, rotated_key, spare_key = (_api_key(api, token, n) for n in ("fuzz", "rot", "del"))
    key_id = api.settings.manufacturing_signing_key_id
    point = {"ts": int(time.time() * 1000), "metrics": {"temp": 21.5, "door_open": False}}
    ids = [d["device_id"] for d in mine[:4]]
    # A job to look at (it purges nothing: no reading is that old).
    job = api.json(
        "POST",
        f"/api/v1/devices/{ids[3]}/purge",
        {"confirmation": "PURGE", "before": "2000-01-01T00:00:00Z"},
        token,
    )
    command = api.json(
        "POST", f"/api/v1/devices/{ids[0]}/commands", {"name": "reboot", "ttl_s": 86400}, token
    )
    return {
        "record": str(record),
        "credentials": {
            "user_jwt": token,
            "api_key": auth_key["key"],
            "device_basic": [basic_device["device_id"], _fetch_secret(api, basic_device)],
            "factory_signature": [key_id, api.settings.manufacturing_key_ring[key_id]],
            "device_signature": [signing_device["device_id"], signing_device["device_key"]],
            "hook_token": api.settings.mqtt_hook_token.get_secret_value(),
        },
        # Deleting a tenant acts on the caller's own: the fuzz deletes another one's.
        "credentials_by_operation": {
            "DELETE /api/v1/tenant": {"user_jwt": doomed["access_token"]},
        },
        "path_pools": {
            "device_id": _pools(ids[:3], ids[3]),
            "user_id": _pools([viewer["user_id"]], spare_user["user_id"]),
            "api_key_id": {
                "read": [auth_key["api_key_id"], rotated_key["api_key_id"]],
                "write": [rotated_key["api_key_id"]],
                "destroy": [spare_key["api_key_id"]],
            },
            "job_id": {"read": [job["job_id"]], "write": [], "destroy": []},
        },
        "path_sets": {
            "GET /api/v1/devices/{device_id}/commands/{command_id}": [
                {"device_id": ids[0], "command_id": command["command_id"]}
            ],
        },
        "body_seeds": {
            "POST /api/v1/auth/login": [{"email": owner["email"], "password": owner["password"]}],
            # The same password again: the login seed stays valid.
            "POST /api/v1/auth/password": [
                {"current_password": owner["password"], "new_password": owner["password"]}
            ],
            "POST /api/v1/auth/refresh": [{"refresh_token": t} for t in refresh_tokens[:3]],
            "POST /api/v1/auth/logout": [{"refresh_token": t} for t in refresh_tokens[3:]],
            "POST /api/v1/devices/claim": [
                {"serial_number": d["serial_number"], "claim_code": d["claim_code"]}
                for d in mine[4:]
            ],
            "POST /api/v1/telemetry": [point, {"points": [point]}],
            "DELETE /api/v1/tenant": [{"confirmation": doomed["tenant"]["name"]}],
            "POST /api/v1/devices/{device_id}/purge": [{"confirmation": "PURGE"}],
        },
        "query_seeds": {
            "GET /api/v1/devices/{device_id}/telemetry": [{"metric": "temp"}, {"order": "desc"}],
            "GET /api/v1/devices/{device_id}/telemetry/aggregate": [
                {"metric": "temp", "bucket": "1h", "fn": "avg,max"}
            ],
        },
    }


def _operations(document: dict[str, Any]) -> set[str]:
    return {f"{m.upper()} {p}" for p, ops in document["paths"].items() for m in ops}


def _without_inputs(document: dict[str, Any]) -> set[str]:
    return {
        f"{m.upper()} {p}"
        for p, ops in document["paths"].items()
        for m, op in ops.items()
        if not op.get("parameters") and "requestBody" not in op
    }


def test_openapi_document_lists_every_route(live_api: Api) -> None:
    status, document = live_api.call("GET", "/api/v1/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.1")
    for path in ("/api/v1/health/live", "/api/v1/health/ready", "/api/v1/auth/login"):
        assert path in document["paths"], path
    with urllib.request.urlopen(live_api.base + "/api/v1/docs", timeout=5) as page:
        assert page.status == 200 and b"/api/v1/health/ready" in page.read()


def test_schemathesis_finds_no_server_error_or_schema_mismatch(
    live_api: Api, tmp_path: Path
) -> None:
    _, document = live_api.call("GET", "/api/v1/openapi.json")
    record = tmp_path / "calls.jsonl"
    context = arrange(live_api, record)
    (tmp_path / "context.json").write_text(json.dumps(context))
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    command = [
        binary,
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        live_api.base + "/api/v1/openapi.json",
        "--checks",
        os.environ.get("IOT_FUZZ_CHECKS", CHECKS),
        "--phases",
        # The API does not change with the storage: ops/test.sh's TimescaleDB run skips the
        # coverage phase (half the time), the storage-dependent reads are fuzzed all the same.
        "fuzzing,stateful"
        if os.environ.get("IOT_TEST_STORAGE") == "timescaledb"
        else "examples,coverage,fuzzing,stateful",
        "--max-examples",
        os.environ.get("IOT_FUZZ_EXAMPLES", "12"),
        # The same cases on every CI run; IOT_FUZZ_SEED=N explores other ones.
        *(["--seed", os.environ["IOT_FUZZ_SEED"]] if "IOT_FUZZ_SEED" in os.environ else []),
        *([] if "IOT_FUZZ_SEED" in os.environ else ["--generation-deterministic"]),
        # One worker: with two, CPython 3.11.7's parser trips over concurrent compiles inside
        # schemathesis ("AST constructor recursion depth mismatch", a runtime error, no finding).
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks",
        "IOT_FUZZ_CONTEXT": str(tmp_path / "context.json"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env
    )
    elapsed = time.monotonic() - started
    (tmp_path / "schemathesis.txt").write_text(result.stdout + result.stderr)
    calls = (
        [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    )
    summary = _summary(calls, elapsed)
    print(summary)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]

    # 401: credentials refused; 405: schemathesis probing another method on the same path.
    accepted = collections.Counter(c["operation"] for c in calls if c["status"] not in (401, 405))
    succeeded = collections.Counter(c["operation"] for c in calls if c["status"] < 400)
    fuzzed = _operations(document) - set(NOT_FUZZED)
    single = _without_inputs(document)
    short = {
        op: accepted[op]
        for op in sorted(fuzzed)
        if accepted[op] < (1 if op in single else MIN_ACCEPTED_CALLS)
    }
    hint = "a new operation may need seeds or id pools in arrange()"
    assert short == {}, f"reached fewer than {MIN_ACCEPTED_CALLS} times ({hint}):\n{summary}"
    never = sorted(op for op in fuzzed if not succeeded[op])
    assert never == [], f"never answered with success ({hint}):\n{summary}"
    kinds = {c["credential"] for c in calls if c["credential"] and c["status"] != 401}
    assert kinds == set(context["credentials"]), summary
    stateful = [c for c in calls if c["phase"] == "stateful"]
    assert len(stateful) >= 20, summary


def _summary(calls: list[dict[str, Any]], elapsed: float) -> str:
    by_operation: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for call in calls:
        by_operation[call["operation"]][str(call["status"])] += 1
    phases = collections.Counter(str(c["phase"]) for c in calls)
    kinds = collections.Counter(str(c["credential"]) for c in calls)
    lines = [
        f"fuzz: {len(calls)} calls over {len(by_operation)} operations in {elapsed:.0f} s",
        f"  by phase: {dict(phases)}",
        f"  by credential: {dict(kinds)}",
    ]
    for operation in sorted(by_operation):
        statuses = by_operation[operation]
        lines.append(
            f"  {operation}: {sum(statuses.values())} calls, {dict(sorted(statuses.items()))}"
        )
    return "\n".join(lines)


def test_the_stream_answers_its_documented_content_type(live_api: Api) -> None:
    """The one operation schemathesis cannot read to the end: opened with the user's token,
    it answers 200 text/event-stream; without one, the 401 envelope."""
    owner = _register(live_api, "fuzz-stream")
    request = urllib.request.Request(
        live_api.base + "/api/v1/telemetry/stream",
        headers={"Authorization": f"Bearer {owner['access_token']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
    status, answer = live_api.call("GET", "/api/v1/telemetry/stream")
    assert status == 401 and answer["error"]["code"] == "unauthenticated"
