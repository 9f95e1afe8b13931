"""Request and response models of the factory, device and MQTT hook endpoints."""

from __future__ import annotations

import re
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iotcore.platform.pagination import ListQuery
from iotcore.platform.types import Timestamp

DeviceStatus = Literal["unclaimed", "claimed", "active", "rekey_pending"]
SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
LABEL_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FactoryDevice(Strict):
    serial_number: str = Field(pattern=SERIAL_PATTERN)
    model: str = Field(min_length=1, max_length=128)
    hardware_rev: str | None = Field(default=None, max_length=64)


class FactoryRequest(Strict):
    devices: list[FactoryDevice] = Field(min_length=1, max_length=1000)

    @field_validator("devices")
    @classmethod
    def _unique_serials(cls, devices: list[FactoryDevice]) -> list[FactoryDevice]:
        serials = [d.serial_number for d in devices]
        if len(set(serials)) != len(serials):
            raise ValueError("serial numbers must be unique within one request")
        return devices


class ProvisionedDevice(BaseModel):
    device_id: UUID
    serial_number: str
    claim_code: str
    device_key: str
    created: bool


class FactoryResponse(BaseModel):
    devices: list[ProvisionedDevice]


class EmptyBody(Strict):
    """Device-signed calls send `{}`: the signature covers the body."""


class BootstrapResponse(BaseModel):
    device_id: UUID
    status: DeviceStatus
    poll_interval_s: int


class MqttSettings(BaseModel):
    username: str
    client_id: str
    telemetry_topic: str
    status_topic: str
    commands_topic: str


class SecretResponse(BaseModel):
    device_id: UUID
    tenant_id: UUID
    secret: str
    mqtt: MqttSettings


class ClaimRequest(Strict):
    serial_number: str = Field(min_length=1, max_length=128)
    claim_code: str = Field(min_length=1, max_length=32)
    name: str | None = Field(default=None, max_length=200)


class DeviceOut(BaseModel):
    device_id: UUID
    serial_number: str
    model: str
    hardware_rev: str | None
    name: str | None
    labels: dict[str, str]
    status: DeviceStatus
    claimed_at: Timestamp | None
    last_seen_at: Timestamp | None
    created_at: Timestamp
    # Presence (docs/api.md, "Presence"): connected to the broker now, and since when.
    connected: bool = False
    connected_at: Timestamp | None = None
    disconnected_at: Timestamp | None = None


class DeviceList(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class DeviceListQuery(ListQuery):
    status: DeviceStatus | None = None


class DevicePatch(Strict):
    name: str | None = Field(default=None, max_length=200)
    labels: dict[str, str] | None = Field(default=None, max_length=64)

    @field_validator("labels")
    @classmethod
    def _label_shape(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not LABEL_KEY.fullmatch(key) or len(value) > 256:
                raise ValueError(
                    "label keys are 1 to 64 of A-Z a-z 0-9 _ . : -; values <= 256 chars"
                )
        return labels


class ResetRequest(Strict):
    confirmation: Literal["RESET"]


class Accepted(BaseModel):
    device_id: UUID
    status: DeviceStatus


class AuthnHookRequest(BaseModel):
    clientid: str = ""
    username: str = ""
    password: str = ""
    peerhost: str = ""


class AuthzHookRequest(BaseModel):
    clientid: str = ""
    username: str = ""
    topic: str = ""
    action: str = ""
    qos: Any = None


class MqttEventRequest(BaseModel):
    """An EMQX 5.8 rule-engine event (`$events/client_connected`, `.../client_disconnected`)
    as its HTTP action posts it (`body = "${.}"`, emqx/emqx.conf). Times are epoch ms.
    Fields EMQX adds beyond these (peername, proto_ver, client_attrs, ...) are accepted and
    ignored."""

    event: Literal["client.connected", "client.disconnected"]
    clientid: str = Field(min_length=1, max_length=256)
    username: str | None = Field(default=None, max_length=256)
    connected_at: int | None = Field(default=None, ge=0, le=2**53)
    disconnected_at: int | None = Field(default=None, ge=0, le=2**53)
    timestamp: int | None = Field(default=None, ge=0, le=2**53)
    node: str | None = Field(default=None, max_length=256)
    reason: Any = None
    keepalive: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _times(self) -> MqttEventRequest:
        if self.event == "client.connected" and self.connected_at is None:
            raise ValueError("client.connected carries connected_at")
        if self.event == "client.disconnected" and (
            self.disconnected_at is None and self.timestamp is None
        ):
            raise ValueError("client.disconnected carries disconnected_at or timestamp")
        return self


class MqttEventResult(BaseModel):
    result: Literal["applied", "unchanged", "ignored"]


class HookResult(BaseModel):
    result: Literal["allow", "deny", "ignore"]
    is_superuser: bool | None = None
    client_attrs: dict[str, str] | None = None
    acl: list[dict[str, str]] | None = None

    model_config = ConfigDict(json_schema_extra={"description": "EMQX 5 HTTP hook response"})
