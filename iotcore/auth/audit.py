"""The audit trail: security events recorded in the caller's tenant and transaction."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from iotcore.platform.context import Platform
from iotcore.platform.db import Connection


class AuditLog:
    def __init__(self, platform: Platform) -> None:
        self._insert = platform.queries("auth")["insert_audit"]

    async def record(
        self,
        conn: Connection,
        action: str,
        *,
        actor: UUID | None,
        subject: str | None,
        ip: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a security event in the tenant set on `conn`. Never pass a secret in details."""
        await conn.execute(self._insert, actor, action, subject, ip, details or {})
