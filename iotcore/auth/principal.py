"""Who is calling: a user (access token) or an API key, in one tenant, with one role."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal
from uuid import UUID

Role = Literal["owner", "admin", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 1, "admin": 2, "owner": 3}


@dataclass(frozen=True)
class UserPrincipal:
    # For an API key: the key's id (what the audit log records as the actor).
    user_id: UUID
    tenant_id: UUID
    role: Role
    # The refresh-token family the access token was issued with (None: an API key).
    family_id: UUID | None = None
    is_api_key: bool = False

    # Text forms, made once: a verified token's principal serves every request that sends the
    # token (auth/tokens.py), and UUID.__str__ is Python (some 7k instructions a call).
    @cached_property
    def tenant_text(self) -> str:
        return str(self.tenant_id)

    @cached_property
    def user_text(self) -> str:
        return str(self.user_id)

    @cached_property
    def family_text(self) -> str | None:
        return None if self.family_id is None else str(self.family_id)

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]
