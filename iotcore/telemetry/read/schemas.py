"""Query and response models of the dashboard read API."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotcore.platform.types import Timestamp, within_range

_DURATION = re.compile(
    r"P(?:(?P<w>[0-9]{1,9})W)?(?:(?P<d>[0-9]{1,9})D)?"
    r"(?:T(?:(?P<h>[0-9]{1,9})H)?(?:(?P<m>[0-9]{1,9})M)?(?:(?P<s>[0-9]{1,9})S)?)?"
)
MAX_BUCKET = timedelta(days=3660)
METRIC_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # pydantic's (Rust) regex: $ is the very end
NAMED_BUCKETS = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
_EPOCH_MS = re.compile(r"-?[0-9]{1,15}")
FUNCTIONS = ("avg", "min", "max", "sum", "count")


def parse_time(value: str) -> datetime:
    """RFC 3339 or integer epoch milliseconds, between EARLIEST and LATEST."""
    if _EPOCH_MS.fullmatch(value):
        return within_range(datetime.fromtimestamp(int(value) / 1000, UTC))
    return within_range(datetime.fromisoformat(value.replace("Z", "+00:00")))


def parse_bucket(value: str) -> timedelta:
    """1m, 5m, 15m, 1h, 1d, or an ISO 8601 duration in weeks, days, hours, minutes, seconds."""
    if value in NAMED_BUCKETS:
        return NAMED_BUCKETS[value]
    match = _DURATION.fullmatch(value)
    if not match or value in ("P", "PT"):
        raise ValueError("use 1m, 5m, 15m, 1h, 1d or an ISO 8601 duration such as PT30M")
    parts = {k: int(v) for k, v in match.groupdict(default="0").items()}
    try:
        bucket = timedelta(
            weeks=parts["w"],
            days=parts["d"],
            hours=parts["h"],
            minutes=parts["m"],
            seconds=parts["s"],
        )
    except OverflowError as exc:
        raise ValueError("a bucket is at most ten years") from exc
    if bucket < timedelta(seconds=1):
        raise ValueError("a bucket is at least one second")
    if bucket > MAX_BUCKET:
        raise ValueError("a bucket is at most ten years")
    return bucket


class Window(BaseModel):
    model_config = ConfigDict(extra="ignore")
    from_: str | None = Field(default=None, alias="from", description="RFC 3339 or epoch ms")
    to: str | None = Field(default=None, description="RFC 3339 or epoch ms")

    @field_validator("from_", "to")
    @classmethod
    def _valid_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_time(value)
            except (ValueError, OverflowError, OSError) as exc:
                raise ValueError("RFC 3339 or epoch milliseconds") from exc
        return value


class RawQuery(Window):
    metric: str | None = Field(default=None, pattern=METRIC_PATTERN)
    order: Literal["asc", "desc"] = "asc"
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=512)


class AggregateQuery(Window):
    metric: str = Field(pattern=METRIC_PATTERN)
    bucket: str = "5m"
    fn: str = "avg,min,max,count"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        parse_bucket(value)
        return value

    @field_validator("fn")
    @classmethod
    def _functions(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in FUNCTIONS]
        if not names or unknown:
            raise ValueError(f"comma list of {', '.join(FUNCTIONS)}")
        return ",".join(dict.fromkeys(names))


class StreamQuery(BaseModel):
    device_id: list[str] = Field(default_factory=list, max_length=100)
    ticket: str | None = Field(default=None, max_length=128)
    last_event_id: str | None = Field(default=None, max_length=64)


class MetricItem(BaseModel):
    metric: str
    last_ts: Timestamp
    last_value: float


class MetricList(BaseModel):
    items: list[MetricItem]


class RawItem(BaseModel):
    metric: str
    ts: Timestamp
    value: float


class RawPage(BaseModel):
    items: list[RawItem]
    next_cursor: str | None


class LatestValue(BaseModel):
    ts: Timestamp
    value: float


class Latest(BaseModel):
    device_id: str
    metrics: dict[str, LatestValue]


class Bucket(BaseModel):
    ts: Timestamp
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    sum: float | None = None
    count: int | None = None


class Aggregate(BaseModel):
    metric: str
    bucket: str
    items: list[Bucket]


class StreamTicket(BaseModel):
    ticket: str
    expires_in: int
