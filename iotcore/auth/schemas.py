"""Request and response models of the identity endpoints (they also generate OpenAPI)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from iotcore.platform.types import Timestamp

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _normalise_email(value: str) -> str:
    return value.strip().lower()


class RegisterRequest(Strict):
    email: str = Field(pattern=EMAIL_PATTERN, max_length=320)
    password: str = Field(min_length=10, max_length=256)
    tenant_name: str = Field(min_length=1, max_length=200)

    _email = field_validator("email", mode="after")(_normalise_email)


class LoginRequest(Strict):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)

    _email = field_validator("email", mode="after")(_normalise_email)


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=1, max_length=256)


class CreateUserRequest(Strict):
    email: str = Field(pattern=EMAIL_PATTERN, max_length=320)
    password: str = Field(min_length=10, max_length=256)
    role: Literal["admin", "viewer"]

    _email = field_validator("email", mode="after")(_normalise_email)


class UserOut(BaseModel):
    user_id: UUID
    tenant_id: UUID
    email: str
    role: Literal["owner", "admin", "viewer"]
    created_at: Timestamp


class TenantOut(BaseModel):
    tenant_id: UUID
    name: str
    created_at: Timestamp


class TokenResponse(BaseModel):
    user: UserOut
    tenant: TenantOut
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class MeResponse(BaseModel):
    user: UserOut
    tenant: TenantOut
    role: Literal["owner", "admin", "viewer"]


class UserList(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class UserPatch(Strict):
    role: Literal["owner", "admin", "viewer"] | None = None


class ChangePasswordRequest(Strict):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=10, max_length=256)


class CreateApiKeyRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["admin", "viewer"]
    expires_at: AwareDatetime | None = None


class RotateApiKeyRequest(Strict):
    grace_s: int = Field(default=86400, ge=0, le=30 * 86400)


class ApiKeyCreated(BaseModel):
    """The only response that carries the key: it is stored as a hash and never shown again."""

    api_key_id: UUID
    name: str
    role: Literal["admin", "viewer"]
    key: str
    created_at: Timestamp
    expires_at: Timestamp | None


class ApiKeyOut(BaseModel):
    api_key_id: UUID
    name: str
    role: Literal["admin", "viewer"]
    created_by: UUID | None
    created_at: Timestamp
    expires_at: Timestamp | None
    rotated_at: Timestamp | None
    # The end of the grace of the key this one replaced, if it has not ended.
    previous_valid_until: Timestamp | None
    last_used_at: Timestamp | None


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None
