"""The API's own description, served: /api/v1/openapi.json and a plain HTML index at
/api/v1/docs."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from iotcore.platform.http.endpoints import Endpoint
from iotcore.platform.http.responses import json_response
from iotcore.platform.openapi import build_openapi

OPENAPI_KEY = web.AppKey("openapi", dict)


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=render_docs_page(request.app[OPENAPI_KEY]), content_type="text/html")


ENDPOINTS = [
    Endpoint("GET", "/api/v1/openapi.json", openapi_json, "This document", "operations"),
    Endpoint(
        "GET",
        "/api/v1/docs",
        docs_page,
        "Human-readable API index",
        "operations",
        response_content_type="text/html",
    ),
]


def install_openapi(
    app: web.Application, endpoints: list[Endpoint], version: str, implementation: str | None = None
) -> None:
    app[OPENAPI_KEY] = build_openapi(endpoints, version, implementation)


def render_docs_page(document: dict[str, Any]) -> str:
    """A plain HTML index of the API, readable without JavaScript or a CDN."""
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            statuses = ", ".join(s for s in op["responses"] if s != "default")
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td><td>{html.escape(statuses)}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>iotcore API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}"
        "tr:nth-child(even){background:#f3f3f3}</style></head><body>"
        f"<h1>iotcore API v{html.escape(document['info']['version'])}</h1>"
        "<p>Machine-readable: <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a> "
        "(OpenAPI 3.1).</p><table><tr><th>method</th><th>path</th><th>what</th>"
        f"<th>statuses</th></tr>{''.join(rows)}</table></body></html>"
    )
