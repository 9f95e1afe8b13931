"""A mixed load on one iotcore deployment, as its users make it: devices posting telemetry
through the HTTPS webhook, tenants' dashboards reading (latest values, a raw page, an
aggregate), and an admin now and then claiming a new device and handing it its secret.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8080 \\
        --users 60 --spawn-rate 20 --run-time 30s --only-summary

Before the users start, the set-up (`test_start`) makes LOCUST_TENANTS tenants through the
public API, each with LOCUST_DEVICES claimed devices and LOCUST_SPARE unclaimed ones for the
admins to claim; the factory key comes from IOT_MANUFACTURING_KEYS and
IOT_MANUFACTURING_SIGNING_KEY_ID (the development key when unset). The server must not
throttle registrations or claims from the load generator's one address more than the
set-up needs (IOT_REGISTER_MAX_PER_IP, IOT_CLAIM_MAX_FAILURES).

The run fails (exit code 1) on any 5xx response, or when more than 1% of requests fail
(LOCUST_MAX_FAIL_RATIO). runbooks/load-test.md says how to run it longer.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import requests
from locust import HttpUser, between, constant_pacing, events, task
from locust.env import Environment

from iotcore.config import DEV_MANUFACTURING_KEYS, parse_key_ring
from iotcore.devices import signing
from iotcore.tools import factory_client

log = logging.getLogger("locustfile")

TENANTS = int(os.environ.get("LOCUST_TENANTS", "3"))
DEVICES_PER_TENANT = int(os.environ.get("LOCUST_DEVICES", "20"))
SPARE_PER_TENANT = int(os.environ.get("LOCUST_SPARE", "50"))
MAX_FAIL_RATIO = float(os.environ.get("LOCUST_MAX_FAIL_RATIO", "0.01"))
METRICS = ("temp", "hum", "volt")


@dataclass
class Device:
    device_id: str
    authorization: str  # HTTP Basic with the device's secret


@dataclass
class Spare:
    serial_number: str
    claim_code: str
    device_id: str
    device_key: bytes


@dataclass
class Tenant:
    email: str
    password: str
    devices: list[Device] = field(default_factory=list)
    spares: list[Spare] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_spare(self) -> Spare | None:
        with self.lock:
            return self.spares.pop() if self.spares else None


TENANT_POOL: list[Tenant] = []


def factory_key() -> tuple[str, str]:
    ring = parse_key_ring(
        os.environ.get("IOT_MANUFACTURING_KEYS", DEV_MANUFACTURING_KEYS), "IOT_MANUFACTURING_KEYS"
    )
    key_id = os.environ.get("IOT_MANUFACTURING_SIGNING_KEY_ID", next(iter(ring)))
    return key_id, ring[key_id]


def _check(response: requests.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"set-up: {response.request.method} {response.request.path_url} answered "
            f"{response.status_code}: {response.text[:300]}"
        )
    return response.json() if response.content else None


def provision(session: requests.Session, host: str, count: int) -> list[dict[str, str]]:
    """Devices as the factory makes them: serial numbers, claim codes, device keys."""
    key_id, secret = factory_key()
    made: list[dict[str, str]] = []
    for start in range(0, count, 500):
        batch = [
            {"serial_number": f"LOAD-{uuid.uuid4().hex[:12]}", "model": "locust"}
            for _ in range(min(500, count - start))
        ]
        path, body, headers = factory_client.factory_request(key_id, secret, batch)
        made.extend(_check(session.post(host + path, data=body, headers=headers), 201)["devices"])
    return made


def claim(
    session: requests.Session, host: str, token: str, spare: Spare
) -> tuple[int, Device | None]:
    """What an admin does: claim by serial and code; then what the device does: fetch its
    secret (signed with its factory key)."""
    body = {"serial_number": spare.serial_number, "claim_code": spare.claim_code}
    claimed = session.post(
        host + "/api/v1/devices/claim", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    if claimed.status_code != 200:
        return claimed.status_code, None
    path, raw, headers = factory_client.device_request(
        spare.device_id, spare.device_key, "/api/v1/devices/secret"
    )
    issued = session.post(host + path, data=raw, headers=headers)
    if issued.status_code != 200:
        return issued.status_code, None
    secret = issued.json()["secret"]
    basic = base64.b64encode(f"{spare.device_id}:{secret}".encode()).decode()
    return 200, Device(spare.device_id, f"Basic {basic}")


def make_tenant(session: requests.Session, host: str) -> Tenant:
    tenant = Tenant(f"load-{uuid.uuid4().hex[:10]}@example.com", f"load-{uuid.uuid4().hex}")
    body = {"email": tenant.email, "password": tenant.password, "tenant_name": "Load test"}
    token = _check(session.post(host + "/api/v1/auth/register", json=body), 201)["access_token"]
    for made in provision(session, host, DEVICES_PER_TENANT + SPARE_PER_TENANT):
        tenant.spares.append(
            Spare(
                made["serial_number"],
                made["claim_code"],
                made["device_id"],
                signing.decode_device_key(made["device_key"]),
            )
        )
    for _ in range(DEVICES_PER_TENANT):
        status, device = claim(session, host, token, tenant.spares.pop())
        if device is None:
            raise RuntimeError(f"set-up: claiming a device answered {status}")
        tenant.devices.append(device)
    return tenant


@events.test_start.add_listener
def set_up(environment: Environment, **_: Any) -> None:
    if TENANT_POOL or environment.host is None:
        return
    with requests.Session() as session:
        TENANT_POOL.extend(make_tenant(session, environment.host) for _ in range(TENANTS))
    log.info("set-up: %d tenants, %d devices each", TENANTS, DEVICES_PER_TENANT)


SERVER_ERRORS: list[str] = []


@events.request.add_listener
def count_server_errors(
    request_type: str, name: str, response: Any, exception: Any, **_: Any
) -> None:
    status = getattr(response, "status_code", 0) or 0
    if status >= 500:
        SERVER_ERRORS.append(f"{request_type} {name}: {status}")


@events.quitting.add_listener
def verdict(environment: Environment, **_: Any) -> None:
    total = environment.stats.total
    if SERVER_ERRORS:
        log.error("%d server errors (5xx), e.g. %s", len(SERVER_ERRORS), SERVER_ERRORS[:5])
        environment.process_exit_code = 1
    elif total.num_requests == 0:
        log.error("no request was made")
        environment.process_exit_code = 1
    elif total.fail_ratio > MAX_FAIL_RATIO:
        log.error("failure ratio %.2f%% > %.2f%%", 100 * total.fail_ratio, 100 * MAX_FAIL_RATIO)
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0


class TelemetryDevice(HttpUser):
    """A device posting a reading of three metrics every second or so over HTTPS."""

    weight = 6
    wait_time = constant_pacing(1)

    def on_start(self) -> None:
        self.device = random.choice(random.choice(TENANT_POOL).devices)

    @task
    def post_reading(self) -> None:
        reading = {
            "ts": int(time.time() * 1000),
            "metrics": {name: round(random.uniform(0, 100), 2) for name in METRICS},
        }
        self.client.post(
            "/api/v1/telemetry",
            data=orjson.dumps(reading),
            headers={
                "Authorization": self.device.authorization,
                "Content-Type": "application/json",
            },
            name="POST /api/v1/telemetry",
        )


def last_hours(hours: int) -> dict[str, str]:
    """A random metric over the last `hours`, as the read endpoints take them."""
    now = datetime.now(UTC)
    return {
        "metric": random.choice(METRICS),
        "from": (now - timedelta(hours=hours)).isoformat(),
        "to": now.isoformat(),
    }


class TenantUser(HttpUser):
    """A user of one of the set-up's tenants, logged in as its owner."""

    abstract = True

    def on_start(self) -> None:
        self.tenant = random.choice(TENANT_POOL)
        self.log_in()

    def log_in(self) -> None:
        body = {"email": self.tenant.email, "password": self.tenant.password}
        answer = self.client.post("/api/v1/auth/login", json=body, name="POST /api/v1/auth/login")
        self.token = answer.json().get("access_token", "")
        self.headers = {"Authorization": f"Bearer {self.token}"}


class Dashboard(TenantUser):
    """A tenant's user with a dashboard open: latest values often, a page of raw readings
    and an aggregate now and then, for one of the tenant's devices at a time."""

    weight = 3
    wait_time = between(1, 3)

    def get(self, path: str, name: str, params: dict[str, str] | None = None) -> None:
        with self.client.get(
            path, params=params, headers=self.headers, name=name, catch_response=True
        ) as response:
            if response.status_code == 401:  # the access token expired: log in again
                response.success()
                self.log_in()
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    def device_path(self) -> str:
        return f"/api/v1/devices/{random.choice(self.tenant.devices).device_id}"

    @task(6)
    def latest(self) -> None:
        self.get(self.device_path() + "/telemetry/latest", "GET /devices/{id}/telemetry/latest")

    @task(2)
    def raw_page(self) -> None:
        params = {**last_hours(1), "order": "desc", "limit": "100"}
        self.get(self.device_path() + "/telemetry", "GET /devices/{id}/telemetry", params)

    @task(2)
    def aggregate(self) -> None:
        params = {**last_hours(24), "bucket": "5m", "fn": "avg,min,max"}
        self.get(
            self.device_path() + "/telemetry/aggregate",
            "GET /devices/{id}/telemetry/aggregate",
            params,
        )

    @task(1)
    def device_list(self) -> None:
        self.get("/api/v1/devices", "GET /devices", {"limit": "50"})


class Admin(TenantUser):
    """A tenant admin claiming a new device every few seconds, which then fetches its secret
    and starts posting."""

    weight = 1
    fixed_count = 1
    wait_time = between(3, 6)

    @task
    def claim_a_device(self) -> None:
        spare = self.tenant.take_spare()
        if spare is None:
            return
        status, device = claim(self.client, self.host, self.token, spare)
        if status == 401:  # the access token expired
            self.log_in()
            status, device = claim(self.client, self.host, self.token, spare)
        if device is not None:
            with self.tenant.lock:
                self.tenant.devices.append(device)
