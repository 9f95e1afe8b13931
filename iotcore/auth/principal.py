"""Who is calling: the user principal carried by an access token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

Role = Literal["owner", "admin", "viewer"]
ROLE_RANK: dict[str, int] = {"viewer": 1, "admin": 2, "owner": 3}


@dataclass(frozen=True)
class UserPrincipal:
    user_id: UUID
    tenant_id: UUID
    role: Role

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]
