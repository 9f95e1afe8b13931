"""Before `iotcore ingest` starts: does the broker really serve shared subscriptions?

A broker without them may refuse `$share/...` in its SUBACK, or (amqtt, for one) grant it as
a literal filter that never matches anything: the consumer would then report ready and store
nothing. So the probe subscribes to `$share/<random group>/iotcore/probe/<random>`, publishes
one message to `iotcore/probe/<random>`, and expects it back through the subscription.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import urlsplit

import aiomqtt

from iotcore.config import Settings
from iotcore.devices.mqtt_access import PROBE_PREFIX
from iotcore.platform.backoff import Backoff

log = logging.getLogger("iotcore.ingest")
CONNECT_ATTEMPTS = 10


class SharedSubscriptionsUnsupported(Exception):
    """The broker does not deliver through shared subscriptions."""


async def check_shared_subscriptions(settings: Settings, timeout_s: float = 5) -> None:
    """Returns when the broker delivered through a shared subscription; raises
    SharedSubscriptionsUnsupported when it did not (refused, or granted and silent)."""
    url = urlsplit(settings.mqtt_url)
    token = secrets.token_hex(8)
    topic = f"{PROBE_PREFIX}/{token}"
    backoff = Backoff(0.5, 10.0)
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            async with aiomqtt.Client(
                url.hostname or "127.0.0.1",
                url.port or 1883,
                username=settings.ingest_mqtt_username,
                password=settings.ingest_mqtt_password.get_secret_value(),
                identifier=f"{settings.ingest_client_id}-probe-{token}",
                timeout=timeout_s,
            ) as client:
                granted = await client.subscribe(f"$share/probe-{token}/{topic}", qos=1)
                if any(_failed(code) for code in granted):
                    raise SharedSubscriptionsUnsupported(
                        f"the broker at {settings.mqtt_url} refused a shared subscription"
                    )
                await client.publish(topic, b"probe", qos=1)
                try:
                    async with asyncio.timeout(timeout_s):
                        async for message in client.messages:
                            if str(message.topic) == topic:
                                return
                except TimeoutError:
                    raise SharedSubscriptionsUnsupported(
                        f"the broker at {settings.mqtt_url} granted a shared subscription but "
                        "delivered nothing through it: it does not support $share"
                    ) from None
        except aiomqtt.MqttError as exc:
            if attempt + 1 == CONNECT_ATTEMPTS:
                raise
            log.warning("shared-subscription probe: broker unreachable", extra={"error": str(exc)})
            await backoff.wait()


def _failed(code: object) -> bool:
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
