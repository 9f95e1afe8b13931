"""The telemetry payload of API.md, decoded with orjson and checked point by point.

A message is `{"ts"?, "metrics": {...}, "tenant_id"?}` or `{"points": [{"ts", "metrics"}],
"tenant_id"?}`. A bad point is rejected with its reason; the other points go on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from iotcore.config import Settings

METRIC_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # fullmatch: no trailing newline


class PayloadRejected(Exception):
    """The whole message is unusable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Point:
    ts: datetime
    metrics: dict[str, float]


@dataclass
class ParsedPayload:
    points: list[Point] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)
    tenant_id: str | None = None


def _parse_ts(raw: Any, received_at: datetime) -> datetime:
    if raw is None:
        return received_at
    if isinstance(raw, bool):
        raise ValueError("ts must be RFC 3339 or epoch milliseconds")
    if isinstance(raw, int):
        return datetime.fromtimestamp(raw / 1000, UTC)
    if isinstance(raw, str):
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("ts needs a time zone")
        return parsed.astimezone(UTC)
    raise ValueError("ts must be RFC 3339 or epoch milliseconds")


def _value(raw: Any) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    raise ValueError("values are finite numbers or booleans")


class PayloadParser:
    def __init__(self, settings: Settings) -> None:
        self._max_points = settings.telemetry_max_points
        self._max_metrics = settings.telemetry_max_metrics_per_point
        self._max_past = settings.telemetry_max_past_s
        self._max_future = settings.telemetry_max_future_s

    def parse(self, raw: bytes, received_at: datetime) -> ParsedPayload:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PayloadRejected("malformed_json", "The body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise PayloadRejected("invalid_shape", "The body must be a JSON object.")
        tenant_id = body.get("tenant_id")
        if tenant_id is not None:
            try:
                tenant_id = str(UUID(str(tenant_id)))
            except ValueError as exc:
                raise PayloadRejected("invalid_shape", "tenant_id must be a UUID.") from exc
        if "points" in body:
            raw_points = body["points"]
            if not isinstance(raw_points, list) or not raw_points:
                raise PayloadRejected("invalid_shape", "points must be a non-empty list.")
        elif "metrics" in body:
            raw_points = [{"ts": body.get("ts"), "metrics": body["metrics"]}]
        else:
            raise PayloadRejected("invalid_shape", "Send metrics or points.")
        if len(raw_points) > self._max_points:
            raise PayloadRejected(
                "too_many_points", f"At most {self._max_points} points per message."
            )
        parsed = ParsedPayload(tenant_id=tenant_id)
        for index, raw_point in enumerate(raw_points):
            self._point(raw_point, index, received_at, parsed)
        return parsed

    def _point(self, raw: Any, index: int, received_at: datetime, out: ParsedPayload) -> None:
        where = f"points[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), dict):
            out.rejects.append(("invalid_shape", f"{where}: needs a metrics object"))
            return
        metrics = raw["metrics"]
        if not metrics:
            out.rejects.append(("invalid_shape", f"{where}: metrics is empty"))
            return
        if len(metrics) > self._max_metrics:
            out.rejects.append(("too_many_metrics", f"{where}: over {self._max_metrics} metrics"))
            return
        try:
            ts = _parse_ts(raw.get("ts"), received_at)
        except (ValueError, OverflowError, OSError):
            out.rejects.append(("invalid_ts", f"{where}: ts is not a valid time"))
            return
        age = (received_at - ts).total_seconds()
        if age > self._max_past or -age > self._max_future:
            out.rejects.append(("ts_out_of_range", f"{where}: ts outside the accepted window"))
            return
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if not METRIC_NAME.fullmatch(name):
                out.rejects.append(("invalid_metric_name", f"{where}: bad metric name"))
                return
            try:
                values[name] = _value(value)
            except ValueError:
                out.rejects.append(("invalid_value", f"{where}.{name}: not a finite number"))
                return
        out.points.append(Point(ts, values))
