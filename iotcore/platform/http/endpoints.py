"""Endpoint declarations: one object per route registers it, validates its request and
documents it in OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from iotcore.platform.http.parsing import parse_body, parse_query
from iotcore.platform.versioning import Deprecation

Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    """One route of the API. The same declaration registers the route, validates the request
    (`body`, `query`) and documents it in OpenAPI (`responses`, `errors`, `security`), so the
    document cannot drift from what the server does."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=lambda: {200: None})
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = ()
    response_content_type: str = "application/json"
    header_params: tuple[str, ...] = ()
    in_schema: bool = True
    # A body the handler parses itself (e.g. point by point), documented with this model.
    documented_body: type[BaseModel] | None = None
    # Set when the operation is deprecated (docs/versioning.md): headers and OpenAPI flag.
    deprecation: Deprecation | None = None

    def route_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        if self.query is None and self.body is None and self.deprecation is None:
            return self.handler  # nothing to add: no wrapper (a coroutine per request) either

        async def handle(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = {}
            if self.query is not None:
                kwargs["query"] = parse_query(request, self.query)
            if self.body is not None:
                kwargs["body"] = await parse_body(request, self.body)
            response = await self.handler(request, **kwargs)
            if self.deprecation is not None and not response.prepared:
                response.headers.update(self.deprecation.headers())
            return response

        handle.__name__ = self.handler.__name__
        return handle


def add_endpoints(app: web.Application, endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.route_handler())
