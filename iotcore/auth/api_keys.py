"""API keys: creation (shown once, stored as a SHA-256), listing, rotation with a grace period,
revocation, and authentication of `Authorization: Bearer iotk_...`.

Every replica caches what a key hash resolves to for at most a second (the shared-invalidation
cache: a revocation also empties every replica's cache at once), and collects `last_used_at`
in memory, written in one statement per flush interval.
"""

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

from iotcore.auth.audit import AuditLog
from iotcore.auth.principal import ROLE_RANK, Role, UserPrincipal
from iotcore.auth.schemas import ApiKeyCreated, ApiKeyOut
from iotcore.auth.service import Caller
from iotcore.platform.cache import SharedInvalidationCache
from iotcore.platform.context import Platform
from iotcore.platform.errors import Forbidden, NotFound, Unauthenticated, ValidationFailed
from iotcore.platform.pagination import decode_keyset, keyset_page
from iotcore.platform.shutdown import CLOSE_TIMEOUT_S, stop_task

log = logging.getLogger("iotcore.auth.api_keys")
KEY_PREFIX = "iotk_"
# iotk_ + 43 base64url characters for 32 bytes; anything much longer is not a key of ours.
_MAX_KEY_LENGTH = 64
# The shared-invalidation cache of key look-ups (a tenant purge empties it too).
API_KEYS_CACHE = "api-keys"


@dataclass(frozen=True)
class _KeyRecord:
    api_key_id: UUID
    tenant_id: UUID
    role: Role
    key_hash: bytes
    expires_at: datetime | None
    valid_until: datetime | None


def is_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _new_key() -> tuple[str, bytes]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, _digest(key)


def _digest(key: str) -> bytes:
    # SHA-256 without a salt or a slow hash is enough for 256 random bits, and lets the
    # database find the key by its hash.
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, platform: Platform) -> None:
        self._db = platform.db
        self._sql = platform.queries("api_keys")
        self._audit = AuditLog(platform)
        self._flush_interval_s = platform.settings.api_key_last_used_flush_s
        self._cache: SharedInvalidationCache[_KeyRecord | None] = SharedInvalidationCache(
            platform.redis, API_KEYS_CACHE, platform.settings.auth_cache_ttl_s
        )
        self._last_used: dict[UUID, datetime] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._cache.start()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="api-key-last-used")

    async def close(self) -> None:
        if self._flusher is not None:
            await stop_task(self._flusher)
            self._flusher = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_last_used(), CLOSE_TIMEOUT_S)
        await self._cache.close()

    async def create(
        self,
        principal: UserPrincipal,
        name: str,
        role: Role,
        expires_at: datetime | None,
        caller: Caller,
    ) -> ApiKeyCreated:
        _check_role(principal, role)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise ValidationFailed.field("expires_at", "must be in the future")
        key, digest = _new_key()
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            row = await conn.fetchrow(
                self._sql["insert"], name, role, digest, principal.user_id, expires_at
            )
            await self._audit.record(
                conn,
                "api_key_created",
                actor=principal.user_id,
                subject=str(row["api_key_id"]),
                ip=caller.ip,
                details={"name": name, "role": role},
            )
        return ApiKeyCreated(**dict(row), key=key)

    async def list(
        self, principal: UserPrincipal, limit: int, cursor: str | None
    ) -> tuple[list[ApiKeyOut], str | None]:
        after_ts, after_id = decode_keyset(cursor)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(self._sql["list"], after_ts, after_id, limit + 1)
        page, next_cursor = keyset_page(rows, limit, "api_key_id")
        return [_key_out(r) for r in page], next_cursor

    async def rotate(
        self, principal: UserPrincipal, api_key_id: UUID, grace_s: int, caller: Caller
    ) -> ApiKeyCreated:
        key, digest = _new_key()
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._check_key_role(conn, principal, api_key_id)
            row = await conn.fetchrow(
                self._sql["rotate"],
                api_key_id,
                principal.tenant_id,
                digest,
                timedelta(seconds=grace_s),
            )
            await self._audit.record(
                conn,
                "api_key_rotated",
                actor=principal.user_id,
                subject=str(api_key_id),
                ip=caller.ip,
                details={"grace_s": grace_s},
            )
        # Replicas must learn when the old key's grace ends.
        await self._cache.invalidate()
        return ApiKeyCreated(**dict(row), key=key)

    async def revoke(self, principal: UserPrincipal, api_key_id: UUID, caller: Caller) -> None:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._check_key_role(conn, principal, api_key_id)
            row = await conn.fetchrow(self._sql["delete"], api_key_id)
            await self._audit.record(
                conn,
                "api_key_revoked",
                actor=principal.user_id,
                subject=str(api_key_id),
                ip=caller.ip,
                details={"name": row["name"], "role": row["role"]},
            )
        # Cached by hash, not by id: every replica drops its whole (small) key cache.
        await self._cache.invalidate()

    async def _check_key_role(self, conn: Any, principal: UserPrincipal, api_key_id: UUID) -> None:
        role = await conn.fetchval(self._sql["get_role"], api_key_id)
        if role is None:
            raise NotFound("No such API key.")
        _check_role(principal, role)

    async def authenticate(self, key: str) -> UserPrincipal:
        if len(key) > _MAX_KEY_LENGTH:
            raise Unauthenticated("The API key is not valid.")
        digest = _digest(key)
        record = await self._record(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise Unauthenticated("The API key is not valid.")
        now = datetime.now(UTC)
        if record.expires_at is not None and now >= record.expires_at:
            raise Unauthenticated("The API key has expired.", code="token_expired")
        if record.valid_until is not None and now >= record.valid_until:
            raise Unauthenticated("The API key was replaced and its grace period has ended.")
        self._last_used[record.api_key_id] = now
        return UserPrincipal(record.api_key_id, record.tenant_id, record.role, is_api_key=True)

    async def _record(self, digest: bytes) -> _KeyRecord | None:
        found, record = self._cache.get(digest.hex())
        if found:
            return record
        fetched_at = time.monotonic()
        row = await self._db.primary.fetchrow(self._sql["lookup"], digest)
        record = _KeyRecord(**dict(row)) if row else None
        self._cache.put(digest.hex(), record, fetched_at)
        return record

    async def flush_last_used(self) -> int:
        """Write the collected last-use times in one statement; returns how many keys."""
        pending, self._last_used = self._last_used, {}
        if not pending:
            return 0
        try:
            async with self._db.transaction() as conn:
                await conn.execute(self._sql["touch"], list(pending), list(pending.values()))
        except Exception:
            for api_key_id, used_at in pending.items():  # keep them for the next flush
                self._last_used.setdefault(api_key_id, used_at)
            raise
        return len(pending)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush_last_used()
            except Exception as exc:
                log.warning("api key last-use flush failed; will retry", extra={"error": str(exc)})


def _check_role(principal: UserPrincipal, role: str) -> None:
    if ROLE_RANK[role] > ROLE_RANK[principal.role]:
        raise Forbidden("An API key's role cannot be above the caller's.")


def _key_out(row: Any) -> ApiKeyOut:
    previous = row["previous_valid_until"]
    if previous is not None and previous <= datetime.now(UTC):
        previous = None
    return ApiKeyOut(**{**dict(row), "previous_valid_until": previous})
