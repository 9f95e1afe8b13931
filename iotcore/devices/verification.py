"""Signed-request verification over plain values (the signed headers, method, path and body):
fresh timestamp, valid HMAC, never seen before."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from iotcore.devices import signing
from iotcore.platform.context import Platform
from iotcore.platform.errors import Unauthenticated

# Unix seconds in ASCII digits only: int() would also take spaces, "+", "_" and other
# scripts' digits, giving one timestamp many spellings.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers, and the headers that carry it."""

    method: str
    path: str
    body: bytes
    timestamp: str
    signature: str


class RequestVerifier:
    """Checks a signed request: fresh timestamp, valid HMAC, never seen before."""

    def __init__(self, platform: Platform) -> None:
        self._redis = platform.redis
        self._skew = platform.settings.signature_skew_s

    async def verify(self, signed: SignedRequest, key: bytes | None) -> None:
        timestamp = signed.timestamp
        signature = signed.signature
        if not timestamp or not signature:
            raise Unauthenticated("Signed requests carry X-Timestamp and X-Signature.")
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise Unauthenticated("X-Timestamp is unix seconds.", code="invalid_signature")
        if not signing.is_canonical_signature(signature):
            raise Unauthenticated(
                "X-Signature is 64 lowercase hex digits.", code="invalid_signature"
            )
        if abs(time.time() - int(timestamp)) > self._skew:
            raise Unauthenticated(
                "The request timestamp is too far from server time.", code="signature_expired"
            )
        if key is None or not signing.signature_matches(
            key, signature, timestamp, signed.method, signed.path, signed.body
        ):
            raise Unauthenticated("The signature does not match.", code="invalid_signature")
        # The signature is canonical (checked above), so one request has one replay key.
        first_time = await self._redis.client.set(
            self._redis.key("sig", signature), b"1", nx=True, ex=2 * self._skew
        )
        if not first_time:
            raise Unauthenticated("This signed request was already used.", code="replayed_request")
