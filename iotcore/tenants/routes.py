"""HTTP handlers of tenant deletion, device purges and jobs."""

from __future__ import annotations

from aiohttp import web

from iotcore.auth.routes import require_user
from iotcore.platform.context import PLATFORM_KEY
from iotcore.platform.http.caller import client_ip
from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.parsing import path_id
from iotcore.platform.http.responses import json_response
from iotcore.tenants.schemas import DeleteTenantRequest, JobAccepted, JobOut, PurgeDeviceRequest
from iotcore.tenants.service import TenantService

TENANT_SERVICE_KEY = web.AppKey("tenant_service", TenantService)


def _service(request: web.Request) -> TenantService:
    return request.app[TENANT_SERVICE_KEY]


async def delete_tenant(request: web.Request, body: DeleteTenantRequest) -> web.Response:
    principal = await require_user(request, "owner")
    job_id = await _service(request).delete_tenant(principal, body.confirmation, client_ip(request))
    return json_response(JobAccepted(job_id=job_id), status=202)


async def purge_device(request: web.Request, body: PurgeDeviceRequest) -> web.Response:
    principal = await require_user(request, "admin")
    job_id = await _service(request).purge_device(
        principal, path_id(request, "device_id", "device"), body.before, client_ip(request)
    )
    return json_response(JobAccepted(job_id=job_id), status=202)


async def get_job(request: web.Request) -> web.Response:
    principal = await require_user(request)
    job = await _service(request).job(principal, path_id(request, "job_id", "job"))
    return json_response(JobOut(**job))


TAG = "tenants"
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "DELETE",
        "/api/v1/tenant",
        delete_tenant,
        "Delete the caller's tenant and everything it holds (a job)",
        TAG,
        body=DeleteTenantRequest,
        responses={202: JobAccepted},
        errors=(403,),
        security=("bearer",),
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/purge",
        purge_device,
        "Delete a device's telemetry (all, or older than `before`) and what derives from it",
        TAG,
        body=PurgeDeviceRequest,
        responses={202: JobAccepted},
        errors=(403, 404),
        security=("bearer",),
    ),
    Endpoint(
        "GET",
        "/api/v1/jobs/{job_id}",
        get_job,
        "A job's status and progress",
        TAG,
        responses={200: JobOut},
        errors=(404,),
        security=("bearer",),
    ),
]


def setup(app: web.Application) -> None:
    app[TENANT_SERVICE_KEY] = TenantService(app[PLATFORM_KEY])
