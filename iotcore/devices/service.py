"""Device lifecycle: factory provisioning, claim, one-time secrets, rotation, reset; device
authentication (cached) and the MQTT access rules shared by the EMQX hooks and the broker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aiohttp import web

from iotcore.auth.principal import UserPrincipal
from iotcore.auth.service import audit
from iotcore.devices import signing
from iotcore.devices.schemas import (
    BootstrapResponse,
    DeviceOut,
    FactoryDevice,
    MqttSettings,
    ProvisionedDevice,
    SecretResponse,
)
from iotcore.platform.context import Platform
from iotcore.platform.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from iotcore.platform.http import read_body
from iotcore.platform.pagination import decode_keyset, encode_keyset
from iotcore.platform.ratelimit import FixedWindow
from iotcore.platform.sql import queries

log = logging.getLogger("iotcore.devices")
SQL = queries("devices")
POLL_INTERVAL_S = 60


def topic_base(tenant_id: UUID | str, device_id: UUID | str) -> str:
    return f"tenants/{tenant_id}/devices/{device_id}"


def hash_secret(secret: str) -> bytes:
    # Device secrets are 256-bit random: SHA-256 is the right hash (no dictionary to slow
    # down), and a reconnect storm stays cheap. argon2 is for human-chosen passwords.
    return hashlib.sha256(secret.encode()).digest()


def parse_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: UUID
    tenant_id: UUID | None
    status: str


@dataclass(frozen=True)
class _Credentials:
    tenant_id: UUID
    status: str
    secret_hash: bytes | None
    previous_secret_hash: bytes | None
    previous_valid_until: datetime | None


def _identity(device_id: UUID, credentials: _Credentials | None) -> DeviceIdentity | None:
    if credentials is None:
        return None
    return DeviceIdentity(device_id, credentials.tenant_id, credentials.status)


class DeviceRegistry:
    """Device credentials with a short in-process cache. Rotate, reset and claim drop the
    entry here and, through a Redis channel, in every other replica; the TTL bounds staleness
    if a message is missed."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._ttl = platform.settings.device_cache_ttl_s
        self._cache: dict[UUID, tuple[float, _Credentials | None]] = {}
        self._channel = platform.redis.key("devices", "invalidate")
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="device-cache-invalidation")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._platform.redis.client.pubsub()
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        device_id = parse_uuid(message["data"].decode())
                        if device_id is not None:
                            self._cache.pop(device_id, None)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the TTL still bounds staleness; retry later
                self._cache.clear()
                await asyncio.sleep(1)

    async def invalidate(self, device_id: UUID) -> None:
        self._cache.pop(device_id, None)
        with contextlib.suppress(Exception):
            await self._platform.redis.client.publish(self._channel, str(device_id))

    def _fresh(self, device_id: UUID) -> tuple[bool, _Credentials | None]:
        """(found, credentials) from the cache, if the entry has not expired."""
        cached = self._cache.get(device_id)
        if cached is None or cached[0] <= time.monotonic():
            return False, None
        return True, cached[1]

    async def _credentials(self, device_id: UUID) -> _Credentials | None:
        found, credentials = self._fresh(device_id)
        if found:
            return credentials
        now = time.monotonic()
        async with self._platform.db.transaction() as conn:
            row = await conn.fetchrow(SQL["credentials"], device_id)
        credentials = _Credentials(**dict(row)) if row else None
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[device_id] = (now + self._ttl, credentials)
        return credentials

    def cached(self, device_id: UUID) -> tuple[bool, DeviceIdentity | None]:
        """(found, identity) from the cache alone: the consumer's fast path, no await."""
        found, credentials = self._fresh(device_id)
        return found, _identity(device_id, credentials)

    async def resolve(self, device_id: UUID) -> DeviceIdentity | None:
        return _identity(device_id, await self._credentials(device_id))

    async def authenticate(self, device_id: str, secret: str) -> DeviceIdentity | None:
        parsed = parse_uuid(device_id)
        if parsed is None or not secret:
            return None
        credentials = await self._credentials(parsed)
        if credentials is None:
            return None
        digest = hash_secret(secret)
        identity = DeviceIdentity(parsed, credentials.tenant_id, credentials.status)
        if credentials.secret_hash is not None and hmac.compare_digest(
            digest, credentials.secret_hash
        ):
            if (
                credentials.previous_secret_hash is not None
                or credentials.status == "rekey_pending"
            ):
                # First use of the new secret: the old one stops working now.
                async with self._platform.db.transaction() as conn:
                    await conn.execute(SQL["secret_used"], parsed)
                await self.invalidate(parsed)
            return identity
        if (
            credentials.previous_secret_hash is not None
            and credentials.previous_valid_until is not None
            and credentials.previous_valid_until > datetime.now(UTC)
            and hmac.compare_digest(digest, credentials.previous_secret_hash)
        ):
            return identity
        return None


DEVICE_REGISTRY_KEY = web.AppKey("device_registry", DeviceRegistry)


# ------------------------------------------------------------------- MQTT access rules


def device_may(identity: DeviceIdentity, action: str, topic: str) -> bool:
    """A device publishes only its telemetry and status, subscribes only to its commands."""
    if identity.tenant_id is None:
        return False
    base = topic_base(identity.tenant_id, identity.device_id)
    if action == "publish":
        return topic in (f"{base}/telemetry", f"{base}/status")
    if action == "subscribe":
        if not topic.startswith(f"{base}/commands/") and topic != f"{base}/commands":
            return False
        levels = topic.split("/")
        return "+" not in topic and all(level != "#" for level in levels[:-1])
    return False


def ingest_may(share_group: str, action: str, topic: str) -> bool:
    """The ingest service account subscribes to every device's telemetry, shared or not."""
    if action != "subscribe":
        return False
    plain = "tenants/+/devices/+/telemetry"
    return topic in (plain, f"$share/{share_group}/{plain}")


def device_acl(identity: DeviceIdentity) -> list[dict[str, str]]:
    """EMQX 5.8 authn-response ACL: spares EMQX a per-publish authz call."""
    base = topic_base(identity.tenant_id or "", identity.device_id)
    return [
        {"permission": "allow", "action": "publish", "topic": f"{base}/telemetry"},
        {"permission": "allow", "action": "publish", "topic": f"{base}/status"},
        {"permission": "allow", "action": "subscribe", "topic": f"{base}/commands/#"},
        {"permission": "deny", "action": "all", "topic": "#"},
    ]


def ingest_acl(share_group: str) -> list[dict[str, str]]:
    plain = "tenants/+/devices/+/telemetry"
    return [
        {"permission": "allow", "action": "subscribe", "topic": plain},
        {"permission": "allow", "action": "subscribe", "topic": f"$share/{share_group}/{plain}"},
        {"permission": "deny", "action": "all", "topic": "#"},
    ]


class MqttAccess:
    """Authentication and topic rules for MQTT clients: the EMQX hooks call it over HTTP,
    the embedded broker's plugins call it directly. One set of rules for both."""

    def __init__(self, platform: Platform, registry: DeviceRegistry) -> None:
        settings = platform.settings
        self._registry = registry
        self._ingest_user = settings.ingest_mqtt_username
        self._ingest_password = settings.ingest_mqtt_password.get_secret_value().encode()
        self.share_group = settings.mqtt_share_group

    def _is_ingest(self, username: str, password: str) -> bool:
        return username == self._ingest_user and hmac.compare_digest(
            password.encode(), self._ingest_password
        )

    async def authenticate(
        self, client_id: str, username: str, password: str
    ) -> dict[str, Any] | None:
        """The EMQX authn answer for an allowed client, or None to deny."""
        if self._is_ingest(username, password):
            return {
                "result": "allow",
                "is_superuser": False,
                "client_attrs": {"role": "ingest"},
                "acl": ingest_acl(self.share_group),
            }
        if client_id != username:
            return None
        identity = await self._registry.authenticate(username, password)
        if identity is None or identity.tenant_id is None:
            return None
        return {
            "result": "allow",
            "is_superuser": False,
            "client_attrs": {
                "tenant_id": str(identity.tenant_id),
                "device_id": str(identity.device_id),
            },
            "acl": device_acl(identity),
        }

    async def authorize(self, client_id: str, username: str, topic: str, action: str) -> bool:
        if username == self._ingest_user:
            return ingest_may(self.share_group, action, topic)
        device_id = parse_uuid(username)
        if device_id is None or client_id != username:
            return False
        identity = await self._registry.resolve(device_id)
        return identity is not None and device_may(identity, action, topic)


MQTT_ACCESS_KEY = web.AppKey("mqtt_access", MqttAccess)


# ------------------------------------------------------------------- signed requests


class RequestVerifier:
    """Checks a signed request: fresh timestamp, valid HMAC, never seen before."""

    def __init__(self, platform: Platform) -> None:
        self._redis = platform.redis
        self._skew = platform.settings.signature_skew_s

    async def verify(self, request: web.Request, key: bytes | None) -> bytes:
        timestamp = request.headers.get("X-Timestamp", "")
        signature = request.headers.get("X-Signature", "")
        if not timestamp or not signature:
            raise Unauthenticated("Signed requests carry X-Timestamp and X-Signature.")
        try:
            sent_at = int(timestamp)
        except ValueError as exc:
            raise Unauthenticated("X-Timestamp is unix seconds.", code="invalid_signature") from exc
        if abs(time.time() - sent_at) > self._skew:
            raise Unauthenticated(
                "The request timestamp is too far from server time.", code="signature_expired"
            )
        body = await read_body(request)
        path = request.rel_url.raw_path
        if key is None or not signing.signature_matches(
            key, signature, timestamp, request.method, path, body
        ):
            raise Unauthenticated("The signature does not match.", code="invalid_signature")
        first_time = await self._redis.client.set(
            self._redis.key("sig", signature.lower()), b"1", nx=True, ex=2 * self._skew
        )
        if not first_time:
            raise Unauthenticated("This signed request was already used.", code="replayed_request")
        return body


# ------------------------------------------------------------------- lifecycle


def _device_out(row: Any) -> DeviceOut:
    return DeviceOut(**dict(row))


class DeviceService:
    def __init__(self, platform: Platform, registry: DeviceRegistry) -> None:
        settings = platform.settings
        self._platform = platform
        self._db = platform.db
        self._registry = registry
        self._ring = settings.manufacturing_key_ring
        self._signing_key_id = settings.manufacturing_signing_key_id
        self._grace = timedelta(seconds=settings.secret_rotation_grace_s)
        self.verifier = RequestVerifier(platform)
        self._claims = FixedWindow(
            platform.redis, "claim", settings.claim_max_failures, settings.claim_window_s
        )

    # factory ---------------------------------------------------------------------------

    async def factory_key(self, request: web.Request) -> str:
        """Verify a factory-signed request; returns its key id."""
        key_id = request.headers.get("X-Key-Id", "")
        secret = self._ring.get(key_id)
        await self.verifier.verify(request, secret.encode() if secret is not None else None)
        return key_id

    async def provision(self, devices: list[FactoryDevice]) -> list[ProvisionedDevice]:
        async with self._db.transaction() as conn:
            rows = await conn.fetch(
                SQL["provision"],
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
            return await conn.fetchrow(SQL["lookup"], device_id, serial)

    async def signed_device(self, request: web.Request) -> Any:
        """Verify a device-signed request; returns the device's look-up row."""
        device_id = parse_uuid(request.headers.get("X-Device-Id", ""))
        row = await self._lookup(device_id, None) if device_id else None
        manufacturing_key = self._ring.get(row["key_id"]) if row else None
        key = (
            signing.device_key(manufacturing_key, str(row["device_id"]))
            if row and manufacturing_key
            else None
        )
        await self.verifier.verify(request, key)
        return row

    def bootstrap(self, row: Any) -> BootstrapResponse:
        return BootstrapResponse(
            device_id=row["device_id"], status=row["status"], poll_interval_s=POLL_INTERVAL_S
        )

    async def deliver_secret(self, row: Any, ip: str) -> SecretResponse:
        secret = secrets.token_urlsafe(32)
        async with self._db.transaction() as conn:
            result = await conn.fetchrow(SQL["issue_secret"], row["device_id"], hash_secret(secret))
        if result["outcome"] == "not_claimed":
            raise Conflict("The device is not claimed yet.", code="device_not_claimed")
        if result["outcome"] == "already_delivered":
            raise Conflict("This secret was already delivered.", code="secret_already_delivered")
        tenant_id = result["tenant_id"]
        await self._registry.invalidate(row["device_id"])
        async with self._db.tenant_transaction(tenant_id) as conn:
            await audit(conn, "secret_delivered", actor=None, subject=str(row["device_id"]), ip=ip)
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
        subjects = (f"user:{principal.user_id}", f"serial:{serial}")
        wait = await self._claims.exceeded(*subjects)
        if wait:
            raise RateLimited(wait, "Too many failed claim attempts; retry later.")
        row = await self._lookup(None, serial)
        key = self._ring.get(row["key_id"]) if row else None
        # An unknown serial costs and answers the same as a wrong code.
        valid = signing.claim_code_matches(key or "unknown-serial", serial, code)
        if row is None or key is None or not valid:
            await self._claims.hit(*subjects)
            raise Forbidden("The serial number and claim code do not match.", code="invalid_claim")
        async with self._db.transaction() as conn:
            outcome = await conn.fetchval(SQL["claim"], row["device_id"], principal.tenant_id, name)
        if outcome == "claimed_by_other":
            raise Conflict("This device is claimed by another tenant.", code="already_claimed")
        await self._claims.reset(subjects[0])
        await self._registry.invalidate(row["device_id"])
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            if outcome == "claimed":
                await audit(
                    conn,
                    "device_claimed",
                    actor=principal.user_id,
                    subject=str(row["device_id"]),
                    ip=ip,
                )
            device = await conn.fetchrow(SQL["get_device"], row["device_id"])
        return _device_out(device)

    async def get(self, principal: UserPrincipal, device_id: UUID) -> DeviceOut:
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(SQL["get_device"], device_id)
        if row is None:
            raise NotFound("No such device.")
        return _device_out(row)

    async def list(
        self, principal: UserPrincipal, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[DeviceOut], str | None]:
        after_ts, after_id = decode_keyset(cursor)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(SQL["list_devices"], status, after_ts, after_id, limit + 1)
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
                SQL["patch_device"],
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
            done = await conn.fetchval(SQL["rotate"], device_id, principal.tenant_id, self._grace)
        if not done:
            raise NotFound("No such device.")
        await self._registry.invalidate(device_id)
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await audit(
                conn, "secret_rotated", actor=principal.user_id, subject=str(device_id), ip=ip
            )
            row = await conn.fetchrow(SQL["get_device"], device_id)
        return _device_out(row)

    async def reset(self, principal: UserPrincipal, device_id: UUID, ip: str) -> None:
        async with self._db.transaction() as conn:
            done = await conn.fetchval(SQL["reset"], device_id, principal.tenant_id)
        if not done:
            raise NotFound("No such device.")
        await self._registry.invalidate(device_id)
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await audit(
                conn, "device_reset", actor=principal.user_id, subject=str(device_id), ip=ip
            )


DEVICE_SERVICE_KEY = web.AppKey("device_service", DeviceService)
