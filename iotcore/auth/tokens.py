"""Access tokens (JWT, HS256, key ring with `kid`) and opaque refresh tokens."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from uuid import UUID

import jwt

from iotcore.auth.principal import ROLE_RANK, UserPrincipal
from iotcore.config import Settings
from iotcore.platform.errors import Unauthenticated

ALGORITHM = "HS256"
# Tokens that verified, by digest, each kept until its own expiry: a dashboard sends the same
# access token with every request, and PyJWT's parsing and checks cost half a millisecond.
# Whether its session or user still stands is checked by the caller on every request.
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in: int


class KeyRing:
    """Every key verifies; one signs. Rotation: add the new key, switch signing, wait one
    access-token lifetime, drop the old key (runbooks/jwt-key-rotation.md)."""

    def __init__(self, settings: Settings) -> None:
        self._keys = {kid: secret.encode() for kid, secret in settings.jwt_key_ring.items()}
        self._signing_kid = settings.jwt_signing_kid
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl = settings.access_token_ttl_s
        self._verified: dict[bytes, tuple[float, UserPrincipal]] = {}

    def issue(self, principal: UserPrincipal) -> AccessToken:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(principal.user_id),
            "tid": str(principal.tenant_id),
            "role": principal.role,
            "iat": now,
            "exp": now + self._ttl,
            "jti": uuid.uuid4().hex,
        }
        if principal.family_id is not None:
            claims["fid"] = str(principal.family_id)
        token = jwt.encode(
            claims,
            self._keys[self._signing_kid],
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )
        return AccessToken(token, self._ttl)

    def verify(self, token: str) -> UserPrincipal:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None and time.time() < cached[0]:
            return cached[1]
        principal, expires_at = self._verify(token)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[digest] = (expires_at, principal)
        return principal

    def _verify(self, token: str) -> tuple[UserPrincipal, float]:
        """The principal and the expiry (epoch seconds) of a token PyJWT accepts."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("The access token is not valid.") from exc
        key = self._keys.get(str(header.get("kid")))
        # The algorithm is pinned: a token naming another (or "none") is refused outright.
        if key is None or header.get("alg") != ALGORITHM:
            raise Unauthenticated("The access token is not valid.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "tid", "role", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("The access token has expired.", code="token_expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("The access token is not valid.") from exc
        role = claims["role"]
        if role not in ROLE_RANK:
            raise Unauthenticated("The access token is not valid.")
        try:
            family = UUID(claims["fid"]) if "fid" in claims else None
            principal = UserPrincipal(UUID(claims["sub"]), UUID(claims["tid"]), role, family)
            return principal, float(claims["exp"])
        except (ValueError, TypeError) as exc:
            raise Unauthenticated("The access token is not valid.") from exc


def new_refresh_token() -> tuple[str, bytes]:
    """An opaque 256-bit token and the SHA-256 digest that is all the database keeps."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
