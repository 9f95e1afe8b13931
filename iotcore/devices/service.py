"""Device lifecycle: factory provisioning, claim, one-time secrets, rotation and reset."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any
from uuid import UUID

from iotcore.auth.audit import AuditLog
from iotcore.auth.principal import UserPrincipal
from iotcore.commands.service import command_changed
from iotcore.devices import signing
from iotcore.devices.mqtt_access import topic_base
from iotcore.devices.registry import DeviceRegistry, hash_secret
from iotcore.devices.schemas import (
    BootstrapResponse,
    DeviceOut,
    FactoryDevice,
    MqttSettings,
    ProvisionedDevice,
    SecretResponse,
)
from iotcore.devices.sessions import SessionKicker
from iotcore.devices.verification import RequestVerifier, SignedRequest
from iotcore.platform.context import Platform
from iotcore.platform.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
)
from iotcore.platform.pagination import decode_keyset, encode_keyset
from iotcore.platform.ratelimit import AttemptLimiter, Limit
from iotcore.platform.types import parse_uuid
from iotcore.telemetry.derived import clear_device_state

log = logging.getLogger("iotcore.devices")
POLL_INTERVAL_S = 60


def _device_out(row: Any) -> DeviceOut:
    return DeviceOut(**dict(row))


class DeviceService:
    def __init__(self, platform: Platform, registry: DeviceRegistry) -> None:
        settings = platform.settings
        self._platform = platform
        self._db = platform.db
        self._sql = platform.queries("devices")
        self._audit = AuditLog(platform)
        self._registry = registry
        self._sessions = SessionKicker(settings)
        self._ring = settings.manufacturing_key_ring
        self._signing_key_id = settings.manufacturing_signing_key_id
        self._grace = timedelta(seconds=settings.secret_rotation_grace_s)
        self.verifier = RequestVerifier(platform)
        self._claims = AttemptLimiter(platform.redis, "claim")
        self._claim_limit = (settings.claim_max_failures, settings.claim_window_s)

    # factory ---------------------------------------------------------------------------

    async def factory_key(self, key_id: str, signed: SignedRequest) -> str:
        """Verify a factory-signed request; returns its key id."""
        secret = self._ring.get(key_id)
        await self.verifier.verify(signed, secret.encode() if secret is not None else None)
        return key_id

    async def provision(self, devices: list[FactoryDevice]) -> list[ProvisionedDevice]:
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                self._sql["provision"],
                [d.serial_number for d in devices],
                [d.model for d in devices],
                [d.hardware_rev for d in devices],
                self._signing_key_id,
            )
        by_serial = {r["serial_number"]: r for r in rows}
        result = []
        for device in devices:
            row = by_serial[device.serial_number]
            key = self._ring.get(row["key_id"])
            if key is None:
                # Made under a retired key: it cannot be given its codes until re-provisioned.
                raise Conflict(
                    f"Device {device.serial_number} was made under a retired key.",
                    code="already_exists",
                )
            result.append(
                ProvisionedDevice(
                    device_id=row["device_id"],
                    serial_number=row["serial_number"],
                    claim_code=signing.claim_code(key, row["serial_number"]),
                    device_key=signing.encode_device_key(
                        signing.device_key(key, str(row["device_id"]))
                    ),
                    created=row["created"],
                )
            )
        return result

    # device-signed -----------------------------------------------------------------------

    async def _lookup(self, device_id: UUID | None, serial: str | None) -> Any:
        async with self._db.transaction() as conn:
            return await conn.fetchrow(self._sql["lookup"], device_id, serial)

    async def signed_device(self, device_id_header: str, signed: SignedRequest) -> Any:
        """Verify a device-signed request; returns the device's look-up row."""
        device_id = parse_uuid(device_id_header)
        row = await self._lookup(device_id, None) if device_id else None
        manufacturing_key = self._ring.get(row["key_id"]) if row else None
        key = (
            signing.device_key(manufacturing_key, str(row["device_id"]))
            if row and manufacturing_key
            else None
        )
        await self.verifier.verify(signed, key)
        return row

    def bootstrap(self, row: Any) -> BootstrapResponse:
        return BootstrapResponse(
            device_id=row["device_id"], status=row["status"], poll_interval_s=POLL_INTERVAL_S
        )

    async def deliver_secret(self, row: Any, ip: str) -> SecretResponse:
        secret = secrets.token_urlsafe(32)
        async with self._db.transaction() as conn:
            result = await conn.fetchrow(
                self._sql["issue_secret"], row["device_id"], hash_secret(secret)
            )
        if result["outcome"] == "not_claimed":
            raise Conflict("The device is not claimed yet.", code="device_not_claimed")
        if result["outcome"] == "already_delivered":
            raise Conflict("This secret was already delivered.", code="secret_already_delivered")
        tenant_id = result["tenant_id"]
        await self._registry.invalidate(row["device_id"])
        async with self._db.tenant_transaction(tenant_id) as conn:
            await self._audit.record(
                conn, "secret_delivered", actor=None, subject=str(row["device_id"]), ip=ip
            )
        base = topic_base(tenant_id, row["device_id"])
        device_id = str(row["device_id"])
        return SecretResponse(
            device_id=row["device_id"],
            tenant_id=tenant_id,
            secret=secret,
            mqtt=MqttSettings(
                username=device_id,
                client_id=device_id,
                telemetry_topic=f"{base}/telemetry",
                status_topic=f"{base}/status",
                commands_topic=f"{base}/commands/#",
            ),
        )

    # tenant users --------------------------------------------------------------------------

    async def claim(
        self, principal: UserPrincipal, serial: str, code: str, name: str | None, ip: str
    ) -> DeviceOut:
        # The guessing tenant is throttled, not the serial: a serial-wide limit would let any
        # tenant lock every other out of claiming that device by failing on purpose.
        limit = Limit(f"tenant:{principal.tenant_id}", *self._claim_limit)
        wait = await self._claims.take(limit)
        if wait:
            raise RateLimited(wait, "Too many failed claim attempts; retry later.")
        row = await self._lookup(None, serial)
        key = self._ring.get(row["key_id"]) if row else None
        # An unknown serial costs and answers the same as a wrong code.
        valid = signing.claim_code_matches(key or "unknown-serial", serial, code)
        if row is None or key is None or not valid:
            raise Forbidden("The serial number and claim code do not match.", code="invalid_claim")
        await self._claims.refund(limit)  # a right code is not a guess
        async with self._db.transaction() as conn:
            outcome = await conn.fetchval(
                self._sql["claim"], row["device_id"], principal.tenant_id, name
            )
        if outcome == "claimed_by_other":
            raise Conflict("This device is claimed by another tenant.", code="already_claimed")
        await self._registry.invalidate(row["device_id"])
        if outcome == "claimed":
            # A clean slate: nothing cached under this tenant from an earlier tenure of the
            # device (a write that raced its reset) may reappear.
            await clear_device_state(self._platform.redis, principal.tenant_id, row["device_id"])
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            if outcome == "claimed":
                await self._audit.record(
                    conn,
                    "device_claimed",
                    actor=principal.user_id,
                    subject=str(row["device_id"]),
                    ip=ip,
                )
            device = await conn.fetchrow(self._sql["get_device"], row["device_id"])
        return _device_out(device)

    async def get(self, principal: UserPrincipal, device_id: UUID) -> DeviceOut:
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(self._sql["get_device"], device_id)
        if row is None:
            raise NotFound("No such device.")
        return _device_out(row)

    async def list(
        self, principal: UserPrincipal, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[DeviceOut], str | None]:
        after_ts, after_id = decode_keyset(cursor)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(
                self._sql["list_devices"], status, after_ts, after_id, limit + 1
            )
        items = [_device_out(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_keyset(last["created_at"], last["device_id"])
        return items, next_cursor

    async def patch(
        self,
        principal: UserPrincipal,
        device_id: UUID,
        fields: set[str],
        name: str | None,
        labels: dict[str, str] | None,
    ) -> DeviceOut:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            row = await conn.fetchrow(
                self._sql["patch_device"],
                device_id,
                "name" in fields,
                name,
                labels,
            )
        if row is None:
            raise NotFound("No such device.")
        return _device_out(row)

    async def rotate(self, principal: UserPrincipal, device_id: UUID, ip: str) -> DeviceOut:
        async with self._db.transaction() as conn:
            done = await conn.fetchval(
                self._sql["rotate"], device_id, principal.tenant_id, self._grace
            )
        if not done:
            raise NotFound("No such device.")
        await self._registry.invalidate(device_id)
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._audit.record(
                conn, "secret_rotated", actor=principal.user_id, subject=str(device_id), ip=ip
            )
            row = await conn.fetchrow(self._sql["get_device"], device_id)
        return _device_out(row)

    async def reset(self, principal: UserPrincipal, device_id: UUID, ip: str) -> None:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            done = await conn.fetchval(self._sql["reset"], device_id, principal.tenant_id)
            if not done:
                raise NotFound("No such device.")
            ended = await conn.fetch(self._sql["expire_open_commands"], device_id)
            await self._audit.record(
                conn, "device_reset", actor=principal.user_id, subject=str(device_id), ip=ip
            )
        # Every live session ends: the embedded broker on the invalidation, EMQX by a kick.
        await self._registry.invalidate(device_id)
        await self._sessions.kick([device_id])
        # The tenant's readings stay its own; what was derived from them for the device goes
        # (the reset cleared the latest-values rows in the database).
        await clear_device_state(self._platform.redis, principal.tenant_id, device_id)
        # Then the live stream hears of the commands the reset ended (best effort).
        for row in ended:
            await command_changed(self._platform.redis, principal.tenant_id, row)
