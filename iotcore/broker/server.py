"""The embedded MQTT broker (amqtt) for single-node and development use. Production uses an
EMQX cluster configured from emqx/; both apply the same device rules."""

from __future__ import annotations

import logging
import uuid

from amqtt.broker import Broker

from iotcore.broker import plugins
from iotcore.devices.mqtt_access import MqttAccess
from iotcore.devices.registry import DeviceRegistry
from iotcore.platform.context import Platform

log = logging.getLogger("iotcore.broker")


class EmbeddedBroker:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._registry = DeviceRegistry(platform)
        self._name = uuid.uuid4().hex
        plugins.ACCESS[self._name] = MqttAccess(platform, self._registry)
        settings = platform.settings
        self.address = f"{settings.broker_host}:{settings.broker_port}"
        config = {
            "listeners": {"default": {"type": "tcp", "bind": self.address}},
            "plugins": {
                "iotcore.broker.plugins.DeviceAuthPlugin": {"access": self._name},
                "iotcore.broker.plugins.DeviceTopicPlugin": {"access": self._name},
            },
        }
        self._broker = Broker(config)

    async def start(self) -> None:
        await self._registry.start()
        await self._broker.start()
        log.info("embedded broker listening", extra={"address": self.address})

    async def stop(self) -> None:
        await self._broker.shutdown()
        await self._registry.close()
        plugins.ACCESS.pop(self._name, None)


async def start_broker(platform: Platform) -> EmbeddedBroker:
    broker = EmbeddedBroker(platform)
    await broker.start()
    return broker
