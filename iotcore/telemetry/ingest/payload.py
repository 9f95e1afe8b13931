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
        parsed = ParsedPayload(tenant_id=tenant_id)
        if "points" in body:
            raw_points = body["points"]
            if not isinstance(raw_points, list) or not raw_points:
                raise PayloadRejected("invalid_shape", "points must be a non-empty list.")
            if len(raw_points) > self._max_points:
                raise PayloadRejected(
                    "too_many_points", f"At most {self._max_points} points per message."
                )
            for index, raw_point in enumerate(raw_points):
                if isinstance(raw_point, dict):
                    self._point(
                        raw_point.get("ts"), raw_point.get("metrics"), index, received_at, parsed
                    )
                else:
                    parsed.rejects.append(("invalid_shape", _needs_metrics(index)))
        elif "metrics" in body:
            self._point(body.get("ts"), body["metrics"], 0, received_at, parsed)
        else:
            raise PayloadRejected("invalid_shape", "Send metrics or points.")
        return parsed

    def _point(
        self, raw_ts: Any, metrics: Any, index: int, received_at: datetime, out: ParsedPayload
    ) -> None:
        # The reasons name the point (points[i]) only when one is refused.
        if not isinstance(metrics, dict):
            out.rejects.append(("invalid_shape", _needs_metrics(index)))
            return
        if not metrics:
            out.rejects.append(("invalid_shape", f"points[{index}]: metrics is empty"))
            return
        if len(metrics) > self._max_metrics:
            out.rejects.append(
                ("too_many_metrics", f"points[{index}]: over {self._max_metrics} metrics")
            )
            return
        if raw_ts is None:
            ts = received_at  # inside the window by definition
        else:
            try:
                ts = _parse_ts(raw_ts, received_at)
            except (ValueError, OverflowError, OSError):
                out.rejects.append(("invalid_ts", f"points[{index}]: ts is not a valid time"))
                return
            age = (received_at - ts).total_seconds()
            if age > self._max_past or -age > self._max_future:
                out.rejects.append(
                    ("ts_out_of_range", f"points[{index}]: ts outside the accepted window")
                )
                return
        values: dict[str, float] = {}
        fullmatch = METRIC_NAME.fullmatch
        for name, value in metrics.items():
            if not fullmatch(name):
                out.rejects.append(("invalid_metric_name", f"points[{index}]: bad metric name"))
                return
            kind = type(value)
            if kind is float and math.isfinite(value):
                values[name] = value
            elif kind is int:
                values[name] = float(value)  # orjson's ints fit in 64 bits: always finite
            else:
                try:
                    values[name] = _value(value)
                except ValueError:
                    out.rejects.append(
                        ("invalid_value", f"points[{index}].{name}: not a finite number")
                    )
                    return
        out.points.append(Point(ts, values))


def _needs_metrics(index: int) -> str:
    return f"points[{index}]: needs a metrics object"
