"""HTTP handlers of the identity domain: parse, call the service, shape the response."""

from __future__ import annotations

from aiohttp import web

from iotcore.auth.api_keys import ApiKeys, is_api_key
from iotcore.auth.principal import Role, UserPrincipal
from iotcore.auth.schemas import (
    ApiKeyCreated,
    ApiKeyList,
    ChangePasswordRequest,
    CreateApiKeyRequest,
    CreateUserRequest,
    LoginRequest,
    MeResponse,
    RefreshRequest,
    RegisterRequest,
    RotateApiKeyRequest,
    TokenResponse,
    UserList,
    UserOut,
    UserPatch,
)
from iotcore.auth.service import AuthService, Caller
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.errors import Forbidden, Unauthenticated
from iotcore.platform.http.caller import ascii_header, client_ip
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import parse_body, path_id
from iotcore.platform.http.responses import json_response
from iotcore.platform.pagination import ListQuery

AUTH_SERVICE_KEY = web.AppKey("auth_service", AuthService)
API_KEYS_KEY = web.AppKey("api_keys", ApiKeys)


async def require_user(request: web.Request, minimum_role: Role = "viewer") -> UserPrincipal:
    """The caller's principal from `Authorization: Bearer`, at least `minimum_role`."""
    header = ascii_header(request, "Authorization")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send an access token: Authorization: Bearer <token>.")
    token = token.strip()
    if is_api_key(token):
        principal = await request.app[API_KEYS_KEY].authenticate(token)
    else:
        principal = await request.app[AUTH_SERVICE_KEY].authenticate(token)
    if not principal.at_least(minimum_role):
        raise Forbidden(f"This needs the {minimum_role} role or higher.")
    return principal


def _service(request: web.Request) -> AuthService:
    return request.app[AUTH_SERVICE_KEY]


def _caller(request: web.Request) -> Caller:
    return Caller(ip=client_ip(request))


async def register(request: web.Request, body: RegisterRequest) -> web.Response:
    result = await _service(request).register(
        body.email, body.password, body.tenant_name, _caller(request)
    )
    return json_response(result, status=201)


async def login(request: web.Request, body: LoginRequest) -> web.Response:
    return json_response(await _service(request).login(body.email, body.password, _caller(request)))


async def refresh(request: web.Request, body: RefreshRequest) -> web.Response:
    return json_response(await _service(request).refresh(body.refresh_token, _caller(request)))


async def logout(request: web.Request, body: RefreshRequest) -> web.Response:
    await _service(request).logout(body.refresh_token, _caller(request))
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    principal = await require_user(request)
    user, tenant = await _service(request).me(principal)
    return json_response(MeResponse(user=user, tenant=tenant, role=principal.role))


async def create_user(request: web.Request, body: CreateUserRequest) -> web.Response:
    principal = await require_user(request, "admin")
    user = await _service(request).create_user(
        principal, body.email, body.password, body.role, _caller(request)
    )
    return json_response(user, status=201)


async def list_users(request: web.Request, query: ListQuery) -> web.Response:
    principal = await require_user(request, "admin")
    items, next_cursor = await _service(request).list_users(principal, query.limit, query.cursor)
    return json_response(UserList(items=items, next_cursor=next_cursor))


async def patch_user(request: web.Request, body: UserPatch) -> web.Response:
    principal = await require_user(request, "admin")
    user = await _service(request).change_role(
        principal, path_id(request, "user_id", "user"), body.role, _caller(request)
    )
    return json_response(user)


async def delete_user(request: web.Request) -> web.Response:
    principal = await require_user(request, "admin")
    await _service(request).delete_user(
        principal, path_id(request, "user_id", "user"), _caller(request)
    )
    return web.Response(status=204)


async def change_password(request: web.Request, body: ChangePasswordRequest) -> web.Response:
    principal = await require_user(request)
    await _service(request).change_password(
        principal, body.current_password, body.new_password, _caller(request)
    )
    return web.Response(status=204)


def _api_keys(request: web.Request) -> ApiKeys:
    return request.app[API_KEYS_KEY]


async def create_api_key(request: web.Request, body: CreateApiKeyRequest) -> web.Response:
    principal = await require_user(request, "admin")
    created = await _api_keys(request).create(
        principal, body.name, body.role, body.expires_at, _caller(request)
    )
    return json_response(created, status=201)


async def list_api_keys(request: web.Request, query: ListQuery) -> web.Response:
    principal = await require_user(request, "admin")
    items, next_cursor = await _api_keys(request).list(principal, query.limit, query.cursor)
    return json_response(ApiKeyList(items=items, next_cursor=next_cursor))


async def rotate_api_key(request: web.Request) -> web.Response:
    principal = await require_user(request, "admin")
    # The body is optional: no body means the default grace.
    body = (
        await parse_body(request, RotateApiKeyRequest)
        if request.body_exists
        else RotateApiKeyRequest()
    )
    created = await _api_keys(request).rotate(
        principal, path_id(request, "api_key_id", "API key"), body.grace_s, _caller(request)
    )
    return json_response(created, status=201)


async def revoke_api_key(request: web.Request) -> web.Response:
    principal = await require_user(request, "admin")
    await _api_keys(request).revoke(
        principal, path_id(request, "api_key_id", "API key"), _caller(request)
    )
    return web.Response(status=204)


TAG = "auth"
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/auth/register",
        register,
        "Create a tenant and its owner",
        TAG,
        body=RegisterRequest,
        responses={201: TokenResponse},
        errors=(409, 429),
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/login",
        login,
        "Log in with e-mail and password",
        TAG,
        body=LoginRequest,
        responses={200: TokenResponse},
        errors=(401, 429),
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/refresh",
        refresh,
        "Rotate a refresh token for a new pair",
        TAG,
        body=RefreshRequest,
        responses={200: TokenResponse},
        errors=(401,),
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/logout",
        logout,
        "Revoke a refresh token and its family",
        TAG,
        body=RefreshRequest,
        responses={204: None},
    ),
    Endpoint(
        "GET",
        "/api/v1/auth/me",
        me,
        "The caller, their tenant and role",
        TAG,
        responses={200: MeResponse},
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/users",
        create_user,
        "Add a user to the caller's tenant",
        TAG,
        body=CreateUserRequest,
        responses={201: UserOut},
        errors=(403, 409),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/users",
        list_users,
        "Users of the caller's tenant",
        TAG,
        query=ListQuery,
        responses={200: UserList},
        errors=(403,),
        security=("bearer",),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/users/{user_id}",
        patch_user,
        "Change a user's role (a tenant always keeps an owner)",
        TAG,
        body=UserPatch,
        responses={200: UserOut},
        errors=(403, 404, 409),
        security=("bearer",),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/users/{user_id}",
        delete_user,
        "Remove a user; their sessions end at once",
        TAG,
        responses={204: None},
        errors=(403, 404, 409),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/password",
        change_password,
        "Change one's password; every other session is revoked",
        TAG,
        body=ChangePasswordRequest,
        responses={204: None},
        errors=(401, 429),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/api-keys",
        create_api_key,
        "Create an API key (shown once)",
        TAG,
        body=CreateApiKeyRequest,
        responses={201: ApiKeyCreated},
        errors=(403,),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/api-keys",
        list_api_keys,
        "API keys of the caller's tenant (no secrets)",
        TAG,
        query=ListQuery,
        responses={200: ApiKeyList},
        errors=(403,),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/api-keys/{api_key_id}/rotate",
        rotate_api_key,
        "Replace an API key; the old one works until the grace ends",
        TAG,
        documented_body=RotateApiKeyRequest,
        responses={201: ApiKeyCreated},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "DELETE",
        "/api/v1/api-keys/{api_key_id}",
        revoke_api_key,
        "Revoke an API key, on every replica within a second",
        TAG,
        responses={204: None},
        errors=(403, 404),
        security=("bearer",),
    ),
]


def setup(app: web.Application) -> None:
    service = AuthService(app[PLATFORM_KEY])
    api_keys = ApiKeys(app[PLATFORM_KEY])
    app[AUTH_SERVICE_KEY] = service
    app[API_KEYS_KEY] = api_keys

    async def start(app: web.Application) -> None:
        await service.start()
        await api_keys.start()

    async def close(app: web.Application) -> None:
        await api_keys.close()
        await service.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
