"""Starting purges (as jobs) and reading a job's progress, in the caller's tenant."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any
from uuid import UUID

from iotcore.auth.audit import AuditLog
from iotcore.auth.principal import UserPrincipal
from iotcore.platform.context import Platform
from iotcore.platform.db import Connection
from iotcore.platform.errors import Forbidden, NotFound, ValidationFailed


def requester(principal: UserPrincipal) -> str:
    """Who asked, as the operator audit records it."""
    return f"{'api_key' if principal.is_api_key else 'user'}:{principal.user_id}"


async def start_job(
    conn: Connection,
    sql: dict[str, str],
    tenant_id: UUID,
    kind: str,
    params: dict[str, Any],
    requested_by: str,
) -> UUID:
    """A new job (`sql`: the jobs queries), or the one already queued or running for the
    same target."""
    existing = await conn.fetchval(sql["pending_for_target"], kind, params, tenant_id)
    if existing is not None:
        return UUID(str(existing))
    return UUID(str(await conn.fetchval(sql["insert"], tenant_id, kind, params, requested_by)))


class TenantService:
    def __init__(self, platform: Platform) -> None:
        self._db = platform.db
        self._sql = platform.queries("tenants")
        self._jobs = platform.queries("jobs")
        self._audit = AuditLog(platform)

    async def delete_tenant(self, principal: UserPrincipal, confirmation: str, ip: str) -> UUID:
        if principal.is_api_key or principal.role != "owner":
            raise Forbidden("Only an owner, logged in, may delete the tenant.")
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            name = await conn.fetchval(self._sql["tenant_name"])
            if name is None or not hmac.compare_digest(confirmation.encode(), name.encode()):
                raise ValidationFailed.field("confirmation", "must be the tenant's name")
            job_id = await start_job(
                conn, self._jobs, principal.tenant_id, "purge_tenant", {}, requester(principal)
            )
            await self._audit.record(
                conn,
                "tenant_deletion_requested",
                actor=principal.user_id,
                subject=str(job_id),
                ip=ip,
            )
        return job_id

    async def purge_device(
        self, principal: UserPrincipal, device_id: UUID, before: datetime | None, ip: str
    ) -> UUID:
        params: dict[str, Any] = {"device_id": str(device_id)}
        if before is not None:
            params["before"] = before.isoformat()
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            # The device is the caller's, or was and left readings with the tenant.
            if not await conn.fetchval(self._sql["device_known"], device_id):
                raise NotFound("No such device.")
            job_id = await start_job(
                conn, self._jobs, principal.tenant_id, "purge_device", params, requester(principal)
            )
            await self._audit.record(
                conn,
                "device_purge_requested",
                actor=principal.user_id,
                subject=str(device_id),
                ip=ip,
                details={"job_id": str(job_id), "before": params.get("before")},
            )
        return job_id

    async def job(self, principal: UserPrincipal, job_id: UUID) -> dict[str, Any]:
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(self._jobs["get"], job_id)
        if row is None:
            raise NotFound("No such job.")
        return dict(row)
