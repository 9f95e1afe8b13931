"""Identity: registration, login, refresh-token rotation, users, and the caller's principal."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import asyncpg
import redis.exceptions

from iotcore.auth.audit import AuditLog
from iotcore.auth.passwords import Passwords, check_password_rules
from iotcore.auth.principal import Role, UserPrincipal
from iotcore.auth.schemas import TenantOut, TokenResponse, UserOut
from iotcore.auth.throttle import LoginThrottle
from iotcore.auth.tokens import KeyRing, hash_refresh_token, new_refresh_token
from iotcore.platform.cache import SharedInvalidationCache
from iotcore.platform.context import Platform
from iotcore.platform.db import Connection
from iotcore.platform.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from iotcore.platform.pagination import decode_keyset, keyset_page
from iotcore.platform.ratelimit import AttemptLimiter, Limit

log = logging.getLogger("iotcore.auth")
# The shared-invalidation cache of users' current roles (a tenant purge empties it too), and
# of sessions' ended marks (so that a token in use costs no Redis round trip per request).
USERS_CACHE = "users"
SESSION_PREFIX = "session:"  # a session's entry: the prefix, then the family id


@dataclass(frozen=True)
class Caller:
    ip: str


class AuthService:
    def __init__(self, platform: Platform) -> None:
        settings = platform.settings
        self._platform = platform
        self._redis = platform.redis
        self._db = platform.db
        self._sql = platform.queries("auth")
        self._audit = AuditLog(platform)
        self.keys = KeyRing(settings)
        self.passwords = Passwords(settings)
        self._refresh_ttl = timedelta(seconds=settings.refresh_token_ttl_s)
        self._access_ttl_s = settings.access_token_ttl_s
        self._logins = LoginThrottle(platform.redis, settings)
        self._registrations = AttemptLimiter(platform.redis, "register")
        self._registration_limit = (settings.register_max_per_ip, settings.register_window_s)
        self._password_checks = AttemptLimiter(platform.redis, "password")
        self._password_limit = (settings.login_max_failures, settings.login_window_s)
        # user id -> (tenant, current role), or None once the user is gone; SESSION_PREFIX +
        # refresh-token family -> whether it has ended.
        self._users: SharedInvalidationCache[tuple[UUID, Role] | bool | None] = (
            SharedInvalidationCache(platform.redis, USERS_CACHE, settings.auth_cache_ttl_s)
        )

    async def start(self) -> None:
        await self._users.start()

    async def _token_pair(self, conn: Connection, principal: UserPrincipal) -> tuple[str, str, int]:
        refresh, digest = new_refresh_token()
        principal = replace(principal, family_id=uuid4())
        await conn.execute(
            self._sql["insert_refresh_token"],
            digest,
            principal.tenant_id,
            principal.user_id,
            principal.family_id,
            self._refresh_ttl,
        )
        access = self.keys.issue(principal)
        return access.token, refresh, access.expires_in

    async def _token_response(self, conn: Connection, principal: UserPrincipal) -> TokenResponse:
        access, refresh, expires_in = await self._token_pair(conn, principal)
        row = await conn.fetchrow(self._sql["get_user"], principal.user_id)
        return _token_response(row, access, refresh, expires_in)

    async def register(
        self, email: str, password: str, tenant_name: str, caller: Caller
    ) -> TokenResponse:
        wait = await self._registrations.take(Limit(caller.ip, *self._registration_limit))
        if wait:
            raise RateLimited(wait, "Too many registrations from this address; retry later.")
        check_password_rules(password, email)
        password_hash = await self.passwords.hash(password)
        async with self._db.transaction() as conn:
            try:
                row = await conn.fetchrow(self._sql["register"], tenant_name, email, password_hash)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict("This e-mail is already registered.", code="already_exists") from exc
        principal = UserPrincipal(row["user_id"], row["tenant_id"], "owner")
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._audit.record(
                conn,
                "user_created",
                actor=principal.user_id,
                subject=str(principal.user_id),
                ip=caller.ip,
                details={"role": "owner", "via": "register"},
            )
            return await self._token_response(conn, principal)

    async def login(self, email: str, password: str, caller: Caller) -> TokenResponse:
        limits = await self._logins.admit(email, caller.ip)
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(self._sql["login_lookup"], email)
        matches, needs_rehash = await self.passwords.verify(
            row["password_hash"] if row else None, password
        )
        if not matches or row is None:
            if row is not None:
                async with self._db.tenant_transaction(row["tenant_id"]) as conn:
                    await self._audit.record(
                        conn, "login_failure", actor=None, subject=str(row["user_id"]), ip=caller.ip
                    )
            log.info("login failed", extra={"reason": "invalid_credentials"})
            raise Unauthenticated("E-mail or password is wrong.", code="invalid_credentials")
        await self._logins.succeeded(email, caller.ip, limits)
        principal = UserPrincipal(row["user_id"], row["tenant_id"], row["role"])
        new_hash = await self.passwords.hash(password) if needs_rehash else None
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            if new_hash:
                await conn.execute(self._sql["update_password_hash"], principal.user_id, new_hash)
            await self._audit.record(
                conn,
                "login_success",
                actor=principal.user_id,
                subject=str(principal.user_id),
                ip=caller.ip,
                details={"rehashed": bool(new_hash)},
            )
            return await self._token_response(conn, principal)

    async def refresh(self, refresh_token: str, caller: Caller) -> TokenResponse:
        new_token, new_digest = new_refresh_token()
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                self._sql["rotate_refresh"],
                hash_refresh_token(refresh_token),
                new_digest,
                self._refresh_ttl,
            )
        outcome = row["outcome"]
        if outcome == "reused":
            async with self._db.tenant_transaction(row["tenant_id"]) as conn:
                await self._audit.record(
                    conn,
                    "token_reused",
                    actor=row["user_id"],
                    subject=str(row["family_id"]),
                    ip=caller.ip,
                )
            log.warning("refresh token reused; family revoked")
            await self._end_sessions({row["family_id"]})
            raise Unauthenticated(
                "This refresh token was already used; its session is revoked.", code="token_reused"
            )
        if outcome != "ok":
            raise Unauthenticated("The refresh token is not valid.", code="invalid_credentials")
        principal = UserPrincipal(row["user_id"], row["tenant_id"], row["role"], row["family_id"])
        access = self.keys.issue(principal)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            user = await conn.fetchrow(self._sql["get_user"], principal.user_id)
        return _token_response(user, access.token, new_token, access.expires_in)

    async def logout(self, refresh_token: str, caller: Caller) -> None:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(self._sql["revoke_family"], hash_refresh_token(refresh_token))
        if row is not None:
            await self._end_sessions({row["family_id"]})
            async with self._db.tenant_transaction(row["tenant_id"]) as conn:
                await self._audit.record(
                    conn, "logout", actor=row["user_id"], subject=None, ip=caller.ip
                )

    async def me(self, principal: UserPrincipal) -> tuple[UserOut, TenantOut]:
        if principal.is_api_key:
            raise Forbidden("An API key is not a user.")
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(self._sql["get_user"], principal.user_id)
        if row is None:
            raise Unauthenticated("This user no longer exists.")
        return _user_and_tenant(row)

    async def create_user(
        self, principal: UserPrincipal, email: str, password: str, role: Role, caller: Caller
    ) -> UserOut:
        check_password_rules(password, email)
        password_hash = await self.passwords.hash(password)
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            try:
                row = await conn.fetchrow(self._sql["insert_user"], email, password_hash, role)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict("This e-mail is already registered.", code="already_exists") from exc
            await self._audit.record(
                conn,
                "user_created",
                actor=principal.user_id,
                subject=str(row["user_id"]),
                ip=caller.ip,
                details={"role": role},
            )
        return UserOut(**dict(row))

    async def list_users(
        self, principal: UserPrincipal, limit: int, cursor: str | None
    ) -> tuple[list[UserOut], str | None]:
        after_ts, after_id = decode_keyset(cursor)
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            rows = await conn.fetch(self._sql["list_users"], after_ts, after_id, limit + 1)
        page, next_cursor = keyset_page(rows, limit, "user_id")
        return [UserOut(**dict(r)) for r in page], next_cursor

    async def change_role(
        self, principal: UserPrincipal, user_id: UUID, role: Role | None, caller: Caller
    ) -> UserOut:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._lock_owners(conn, principal)
            target = await conn.fetchrow(self._sql["get_user_for_update"], user_id)
            if target is None:
                raise NotFound("No such user.")
            _check_manages(principal, target["role"], role or target["role"])
            if role is None or role == target["role"]:
                return _user_out(await conn.fetchrow(self._sql["get_user"], user_id))
            row = await conn.fetchrow(self._sql["change_role"], user_id, role)
            if row is None:
                raise Conflict("A tenant keeps at least one owner.", code="last_owner")
            await self._audit.record(
                conn,
                "user_role_changed",
                actor=principal.user_id,
                subject=str(user_id),
                ip=caller.ip,
                details={"from": target["role"], "to": role},
            )
        await self._users.invalidate(str(user_id))
        return UserOut(**dict(row))

    async def delete_user(self, principal: UserPrincipal, user_id: UUID, caller: Caller) -> None:
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await self._lock_owners(conn, principal)
            target = await conn.fetchrow(self._sql["get_user_for_update"], user_id)
            if target is None:
                raise NotFound("No such user.")
            _check_manages(principal, target["role"], target["role"])
            if await conn.fetchval(self._sql["delete_user"], user_id) is None:
                raise Conflict("A tenant keeps at least one owner.", code="last_owner")
            await self._audit.record(
                conn,
                "user_deleted",
                actor=principal.user_id,
                subject=str(user_id),
                ip=caller.ip,
                details={"role": target["role"]},
            )
        # Its refresh tokens went with the row; its access tokens stop at the next request.
        await self._users.invalidate(str(user_id))

    async def change_password(
        self, principal: UserPrincipal, current: str, new: str, caller: Caller
    ) -> None:
        if principal.is_api_key:
            raise Forbidden("An API key has no password.")
        limit = Limit(f"user:{principal.user_id}", *self._password_limit)
        wait = await self._password_checks.take(limit)
        if wait:
            raise RateLimited(wait, "Too many wrong passwords; retry later.")
        async with self._db.tenant_transaction(principal.tenant_id, read=True) as conn:
            row = await conn.fetchrow(self._sql["get_password_hash"], principal.user_id)
        if row is None:
            raise Unauthenticated("This user no longer exists.", code="token_revoked")
        matches, _ = await self.passwords.verify(row["password_hash"], current)
        if not matches:
            async with self._db.tenant_transaction(principal.tenant_id) as conn:
                await self._audit.record(
                    conn,
                    "password_change_failure",
                    actor=principal.user_id,
                    subject=str(principal.user_id),
                    ip=caller.ip,
                )
            raise Unauthenticated("The current password is wrong.", code="invalid_credentials")
        check_password_rules(new, row["email"])
        new_hash = await self.passwords.hash(new)
        async with self._db.tenant_transaction(principal.tenant_id) as conn:
            await conn.execute(self._sql["update_password_hash"], principal.user_id, new_hash)
            revoked = await conn.fetch(
                self._sql["revoke_other_families"], principal.user_id, principal.family_id
            )
            await self._audit.record(
                conn,
                "password_changed",
                actor=principal.user_id,
                subject=str(principal.user_id),
                ip=caller.ip,
                details={"refresh_tokens_revoked": len(revoked)},
            )
        await self._end_sessions({r["family_id"] for r in revoked})
        await self._password_checks.refund(limit)

    async def authenticate(self, token: str) -> UserPrincipal:
        """The principal of a bearer token, with the user's role as it is now: a removed
        user's access tokens stop working, a demoted user's act with the new role."""
        principal = self.keys.verify(token)
        family = principal.family_text
        if family is not None and await self._session_ended(family):
            raise Unauthenticated("This session has ended.", code="token_revoked")
        state = await self._user_state(principal.user_id, principal.user_text)
        if state is None or state[0] != principal.tenant_id:
            raise Unauthenticated("This user no longer exists.", code="token_revoked")
        return principal if state[1] == principal.role else replace(principal, role=state[1])

    def _ended_key(self, family_id: UUID | str) -> str:
        return self._redis.key("session-ended", str(family_id))

    async def _session_ended(self, family: str) -> bool:
        """`family`: the family id's text."""
        found, ended = self._users.get(SESSION_PREFIX + family)
        if found:
            return bool(ended)
        fetched_at = time.monotonic()
        try:
            ended = bool(await self._redis.client.exists(self._ended_key(family)))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Fail open, as reads do while Redis is away (runbooks/redis-down.md): the token
            # still expires on its own within the access-token lifetime.
            log.warning("session check skipped", extra={"error": type(exc).__name__})
            return False
        self._users.put(SESSION_PREFIX + family, ended, fetched_at)
        return ended

    async def _end_sessions(self, family_ids: set[UUID]) -> None:
        """Access tokens of these refresh-token families stop working now, not at expiry:
        each is marked in Redis for one access-token lifetime, after which none of them
        is valid anyway; every replica's cached answer is dropped (here at once, elsewhere
        within the cache's TTL)."""
        if not family_ids:
            return
        pipe = self._redis.client.pipeline(transaction=False)
        for family_id in family_ids:
            pipe.set(self._ended_key(family_id), b"1", ex=self._access_ttl_s)
        await pipe.execute()
        for family_id in family_ids:
            await self._users.invalidate(SESSION_PREFIX + str(family_id))

    async def _user_state(self, user_id: UUID, key: str) -> tuple[UUID, Role] | None:
        """`key`: str(user_id)."""
        found, state = self._users.get(key)
        if found:
            return cast("tuple[UUID, Role] | None", state)
        fetched_at = time.monotonic()
        row = await self._db.primary.fetchrow(self._sql["user_state"], user_id)
        state = (row["tenant_id"], row["role"]) if row else None
        self._users.put(key, state, fetched_at)
        return state

    async def close(self) -> None:
        await self._users.close()
        self.passwords.close()

    async def _lock_owners(self, conn: Connection, principal: UserPrincipal) -> None:
        """Take the tenant's owners (see sql/auth.sql); an owner demoted meanwhile is refused."""
        owners = {row["user_id"] for row in await conn.fetch(self._sql["lock_owners"])}
        if principal.role == "owner" and principal.user_id not in owners:
            raise Forbidden("You are no longer an owner.")


def _check_manages(principal: UserPrincipal, target_role: str, new_role: str) -> None:
    """Owners manage everyone; admins manage viewers only, and never make an owner."""
    if principal.role == "owner":
        return
    if target_role != "viewer" or new_role == "owner":
        raise Forbidden("Admins manage viewers only.")


def _user_out(row: Any) -> UserOut:
    return UserOut(**{k: row[k] for k in UserOut.model_fields})


def _user_and_tenant(row: Any) -> tuple[UserOut, TenantOut]:
    """A `get_user` row as the user and tenant of API responses."""
    user = _user_out(row)
    tenant = TenantOut(
        tenant_id=row["tenant_id"], name=row["tenant_name"], created_at=row["tenant_created_at"]
    )
    return user, tenant


def _token_response(row: Any, access: str, refresh: str, expires_in: int) -> TokenResponse:
    user, tenant = _user_and_tenant(row)
    return TokenResponse(
        user=user, tenant=tenant, access_token=access, refresh_token=refresh, expires_in=expires_in
    )
