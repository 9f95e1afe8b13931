"""Login throttling that an attacker cannot turn into a lock-out (runbooks/throttling.md).

Failures count per (account, client address): an attacker's failures use up only the
attacker's own allowance. A slower backstop per account bounds guessing spread over many
addresses; it applies only to addresses the account has never logged in from, so the owner
keeps logging in from a known address while a distributed guesser is held off.
"""

from __future__ import annotations

import hashlib

from iotcore.config import Settings
from iotcore.platform.errors import RateLimited
from iotcore.platform.ratelimit import AttemptLimiter, Limit
from iotcore.platform.redis import Redis

KNOWN_ADDRESS_TTL_S = 90 * 86400


class LoginThrottle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._attempts = AttemptLimiter(redis, "login")
        self._per_address = (settings.login_max_failures, settings.login_window_s)
        self._per_account = (settings.login_account_max_failures, settings.login_account_window_s)

    def _known_key(self, account: str) -> str:
        return self._redis.key("login-known", account)

    async def admit(self, email: str, ip: str) -> tuple[Limit, ...]:
        """Count this attempt, or raise RateLimited; returns what to `succeeded()` with."""
        # Hashed: the throttle keys do not spell out e-mail addresses in Redis.
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        limits: tuple[Limit, ...] = (Limit(f"{account}:{ip}", *self._per_address),)
        if not await self._redis.client.sismember(self._known_key(account), ip):
            limits += (Limit(account, *self._per_account),)
        wait = await self._attempts.take(*limits)
        if wait:
            raise RateLimited(wait, "Too many failed logins; retry later.")
        return limits

    async def succeeded(self, email: str, ip: str, limits: tuple[Limit, ...]) -> None:
        """A right password does not use up the allowance, and makes the address known."""
        await self._attempts.refund(*limits)
        key = self._known_key(hashlib.sha256(email.encode()).hexdigest()[:32])
        pipe = self._redis.client.pipeline(transaction=True)
        pipe.sadd(key, ip)
        pipe.expire(key, KNOWN_ADDRESS_TTL_S)
        await pipe.execute()
