"""Request and response models of the commands endpoints, and the MQTT messages' shapes."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from iotcore.platform.pagination import ListQuery
from iotcore.platform.types import Timestamp

CommandStatus = Literal["pending", "sent", "succeeded", "failed", "expired"]
OPEN_STATUSES = ("pending", "sent")
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # the metric-name pattern (API.md)
# A command goes to small devices: its parameters (and a reply's result), as compact JSON.
PARAMS_MAX_BYTES = 4096
RESULT_MAX_BYTES = 4096
TTL_MIN_S, TTL_MAX_S, TTL_DEFAULT_S = 10, 86_400, 3600


def _small_object(value: dict[str, Any], limit: int) -> dict[str, Any]:
    if len(orjson.dumps(value)) > limit:
        raise ValueError(f"at most {limit} bytes as JSON")
    return value


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    params: dict[str, Any] = Field(
        default_factory=dict, description=f"at most {PARAMS_MAX_BYTES} bytes as JSON"
    )
    ttl_s: int = Field(default=TTL_DEFAULT_S, ge=TTL_MIN_S, le=TTL_MAX_S)

    @field_validator("params")
    @classmethod
    def _params_size(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _small_object(params, PARAMS_MAX_BYTES)


class CommandAccepted(BaseModel):
    command_id: UUID
    status: CommandStatus
    expires_at: Timestamp


class CommandOut(BaseModel):
    command_id: UUID
    device_id: UUID
    name: str
    params: dict[str, Any]
    status: CommandStatus
    created_at: Timestamp
    sent_at: Timestamp | None
    completed_at: Timestamp | None
    expires_at: Timestamp
    result: dict[str, Any] | None


class CommandList(BaseModel):
    items: list[CommandOut]
    next_cursor: str | None


class CommandListQuery(ListQuery):
    status: CommandStatus | None = None


class Reply(BaseModel):
    """What a device publishes on `.../replies/{command_id}`."""

    model_config = ConfigDict(extra="forbid")

    ok: StrictBool
    result: dict[str, Any] | None = None

    @field_validator("result")
    @classmethod
    def _result_size(cls, result: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if result is None else _small_object(result, RESULT_MAX_BYTES)


def command_out(row: Any) -> CommandOut:
    return CommandOut(**{k: row[k] for k in CommandOut.model_fields})


def delivery_payload(row: Any) -> bytes:
    """The message a device receives on `.../commands/{name}`."""
    out = command_out(row)
    return orjson.dumps(
        {
            "command_id": str(out.command_id),
            "name": out.name,
            "params": out.params,
            "expires_at": out.model_dump(mode="json")["expires_at"],
        }
    )
