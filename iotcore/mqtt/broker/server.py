"""The embedded MQTT 3.1.1 broker for the single node (`iotcore run`, `iotcore broker`).
Production uses an EMQX cluster configured from emqx/; both apply the same device rules.

Devices are the only clients. A QoS 1 PUBLISH on a device's telemetry topic goes straight
to the telemetry writer and its PUBACK leaves after the commit: no queue between them to
lose. Status messages are routed to subscribers (retained where asked); devices subscribe
to their commands. QoS 2 is not offered: a subscription is granted QoS 1 at most and a
QoS 2 publish closes the connection. Every live session is checked again against fresh
credentials when the device's credentials change (reset, rotation, grace expiry), and
ended when they no longer hold.

Presence (iotcore/devices/presence.py) comes from the connections themselves: an accepted
CONNECT is a connect event, the end of the connection (clean, dropped, keep-alive timeout,
whatever the will) a disconnect event, each under the connection's generation; a device's
own status message says the same in its words. A session taken over ends without a
disconnect event (its successor is connected). At start, and at stop, the devices this
node held are marked offline; while running, a heartbeat confirms the ones it holds, so the
staleness rule (`maintain`) ends whatever a crash left behind. None of it runs per
telemetry message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from iotcore.devices.mqtt_access import device_may, reply_command_id, topic_base, will_allowed
from iotcore.devices.presence import (
    Presence,
    PresenceEvent,
    PresenceQueue,
    now_ms,
    parse_status,
)
from iotcore.devices.registry import DeviceIdentity, DeviceLogin, DeviceRegistry
from iotcore.mqtt.broker import packets
from iotcore.mqtt.broker.commands import EmbeddedDelivery
from iotcore.mqtt.broker.connection import Ack, Connection
from iotcore.mqtt.broker.sessions import Message, Session
from iotcore.mqtt.broker.topics import RetainedStore, SubscriptionTree
from iotcore.platform.context import Platform
from iotcore.platform.metrics import BROKER_CONNECTIONS, BROKER_REFUSED
from iotcore.platform.shutdown import stop_tasks
from iotcore.platform.types import parse_uuid
from iotcore.telemetry.ingest.service import TelemetryIngest
from iotcore.telemetry.ingest.writer import Outcome, Submission, TelemetryWriter, WriteResult

log = logging.getLogger("iotcore.broker")
SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class SessionGrant:
    """An accepted CONNECT: who the client is, and the credential it proved, kept (as its
    hash) so that the session can be checked again when the device's credentials change."""

    client_id: str
    login: DeviceLogin
    clean_session: bool
    telemetry_topic: str
    valid_until: float | None  # unix time the secret used stops working (rotation grace)

    @property
    def identity(self) -> DeviceIdentity:
        return self.login.identity

    async def recheck(self, registry: DeviceRegistry) -> SessionGrant | None:
        fresh = await registry.still_valid(self.login)
        if fresh is None or fresh.identity.tenant_id != self.identity.tenant_id:
            return None
        return _grant(self.client_id, fresh, self.clean_session)


def _grant(client_id: str, login: DeviceLogin, clean_session: bool) -> SessionGrant:
    assert login.identity.tenant_id is not None
    base = topic_base(login.identity.tenant_id, login.identity.device_id)
    until = login.valid_until.timestamp() if login.valid_until is not None else None
    return SessionGrant(client_id, login, clean_session, f"{base}/telemetry", until)


async def session_grant(registry: DeviceRegistry, request: packets.Connect) -> SessionGrant | int:
    """The grant for a CONNECT, or the CONNACK code that refuses it. The client id and the
    user name are the device id in canonical form; a will may only go to the device's own
    status topic (authorised like a publish, 3.1.2.5), else the CONNECT is refused."""
    device_id = parse_uuid(request.client_id)  # canonical form only
    if device_id is None:
        return packets.IDENTIFIER_REJECTED
    if request.username != request.client_id or not request.password:
        return packets.BAD_CREDENTIALS
    login = await registry.login(device_id, request.password)
    if login is None or login.identity.tenant_id is None:
        return packets.BAD_CREDENTIALS
    if request.will is not None and not will_allowed(login.identity, request.will.topic):
        return packets.NOT_AUTHORIZED
    return _grant(request.client_id, login, request.clean_session)


@dataclass
class _Pending:
    """Telemetry read since the last hand-off to the writer, and the acks it owes."""

    submissions: list[Submission]
    acks: list[tuple[Connection, Ack, int]]  # and the submission's index in the hand-off
    rows: int = 0


class EmbeddedBroker:
    def __init__(
        self, platform: Platform, registry: DeviceRegistry, ingest: TelemetryIngest
    ) -> None:
        settings = platform.settings
        self.settings = settings
        self._platform = platform
        self._registry = registry
        self._ingest = ingest
        self.host, self.port = settings.broker_host, settings.broker_port
        self.max_connections = settings.broker_max_connections
        self.max_packet_bytes = settings.broker_max_packet_bytes
        self.connect_timeout_s = settings.broker_connect_timeout_s
        self._queue_limit = settings.broker_session_queue
        self._session_expiry_s = settings.broker_session_expiry_s
        self._pending_limit = settings.broker_pending_rows
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Session] = {}
        self._subscriptions: SubscriptionTree[int] = SubscriptionTree()
        self._retained: RetainedStore[tuple[bytes, int]] = RetainedStore()
        self._pending = _Pending([], [])
        self._held: set[Connection] = set()
        self._handoff = asyncio.Event()
        self.rechecks = 0  # sessions checked again after a credential change (for tests)
        self.presence = Presence(platform)
        self.presence_queue = PresenceQueue(self.presence)
        self._heartbeat_s = settings.presence_heartbeat_s
        self._node_setting = settings.broker_node
        self.node = ""
        self._generation = 0
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time
        self.commands = EmbeddedDelivery(self, platform)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._registry.listeners.append(self.credentials_changed)
        self._server = await self._loop.create_server(
            lambda: Connection(self), self.host, self.port, reuse_address=True, backlog=4096
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self.node = self._node_setting or f"embedded@{socket.gethostname()}:{self.port}"
        # What this node held before a restart (or a crash) is gone: offline, before the
        # first CONNECT is read (the listening socket only queues until the loop runs it).
        await self._reconcile()
        self.presence_queue.start()
        self._spawn(self._hand_off_forever(), "broker-telemetry-handoff")
        self._spawn(self._sweep_forever(), "broker-sweep")
        self.commands.start()
        self._spawn(self._heartbeat_forever(), "broker-presence-heartbeat")
        log.info("embedded broker listening", extra={"address": self.address})

    async def stop(self) -> None:
        if self.credentials_changed in self._registry.listeners:
            self._registry.listeners.remove(self.credentials_changed)
        await self.commands.stop()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close(send_will=False)
        await stop_tasks(list(self._tasks))
        await self.presence_queue.stop()
        await self._reconcile()  # every connection is closed: none of its devices is online
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _reconcile(self) -> None:
        try:
            changed = await self.presence.expire(self.node, None, "reconcile")
        except Exception as exc:  # the staleness rule ends them later
            log.warning("presence reconciliation failed", extra={"error": type(exc).__name__})
            return
        if changed:
            log.info("devices of this broker node marked offline", extra={"devices": changed})

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = self._loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ connections

    def opened(self, connection: Connection) -> bool:
        if len(self.connections) >= self.max_connections:
            BROKER_REFUSED.labels("max_connections").inc()
            return False
        self.connections.add(connection)
        BROKER_CONNECTIONS.set(len(self.connections))
        return True

    def closed(self, connection: Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        BROKER_CONNECTIONS.set(len(self.connections))
        self._held.discard(connection)
        session = connection.session
        if session is not None and session.connection is connection:
            if connection.grant is not None and connection.grant.clean_session:
                self._drop_session(session)
            else:
                session.detach()
        if connection.grant is not None and not connection.taken_over:
            self._presence_event(connection.grant, False, connection.presence_gen)
        will = connection.will
        if will is not None and connection.grant is not None:
            connection.will = None
            self.route(Message(will.topic, will.payload, will.qos, will.retain))

    def connect(self, connection: Connection, request: packets.Connect | int) -> None:
        if isinstance(request, int):
            BROKER_REFUSED.labels("protocol_version").inc()
            connection.refuse(request)
            return
        self._spawn(self._authenticate(connection, request), "broker-connect")

    async def _authenticate(self, connection: Connection, request: packets.Connect) -> None:
        try:
            outcome = await session_grant(self._registry, request)
        except Exception:
            log.warning("device authentication failed", exc_info=True)
            outcome = packets.SERVER_UNAVAILABLE
        if connection.closed:
            return
        if isinstance(outcome, int):
            BROKER_REFUSED.labels(_REFUSALS.get(outcome, "other")).inc()
            connection.refuse(outcome)
            return
        connection.keepalive = request.keepalive
        connection.will = request.will
        self._attach(connection, outcome)

    def _attach(self, connection: Connection, grant: SessionGrant) -> None:
        session = self.sessions.get(grant.client_id)
        if session is not None:
            previous = session.connection
            if previous is not None and previous is not connection:
                previous.session = None  # taken over (3.1.4-2): its close must not detach us
                previous.taken_over = True  # and it is no disconnect: the device is here
                previous.close(send_will=True)
                self._held.discard(previous)
            if grant.clean_session or session.tenant_id != grant.identity.tenant_id:
                # A session opened for another tenant never carries over (device reset).
                self._drop_session(session)
                session = None
        present = session is not None
        if session is None:
            session = Session(grant.client_id, grant.identity.tenant_id, self._queue_limit)
            self.sessions[grant.client_id] = session
        # Before the CONNACK: reading what follows it may already end the connection.
        connection.presence_gen = self._next_generation()
        self._presence_event(grant, True, connection.presence_gen)
        connection.accepted(grant, session, present)
        if present:  # a resumed session keeps its subscriptions: its commands are due now
            self.commands.subscribed(session, list(session.subscriptions.items()))

    # ------------------------------------------------------------------ presence

    def _next_generation(self) -> int:
        """Connect time in epoch ms, strictly increasing within this node."""
        self._generation = max(self._generation + 1, now_ms())
        return self._generation

    def _presence_event(self, grant: SessionGrant, connected: bool, generation: int) -> None:
        assert grant.identity.tenant_id is not None
        self.presence_queue.put(
            PresenceEvent(
                grant.identity.tenant_id,
                grant.identity.device_id,
                "embedded",
                connected,
                generation,
                datetime.now(UTC),
                self.node,
            )
        )

    def _status(self, connection: Connection, payload: bytes) -> None:
        """The device's own status message on a live connection: online again is a new
        generation (it may follow an "offline" on the same connection)."""
        online = parse_status(payload)
        if online is None:
            return
        if online:
            connection.presence_gen = self._next_generation()
        assert connection.grant is not None
        self._presence_event(connection.grant, online, connection.presence_gen)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            held = [c.grant.identity.device_id for c in self.connections if c.grant is not None]
            try:
                await self.presence.touch(self.node, held)
            except Exception as exc:
                log.warning("presence heartbeat failed", extra={"error": type(exc).__name__})

    def _drop_session(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for topic_filter in session.subscriptions:
            self._subscriptions.remove(topic_filter, session)
        session.subscriptions.clear()
        session.queue.clear()
        session.inflight.clear()
        session.commands.clear()

    # ------------------------------------------------------------------ publish

    def publish(self, connection: Connection, message: packets.Publish) -> None:
        grant = connection.grant
        assert grant is not None
        if message.qos == 2:
            BROKER_REFUSED.labels("qos2").inc()
            connection.close(send_will=True)  # not offered; 3.1.1 has no way to refuse it
            return
        if message.topic == connection.telemetry_topic:
            self.telemetry(connection, message.payload, message.packet_id)
            return
        if not device_may(grant.identity, "publish", message.topic):
            # MQTT 3.1.1 has no negative PUBACK: a denied publish ends the connection, so
            # the device cannot take a silent acknowledgement for delivery.
            BROKER_REFUSED.labels("publish_denied").inc()
            log.info("publish denied; closing", extra={"device_id": grant.client_id})
            connection.close(send_will=True)
            return
        command_id = reply_command_id(connection.topic_base, message.topic)
        if command_id is not None:  # a reply: to the commands, never to other subscribers
            self.commands.reply(
                connection,
                message.topic,
                command_id,
                message.payload,
                message.qos,
                message.packet_id,
            )
            return
        if message.topic == connection.status_topic:
            self._status(connection, message.payload)
        self.route(Message(message.topic, message.payload, message.qos, message.retain))
        if message.qos == 1:
            connection.owe_ack(message.packet_id, ready=True)

    def subscribers(self, topic: str) -> list[tuple[object, int]]:
        return list(self._subscriptions.match(topic))

    def route(self, message: Message) -> None:
        """A status message: retained if asked, then to every matching subscription."""
        if message.retain:
            self._retained.set(
                message.topic, (message.payload, message.qos) if message.payload else None
            )
        for subscriber, granted in self._subscriptions.match(message.topic):
            assert isinstance(subscriber, Session)
            subscriber.deliver(
                Message(message.topic, message.payload, min(granted, message.qos), False)
            )

    def telemetry(self, connection: Connection, payload: bytes, packet_id: int) -> None:
        """A PUBLISH on the connection's own telemetry topic (packet id 0: QoS 0)."""
        grant = connection.grant
        assert grant is not None
        submission = self._ingest.from_session(
            grant.login.identity, connection.telemetry_topic, payload, datetime.now(UTC)
        )
        pending = self._pending
        submissions = pending.submissions
        submissions.append(submission)
        pending.rows += submission.rows or 1
        if packet_id:
            ack = connection.owe_ack(packet_id, ready=False)
            pending.acks.append((connection, ack, len(submissions) - 1))
        if pending.rows >= self._pending_limit:
            # The writer is behind: stop reading this client until the hand-off catches up.
            connection.hold()
            self._held.add(connection)

    def flush_telemetry(self) -> None:
        if self._pending.submissions:
            self._handoff.set()

    async def _hand_off_forever(self) -> None:
        writer: TelemetryWriter = self._ingest.writer
        while True:
            await self._handoff.wait()
            self._handoff.clear()
            pending, self._pending = self._pending, _Pending([], [])
            if not pending.submissions:
                continue
            future = await writer.submit_many(pending.submissions)
            if pending.acks:
                future.add_done_callback(functools.partial(_committed, acks=pending.acks))
            if self._held and self._pending.rows < self._pending_limit:
                held, self._held = self._held, set()
                for connection in held:
                    connection.release()

    # ------------------------------------------------------------------ subscribe

    def subscribe(
        self, connection: Connection, packet_id: int, filters: list[tuple[str, int]]
    ) -> None:
        grant, session = connection.grant, connection.session
        assert grant is not None and session is not None
        codes = []
        allowed: list[tuple[str, int]] = []
        for topic_filter, qos in filters:
            if not device_may(grant.identity, "subscribe", topic_filter):
                BROKER_REFUSED.labels("subscribe_denied").inc()
                codes.append(packets.SUBACK_FAILURE)
                continue
            granted = min(qos, 1)  # QoS 2 is downgraded, as 3.8.4 allows
            session.subscriptions[topic_filter] = granted
            self._subscriptions.add(topic_filter, session, granted)
            allowed.append((topic_filter, granted))
            codes.append(granted)
        connection.write(packets.suback(packet_id, codes))
        # Retained messages for this client's own authorised subscriptions only (3.3.1.3).
        for topic_filter, granted in allowed:
            for topic, (payload, qos) in self._retained.matching(topic_filter):
                session.deliver(Message(topic, payload, min(qos, granted), True))
        self.commands.subscribed(session, allowed)

    def unsubscribe(self, connection: Connection, packet_id: int, filters: list[str]) -> None:
        session = connection.session
        assert session is not None
        for topic_filter in filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self._subscriptions.remove(topic_filter, session)
        connection.write(packets.unsuback(packet_id))

    # ------------------------------------------------------------------ credentials

    def credentials_changed(self, device_id: UUID | None) -> None:
        """The registry says this device's credentials changed (None: any device's may have):
        check the session again."""
        client_ids = list(self.sessions) if device_id is None else [str(device_id)]
        for client_id in client_ids:
            if client_id in self.sessions:
                self._spawn(self._recheck(client_id), "broker-recheck")

    async def _recheck(self, client_id: str) -> None:
        try:
            await self._check_session(client_id)
        finally:
            self.rechecks += 1

    async def _check_session(self, client_id: str) -> None:
        session = self.sessions.get(client_id)
        if session is None:
            return
        connection = session.connection
        grant = connection.grant if connection is not None else None
        if connection is None or grant is None:
            identity = await self._registry.resolve(UUID(client_id))
            revoked = identity is None or identity.tenant_id != session.tenant_id
            if revoked and self.sessions.get(client_id) is session and session.connection is None:
                self._drop_session(session)
            return
        fresh = await grant.recheck(self._registry)
        if fresh is None and session.connection is connection and not connection.closed:
            log.info("credential no longer valid; ending session", extra={"device_id": client_id})
            BROKER_REFUSED.labels("credential_revoked").inc()
            self._drop_session(session)
            connection.close(send_will=False)
        elif fresh is not None:
            connection.grant = fresh

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self._sweep()
            except Exception:  # the sweep must never die
                log.exception("broker sweep failed")

    def _sweep(self) -> None:
        """CONNECT timeout, keep-alive (1.5 x, 3.1.2.10), rotation grace expiry, and
        persistent sessions offline for too long."""
        now = self.now()
        wall = time.time()
        for connection in list(self.connections):
            grant = connection.grant
            if grant is None:
                if now - connection.opened_at > self.connect_timeout_s:
                    BROKER_REFUSED.labels("connect_timeout").inc()
                    connection.close(send_will=False)
                    if connection.transport is not None:
                        connection.transport.abort()
                continue
            if connection.keepalive and now - connection.last_seen > 1.5 * connection.keepalive:
                BROKER_REFUSED.labels("keepalive_timeout").inc()
                connection.close(send_will=True)
            elif grant.valid_until is not None and grant.valid_until <= wall:
                self._spawn(self._recheck(grant.client_id), "broker-recheck")
        expired = time.monotonic() - self._session_expiry_s
        for session in list(self.sessions.values()):
            if session.connection is None and session.offline_since < expired:
                self._drop_session(session)


def _committed(
    done: asyncio.Future[list[Outcome]], acks: list[tuple[Connection, Ack, int]]
) -> None:
    """After the commit, the PUBACK of every message whose readings are stored or recorded as
    rejected (a refusal too: resending it would fail the same way forever). A message that is
    neither must not be acknowledged: its connection is closed, so that the device sends it
    again on reconnect (the PUBACKs behind it would otherwise wait for ever, in order)."""
    if done.cancelled():
        return
    outcomes = done.result() if done.exception() is None else None
    touched = set()
    for connection, ack, index in acks:
        if outcomes is not None and isinstance(outcomes[index], WriteResult):
            ack.ready = True
            touched.add(connection)
        else:
            log.error("telemetry neither stored nor recorded; not acknowledged")
            connection.close(send_will=False)
    for connection in touched:
        connection.send_acks()


_REFUSALS = {
    packets.IDENTIFIER_REJECTED: "identifier_rejected",
    packets.BAD_CREDENTIALS: "bad_credentials",
    packets.NOT_AUTHORIZED: "not_authorized",
    packets.SERVER_UNAVAILABLE: "server_unavailable",
}


async def start_broker(
    platform: Platform, registry: DeviceRegistry, ingest: TelemetryIngest
) -> EmbeddedBroker:
    broker = EmbeddedBroker(platform, registry, ingest)
    await broker.start()
    return broker
