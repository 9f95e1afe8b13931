"""Request parsing: JSON bodies and query strings validated into pydantic models, refused
with the error envelope's 400/413/415/422."""

from __future__ import annotations

import typing
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from iotcore.platform import errors
from iotcore.platform.types import parse_uuid

ModelT = TypeVar("ModelT", bound=BaseModel)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"field": location, "problem": err["msg"]})
    return details


def nul_characters(data: Any) -> list[dict[str, Any]]:
    """Where strings in `data` (keys included) hold a NUL: PostgreSQL text cannot store one,
    so no field may carry it."""
    found: list[dict[str, Any]] = []
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, location = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append({"field": location or "body", "problem": "contains a NUL character"})
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    found.append({"field": location or "body", "problem": "a key holds a NUL"})
                stack.append((item, f"{location}.{key}".lstrip(".")))
        elif isinstance(value, list):
            stack.extend((item, f"{location}.{i}".lstrip(".")) for i, item in enumerate(value))
    return found


async def read_body(request: web.Request) -> bytes:
    """The raw body (cached by aiohttp, so signature checks and parsing can both read it)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge() from exc


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType()
    raw = await read_body(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJson() from exc
    return validate(model, data)


def validate(model: type[ModelT], data: Any) -> ModelT:
    nul = nul_characters(data)
    if nul:
        raise errors.ValidationFailed(details=nul)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.ValidationFailed(details=validation_details(exc)) from exc


def _is_list_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))


@cache
def _query_keys(model: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """(parameter name, whether it repeats) of each field of a query model."""
    return tuple(
        (info.alias or name, _is_list_field(info.annotation))
        for name, info in model.model_fields.items()
    )


def parse_query(request: web.Request, model: type[ModelT]) -> ModelT:
    data: dict[str, Any] = {}
    query = request.query
    for key, repeats in _query_keys(model):
        if key in query:
            data[key] = query.getall(key) if repeats else query[key]
    return validate(model, data)


def path_id(request: web.Request, name: str, what: str) -> UUID:
    """The id in the path parameter `name`, in canonical form; anything else names nothing
    here: 404 "No such {what}."."""
    value = parse_uuid(request.match_info[name])
    if value is None:
        raise errors.NotFound(f"No such {what}.")
    return value
