"""Password hashing (argon2id, off the event loop) and the password rules."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from iotcore.config import Settings
from iotcore.platform.errors import ValidationFailed

MIN_LENGTH = 10
MAX_LENGTH = 256


@cache
def common_passwords() -> frozenset[str]:
    path = Path(__file__).with_name("common_passwords.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def check_password_rules(password: str, email: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise ValidationFailed.field(
            "password", f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long"
        )
    lowered = password.lower()
    if lowered in common_passwords() or lowered == email.lower():
        raise ValidationFailed.field("password", "is too common; choose another")


class Passwords:
    """argon2id in a small thread pool: hashing costs tens of milliseconds of CPU and must
    never run on the event loop. The pool is bounded by the cores, so a login storm queues
    instead of starving the process."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="argon2"
        )
        # Unknown e-mails are verified against this, so they cost what a wrong password costs.
        self._dummy_hash = self._hasher.hash("iotcore-dummy-password-for-timing")

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._hasher.hash, password
        )

    def _verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        if password_hash is None:
            return False, False
        return True, self._hasher.check_needs_rehash(password_hash)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). With no hash (unknown user) it still does the work."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._verify, password_hash, password
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
