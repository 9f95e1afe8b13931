"""HTTP handlers of commands to devices (API.md "Commands")."""

from __future__ import annotations

from aiohttp import web

from iotcore.auth.routes import require_user
from iotcore.commands.schemas import (
    CommandAccepted,
    CommandList,
    CommandListQuery,
    CommandOut,
    CommandRequest,
)
from iotcore.commands.service import CommandService
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import path_id
from iotcore.platform.http.responses import json_response

TAG = "commands"
COMMAND_SERVICE_KEY = web.AppKey("command_service", CommandService)


def _service(request: web.Request) -> CommandService:
    return request.app[COMMAND_SERVICE_KEY]


async def create_command(request: web.Request, body: CommandRequest) -> web.Response:
    principal = await require_user(request, "admin")
    accepted = await _service(request).create(
        principal, path_id(request, "device_id", "device"), body
    )
    return json_response(accepted, status=202)


async def list_commands(request: web.Request, query: CommandListQuery) -> web.Response:
    principal = await require_user(request)
    items, cursor = await _service(request).page(
        principal, path_id(request, "device_id", "device"), query.status, query.limit, query.cursor
    )
    return json_response(CommandList(items=items, next_cursor=cursor))


async def get_command(request: web.Request) -> web.Response:
    principal = await require_user(request)
    command = await _service(request).get(
        principal,
        path_id(request, "device_id", "device"),
        path_id(request, "command_id", "command"),
    )
    return json_response(command)


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/commands",
        create_command,
        "Send a device a command: stored, then delivered at QoS 1 while it is connected or as "
        "soon as it connects, before it expires",
        TAG,
        body=CommandRequest,
        responses={202: CommandAccepted},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/devices/{device_id}/commands",
        list_commands,
        "A device's commands, newest first",
        TAG,
        query=CommandListQuery,
        responses={200: CommandList},
        errors=(404,),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/devices/{device_id}/commands/{command_id}",
        get_command,
        "One command and its status",
        TAG,
        responses={200: CommandOut},
        errors=(404,),
        security=("bearer",),
    ),
]


def setup(app: web.Application) -> None:
    app[COMMAND_SERVICE_KEY] = CommandService(app[PLATFORM_KEY])
