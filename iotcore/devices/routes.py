"""HTTP handlers of the device domain: factory, device-signed, tenant and EMQX hook routes."""

from __future__ import annotations

import hmac

from aiohttp import web

from iotcore.auth.routes import require_user
from iotcore.devices.mqtt_access import MqttAccess
from iotcore.devices.presence import Presence, PresenceEvent, from_ms
from iotcore.devices.registry import DeviceRegistry
from iotcore.devices.schemas import (
    Accepted,
    AuthnHookRequest,
    AuthzHookRequest,
    BootstrapResponse,
    ClaimRequest,
    DeviceList,
    DeviceListQuery,
    DeviceOut,
    DevicePatch,
    EmptyBody,
    FactoryRequest,
    FactoryResponse,
    HookResult,
    MqttEventRequest,
    MqttEventResult,
    ResetRequest,
    SecretResponse,
)
from iotcore.devices.service import DeviceService
from iotcore.devices.verification import SignedRequest
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.errors import Unauthenticated
from iotcore.platform.http.caller import ascii_header, client_ip
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import parse_body, path_id, read_body
from iotcore.platform.http.responses import json_response
from iotcore.platform.types import parse_uuid

TAG = "devices"
DENY = {"result": "deny"}

DEVICE_REGISTRY_KEY = web.AppKey("device_registry", DeviceRegistry)
MQTT_ACCESS_KEY = web.AppKey("mqtt_access", MqttAccess)
DEVICE_SERVICE_KEY = web.AppKey("device_service", DeviceService)
PRESENCE_KEY = web.AppKey("presence", Presence)


def _service(request: web.Request) -> DeviceService:
    return request.app[DEVICE_SERVICE_KEY]


async def _signed(request: web.Request) -> SignedRequest:
    body = await read_body(request)
    return SignedRequest(
        method=request.method,
        path=request.rel_url.raw_path,
        body=body,
        # Raw: the verifier refuses anything but the one canonical spelling of each.
        timestamp=request.headers.get("X-Timestamp", ""),
        signature=request.headers.get("X-Signature", ""),
    )


async def provision(request: web.Request, body: FactoryRequest) -> web.Response:
    service = _service(request)
    await service.factory_key(ascii_header(request, "X-Key-Id"), await _signed(request))
    devices = await service.provision(body.devices)
    status = 201 if any(d.created for d in devices) else 200
    return json_response(FactoryResponse(devices=devices), status=status)


async def bootstrap(request: web.Request, body: EmptyBody) -> web.Response:
    service = _service(request)
    row = await service.signed_device(ascii_header(request, "X-Device-Id"), await _signed(request))
    return json_response(service.bootstrap(row))


async def fetch_secret(request: web.Request, body: EmptyBody) -> web.Response:
    service = _service(request)
    row = await service.signed_device(ascii_header(request, "X-Device-Id"), await _signed(request))
    return json_response(await service.deliver_secret(row, client_ip(request)))


async def claim(request: web.Request, body: ClaimRequest) -> web.Response:
    principal = await require_user(request, "admin")
    device = await _service(request).claim(
        principal, body.serial_number, body.claim_code, body.name, client_ip(request)
    )
    return json_response(device)


async def list_devices(request: web.Request, query: DeviceListQuery) -> web.Response:
    principal = await require_user(request)
    items, cursor = await _service(request).list(principal, query.status, query.limit, query.cursor)
    return json_response(DeviceList(items=items, next_cursor=cursor))


async def get_device(request: web.Request) -> web.Response:
    principal = await require_user(request)
    return json_response(
        await _service(request).get(principal, path_id(request, "device_id", "device"))
    )


async def patch_device(request: web.Request, body: DevicePatch) -> web.Response:
    principal = await require_user(request, "admin")
    device = await _service(request).patch(
        principal,
        path_id(request, "device_id", "device"),
        body.model_fields_set,
        body.name,
        body.labels,
    )
    return json_response(device)


async def rotate_secret(request: web.Request) -> web.Response:
    principal = await require_user(request, "admin")
    device = await _service(request).rotate(
        principal, path_id(request, "device_id", "device"), client_ip(request)
    )
    return json_response(device, status=202)


async def reset_device(request: web.Request, body: ResetRequest) -> web.Response:
    principal = await require_user(request, "admin")
    device_id = path_id(request, "device_id", "device")
    await _service(request).reset(principal, device_id, client_ip(request))
    return json_response(Accepted(device_id=device_id, status="unclaimed"))


def _check_hook_token(request: web.Request) -> None:
    expected = request.app[PLATFORM_KEY].settings.mqtt_hook_token.get_secret_value()
    presented = ascii_header(request, "Authorization")
    if not hmac.compare_digest(presented.encode(), f"Bearer {expected}".encode()):
        raise Unauthenticated("Hook calls carry the hook token.")


async def mqtt_authn(request: web.Request, body: AuthnHookRequest) -> web.Response:
    _check_hook_token(request)
    answer = await request.app[MQTT_ACCESS_KEY].authenticate(
        body.clientid, body.username, body.password
    )
    return json_response(answer or DENY)


async def mqtt_authz(request: web.Request, body: AuthzHookRequest) -> web.Response:
    _check_hook_token(request)
    allowed = await request.app[MQTT_ACCESS_KEY].authorize(
        body.clientid, body.username, body.topic, body.action
    )
    return json_response({"result": "allow" if allowed else "deny"})


async def mqtt_events(request: web.Request) -> web.Response:
    """EMQX's client.connected / client.disconnected events (rule engine, HTTP action). The
    token is checked before the body is read: without it nothing about the body is said."""
    _check_hook_token(request)
    body = await parse_body(request, MqttEventRequest)
    device_id = parse_uuid(body.clientid)
    if device_id is None or body.username != body.clientid:
        return json_response(MqttEventResult(result="ignored"))  # not a device (ingest, ...)
    identity = await request.app[DEVICE_REGISTRY_KEY].resolve(device_id)
    if identity is None or identity.tenant_id is None:
        return json_response(MqttEventResult(result="ignored"))
    connected = body.event == "client.connected"
    if connected:
        assert body.connected_at is not None  # the model requires it
        at = body.connected_at
    else:
        at = body.disconnected_at if body.disconnected_at is not None else body.timestamp or 0
    event = PresenceEvent(
        identity.tenant_id, device_id, "emqx", connected, body.connected_at, from_ms(at), body.node
    )
    outcome = await request.app[PRESENCE_KEY].apply(event)
    return json_response(MqttEventResult(result="applied" if outcome == "changed" else outcome))


SIGNED = ("X-Timestamp",)
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/factory/devices",
        provision,
        "Provision devices in bulk (idempotent by serial number)",
        "factory",
        body=FactoryRequest,
        responses={201: FactoryResponse, 200: FactoryResponse},
        errors=(401, 409),
        security=("factory_signature",),
        header_params=("X-Key-Id", *SIGNED),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/bootstrap",
        bootstrap,
        "A device asks for its status",
        TAG,
        body=EmptyBody,
        responses={200: BootstrapResponse},
        errors=(401,),
        security=("device_signature",),
        header_params=("X-Device-Id", *SIGNED),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/secret",
        fetch_secret,
        "A device fetches its secret, once per claim or rotation",
        TAG,
        body=EmptyBody,
        responses={200: SecretResponse},
        errors=(401, 409),
        security=("device_signature",),
        header_params=("X-Device-Id", *SIGNED),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/claim",
        claim,
        "Claim a device with its printed code",
        TAG,
        body=ClaimRequest,
        responses={200: DeviceOut},
        errors=(403, 409, 429),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/devices",
        list_devices,
        "Devices of the caller's tenant",
        TAG,
        query=DeviceListQuery,
        responses={200: DeviceList},
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/devices/{device_id}",
        get_device,
        "One device",
        TAG,
        responses={200: DeviceOut},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/devices/{device_id}",
        patch_device,
        "Rename or relabel a device",
        TAG,
        body=DevicePatch,
        responses={200: DeviceOut},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/secret/rotate",
        rotate_secret,
        "Rotate the device secret (old one valid until the new is used or grace ends)",
        TAG,
        responses={202: DeviceOut},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/reset",
        reset_device,
        "Return a device to the factory state",
        TAG,
        body=ResetRequest,
        responses={200: Accepted},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/mqtt/authn",
        mqtt_authn,
        "EMQX HTTP authentication hook",
        "mqtt",
        body=AuthnHookRequest,
        responses={200: HookResult},
        security=("hook_token",),
    ),
    Endpoint(
        "POST",
        "/api/v1/mqtt/authz",
        mqtt_authz,
        "EMQX HTTP authorization hook",
        "mqtt",
        body=AuthzHookRequest,
        responses={200: HookResult},
        security=("hook_token",),
    ),
    Endpoint(
        "POST",
        "/api/v1/mqtt/events",
        mqtt_events,
        "EMQX client.connected / client.disconnected events (presence)",
        "mqtt",
        documented_body=MqttEventRequest,
        responses={200: MqttEventResult},
        errors=(401,),
        security=("hook_token",),
    ),
]


def setup(app: web.Application) -> None:
    platform = app[PLATFORM_KEY]
    registry = DeviceRegistry(platform)
    app[DEVICE_REGISTRY_KEY] = registry
    app[DEVICE_SERVICE_KEY] = DeviceService(platform, registry)
    app[MQTT_ACCESS_KEY] = MqttAccess(platform, registry)
    app[PRESENCE_KEY] = Presence(platform)

    async def start(app: web.Application) -> None:
        await registry.start()

    async def close(app: web.Application) -> None:
        await registry.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
