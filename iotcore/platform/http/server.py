"""The HTTP server around the API app: connection time limits, no version banner, and the
error envelope also for requests that aiohttp's parser refuses before any handler runs."""

from __future__ import annotations

import asyncio
import gc
import logging
from secrets import token_hex
from typing import Any

from aiohttp import web

from iotcore.config import Settings
from iotcore.platform import errors
from iotcore.platform.http.envelope import error_response

SERVER_NAME = "iotcore"
log = logging.getLogger("iotcore.http")


class _EnvelopeRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own version logs the parser's exception and echoes its text in a plain
        body; that text quotes the offending header, bearer token and all. Answer with the
        envelope instead, and log only the kind of error."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already; cannot send the error")
        if status >= 500:
            log.error("unhandled error outside the app", exc_info=exc)
            error = errors.ApiError()
        else:
            log.info("refused malformed request", extra={"error": type(exc).__name__})
            error = errors.MalformedRequest()
        error.status = status
        response = error_response(error, token_hex(16))
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    def __init__(self, handler: Any, *, request_factory: Any, handler_args: dict[str, Any]) -> None:
        super().__init__(handler, request_factory=request_factory, **handler_args)
        self._envelope_loop = asyncio.get_running_loop()
        self._envelope_args = handler_args

    def __call__(self) -> web.RequestHandler:
        return _EnvelopeRequestHandler(self, loop=self._envelope_loop, **self._envelope_args)


class ApiRunner(web.AppRunner):
    """The runner production and tests serve the API with.

    The one private part of aiohttp used: `AppRunner._make_server` is overridden to serve the
    app through _EnvelopeServer (aiohttp has no public hook for the responses its parser
    sends). aiohttp is pinned to an exact version (pyproject.toml) and
    tests/platform/test_library_internals.py fails when an upgrade changes that method.
    """

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        # aiohttp closes a connection that waits for a request head longer than the
        # keep-alive timeout, counted from connect or the previous response: it bounds idle
        # keep-alive connections and clients that send half a header alike.
        self._envelope_args: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": settings.http_idle_timeout_s,
        }
        super().__init__(app, **self._envelope_args, **kwargs)

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _EnvelopeServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_args=self._envelope_args,
        )


async def hide_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no framework or Python version for a scanner to match."""
    response.headers["Server"] = SERVER_NAME


def tune_gc_for_serving() -> None:
    """For a process that serves the API, once started: each request allocates and frees
    many small containers, and with the default threshold (700) the young generation was
    collected every few requests (some 5% of a webhook request's instructions). Collect
    what start-up left, freeze it out of later collections, and collect the young
    generation every 10,000 allocations instead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
