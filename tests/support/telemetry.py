"""Posting telemetry as a device, and reading back what was stored."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.devices import DeviceCredentials


def basic(device_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{device_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def post_telemetry(
    client: TestClient,
    device: DeviceCredentials,
    body: Any,  # type: ignore[type-arg]
) -> Any:
    return await client.post(
        "/api/v1/telemetry", json=body, headers=basic(device.device_id, device.secret)
    )


async def stored_rows(owner_conn: Any, device_id: str) -> list[tuple[str, Any, float]]:
    rows = await owner_conn.fetch(
        "SELECT metric, ts, value FROM telemetry WHERE device_id = $1 ORDER BY ts, metric",
        device_id,
    )
    return [(r["metric"], r["ts"], r["value"]) for r in rows]


async def rejects(owner_conn: Any, device_id: str) -> list[str]:
    rows = await owner_conn.fetch(
        "SELECT reason FROM ingest_rejects WHERE device_id = $1 ORDER BY reject_id", device_id
    )
    return [r["reason"] for r in rows]


async def load_readings(
    owner_conn: Any,
    tenant: Any,
    device: str,
    metric: str,
    points: list[tuple[datetime, float]],
    *,
    mark: bool = True,
    latest: bool = False,
) -> None:
    """History bulk-loaded as the owner: the readings, their hours marked for the rollups
    (unless mark=False: rows no write path would leave unmarked), and with latest=True the
    newest in telemetry_latest, as the writer keeps it."""
    tenant_id, device_id = uuid.UUID(str(tenant)), uuid.UUID(device)
    await owner_conn.executemany(
        "INSERT INTO telemetry VALUES ($1, $2, $3, $4, $5)",
        [(tenant_id, device_id, metric, ts, v) for ts, v in points],
    )
    if mark:
        await owner_conn.execute(
            "SELECT telemetry_rollup_mark($1, $2)",
            min(points)[0],
            max(points)[0] + timedelta(microseconds=1),
        )
    if latest:
        ts, value = max(points)
        await owner_conn.execute(
            "INSERT INTO telemetry_latest VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (tenant_id, device_id, metric) "
            "DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value "
            "WHERE telemetry_latest.ts < EXCLUDED.ts",
            tenant_id,
            device_id,
            metric,
            ts,
            value,
        )
