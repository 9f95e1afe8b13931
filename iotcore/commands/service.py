"""Commands: creation and reads for the API, and the transitions the delivering process
makes (sent, succeeded, failed, expired). The database enforces the transitions and audits
each one (migrations/0015); every change committed here is then a `command` event on the
tenant's live stream and counted in the metrics.

Rejected replies go to `ingest_rejects` with a `reply_*` reason: like rejected telemetry
they are a device's messages the platform refused, read by operators (the owner role) and
pruned by `maintain`, and a reply for another tenant's command has no single tenant whose
table it could go to (the table is a write-only sink without RLS; tests/security/catalog.py).
"""

from __future__ import annotations

import builtins
import logging
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from iotcore.auth.principal import UserPrincipal
from iotcore.commands.schemas import (
    CommandAccepted,
    CommandOut,
    CommandRequest,
    Reply,
    command_out,
)
from iotcore.platform.context import Platform
from iotcore.platform.errors import NotFound
from iotcore.platform.http.parsing import nul_characters
from iotcore.platform.metrics import COMMAND_REPLIES_REJECTED, COMMAND_ROUND_TRIP, COMMANDS
from iotcore.platform.pagination import decode_keyset, keyset_page
from iotcore.platform.redis import Redis
from iotcore.platform.types import parse_uuid
from iotcore.telemetry.derived import publish_event

log = logging.getLogger("iotcore.commands")
EXCERPT_CHARS = 200
DUE_BATCH = 100


async def command_changed(redis: Redis, tenant_id: UUID, row: Any) -> CommandOut:
    """After the commit of a change: the live event and the metrics."""
    out = command_out(row)
    COMMANDS.labels(out.status).inc()
    # Created -> completed: sent_at cannot start it, as a fast device's reply may be stored
    # before its PUBACK's `sent` is (the reply then sets sent_at itself).
    if out.completed_at is not None and out.status != "expired":
        COMMAND_ROUND_TRIP.observe(max(0.0, (out.completed_at - out.created_at).total_seconds()))
    await publish_event(redis, tenant_id, "command", out.model_dump(mode="json"))
    return out


class CommandService:
    def __init__(self, platform: Platform) -> None:
        self._db = platform.db
        self._redis = platform.redis
        self._sql = platform.queries("commands")
        for status in ("pending", "sent", "succeeded", "failed", "expired"):
            COMMANDS.labels(status)  # every series exists from the start, at 0

    # API ---------------------------------------------------------------------------------

    async def create(
        self, principal: UserPrincipal, device_id: UUID, request: CommandRequest
    ) -> CommandAccepted:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            row = await conn.fetchrow(
                self._sql["create_command"],
                device_id,
                request.name,
                request.params,
                principal.user_id,
                float(request.ttl_s),
            )
        if row is None:
            raise NotFound("No such device.")
        # Committed: the dispatcher heard of it on `iotcore_commands` at the commit.
        out = await command_changed(self._redis, principal.tenant_id, row)
        return CommandAccepted(
            command_id=out.command_id, status=out.status, expires_at=out.expires_at
        )

    async def get(self, principal: UserPrincipal, device_id: UUID, command_id: UUID) -> CommandOut:
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(self._sql["get_command"], device_id, command_id)
        if row is None:
            raise NotFound("No such command.")
        return command_out(row)

    async def page(
        self,
        principal: UserPrincipal,
        device_id: UUID,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[CommandOut], str | None]:
        before_ts, before_id = decode_keyset(cursor)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            if not await conn.fetchval(self._sql["device_exists"], device_id):
                raise NotFound("No such device.")
            rows = await conn.fetch(
                self._sql["list_commands"], device_id, status, before_ts, before_id, limit + 1
            )
        page, next_cursor = keyset_page(rows, limit, "command_id")
        return [command_out(r) for r in page], next_cursor

    # delivery ----------------------------------------------------------------------------

    async def due(self, tenant_id: UUID, device_id: UUID, *, resend: bool) -> builtins.list[Any]:
        """Unexpired commands a connected device should receive (with `resend`, also those
        sent and unanswered), oldest first."""
        async with self._db.tenant_transaction(tenant_id, read=True) as conn:
            return list(await conn.fetch(self._sql["due_commands"], device_id, resend, DUE_BATCH))

    async def mark_sent(
        self, tenant_id: UUID, command_id: UUID, *, again_after_s: float | None = None
    ) -> CommandOut | None:
        """`pending` -> `sent` (with `again_after_s`, a `sent` one last sent that long ago is
        marked again: the claim of one dispatcher among several). None: already further,
        expired, or claimed by another."""
        async with self._db.tenant_transaction(tenant_id) as conn:
            row = await conn.fetchrow(
                self._sql["mark_sent"], command_id, again_after_s is not None, again_after_s or 0.0
            )
        if row is None:
            return None
        return await command_changed(self._redis, tenant_id, row)

    async def open_devices(self) -> builtins.list[tuple[UUID, UUID]]:
        async with self._db.transaction(read=True) as conn:
            rows = await conn.fetch(self._sql["open_devices"])
        return [(r["tenant_id"], r["device_id"]) for r in rows]

    # replies -----------------------------------------------------------------------------

    async def reply(
        self, tenant_id: UUID, device_id: UUID, topic: str, command_text: str, payload: bytes
    ) -> str:
        """Complete a command from its device's reply; returns the status reached or the
        reason it was rejected (and recorded). `tenant_id` and `device_id` are the
        replying device's: on the embedded broker and EMQX its own (the ACL allows nothing
        else); on a broker without ACL (Mosquitto) the topic's, checked against the
        command's device here."""
        command_id = parse_uuid(command_text)
        try:
            # Parsed as the API parses a body (orjson: strict JSON, no NaN or Infinity, an
            # integer beyond 64 bits read as a float); a NUL (JSON's \u0000) cannot be
            # stored in jsonb: refused like any bad reply.
            data = orjson.loads(payload)
            reply = None if nul_characters(data) else Reply.model_validate(data)
        except (orjson.JSONDecodeError, ValidationError):
            reply = None
        async with self._db.tenant_transaction(tenant_id) as conn:
            row = (
                None
                if command_id is None
                else await conn.fetchrow(self._sql["command_for_reply"], command_id)
            )
            changed = None
            if reply is None:
                outcome = "reply_invalid"
            elif row is None:
                outcome = "reply_unknown_command"  # another tenant's, or a handed-on device's
            elif row["device_id"] != device_id:
                outcome = "reply_wrong_device"
            elif row["status"] in ("succeeded", "failed"):
                outcome = "reply_duplicate"
            elif row["status"] == "expired" or row["expired"]:
                outcome = "reply_expired"
                changed = await conn.fetchrow(self._sql["expire_command"], command_id)
            else:
                status = "succeeded" if reply.ok else "failed"
                changed = await conn.fetchrow(
                    self._sql["complete_command"], command_id, status, reply.result
                )
                outcome = status
            if outcome.startswith("reply_"):
                await conn.execute(
                    self._sql["insert_reject"],
                    tenant_id,
                    device_id,
                    topic,
                    outcome,
                    payload[:EXCERPT_CHARS].decode("utf-8", "replace").replace("\x00", "\ufffd"),
                )
        if changed is not None:
            await command_changed(self._redis, tenant_id, changed)
        if outcome.startswith("reply_"):
            COMMAND_REPLIES_REJECTED.labels(outcome).inc()
            log.info(
                "command reply rejected", extra={"reason": outcome, "device_id": str(device_id)}
            )
        return outcome


async def expire_commands(conn: Any, redis: Redis, sql: dict[str, str], batch: int = 1000) -> int:
    """`maintain` (as the owner, every tenant): commands past their expiry end `expired`."""
    expired = 0
    while True:
        rows = await conn.fetch(sql["expire_commands"], batch)
        for row in rows:
            await command_changed(redis, row["tenant_id"], row)
        expired += len(rows)
        if len(rows) < batch:
            return expired
