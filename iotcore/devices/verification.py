"""Signed-request verification over plain values (the signed headers, method, path and body):
fresh timestamp, valid HMAC, never seen before."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from iotcore.devices import signing
from iotcore.platform.context import Platform
from iotcore.platform.errors import Unauthenticated


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers, and the headers that carry it."""

    method: str
    path: str
    body: bytes
    timestamp: str
    signature: str

    @classmethod
    def of(cls, headers: Mapping[str, str], method: str, path: str, body: bytes) -> SignedRequest:
        return cls(
            method=method,
            path=path,
            body=body,
            timestamp=headers.get("X-Timestamp", ""),
            signature=headers.get("X-Signature", ""),
        )


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
        try:
            sent_at = int(timestamp)
        except ValueError as exc:
            raise Unauthenticated("X-Timestamp is unix seconds.", code="invalid_signature") from exc
        if abs(time.time() - sent_at) > self._skew:
            raise Unauthenticated(
                "The request timestamp is too far from server time.", code="signature_expired"
            )
        if key is None or not signing.signature_matches(
            key, signature, timestamp, signed.method, signed.path, signed.body
        ):
            raise Unauthenticated("The signature does not match.", code="invalid_signature")
        first_time = await self._redis.client.set(
            self._redis.key("sig", signature.lower()), b"1", nx=True, ex=2 * self._skew
        )
        if not first_time:
            raise Unauthenticated("This signed request was already used.", code="replayed_request")
