"""Field types shared by the API models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


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
