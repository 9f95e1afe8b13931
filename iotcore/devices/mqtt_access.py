"""MQTT access rules: which topics a device or the ingest account may use, the ACL handed to
EMQX, and authentication of MQTT clients. The EMQX hooks and the embedded broker share them."""

from __future__ import annotations

import hmac
from typing import Any
from uuid import UUID

from iotcore.devices.registry import DeviceIdentity, DeviceRegistry
from iotcore.platform.context import Platform
from iotcore.platform.types import parse_uuid

PROBE_PREFIX = "iotcore/probe"  # the ingest account's shared-subscription probe
STATUS_FILTER = "tenants/+/devices/+/status"  # every device's status, for presence


def topic_base(tenant_id: UUID | str, device_id: UUID | str) -> str:
    return f"tenants/{tenant_id}/devices/{device_id}"


def reply_command_id(base: str, topic: str) -> str | None:
    """The command id of a reply topic under `base` (`{base}/replies/{command_id}`, the id
    in canonical form), else None."""
    prefix = f"{base}/replies/"
    if not topic.startswith(prefix):
        return None
    command_id = topic[len(prefix) :]
    return command_id if parse_uuid(command_id) is not None else None


def device_may(identity: DeviceIdentity, action: str, topic: str) -> bool:
    """A device publishes only its telemetry, its status and replies to commands, and
    subscribes only to its commands."""
    if identity.tenant_id is None:
        return False
    base = topic_base(identity.tenant_id, identity.device_id)
    if action == "publish":
        return topic in (f"{base}/telemetry", f"{base}/status") or (
            reply_command_id(base, topic) is not None
        )
    if action == "subscribe":
        if not topic.startswith(f"{base}/commands/") and topic != f"{base}/commands":
            return False
        levels = topic.split("/")
        return "+" not in topic and all(level != "#" for level in levels[:-1])
    return False


def will_allowed(identity: DeviceIdentity, topic: str) -> bool:
    """A will is a publish the broker makes later on the device's behalf: only to the
    device's own status topic."""
    return (
        identity.tenant_id is not None
        and topic == f"{topic_base(identity.tenant_id, identity.device_id)}/status"
    )


REPLIES_FILTER = "tenants/+/devices/+/replies/+"


def is_command_topic(topic: str) -> bool:
    """`tenants/{t}/devices/{d}/commands/{name}`: where the ingest account delivers commands."""
    levels = topic.split("/")
    return (
        len(levels) == 6
        and levels[0] == "tenants"
        and levels[2] == "devices"
        and levels[4] == "commands"
        and parse_uuid(levels[1]) is not None
        and parse_uuid(levels[3]) is not None
        and levels[5] not in ("", "+", "#")
    )


def ingest_may(share_group: str, action: str, topic: str) -> bool:
    """The ingest service account subscribes to every device's telemetry and command
    replies, shared or not, and to every device's status (presence,
    iotcore/devices/presence.py), publishes commands to devices, and uses its own probe topic
    (iotcore/mqtt/probe.py)."""
    if action == "subscribe" and topic == STATUS_FILTER:
        return True
    for plain in ("tenants/+/devices/+/telemetry", REPLIES_FILTER):
        if action == "subscribe" and topic in (plain, f"$share/{share_group}/{plain}"):
            return True
    if action == "publish" and is_command_topic(topic):
        return True
    levels = topic.split("/")
    if action == "subscribe" and len(levels) == 5 and levels[0] == "$share":
        levels = levels[2:]  # $share/<group>/iotcore/probe/<token>
    return (
        action in ("publish", "subscribe")
        and len(levels) == 3
        and "/".join(levels[:2]) == PROBE_PREFIX
        and levels[2] not in ("", "+", "#")
    )


def device_acl(identity: DeviceIdentity) -> list[dict[str, str]]:
    """EMQX 5.8 authn-response ACL: spares EMQX a per-publish authz call."""
    base = topic_base(identity.tenant_id or "", identity.device_id)
    return [
        {"permission": "allow", "action": "publish", "topic": f"{base}/telemetry"},
        {"permission": "allow", "action": "publish", "topic": f"{base}/status"},
        {"permission": "allow", "action": "publish", "topic": f"{base}/replies/+"},
        {"permission": "allow", "action": "subscribe", "topic": f"{base}/commands/#"},
        {"permission": "deny", "action": "all", "topic": "#"},
    ]


def ingest_acl(share_group: str) -> list[dict[str, str]]:
    plain = "tenants/+/devices/+/telemetry"
    return [
        {"permission": "allow", "action": "subscribe", "topic": plain},
        {"permission": "allow", "action": "subscribe", "topic": f"$share/{share_group}/{plain}"},
        {"permission": "allow", "action": "subscribe", "topic": REPLIES_FILTER},
        {
            "permission": "allow",
            "action": "subscribe",
            "topic": f"$share/{share_group}/{REPLIES_FILTER}",
        },
        {"permission": "allow", "action": "publish", "topic": "tenants/+/devices/+/commands/+"},
        {"permission": "allow", "action": "subscribe", "topic": STATUS_FILTER},
        {"permission": "allow", "action": "all", "topic": f"{PROBE_PREFIX}/+"},
        {"permission": "allow", "action": "subscribe", "topic": f"$share/+/{PROBE_PREFIX}/+"},
        {"permission": "deny", "action": "all", "topic": "#"},
    ]


class MqttAccess:
    """Authentication and topic rules for MQTT clients: the EMQX hooks call it over HTTP,
    the embedded broker's plugins call it directly. One set of rules for both."""

    def __init__(self, platform: Platform, registry: DeviceRegistry) -> None:
        settings = platform.settings
        self._registry = registry
        self._ingest_user = settings.ingest_mqtt_username
        self._ingest_password = settings.ingest_mqtt_password.get_secret_value().encode()
        self.share_group = settings.mqtt_share_group

    def _is_ingest(self, username: str, password: str) -> bool:
        return username == self._ingest_user and hmac.compare_digest(
            password.encode(), self._ingest_password
        )

    async def authenticate(
        self, client_id: str, username: str, password: str
    ) -> dict[str, Any] | None:
        """The EMQX authn answer for an allowed client, or None to deny."""
        if self._is_ingest(username, password):
            return {
                "result": "allow",
                "is_superuser": False,
                "client_attrs": {"role": "ingest"},
                "acl": ingest_acl(self.share_group),
            }
        if client_id != username:
            return None
        identity = await self._registry.authenticate(username, password)
        if identity is None or identity.tenant_id is None:
            return None
        return {
            "result": "allow",
            "is_superuser": False,
            "client_attrs": {
                "tenant_id": str(identity.tenant_id),
                "device_id": str(identity.device_id),
            },
            "acl": device_acl(identity),
        }

    async def authorize(self, client_id: str, username: str, topic: str, action: str) -> bool:
        if username == self._ingest_user:
            return ingest_may(self.share_group, action, topic)
        device_id = parse_uuid(username)
        if device_id is None or client_id != username:
            return False
        identity = await self._registry.resolve(device_id)
        return identity is not None and device_may(identity, action, topic)
