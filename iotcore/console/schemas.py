"""Response of the console's session endpoints: the access token, never the refresh token."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from iotcore.auth.schemas import TenantOut, UserOut


class ConsoleSession(BaseModel):
    user: UserOut
    tenant: TenantOut
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
