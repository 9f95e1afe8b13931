"""Field types and value parsers shared across the API: ids, times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from pydantic import PlainSerializer, WithJsonSchema

# Only the canonical form (lowercase, hyphenated): one device has one spelling, so ids used
# as cache, replay or session keys cannot be varied to dodge them.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_uuid(text: str) -> UUID | None:
    """The UUID written in canonical form, else None."""
    if not isinstance(text, str) or _CANONICAL_UUID.fullmatch(text) is None:
        return None
    return UUID(text)


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
