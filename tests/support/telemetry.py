"""Posting telemetry as a device, and reading back what was stored."""

from __future__ import annotations

import base64
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
