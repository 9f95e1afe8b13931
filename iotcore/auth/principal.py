"""Who is calling: a user (access token) or an API key, in one tenant, with one role."""

from __future__ import annotations

from dataclasses import dataclass
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

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]
