"""The MQTT consumer: a shared subscription to every device's telemetry, QoS 1, a persistent
session, and each message acknowledged only after its rows are committed.

aiomqtt runs the connection (connect, subscribe, keepalive, reconnect), but messages do
not go through its per-message queue: paho's own `on_message` callback (which aiomqtt calls
on the event loop thread) appends them to an inbox, and the consumer hands the writer
everything that arrived since its last turn in one call. aiomqtt does not expose manual
acknowledgements either, so the consumer switches them on in paho and, once the writer has
committed a hand-off, queues all of its PUBACKs as one write.

Private parts of aiomqtt and paho are used on purpose, with both pinned to exact versions
(pyproject.toml) behind tests/telemetry/test_consumer_internals.py: aiomqtt's paho client,
event loop and disconnect future (to read through our gate), paho's socket (a buffered
wrapper: one kernel read for many packets) and its packet queue (all the PUBACKs of a
hand-off as one write). paho's public external-loop API would give the gate, but neither
the buffered reads nor the single write of many acks (`ack()` sends one packet per call),
which are what keep one consumer above 10,000 msg/s on two cores (loadtests/RESULTS.md).

When Postgres is down (or the load is more than it can take) the writer holds its batch,
its queue fills, the consumer stops handing off, the inbox fills, the consumer stops
reading the socket (IOT_INGEST_RECEIVE_MAXIMUM messages, also the MQTT 5 Receive Maximum),
nothing more is acked, and the broker keeps the rest for the persistent session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import PUBACK, MQTTMessage
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotcore.config import Settings
from iotcore.devices.registry import DeviceRegistry
from iotcore.mqtt.commands import ExternalDelivery, is_reply, replies_subscription
from iotcore.mqtt.status import StatusWatcher
from iotcore.platform.backoff import Backoff
from iotcore.platform.context import Platform
from iotcore.platform.shutdown import stop_task
from iotcore.telemetry.ingest.service import TelemetryIngest
from iotcore.telemetry.ingest.store import Outcome, Submission, WriteResult, is_transient
from iotcore.telemetry.ingest.writer import TelemetryWriter

log = logging.getLogger("iotcore.ingest")
TOPIC = "tenants/+/devices/+/telemetry"
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id


def subscription(settings: Settings) -> str:
    if settings.mqtt_shared_subscription:
        return f"$share/{settings.mqtt_share_group}/{TOPIC}"
    return TOPIC


class Inbox:
    """What paho has decoded and not yet been handed to the writer; at most `limit`
    messages before reading stops (see gate_reads)."""

    def __init__(self, limit: int = 5000) -> None:
        self.messages: list[MQTTMessage] = []
        self.limit = limit
        self._ready = asyncio.Event()
        self._resume: Callable[[], None] | None = None

    @property
    def full(self) -> bool:
        return len(self.messages) >= self.limit

    def pause(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    def on_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        self.messages.append(message)
        self._ready.set()

    async def take(self, disconnected: asyncio.Future[None], most: int = 1000) -> list[MQTTMessage]:
        """Up to `most` messages, oldest first: a bounded slice of work between returns to
        the event loop, so that timers (Redis and Postgres timeouts, keepalive) stay honest."""
        while not self.messages:
            self._ready.clear()
            waiter = asyncio.ensure_future(self._ready.wait())
            await asyncio.wait((waiter, disconnected), return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                cause = None if disconnected.cancelled() else disconnected.exception()
                raise aiomqtt.MqttError("disconnected while waiting for messages") from cause
        if len(self.messages) <= most:
            messages, self.messages = self.messages, []
        else:
            messages, self.messages = self.messages[:most], self.messages[most:]
        if self._resume is not None and len(self.messages) <= self.limit // 2:
            resume, self._resume = self._resume, None
            resume()
        return messages


class BufferedSocket:
    """paho reads a packet with three or more `recv` calls (type, length, body), each one a
    system call, and aiomqtt's reader callback asks it for one packet per wake-up of the
    event loop. This reads what the kernel holds in one call and serves paho's small reads
    from it; `pending()` is the hook aiomqtt already has for TLS sockets (which buffer the
    same way): while it is non-zero, aiomqtt calls paho again without going back to the
    event loop.

    One kernel read per turn of the event loop, at most: a refill asked for later in the
    same turn answers "would block" (paho keeps the partial packet and goes on next turn,
    the socket being still readable). Without that bound, a broker that keeps sending would
    keep the reader callback busy forever, and the writer, the acks and every timer with it.
    Everything else is the socket's own."""

    CHUNK = 64 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._pos = 0
        self._read_this_turn = False

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buffer):
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop (paho connecting in a thread)
                loop = None
            if loop is not None:
                if self._read_this_turn:
                    raise BlockingIOError
                self._read_this_turn = True
                loop.call_soon(self._new_turn)
            data = self._sock.recv(self.CHUNK)  # BlockingIOError and EOF reach paho as such
            if len(data) <= size:
                return bytes(data)
            self._buffer, self._pos = data, 0
        start = self._pos
        self._pos = start + size
        return self._buffer[start : self._pos]

    def _new_turn(self) -> None:
        self._read_this_turn = False

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return max(0, len(self._buffer) - self._pos) + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def gate_reads(client: aiomqtt.Client, inbox: Inbox) -> None:
    """For every connection paho opens: a BufferedSocket under it, and our own reader in
    place of aiomqtt's, which stops reading the socket while the inbox is full and starts
    again when the consumer has taken half of it. TCP then holds the broker back, and the
    broker keeps the backlog for the persistent session: the consumer's memory stays
    bounded whatever the broker's in-flight settings (MQTT 3.1.1 has no Receive Maximum)."""
    paho = client._client
    aiomqtt_on_open = paho.on_socket_open

    def on_socket_open(pc: PahoClient, userdata: Any, sock: Any) -> None:
        buffered = BufferedSocket(sock)
        pc._sock = buffered
        if aiomqtt_on_open is not None:
            aiomqtt_on_open(pc, userdata, buffered)  # schedules aiomqtt's reader
        loop = client._loop
        fd = sock.fileno()

        def reader() -> None:
            try:  # what aiomqtt's reader does, stopping when the inbox fills
                while not inbox.full:
                    pc.loop_read()
                    if buffered.pending() == 0:
                        break
            except Exception as exc:
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)
                return
            if inbox.full:
                # Paused until the consumer has taken half; what is already buffered here
                # is read on resume (the socket may never become readable again for it).
                loop.remove_reader(fd)
                inbox.pause(resume)

        def resume() -> None:
            if pc._sock is buffered:  # still this connection
                loop.add_reader(fd, reader)
                loop.call_soon(reader)  # for bytes already in the buffer

        def take_over() -> None:
            with contextlib.suppress(OSError, ValueError):  # closed already
                loop.remove_reader(fd)
                loop.add_reader(fd, reader)

        loop.call_soon_threadsafe(take_over)  # after aiomqtt's add_reader

    paho.on_socket_open = on_socket_open


def ack_all(paho: PahoClient, mids: list[int]) -> None:
    """The PUBACKs of many messages as one queued write: the bytes paho's `ack(mid, 1)`
    would queue one packet (and one socket write) at a time."""
    packet = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
    paho._packet_queue(PUBACK, packet, 0, 0)


class Consumer:
    def __init__(self, platform: Platform, ingest: TelemetryIngest) -> None:
        self._settings = platform.settings
        self._ingest = ingest
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.inbox = Inbox()
        self.commands = ExternalDelivery(platform)

    def _client(self, inbox: Inbox) -> aiomqtt.Client:
        settings = self._settings
        url = urlsplit(settings.mqtt_url)
        v5 = settings.mqtt_protocol_v5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.ingest_session_expiry_s
            # Unacked messages the broker may have in flight to us: the real bound on memory
            # and on what is redelivered after a crash.
            properties.ReceiveMaximum = settings.ingest_receive_maximum
        # A persistent session: MQTT 5 "clean start" off, or MQTT 3.1.1 "clean session" off.
        session: dict[str, Any] = {"clean_start": False} if v5 else {"clean_session": False}
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            username=settings.ingest_mqtt_username,
            password=settings.ingest_mqtt_password.get_secret_value(),
            identifier=settings.ingest_client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            properties=properties,
            keepalive=30,
            timeout=10,
            **session,
        )
        client._client.manual_ack_set(True)
        # Before connecting: a persistent session's queued messages arrive right after CONNACK.
        client._client.on_message = inbox.on_message
        gate_reads(client, inbox)
        return client

    async def _consume(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        # A persistent session's backlog arrives right after CONNACK, ahead of the SUBACK:
        # it is handed off while the subscription is confirmed, or a full inbox would stop
        # reading before the SUBACK and the subscribe would time out, again on every retry.
        handing_off = asyncio.create_task(self._hand_off(client, inbox))
        try:
            settings = self._settings
            replies = replies_subscription(
                settings.mqtt_shared_subscription, settings.mqtt_share_group
            )
            subscribing = asyncio.ensure_future(
                client.subscribe([(subscription(settings), 1), (replies, 1)])
            )
            await asyncio.wait((handing_off, subscribing), return_when=asyncio.FIRST_COMPLETED)
            if handing_off.done():
                subscribing.cancel()
                handing_off.result()  # raises: disconnected
            await subscribing
            self.connected = True
            log.info("ingest subscribed", extra={"topic": subscription(self._settings)})
            self.commands.attach(client)
            await handing_off
        finally:
            self.commands.attach(None)
            handing_off.cancel()

    async def _hand_off(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        paho = client._client
        while True:
            messages = await inbox.take(client._disconnected)
            received = datetime.now(UTC)
            if any(is_reply(m.topic) for m in messages):
                messages = await self._replies(paho, messages)
                if not messages:
                    continue
            submissions = []
            for message in messages:
                topic, payload = message.topic, bytes(message.payload)
                submission = self._ingest.from_mqtt_cached(topic, payload, received)
                if submission is None:  # a device not in the cache: ask Postgres
                    submission = await self._submission(topic, payload)
                submissions.append(submission)
            future = await self._ingest.writer.submit_many(submissions)
            acks = [(m.mid, index) for index, m in enumerate(messages) if m.qos == 1]
            if acks:

                def ack(
                    done: asyncio.Future[list[Outcome]], acks: list[tuple[int, int]] = acks
                ) -> None:
                    # Only after the commit, and only a message whose readings are stored or
                    # recorded as rejected (a refusal too: redelivering it would fail the
                    # same way forever). One neither stays unacked, for redelivery.
                    if done.cancelled():
                        return
                    outcomes = done.result()
                    mids = [mid for mid, i in acks if isinstance(outcomes[i], WriteResult)]
                    if mids:
                        ack_all(paho, mids)
                    if len(mids) < len(acks):
                        log.error("messages neither stored nor recorded; not acked")

                future.add_done_callback(ack)
            await asyncio.sleep(0)  # let paho, the writer and the timers run between slices

    async def _replies(self, paho: PahoClient, messages: list[MQTTMessage]) -> list[MQTTMessage]:
        """Command replies among the messages are stored (or recorded as rejected) and then
        acknowledged; the others are returned. A reply the database cannot take now is
        retried, holding the stream like telemetry does."""
        others = []
        for message in messages:
            if not is_reply(message.topic):
                others.append(message)
                continue
            backoff = Backoff(0.1, 5.0)
            while True:
                try:
                    await self.commands.reply(message.topic, bytes(message.payload))
                    break
                except Exception as exc:
                    if not is_transient(exc):  # it would fail the same way forever
                        log.exception("command reply refused by the database; dropped")
                        break
                    await backoff.wait()
            if message.qos == 1:
                ack_all(paho, [message.mid])
        return others

    async def _submission(self, topic: str, payload: bytes) -> Submission:
        """Checking the device needs Postgres (or the cache): while it is away, wait and
        retry, holding the stream (and the acks) rather than dropping the message."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                return await self._ingest.from_mqtt(topic, payload)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("device check failed; retrying", extra={"error": type(exc).__name__})
                await backoff.wait()

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                inbox = self.inbox = Inbox(self._settings.ingest_receive_maximum)
                async with self._client(inbox) as client:
                    backoff.reset()
                    await self._consume(client, inbox)
            except aiomqtt.MqttError as exc:
                self.connected = False
                log.warning("mqtt connection lost; reconnecting", extra={"error": str(exc)})
            await backoff.wait()

    async def start(self) -> None:
        self.commands.start()
        self._task = asyncio.create_task(self.run(), name="mqtt-consumer")

    async def stop(self) -> None:
        await self.commands.stop()
        if self._task is not None:
            await stop_task(self._task)

    async def readiness(self) -> None:
        if not self.connected:
            raise RuntimeError("not connected to the MQTT broker")
        if not self._ingest.writer.healthy:
            raise RuntimeError("the writer cannot reach Postgres; acks are held")


class IngestRole:
    """`iotcore ingest`: its own device registry and writer, sharing the process platform,
    and the status subscriber that gives presence where the broker has no hooks."""

    def __init__(self, platform: Platform, ingest: TelemetryIngest | None = None) -> None:
        self._owns_ingest = ingest is None
        if ingest is None:
            registry = DeviceRegistry(platform)
            ingest = TelemetryIngest(platform, registry, TelemetryWriter(platform))
        self.ingest = ingest
        self.consumer = Consumer(platform, ingest)
        self.status = StatusWatcher(platform)
        platform.readiness_checks["ingest"] = self.consumer.readiness

    async def start(self) -> None:
        if self._owns_ingest:
            await self.ingest.registry.start()
            await self.ingest.writer.start()
        await self.consumer.start()
        await self.status.start()

    async def stop(self) -> None:
        await self.status.stop()
        await self.consumer.stop()
        if self._owns_ingest:
            await self.ingest.writer.stop()
            await self.ingest.registry.close()
