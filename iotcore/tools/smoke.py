"""`iotcore smoke`: the critical path against a live deployment, step by step, through its
public API and broker only. Exits 1 naming the first step that failed.

    IOTCORE_FACTORY_KEY=... iotcore smoke --api https://api.example.com \\
        --broker mqtts://mqtt.example.com:8883 --factory-key-id mk1

Without IOTCORE_FACTORY_KEY the key comes from the local settings (IOT_MANUFACTURING_KEYS),
which suits the single node. It registers a throwaway tenant (smoke-<random>), provisions one
device, claims it, fetches its secret, publishes one reading over MQTT and one over HTTP, and
reads them back raw, latest and aggregated, then deletes the tenant (a job, waited for) and
checks its user can no longer log in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
import orjson

from iotcore.config import Settings
from iotcore.devices import signing
from iotcore.tools import factory_client

READ_BACK_S = 20.0
# A tenant deletion is a job the maintain role (or `iotcore run`) picks up within
# IOT_JOB_POLL_S (2 s).
PURGE_S = 60.0
REQUEST_TIMEOUT_S = 10.0


class StepFailed(Exception):
    """A step's check did not hold; the message says what was seen."""


@dataclass
class SmokeRun:
    api: str
    broker: str
    factory_key_id: str
    factory_key: str
    ca_file: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    state: dict[str, Any] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)


async def _expect(response: aiohttp.ClientResponse, *statuses: int) -> Any:
    body = await response.json(content_type=None)
    if response.status not in statuses:
        raise StepFailed(f"{response.method} {response.url.path} answered {response.status}")
    return body


@asynccontextmanager
async def step(run: SmokeRun, name: str) -> AsyncIterator[None]:
    started = time.monotonic()
    try:
        yield
    except StepFailed as exc:
        raise SmokeFailed(name, str(exc)) from exc
    except (aiohttp.ClientError, aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise SmokeFailed(name, f"{type(exc).__name__}: {exc}") from exc
    run.passed.append(name)
    print(f"ok    {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)


class SmokeFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


async def _register(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    body = {
        "email": f"smoke-{run.run_id}@example.com",
        "password": "smoke-" + uuid.uuid4().hex,
        "tenant_name": f"smoke-{run.run_id}",
    }
    owner = await _expect(await session.post("/api/v1/auth/register", json=body), 201)
    run.state["auth"] = {"Authorization": f"Bearer {owner['access_token']}"}
    run.state["login"] = {"email": body["email"], "password": body["password"]}


async def _provision(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    serial = f"SMOKE-{run.run_id.upper()}"
    path, body, headers = factory_client.factory_request(
        run.factory_key_id, run.factory_key, [{"serial_number": serial, "model": "smoke"}]
    )
    made = await _expect(await session.post(path, data=body, headers=headers), 200, 201)
    run.state["device"] = made["devices"][0]


async def _claim(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    device = run.state["device"]
    body = {
        "serial_number": device["serial_number"],
        "claim_code": device["claim_code"],
        "name": "smoke test",
    }
    await _expect(
        await session.post("/api/v1/devices/claim", json=body, headers=run.state["auth"]), 200
    )


async def _fetch_secret(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    device = run.state["device"]
    path, body, headers = factory_client.device_request(
        device["device_id"],
        signing.decode_device_key(device["device_key"]),
        "/api/v1/devices/secret",
    )
    run.state["credentials"] = await _expect(
        await session.post(path, data=body, headers=headers), 200
    )


def _tls_context(run: SmokeRun) -> ssl.SSLContext | None:
    if urlsplit(run.broker).scheme != "mqtts":
        return None
    return ssl.create_default_context(cafile=run.ca_file)


async def _publish_mqtt(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    credentials = run.state["credentials"]
    url = urlsplit(run.broker)
    tls = _tls_context(run)
    payload = {"ts": int(time.time() * 1000), "metrics": {"smoke_mqtt": 1.0}}
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        async with aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            username=credentials["mqtt"]["username"],
            password=credentials["secret"],
            identifier=credentials["mqtt"]["client_id"],
            tls_context=tls,
            timeout=REQUEST_TIMEOUT_S,
        ) as client:
            # QoS 1: the broker's PUBACK comes after the commit (ARCHITECTURE.md).
            await client.publish(
                credentials["mqtt"]["telemetry_topic"], orjson.dumps(payload), qos=1
            )


async def _publish_http(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    credentials = run.state["credentials"]
    token = base64.b64encode(f"{credentials['device_id']}:{credentials['secret']}".encode())
    body = {"ts": int(time.time() * 1000), "metrics": {"smoke_http": 2.0}}
    headers = {"Authorization": f"Basic {token.decode()}"}
    await _expect(await session.post("/api/v1/telemetry", json=body, headers=headers), 202)


def _device_path(run: SmokeRun, suffix: str) -> str:
    return f"/api/v1/devices/{run.state['device']['device_id']}{suffix}"


async def _read_raw(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    """Both readings, polled: MQTT telemetry is stored by the consumer, asynchronously."""
    deadline = time.monotonic() + READ_BACK_S
    seen: set[str] = set()
    while time.monotonic() < deadline:
        page = await _expect(
            await session.get(_device_path(run, "/telemetry"), headers=run.state["auth"]), 200
        )
        seen = {item["metric"] for item in page["items"]}
        if {"smoke_mqtt", "smoke_http"} <= seen:
            return
        await asyncio.sleep(0.5)
    raise StepFailed(f"after {READ_BACK_S:.0f} s only {sorted(seen) or 'nothing'} was stored")


async def _read_latest(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    latest = await _expect(
        await session.get(_device_path(run, "/telemetry/latest"), headers=run.state["auth"]), 200
    )
    values = {name: item["value"] for name, item in latest["metrics"].items()}
    if values.get("smoke_mqtt") != 1.0 or values.get("smoke_http") != 2.0:
        raise StepFailed(f"latest values are {values}")


async def _read_aggregate(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    aggregate = await _expect(
        await session.get(
            _device_path(run, "/telemetry/aggregate"),
            params={"metric": "smoke_http", "bucket": "1h", "fn": "count"},
            headers=run.state["auth"],
        ),
        200,
    )
    if sum(bucket.get("count") or 0 for bucket in aggregate["items"]) != 1:
        raise StepFailed(f"aggregate count is not 1: {aggregate['items']}")


async def _purge_tenant(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    """Delete the throwaway tenant and wait for the job; its user then cannot log in."""
    accepted = await _expect(
        await session.delete(
            "/api/v1/tenant",
            json={"confirmation": f"smoke-{run.run_id}"},
            headers=run.state["auth"],
        ),
        202,
    )
    deadline = time.monotonic() + PURGE_S
    while time.monotonic() < deadline:
        response = await session.get(
            f"/api/v1/jobs/{accepted['job_id']}", headers=run.state["auth"]
        )
        if response.status == 401:
            break  # the tenant's users are gone: the job has got that far
        job = await _expect(response, 200)
        if job["status"] == "failed":
            raise StepFailed(f"the deletion job failed: {job.get('error')}")
        if job["status"] == "done":
            break
        await asyncio.sleep(0.5)
    else:
        raise StepFailed(f"the deletion job did not finish within {PURGE_S:.0f} s")
    login = await session.post("/api/v1/auth/login", json=run.state["login"])
    if login.status != 401:
        raise StepFailed(f"the deleted tenant's user can still log in ({login.status})")


async def _ready(run: SmokeRun, session: aiohttp.ClientSession) -> None:
    await _expect(await session.get("/api/v1/health/ready"), 200)


Step = Callable[[SmokeRun, aiohttp.ClientSession], Awaitable[None]]
# The critical path, in order; each name is what a failure reports.
STEPS: list[tuple[str, Step]] = [
    ("ready", _ready),
    ("register", _register),
    ("provision", _provision),
    ("claim", _claim),
    ("fetch-secret", _fetch_secret),
    ("publish-mqtt", _publish_mqtt),
    ("publish-http", _publish_http),
    ("read-raw", _read_raw),
    ("read-latest", _read_latest),
    ("read-aggregate", _read_aggregate),
    ("purge-tenant", _purge_tenant),
]


async def run_smoke(run: SmokeRun, steps: list[tuple[str, Step]] = STEPS) -> None:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(run.api.rstrip("/"), timeout=timeout) as session:
        for name, action in steps:
            async with step(run, name):
                await action(run, session)


def smoke_run_from_args(settings: Settings, args: argparse.Namespace) -> SmokeRun:
    key_id = args.factory_key_id or settings.manufacturing_signing_key_id
    key = os.environ.get("IOTCORE_FACTORY_KEY") or settings.manufacturing_key_ring.get(key_id)
    if not key:
        raise SystemExit(f"iotcore smoke: no factory key for {key_id!r}: set IOTCORE_FACTORY_KEY")
    return SmokeRun(args.api, args.broker, key_id, key, args.ca_file)


async def run_smoke_command(settings: Settings, args: argparse.Namespace) -> int:
    run = smoke_run_from_args(settings, args)
    try:
        await run_smoke(run)
    except SmokeFailed as failure:
        print(f"FAIL  {failure.step}: {failure.reason}", file=sys.stderr, flush=True)
        return 1
    print(f"smoke passed: {len(run.passed)} steps", flush=True)
    return 0


def add_parser(roles: Any) -> None:
    smoke = roles.add_parser("smoke", help="run the critical path against a live deployment")
    smoke.add_argument("--api", required=True, help="http(s)://host:port of the public API")
    smoke.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:8883")
    smoke.add_argument(
        "--factory-key-id", default=None, help="manufacturing key id (key: IOTCORE_FACTORY_KEY)"
    )
    smoke.add_argument("--ca-file", default=None, help="CA bundle for an mqtts:// broker")
