"""With a Docker engine and no service URLs given, the suite runs against containers:
TimescaleDB (so the TimescaleDB-only tests run), Redis and EMQX. Without Docker (CI on the
project's machines) the local services from ops/services.sh are used instead."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL_VARIABLES = ("IOT_TEST_OWNER_URL", "IOT_TEST_SERVICE_URL", "IOT_TEST_REDIS_URL")
ROLES_SQL = Path(__file__).resolve().parents[1] / "ops" / "roles.sql"
DEV_PASSWORD = "iotcore-dev"


async def apply_roles(conn: Any, password: str = DEV_PASSWORD) -> None:
    """ops/roles.sql, as ops/services.sh and ops/compose/initdb.sh run it: the passwords as
    session settings first."""
    for role in ("owner", "service", "backup"):
        await conn.execute("SELECT set_config($1, $2, false)", f"iotcore.{role}_password", password)
    await conn.execute(ROLES_SQL.read_text())


@dataclass(frozen=True)
class ServiceUrls:
    owner: str
    service: str
    superuser: str
    redis: str
    mqtt: str | None


def docker_engine_available() -> bool:
    if os.environ.get("IOT_TEST_NO_CONTAINERS") or any(os.environ.get(v) for v in URL_VARIABLES):
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


def start_containers() -> ServiceUrls:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    postgres = PostgresContainer(
        "timescale/timescaledb:2.28.3-pg17", username="postgres", password="postgres"
    )
    redis = RedisContainer("redis:7-alpine")
    emqx = DockerContainer("emqx/emqx:5.8.6").with_exposed_ports(1883)
    for container in (postgres, redis, emqx):
        container.start()
        atexit.register(container.stop)
    wait_for_logs(emqx, "is running now", timeout=120)
    host, port = postgres.get_container_host_ip(), postgres.get_exposed_port(5432)
    superuser = f"postgresql://postgres:postgres@{host}:{port}/postgres"

    import asyncio

    import asyncpg

    async def create_roles() -> None:
        conn = await asyncpg.connect(superuser)
        try:
            await apply_roles(conn)
        finally:
            await conn.close()

    asyncio.run(create_roles())
    redis_host, redis_port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
    mqtt_host, mqtt_port = emqx.get_container_host_ip(), emqx.get_exposed_port(1883)
    return ServiceUrls(
        owner=f"postgresql://iotcore_owner:iotcore-dev@{host}:{port}/postgres",
        service=f"postgresql://iotcore_service:iotcore-dev@{host}:{port}/postgres",
        superuser=superuser,
        redis=f"redis://{redis_host}:{redis_port}/0",
        mqtt=f"mqtt://{mqtt_host}:{mqtt_port}",
    )
