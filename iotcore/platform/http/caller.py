"""Who is calling: the client's address behind trusted proxies, and headers that carry
credentials read as printable ASCII only."""

from __future__ import annotations

from aiohttp import web

from iotcore.platform.context import SETTINGS_KEY


def ascii_header(request: web.Request, name: str) -> str:
    """A header that carries credentials, ids or addresses: its value if printable ASCII,
    else "" as if absent. Raw non-ASCII bytes reach handlers as surrogates, which no
    credential can contain and which encoders (JWT, Redis, hashing) refuse with an error."""
    value = request.headers.get(name, "")
    # For ASCII text, isprintable() holds for exactly 0x20-0x7e.
    return value if value.isascii() and value.isprintable() else ""


def client_ip(request: web.Request) -> str:
    """The caller's address; X-Forwarded-For is believed only for the configured proxy hops."""
    hops = request.app[SETTINGS_KEY].trusted_proxies
    if hops:
        forwarded = [p.strip() for p in ascii_header(request, "X-Forwarded-For").split(",")]
        forwarded = [p for p in forwarded if p]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.remote or "unknown"
