"""Opaque list cursors (base64url JSON) and the list query every list endpoint accepts."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, Field

from iotcore.platform.errors import ValidationFailed
from iotcore.platform.types import within_range


class ListQuery(BaseModel):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=512)


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(cursor: str, keys: set[str]) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed.field("cursor", "not a cursor this server issued") from exc
    if not isinstance(position, dict) or set(position) != keys:
        raise ValidationFailed.field("cursor", "not a cursor this server issued")
    return position


def encode_keyset(created_at: datetime, row_id: UUID) -> str:
    """The usual keyset position: (created_at, id) of the last row of a page."""
    return encode_cursor({"t": created_at.isoformat(), "id": str(row_id)})


def decode_keyset(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    if cursor is None:
        return None, None
    position = decode_cursor(cursor, {"t", "id"})
    try:
        return within_range(datetime.fromisoformat(position["t"])), UUID(position["id"])
    except (TypeError, ValueError) as exc:
        raise ValidationFailed.field("cursor", "not a cursor this server issued") from exc


def keyset_page(rows: list[Any], limit: int, id_column: str) -> tuple[list[Any], str | None]:
    """A page from `limit + 1` rows fetched in (created_at, id) order, and the cursor of the
    next page when there is one."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_keyset(last["created_at"], last[id_column])
