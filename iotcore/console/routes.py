"""The console's route: its static files at `/` and `/console/assets/`, and the session
endpoints that keep the refresh token in an HttpOnly cookie.

The pages hold the access token in memory only. The refresh token never reaches script: the
session endpoints call the auth service and set it in a cookie that is HttpOnly, SameSite=Strict,
Secure on HTTPS and sent only to `/console/session/`. A cross-site page can neither read it nor
make the browser send it (SameSite=Strict), and every session call must carry the
`X-Requested-With: iotcore-console` header, which a cross-origin page cannot add without a CORS
preflight that this server never grants. The JSON API (`/api/v1/auth/*`) is unchanged."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from iotcore.auth.routes import AUTH_SERVICE_KEY
from iotcore.auth.schemas import LoginRequest, RegisterRequest, TokenResponse
from iotcore.auth.service import Caller
from iotcore.console.schemas import ConsoleSession
from iotcore.platform.context import SETTINGS_KEY
from iotcore.platform.errors import Forbidden, NotFound, Unauthenticated
from iotcore.platform.http.caller import client_ip
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.responses import json_response

STATIC_DIR = Path(__file__).parent / "static"
SESSION_PATH = "/console/session/"
COOKIE = "iotcore_console_refresh"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "iotcore-console"

# No inline script or style anywhere: uPlot sets styles through the CSSOM, which CSP allows.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".md": "text/plain"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file under `directory`, keyed by its relative path: only these names are served,
    so no request path ever reaches the file system."""
    assets = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        body = path.read_bytes()
        kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.relative_to(directory).as_posix()] = Asset(body, kind, etag)
    return assets


ASSETS_KEY = web.AppKey("console_assets", dict[str, Asset])


def _asset_response(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS_KEY].get(name)
    if asset is None:
        raise NotFound()
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith("text/") else None
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset=charset, headers=headers
    )


async def index(request: web.Request) -> web.Response:
    return _asset_response(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _asset_response(request, request.match_info["name"])


# ---------------------------------------------------------------------------- session


def _check_console_request(request: web.Request) -> None:
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        raise Forbidden(f"Console session calls carry {CSRF_HEADER}: {CSRF_VALUE}.")


def _secure(request: web.Request) -> bool:
    """HTTPS as the browser sees it: directly, or through a trusted proxy that says so."""
    if request.secure:
        return True
    trusted = request.app[SETTINGS_KEY].trusted_proxies > 0
    return trusted and request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _session_response(request: web.Request, tokens: TokenResponse, status: int) -> web.Response:
    session = ConsoleSession(
        user=tokens.user,
        tenant=tokens.tenant,
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
    )
    response = json_response(session, status=status, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE,
        tokens.refresh_token,
        path=SESSION_PATH,
        max_age=request.app[SETTINGS_KEY].refresh_token_ttl_s,
        httponly=True,
        secure=_secure(request),
        samesite="Strict",
    )
    return response


def _refresh_cookie(request: web.Request) -> str:
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > 256 or not token.isascii():
        raise Unauthenticated("No console session.")
    return token


async def session_register(request: web.Request, body: RegisterRequest) -> web.Response:
    _check_console_request(request)
    tokens = await request.app[AUTH_SERVICE_KEY].register(
        body.email, body.password, body.tenant_name, Caller(ip=client_ip(request))
    )
    return _session_response(request, tokens, 201)


async def session_login(request: web.Request, body: LoginRequest) -> web.Response:
    _check_console_request(request)
    tokens = await request.app[AUTH_SERVICE_KEY].login(
        body.email, body.password, Caller(ip=client_ip(request))
    )
    return _session_response(request, tokens, 200)


async def session_refresh(request: web.Request) -> web.Response:
    _check_console_request(request)
    tokens = await request.app[AUTH_SERVICE_KEY].refresh(
        _refresh_cookie(request), Caller(ip=client_ip(request))
    )
    return _session_response(request, tokens, 200)


async def session_logout(request: web.Request) -> web.Response:
    _check_console_request(request)
    token = request.cookies.get(COOKIE, "")
    if token and len(token) <= 256 and token.isascii():
        await request.app[AUTH_SERVICE_KEY].logout(token, Caller(ip=client_ip(request)))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(COOKIE, path=SESSION_PATH)
    return response


TAG = "console"
ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/", index, "The web console", TAG, in_schema=False),
    Endpoint("GET", "/console/assets/{name:.+}", asset, "Console assets", TAG, in_schema=False),
    Endpoint(
        "POST",
        SESSION_PATH + "register",
        session_register,
        "Console sign-up (refresh token in a cookie)",
        TAG,
        body=RegisterRequest,
        in_schema=False,
    ),
    Endpoint(
        "POST",
        SESSION_PATH + "login",
        session_login,
        "Console log-in (refresh token in a cookie)",
        TAG,
        body=LoginRequest,
        in_schema=False,
    ),
    Endpoint(
        "POST",
        SESSION_PATH + "refresh",
        session_refresh,
        "A new access token from the console cookie",
        TAG,
        in_schema=False,
    ),
    Endpoint(
        "POST",
        SESSION_PATH + "logout",
        session_logout,
        "End the console session",
        TAG,
        in_schema=False,
    ),
]


def setup(app: web.Application) -> None:
    app[ASSETS_KEY] = load_assets()
