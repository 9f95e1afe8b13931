"""Test harness: real PostgreSQL, Redis and MQTT.

- A migrated template database is built once per run; each test module gets a fresh copy.
- Redis is shared, each module under its own key prefix (deleted afterwards).
- Mosquitto is started on a free port for the run (it supports $share subscriptions).
Services come from ops/services.sh (the test command runs it first). URLs can be overridden
with IOT_TEST_OWNER_URL, IOT_TEST_SERVICE_URL and IOT_TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.platform.http.server import ApiRunner
from iotcore.platform.migrations import Migrator
from tests.containers import docker_engine_available, start_containers
from tests.support import watchdog

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID = uuid.uuid4().hex[:8]
OWNER_URL = os.environ.get(
    "IOT_TEST_OWNER_URL", "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/postgres"
)
SERVICE_URL = os.environ.get(
    "IOT_TEST_SERVICE_URL", "postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/postgres"
)
# Superuser, only to enable TimescaleDB in the template when the server has it.
SUPERUSER_URL = os.environ.get(
    "IOT_TEST_SUPERUSER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("IOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# ops/test.sh says which storage a run is for; "timescaledb" makes a server without the
# extension an error instead of a silent second native run.
STORAGE = os.environ.get("IOT_TEST_STORAGE", "")
CONTAINER_MQTT_URL: str | None = None
if docker_engine_available():
    _urls = start_containers()
    OWNER_URL, SERVICE_URL, SUPERUSER_URL = _urls.owner, _urls.service, _urls.superuser
    REDIS_URL, CONTAINER_MQTT_URL = _urls.redis, _urls.mqtt
_database_numbers = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Before pytest-timeout ends a hung test, print what its asyncio tasks wait for."""
    timer = watchdog.start(item)
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def owner_execute(sql: str) -> None:
    conn = await asyncpg.connect(OWNER_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    """DROP ... WITH (FORCE) as the owner ends the owner's sessions, but not a service-role
    session ("must be a member of the role whose process is being terminated"): drop as the
    superuser when there is one, otherwise wait for the session to be gone."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await owner_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except asyncpg.InsufficientPrivilegeError:
            if await _drop_as_superuser(name):
                return
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _drop_as_superuser(name: str) -> bool:
    """Where the superuser is reachable it may end any role's session: the drop cannot wait
    on a service-role backend that outlives its test (a pool still closing at teardown)."""
    try:
        conn = await asyncpg.connect(with_database(SUPERUSER_URL, "postgres"))
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return True
    finally:
        await conn.close()


async def _enable_timescaledb(database: str) -> None:
    """Use TimescaleDB when the server offers it, as ops/services.sh does for the real database."""
    try:
        conn = await asyncpg.connect(with_database(SUPERUSER_URL, database))
    except (OSError, asyncpg.PostgresError):
        if STORAGE == "timescaledb":
            raise
        return  # no superuser access: the native-partitioning path is tested
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if available:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            await conn.execute((REPO_ROOT / "ops/timescaledb-privileges.sql").read_text())
        elif STORAGE == "timescaledb":
            raise RuntimeError("IOT_TEST_STORAGE=timescaledb but the server has no TimescaleDB")
    finally:
        await conn.close()


async def _close_template(database: str) -> None:
    """TimescaleDB's scheduler keeps a connection to every database that allows them, and
    CREATE DATABASE ... TEMPLATE refuses a source with other sessions: the template stops
    accepting connections (the launcher skips such databases) and the scheduler already
    connected is ended."""
    await owner_execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
    try:
        conn = await asyncpg.connect(with_database(SUPERUSER_URL, "postgres"))
    except (OSError, asyncpg.PostgresError):
        return  # no superuser: no TimescaleDB either (it is enabled as the superuser)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            database,
        )
    finally:
        await conn.close()


async def _copy_template(template: str, name: str) -> None:
    # A scheduler may still be on its way out of the template: retry for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            await owner_execute(f"CREATE DATABASE {name} TEMPLATE {template}")
            return
        except asyncpg.ObjectInUseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated to head once; every module's database is copied from it."""
    name = f"iotcore_tpl_{RUN_ID}"
    asyncio.run(owner_execute(f"CREATE DATABASE {name}"))
    asyncio.run(_enable_timescaledb(name))
    try:
        Migrator(with_database(OWNER_URL, name), REPO_ROOT / "migrations").up()
        asyncio.run(_close_template(name))
        yield name
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture(scope="module")
def database(template_database: str) -> Iterator[str]:
    name = f"iotcore_t_{RUN_ID}_{next(_database_numbers)}"
    asyncio.run(_copy_template(template_database, name))
    try:
        yield name
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[str]:
    """A Mosquitto of our own for the run, on a free port: `mqtt://127.0.0.1:PORT`
    (or the EMQX container when the suite runs on containers)."""
    if CONTAINER_MQTT_URL:
        yield CONTAINER_MQTT_URL
        return
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The no-loss tests queue tens of thousands of QoS 1 messages for a stopped consumer.
            "max_queued_messages 200000\n"
            "max_inflight_messages 0\n"
            "log_type error\n"
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            proc.kill()
            raise RuntimeError("mosquitto did not start")
        try:
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(5)


def make_settings(database: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": with_database(SERVICE_URL, database),
        "database_owner_url": with_database(OWNER_URL, database),
        "redis_url": REDIS_URL,
        "redis_prefix": f"iottest:{RUN_ID}:{database}:",
        "migrations_dir": REPO_ROOT / "migrations",
        "sql_dir": REPO_ROOT / "sql",
        "http_host": "127.0.0.1",
        "http_port": 0,
        "broker_port": free_port(),
        # `iotcore api`/`run` bind /metrics and the broker hooks there: never the shared 9100.
        "metrics_port": free_port(),
        # Cheap argon2 for speed; the benchmark uses the production defaults.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8192,
        "argon2_parallelism": 1,
        # Every test client is 127.0.0.1: per-address throttles are tested with their real
        # limits in their own apps (tests/security/test_throttles.py).
        "login_max_failures": 1000,
        "register_max_per_ip": 1000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def settings(database: str, mqtt_broker: str) -> Settings:
    return make_settings(database, mqtt_url=mqtt_broker)


@pytest_asyncio.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    platform = Platform.from_settings(settings)
    await platform.start()
    try:
        yield platform
    finally:
        keys = [k async for k in platform.redis.client.scan_iter(match=settings.redis_prefix + "*")]
        if keys:
            await platform.redis.client.delete(*keys)
        await platform.close()


@pytest_asyncio.fixture(scope="module")
async def client(settings: Settings, platform: Platform) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The whole API in-process, over a real HTTP connection."""
    app = create_app(settings, platform)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


class ApiTestServer(TestServer):
    """Serves the app with the production runner (timeouts, parser-error envelope, banner)."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self._settings = settings

    async def _make_runner(self, **kwargs: Any) -> ApiRunner:
        return ApiRunner(self.app, self._settings)


ApiFactory = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


@pytest_asyncio.fixture
async def api_with(database: str) -> AsyncIterator[ApiFactory]:
    """`await api_with(**settings)`: a client of a fresh API with these settings (on the
    module's database), served as in production; `client.settings` holds them."""
    clients: list[TestClient] = []  # type: ignore[type-arg]

    async def build(**overrides: Any) -> TestClient:  # type: ignore[type-arg]
        settings = make_settings(database, **overrides)
        client = TestClient(ApiTestServer(create_app(settings), settings))
        await client.start_server()
        client.settings = settings  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


@pytest_asyncio.fixture(scope="module")
async def owner_conn(database: str) -> AsyncIterator[asyncpg.Connection]:  # type: ignore[type-arg]
    """A connection as the owner role, for arranging state the API cannot (and for checks)."""
    conn = await asyncpg.connect(with_database(OWNER_URL, database))
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module")
async def service_conn(database: str) -> AsyncIterator[asyncpg.Connection]:  # type: ignore[type-arg]
    """A connection as the service role, exactly as the running service connects."""
    conn = await asyncpg.connect(with_database(SERVICE_URL, database))
    try:
        yield conn
    finally:
        await conn.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child `iotcore` process use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"IOT_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def start_iotcore(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    """A child `iotcore` process. Its log goes to a file (a pipe nobody reads would fill up
    and block the child); `read_log(process)` returns it."""
    log = tempfile.NamedTemporaryFile(prefix="iotcore-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "iotcore.cli", *args],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _LOGS[process.pid] = Path(log.name)
    log.close()
    return process


_LOGS: dict[int, Path] = {}


def read_log(process: subprocess.Popen[bytes]) -> str:
    path = _LOGS.get(process.pid)
    return path.read_text(errors="replace")[-8000:] if path and path.exists() else ""
