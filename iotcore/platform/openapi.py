"""The OpenAPI 3.1 document, built from the same Endpoint declarations that route and validate."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from iotcore.platform.http.endpoints import Endpoint

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_REF = "#/components/schemas/{model}"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "device_basic": {
        "type": "http",
        "scheme": "basic",
        "description": "device_id as user name, the device secret as password",
    },
    "factory_signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "HMAC-SHA256 with the manufacturing key; with X-Key-Id and X-Timestamp",
    },
    "device_signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "HMAC-SHA256 with the device key; with X-Device-Id and X-Timestamp",
    },
    "hook_token": {"type": "http", "scheme": "bearer", "description": "IOT_MQTT_HOOK_TOKEN"},
    "stream_ticket": {
        "type": "apiKey",
        "in": "query",
        "name": "ticket",
        "description": "short-lived single-purpose ticket for EventSource clients",
    },
}

_ERROR_DESCRIPTIONS = {
    400: "Malformed JSON",
    401: "Missing or bad credentials",
    403: "Not allowed",
    404: "No such resource for this caller",
    405: "Method not allowed",
    409: "State conflict",
    413: "Body over the limit",
    415: "Wrong content type",
    422: "Validation error",
    429: "Rate limited",
    503: "Unavailable or overloaded",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]]
    request_id: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def _schemas(endpoints: list[Endpoint]) -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ErrorEnvelope, "serialization")
    ]
    for endpoint in endpoints:
        body = endpoint.body or endpoint.documented_body
        if body is not None:
            pairs.append((body, "validation"))
        pairs.extend((m, "serialization") for m in endpoint.responses.values() if m is not None)
    unique = list(dict.fromkeys(pairs))
    refs, definitions = models_json_schema(unique, ref_template=_REF)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas["__refs__"] = {
        f"{m.__module__}.{m.__qualname__}:{mode}": r for (m, mode), r in refs.items()
    }
    return schemas


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(endpoint.path):
        schema: dict[str, Any] = {"type": "string"}
        if name.endswith("_id"):
            schema["format"] = "uuid"
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if endpoint.query is not None:
        query_schema = endpoint.query.model_json_schema(ref_template=_REF)
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if prop.get("type") == "array":
                param.update(style="form", explode=True)
            params.append(param)
    for header in endpoint.header_params:
        params.append(
            {"name": header, "in": "header", "required": True, "schema": {"type": "string"}}
        )
    return params


def _ref(refs: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, Any]:
    return dict(refs[f"{model.__module__}.{model.__qualname__}:{mode}"])


def _operation(endpoint: Endpoint, refs: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{endpoint.tag}_{endpoint.handler.__name__}",
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": {},
    }
    if endpoint.deprecation is not None:
        operation["deprecated"] = True
    params = _parameters(endpoint)
    if params:
        operation["parameters"] = params
    body = endpoint.body or endpoint.documented_body
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(refs, body, "validation")}},
        }
    for status, model in endpoint.responses.items():
        response: dict[str, Any] = {"description": "Success"}
        if model is not None:
            response["content"] = {
                endpoint.response_content_type: {"schema": _ref(refs, model, "serialization")}
            }
        elif endpoint.response_content_type != "application/json":
            response["content"] = {endpoint.response_content_type: {"schema": {"type": "string"}}}
        operation["responses"][str(status)] = response
    envelope = {"application/json": {"schema": _ref(refs, ErrorEnvelope, "serialization")}}
    statuses = set(endpoint.errors) | {400, 404, 405, 413, 415, 422}
    if endpoint.security:
        statuses |= {401}
    for status in sorted(statuses):
        if str(status) not in operation["responses"]:
            operation["responses"][str(status)] = {
                "description": _ERROR_DESCRIPTIONS.get(status, "Error"),
                "content": envelope,
            }
    operation["responses"]["default"] = {"description": "Error", "content": envelope}
    if endpoint.security:
        operation["security"] = [{name: []} for name in endpoint.security]
    return operation


# The contract's version (docs/versioning.md): the major is the path's /v1; the minor grows
# with each addition (new endpoint, field, error code); the patch with clarifications. Every
# change is in CHANGELOG.md under this number.
CONTRACT_VERSION = "1.1.0"


def build_openapi(
    endpoints: list[Endpoint], version: str, implementation: str | None = None
) -> dict[str, Any]:
    documented = [e for e in endpoints if e.in_schema]
    schemas = _schemas(documented)
    refs = schemas.pop("__refs__")
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in documented:
        path = _PATH_PARAM.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iotcore API",
            "version": version,
            "description": "Multi-tenant IoT telemetry backend: the v1 contract.",
            **({"x-implementation-version": implementation} if implementation else {}),
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }
