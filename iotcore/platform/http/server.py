"""The HTTP server around the API app: connection time limits, no version banner, and the
error envelope also for requests that aiohttp's parser refuses before any handler runs."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from iotcore.config import Settings
from iotcore.platform import errors
from iotcore.platform.http.envelope import error_response

SERVER_NAME = "iotcore"
log = logging.getLogger("iotcore.http")


class _EnvelopeRequestHandler(RequestHandler):
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
        response = error_response(error, uuid4().hex)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """The runner production and tests serve the API with."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        # aiohttp closes a connection that waits for a request head longer than the
        # keep-alive timeout, counted from connect or the previous response: it bounds idle
        # keep-alive connections and clients that send half a header alike.
        super().__init__(
            app,
            access_log=None,
            keepalive_timeout=settings.http_idle_timeout_s,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _EnvelopeServer(
            base.request_handler,
            request_factory=base.request_factory,
            loop=base._loop,
            **self._kwargs,
        )


async def hide_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no framework or Python version for a scanner to match."""
    response.headers["Server"] = SERVER_NAME
