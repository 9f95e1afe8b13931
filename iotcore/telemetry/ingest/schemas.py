"""Models of the telemetry webhook (the read API's are in telemetry/read/schemas.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TelemetryPoint(BaseModel):
    ts: str | int | None = Field(default=None, description="RFC 3339 or epoch milliseconds")
    metrics: dict[str, float | bool]


class TelemetryBody(BaseModel):
    """Documentation only: the body is parsed by payload.py so that one bad point is
    rejected alone instead of failing the whole request."""

    model_config = ConfigDict(extra="allow")
    ts: str | int | None = None
    metrics: dict[str, float | bool] | None = None
    points: list[TelemetryPoint] | None = None
    tenant_id: str | None = None


class TelemetryAccepted(BaseModel):
    accepted: int
    stored: int
    duplicates: int
    rejected: int

    model_config = ConfigDict(json_schema_extra={"description": "202: durable"})
