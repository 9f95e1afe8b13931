"""Who delivers commands: the process that holds the MQTT side. It LISTENs on Postgres for
new commands (`iotcore_commands`, sent by the commands table's trigger at commit) and for
presence changes (`iotcore_presence`: {"tenant_id", "device_id", "connected"}), and after
each (re)connection of its listening connection catches up on what it may have missed.

- The embedded broker (`iotcore run`, `iotcore broker`): EmbeddedDelivery publishes to the
  device's own session when it is subscribed to its commands (on the notification, and on
  the device's SUBSCRIBE), QoS 1, sent again on reconnect until the device's PUBACK, which
  marks it `sent`: on this broker `sent` means the device has it.
- EMQX or Mosquitto: the ingest consumer publishes through its own connection
  (iotcore/mqtt/commands.py, ExternalDelivery). It cannot see the device's PUBACK, so
  `sent` there means "handed to the broker at QoS 1" (claimed in the database first, so that
  of several consumer replicas one sends it), and on each connect of the device an
  unanswered `sent` command is sent again: a device may see a command twice and must
  dedupe by command_id (it sees the same command_id; its reply completes it once).

Never an expired command: the query that picks what to send skips it, the claim refuses it,
a message waiting in a broker session is dropped when its expiry passes (embedded broker;
MQTT 5 message expiry on external brokers), and a late reply is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from iotcore.commands.service import CommandService
from iotcore.config import Settings
from iotcore.platform.backoff import Backoff
from iotcore.platform.context import Platform
from iotcore.platform.shutdown import stop_task

log = logging.getLogger("iotcore.commands")
COMMANDS_CHANNEL = "iotcore_commands"
PRESENCE_CHANNEL = "iotcore_presence"

OnCommand = Callable[[UUID, UUID], None]
OnPresence = Callable[[UUID, UUID, bool], None]


def _settle(future: asyncio.Future[None], _conn: Any) -> None:
    if not future.done():
        future.set_result(None)


class CommandListener:
    """A dedicated connection LISTENing on both channels (not a pooled one: a pool resets
    and hands out its connections). Reconnects with backoff; `on_resync` runs after every
    (re)connection, for what was announced while nobody listened."""

    def __init__(
        self,
        settings: Settings,
        on_command: OnCommand,
        on_presence: OnPresence,
        on_resync: Callable[[], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._on_command = on_command
        self._on_presence = on_presence
        self._on_resync = on_resync
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commands-listener")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        try:
            data = orjson.loads(payload)
            tenant_id, device_id = UUID(data["tenant_id"]), UUID(data["device_id"])
            if channel == COMMANDS_CHANNEL:
                self._on_command(tenant_id, device_id)
            elif bool(data.get("connected")):
                self._on_presence(tenant_id, device_id, True)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable notification", extra={"channel": channel})

    async def _run(self) -> None:
        backoff = Backoff(0.5, 15.0)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._settings.database_url, timeout=self._settings.database_timeout_s
                )
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(functools.partial(_settle, lost))
                await conn.add_listener(COMMANDS_CHANNEL, self._notified)
                await conn.add_listener(PRESENCE_CHANNEL, self._notified)
                self.listening.set()
                backoff.reset()
                await self._on_resync()
                while not lost.done():
                    # A dead server is noticed by the next query, not by the idle socket.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(lost), 15)
                    if not lost.done():
                        await conn.execute("SELECT 1", timeout=self._settings.database_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("commands listener lost; reconnecting", extra={"error": str(exc)})
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await backoff.wait()


class Delivery:
    """What both deliverers share: the command service, the listener calling `created`,
    `connected` and `resync`, and the background tasks they start (ended on stop)."""

    def __init__(self, platform: Platform, task_name: str) -> None:
        self.service = CommandService(platform)
        self.listener = CommandListener(
            platform.settings, self.created, self.connected, self.resync
        )
        self._task_name = task_name
        self._tasks: set[asyncio.Task[None]] = set()

    def created(self, tenant_id: UUID, device_id: UUID) -> None:
        raise NotImplementedError

    def connected(self, tenant_id: UUID, device_id: UUID, connected: bool) -> None:
        raise NotImplementedError

    async def resync(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=self._task_name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
