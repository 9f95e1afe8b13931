"""Device credentials: authentication against the stored secret hashes, with a short
in-process cache that rotate, reset and claim invalidate in every replica."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from iotcore.platform.context import Platform
from iotcore.platform.metrics import DEVICE_LOOKUPS
from iotcore.platform.shutdown import cancelling, stop_task

log = logging.getLogger("iotcore.devices")


def hash_secret(secret: str) -> bytes:
    # Device secrets are 256-bit random: SHA-256 is the right hash (no dictionary to slow
    # down), and a reconnect storm stays cheap. argon2 is for human-chosen passwords.
    return hashlib.sha256(secret.encode()).digest()


# Only the canonical form (lowercase, hyphenated): one device has one spelling, so ids used
# as cache, replay or session keys cannot be varied to dodge them.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_uuid(text: str) -> UUID | None:
    """The UUID written in canonical form, else None."""
    if not isinstance(text, str) or _CANONICAL_UUID.fullmatch(text) is None:
        return None
    return UUID(text)


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
    """Device credentials with a short in-process cache. Rotate, reset and claim drop the
    entry here and, through a Redis channel, in every other replica; the TTL bounds staleness
    if a message is missed.

    A device changes hands (reset, re-claim), so a stale entry would resolve it to its former
    tenant. Two rules keep one from surviving an invalidation: the whole cache is dropped each
    time the listener's subscription is confirmed (whatever was published while it was not
    listening is lost), and a look-up that was in flight when an invalidation arrived answers
    its caller but is not cached (it may have read the row before the change).

    Concurrent misses for one device share one look-up (a device posting on many connections,
    or every connection of a device when its entry expires, would otherwise each query the
    database); a caller arriving after an invalidation starts a new one."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._sql = platform.queries("devices")
        self._ttl = platform.settings.device_cache_ttl_s
        self._cache: dict[UUID, tuple[float, _Credentials | None]] = {}
        self._generation = 0  # bumped by every invalidation
        self._loading: dict[UUID, asyncio.Future[_Credentials | None]] = {}
        self._channel = platform.redis.key("devices", "invalidate")
        self._listener: asyncio.Task[None] | None = None
        # Called with the device id on every invalidation, local or from another replica, and
        # with None when invalidations may have been missed (the channel was re-subscribed):
        # the embedded broker checks the device's (or every) live session again.
        self.listeners: list[Callable[[UUID | None], None]] = []

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="device-cache-invalidation")

    async def close(self) -> None:
        if self._listener is not None:
            await stop_task(self._listener)
            self._listener = None

    async def _listen(self) -> None:
        while not cancelling():  # see platform/shutdown.py
            try:
                pubsub = self._platform.redis.client.pubsub()
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._forget()  # listening from now on; before, messages were missed
                        self._notify(None)
                    elif kind == "message":
                        device_id = parse_uuid(message["data"].decode())
                        if device_id is not None:
                            self._forget(device_id)
                            self._notify(device_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the TTL still bounds staleness; retry later
                self._forget()
                await asyncio.sleep(1)

    def _forget(self, device_id: UUID | None = None) -> None:
        self._generation += 1
        if device_id is None:
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(device_id, None)
            self._loading.pop(device_id, None)

    async def invalidate(self, device_id: UUID) -> None:
        self._forget(device_id)
        self._notify(device_id)
        with contextlib.suppress(Exception):
            await self._platform.redis.client.publish(self._channel, str(device_id))

    def _notify(self, device_id: UUID | None) -> None:
        for listener in self.listeners:
            try:
                listener(device_id)
            except Exception:
                log.exception("device invalidation listener failed")

    def _fresh(self, device_id: UUID) -> tuple[bool, _Credentials | None]:
        """(found, credentials) from the cache, if the entry has not expired."""
        cached = self._cache.get(device_id)
        if cached is None or cached[0] <= time.monotonic():
            return False, None
        return True, cached[1]

    async def _credentials(self, device_id: UUID, cached: bool = True) -> _Credentials | None:
        if not cached:
            return await self._look_up(device_id)
        found, credentials = self._fresh(device_id)
        if found:
            return credentials
        loading = self._loading.get(device_id)
        if loading is None:
            loading = asyncio.ensure_future(self._look_up(device_id))
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

    async def _look_up(self, device_id: UUID) -> _Credentials | None:
        now, generation = time.monotonic(), self._generation
        DEVICE_LOOKUPS.inc()
        # One statement on its own (no BEGIN/COMMIT around it): one round trip, not three.
        row = await self._platform.db.primary.fetchrow(self._sql["credentials"], device_id)
        credentials = _Credentials(**dict(row)) if row else None
        if generation == self._generation:
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
        if parsed is None:
            return None
        login = await self.login(parsed, secret)
        return login.identity if login is not None else None

    async def login(self, device_id: UUID, secret: str) -> DeviceLogin | None:
        if not secret:
            return None
        credentials = await self._credentials(device_id)
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
