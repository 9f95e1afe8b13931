"""amqtt plugins that apply the EMQX hooks' rules by calling the same `MqttAccess` code.

amqtt builds plugins itself from dotted paths and a config dict, so the broker registers
its `MqttAccess` under a name in `ACCESS` and passes that name in the plugin config.
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from iotcore.devices.mqtt_access import MqttAccess

ACCESS: dict[str, MqttAccess] = {}


class DeviceAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        access: str = ""

    async def authenticate(self, *, session: Session) -> bool | None:
        access = ACCESS[self.config.access]
        answer = await access.authenticate(
            session.client_id or "", session.username or "", session.password or ""
        )
        return answer is not None


class DeviceTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        access: str = ""

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if action == Action.RECEIVE:
            return True  # delivery to a subscriber whose subscription was already checked
        if session is None or topic is None or action is None:
            return False
        return await ACCESS[self.config.access].authorize(
            session.client_id or "", session.username or "", topic, str(action.value)
        )
