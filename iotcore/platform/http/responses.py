"""JSON responses, from a pydantic model or plain data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel


def json_response(
    payload: BaseModel | Mapping[str, Any] | list[Any],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(by_alias=True).encode()
    else:
        body = orjson.dumps(payload)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)
