"""Device credentials: authentication against the stored secret hashes, with a short
in-process cache that rotate, reset and claim invalidate in every replica."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from iotcore.platform.cache import EVERYTHING, SharedInvalidationCache
from iotcore.platform.context import Platform
from iotcore.platform.metrics import DEVICE_LOOKUPS
from iotcore.platform.types import parse_uuid

log = logging.getLogger("iotcore.devices")


def hash_secret(secret: str) -> bytes:
    # Device secrets are 256-bit random: SHA-256 is the right hash (no dictionary to slow
    # down), and a reconnect storm stays cheap. argon2 is for human-chosen passwords.
    return hashlib.sha256(secret.encode()).digest()


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


@dataclass(frozen=True)
class DeviceLogin:
    """A successful device authentication: who, the hash of the secret it proved, and when
    that secret stops working (set while it is the previous secret of a rotation)."""

    identity: DeviceIdentity
    secret_hash: bytes
    valid_until: datetime | None


def _identity(device_id: UUID, credentials: _Credentials | None) -> DeviceIdentity | None:
    if credentials is None:
        return None
    return DeviceIdentity(device_id, credentials.tenant_id, credentials.status)


class DeviceRegistry:
    """Device credentials with a short in-process cache that every replica empties together
    (platform/cache.py): rotate, reset and claim drop a device's entry everywhere. A device
    changes hands (reset, re-claim), so a stale entry would resolve it to its former tenant.

    Concurrent misses for one device share one look-up (a device posting on many connections,
    or every connection of a device when its entry expires, would otherwise each query the
    database); a caller arriving after an invalidation starts a new one."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._sql = platform.queries("devices")
        self._cache: SharedInvalidationCache[_Credentials | None] = SharedInvalidationCache(
            platform.redis, "devices", platform.settings.device_cache_ttl_s, max_entries=200_000
        )
        self._cache.listeners.append(self._changed)
        self._loading: dict[UUID, asyncio.Future[_Credentials | None]] = {}
        # Called with the device id on every invalidation, local or from another replica, and
        # with None when invalidations may have been missed (the channel was re-subscribed):
        # the embedded broker checks the device's (or every) live session again.
        self.listeners: list[Callable[[UUID | None], None]] = []

    async def start(self) -> None:
        await self._cache.start()

    async def close(self) -> None:
        await self._cache.close()

    async def invalidate(self, device_id: UUID) -> None:
        await self._cache.invalidate(str(device_id))

    def _changed(self, key: str) -> None:
        device_id = None if key == EVERYTHING else parse_uuid(key)
        if device_id is None:
            if key != EVERYTHING:
                return
            self._loading.clear()
        else:
            self._loading.pop(device_id, None)
        for listener in self.listeners:
            try:
                listener(device_id)
            except Exception:
                log.exception("device invalidation listener failed")

    async def _credentials(
        self, device_id: UUID, cached: bool = True, key: str | None = None
    ) -> _Credentials | None:
        """`key`: str(device_id) when the caller has it already (UUID.__str__ is Python)."""
        key = key or str(device_id)
        if not cached:
            return await self._look_up(device_id, key)
        found, credentials = self._cache.get(key)
        if found:
            return credentials
        loading = self._loading.get(device_id)
        if loading is None:
            loading = asyncio.ensure_future(self._look_up(device_id, key))
            loading.add_done_callback(self._loaded(device_id))
            self._loading[device_id] = loading
        # Shielded: a caller that goes away (a client disconnecting) does not cancel the
        # look-up the others wait for.
        return await asyncio.shield(loading)

    def _loaded(self, device_id: UUID) -> Callable[[asyncio.Future[_Credentials | None]], None]:
        def done(loading: asyncio.Future[_Credentials | None]) -> None:
            if self._loading.get(device_id) is loading:
                del self._loading[device_id]
            if not loading.cancelled():
                loading.exception()  # retrieved: every waiter may have gone

        return done

    async def _look_up(self, device_id: UUID, key: str) -> _Credentials | None:
        fetched_at = time.monotonic()
        DEVICE_LOOKUPS.inc()
        # One statement on its own (no BEGIN/COMMIT around it): one round trip, not three.
        row = await self._platform.db.primary.fetchrow(self._sql["credentials"], device_id)
        credentials = _Credentials(**dict(row)) if row else None
        self._cache.put(key, credentials, fetched_at)
        return credentials

    def cached(self, device_id: UUID, key: str | None = None) -> tuple[bool, DeviceIdentity | None]:
        """(found, identity) from the cache alone: the consumer's fast path, no await."""
        found, credentials = self._cache.get(key or str(device_id))
        return found, _identity(device_id, credentials)

    async def resolve(self, device_id: UUID, key: str | None = None) -> DeviceIdentity | None:
        return _identity(device_id, await self._credentials(device_id, key=key))

    async def authenticate(self, device_id: str, secret: str) -> DeviceIdentity | None:
        parsed = parse_uuid(device_id)
        if parsed is None:
            return None
        login = await self.login(parsed, secret, key=device_id)  # canonical: parse_uuid
        return login.identity if login is not None else None

    async def login(
        self, device_id: UUID, secret: str, key: str | None = None
    ) -> DeviceLogin | None:
        if not secret:
            return None
        credentials = await self._credentials(device_id, key=key)
        if credentials is None:
            return None
        login = _match(device_id, credentials, hash_secret(secret))
        if (
            login is not None
            and login.valid_until is None
            and (
                credentials.previous_secret_hash is not None
                or credentials.status == "rekey_pending"
            )
        ):
            # First use of the new secret: the old one stops working now.
            async with self._platform.db.transaction() as conn:
                await conn.execute(self._sql["secret_used"], device_id)
            await self.invalidate(device_id)
        return login

    async def still_valid(self, login: DeviceLogin) -> DeviceLogin | None:
        """The same credential checked against the database now (no cache): what a live
        session is held to after a reset, a rotation or a grace expiry."""
        device_id = login.identity.device_id
        credentials = await self._credentials(device_id, cached=False)
        if credentials is None:
            return None
        return _match(device_id, credentials, login.secret_hash)


def _match(device_id: UUID, credentials: _Credentials, digest: bytes) -> DeviceLogin | None:
    """Which of the device's secrets this hash is: the current one, or the previous one while
    its rotation grace lasts. Both compared in constant time."""
    identity = DeviceIdentity(device_id, credentials.tenant_id, credentials.status)
    current = credentials.secret_hash
    if current is not None and hmac.compare_digest(digest, current):
        return DeviceLogin(identity, digest, None)
    previous, until = credentials.previous_secret_hash, credentials.previous_valid_until
    if (
        previous is not None
        and until is not None
        and until > datetime.now(UTC)
        and hmac.compare_digest(digest, previous)
    ):
        return DeviceLogin(identity, digest, until)
    return None
