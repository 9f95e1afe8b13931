"""Ending a device's live MQTT sessions when its credentials are revoked.

The embedded broker needs no call: it re-checks a device's session against fresh
credentials whenever the registry announces a change (registry.listeners, fed by the Redis
invalidation channel), and at the end of a rotation grace. EMQX is told through its REST API
(5.8: `DELETE /api/v5/clients/{clientid}`, API key and secret as Basic credentials), which
disconnects the client and discards its session.

The end of a rotation needs no kick on either broker: the client id is the device id, so the
connection made with the new secret takes the old session over, and the old one is closed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from urllib.parse import quote
from uuid import UUID

import aiohttp

from iotcore.config import Settings
from iotcore.platform.backoff import Backoff
from iotcore.platform.metrics import SESSION_KICKS

log = logging.getLogger("iotcore.devices.sessions")
ATTEMPTS = 3


class SessionKicker:
    def __init__(self, settings: Settings) -> None:
        self._url = settings.emqx_api_url.rstrip("/") if settings.emqx_api_url else None
        credentials = f"{settings.emqx_api_key}:{settings.emqx_api_secret.get_secret_value()}"
        self._headers = {
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        }
        self._timeout = aiohttp.ClientTimeout(total=settings.emqx_api_timeout_s)

    async def kick(self, device_ids: list[UUID]) -> None:
        """Disconnect each device on EMQX. Best effort with a few retries: the credential is
        revoked already, so a session that escapes this cannot reconnect."""
        if self._url is None or not device_ids:
            return
        async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as http:
            await asyncio.gather(*(self._kick_one(http, str(d)) for d in device_ids))

    async def _kick_one(self, http: aiohttp.ClientSession, client_id: str) -> None:
        url = f"{self._url}/api/v5/clients/{quote(client_id, safe='')}"
        backoff = Backoff(0.2, 1.6)
        for attempt in range(ATTEMPTS):
            try:
                async with http.delete(url) as response:
                    if response.status in (204, 404):  # kicked, or not connected
                        SESSION_KICKS.labels("kicked" if response.status == 204 else "absent").inc()
                        return
                    log.warning("EMQX refused the kick", extra={"status": response.status})
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("EMQX kick failed", extra={"error": type(exc).__name__})
            if attempt + 1 < ATTEMPTS:
                await backoff.wait()
        SESSION_KICKS.labels("failed").inc()
