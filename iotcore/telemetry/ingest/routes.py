"""HTTP handler of the telemetry webhook: a device posts readings, answered once durable."""

from __future__ import annotations

import asyncio
import binascii

from aiohttp import web

from iotcore.devices.registry import DeviceIdentity
from iotcore.devices.routes import DEVICE_REGISTRY_KEY
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.errors import (
    StorageRefused,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from iotcore.platform.http.caller import ascii_header
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import read_body
from iotcore.platform.http.responses import json_response
from iotcore.telemetry.ingest.schemas import TelemetryAccepted, TelemetryBody
from iotcore.telemetry.ingest.service import TELEMETRY_INGEST_KEY, TelemetryIngest
from iotcore.telemetry.ingest.store import NotRecorded
from iotcore.telemetry.ingest.writer import Outcome, TelemetryWriter


async def _device(request: web.Request, ingest: TelemetryIngest) -> DeviceIdentity:
    scheme, _, encoded = ascii_header(request, "Authorization").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthenticated("Send HTTP Basic credentials: device_id and secret.")
    try:
        # strict_mode: what b64decode(validate=True) accepts, without its per-call regex.
        decoded = binascii.a2b_base64(encoded, strict_mode=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthenticated("Malformed Basic credentials.") from exc
    device_id, _, secret = decoded.partition(":")
    identity = await ingest.registry.authenticate(device_id, secret)
    if identity is None or identity.tenant_id is None:
        raise Unauthenticated("Unknown device or wrong secret.", code="invalid_credentials")
    return identity


async def post_telemetry(request: web.Request) -> web.Response:
    ingest = request.app[TELEMETRY_INGEST_KEY]
    identity = await _device(request, ingest)
    # The header as sent is nearly always exactly this: no parsing needed then.
    if (
        request.headers.get("Content-Type") != "application/json"
        and request.content_type != "application/json"
    ):
        raise UnsupportedMediaType()
    raw = await read_body(request)
    future = ingest.writer.submit_nowait(await ingest.accept_http(identity, raw))
    if not future.done():
        timeout = request.app[PLATFORM_KEY].settings.http_write_timeout_s
        timer = asyncio.get_running_loop().call_later(timeout, _give_up, future)
        try:
            # The future is this request's alone: ending it early (the timer, or the caller
            # going away) leaves the submission queued, and the writer's outcome unread.
            await future
        finally:
            timer.cancel()
    (result,) = future.result()
    if isinstance(result, NotRecorded):
        raise result  # a 500 with the envelope: neither stored nor recorded
    if result.refused is not None:
        # Recorded as rejected; sending the same readings again would be refused again.
        raise StorageRefused(result.refused)
    # A dict, not the TelemetryAccepted model (which documents it): a third of the cost.
    accepted = {
        "accepted": result.accepted,
        "stored": result.stored,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
    }
    return json_response(accepted, status=202)


def _give_up(future: asyncio.Future[list[Outcome]]) -> None:
    if not future.done():
        # The database is away (the writer retries): so may you.
        future.set_exception(Unavailable("The readings could not be stored in time; retry."))


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/telemetry",
        post_telemetry,
        "A device posts telemetry (202 once durable)",
        "telemetry",
        documented_body=TelemetryBody,
        responses={202: TelemetryAccepted},
        errors=(401, 403, 422, 429, 503),
        security=("device_basic",),
    ),
]


def setup(app: web.Application) -> None:
    platform = app[PLATFORM_KEY]
    writer = TelemetryWriter(platform)
    app[TELEMETRY_INGEST_KEY] = TelemetryIngest(platform, app[DEVICE_REGISTRY_KEY], writer)

    async def start(app: web.Application) -> None:
        await writer.start()

    async def stop(app: web.Application) -> None:
        await writer.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
