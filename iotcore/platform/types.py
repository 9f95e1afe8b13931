"""Field types shared by the API models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema

# The times the API takes in (query windows, cursors): well inside both Python's and
# PostgreSQL's ranges, so arithmetic on them (margins, buckets) cannot overflow either.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def within_range(value: datetime) -> datetime:
    """`value` in UTC; ValueError if it has no time zone or lies outside EARLIEST..LATEST."""
    if value.tzinfo is None:
        raise ValueError("needs a time zone (RFC 3339)")
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("outside the supported time range") from exc
    if not EARLIEST <= value <= LATEST:
        raise ValueError("outside the supported time range (1970 to 9000)")
    return value


def rfc3339_ms(value: datetime) -> str:
    """RFC 3339, UTC, millisecond precision: the API's one time format."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339_ms, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
