"""Real devices over MQTT 3.1.1: one connection per device, authenticated with its own id and
secret (client id = user name = device id), QoS 1 to its own telemetry topic, packets built
as bytes (mqtt_wire.py) so that 1,000 connections cost the generator little CPU.

    python loadtests/mqtt_devices.py --port P --devices FILE --rate R --seconds S
    python loadtests/mqtt_devices.py --port P --devices FILE --idle S   # connect, then hold
    python loadtests/mqtt_devices.py --port P --devices FILE --answer S # answer commands

FILE holds one JSON object a line: {"device_id", "secret", "topic"}. Prints one JSON line:
messages sent and acknowledged, seconds, and PUBLISH-to-PUBACK latency percentiles (ms); with
--answer, once every device has subscribed to its commands a line {"connected", ...}, and
after S seconds the commands received and answered (each with {"ok": true}, QoS 1).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from typing import Any

import orjson
from mqtt_wire import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    SUBACK,
    connect_packet,
    encoded,
    next_frame,
    puback,
    publish_qos1,
    run_generator,
    subscribe_packet,
)


class DeviceConnection(asyncio.Protocol):
    """One device's connection: CONNECT with its credentials as soon as it opens (and
    `first`, sent with it); `connected` settles on the broker's answer."""

    first = b""

    def __init__(self, device: dict[str, str]) -> None:
        self.device = device
        self.buffer = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        device_id = self.device["device_id"]
        self.transport.write(
            connect_packet(device_id, device_id, self.device["secret"]) + self.first
        )


class Device(DeviceConnection):
    def __init__(self, device: dict[str, str], window: int, latencies: list[float]) -> None:
        super().__init__(device)
        self.topic = encoded(device["topic"])
        self.window = window
        self.latencies = latencies
        self.sent_at: dict[int, float] = {}
        self.sent = 0
        self.acked = 0
        self.mid = 0
        self.last_ts = 0

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        now = time.perf_counter()
        pos = 0
        while len(buffer) - pos >= 4:
            kind = buffer[pos]
            if kind == CONNACK:
                if not self.connected.done():
                    if buffer[pos + 3] == 0:
                        self.connected.set_result(None)
                    else:
                        self.connected.set_exception(RuntimeError(f"CONNACK {buffer[pos + 3]}"))
            elif kind == PUBACK:
                (mid,) = struct.unpack_from("!H", buffer, pos + 2)
                sent = self.sent_at.pop(mid, None)
                if sent is not None:
                    self.latencies.append(now - sent)
                    self.acked += 1
            else:
                raise RuntimeError(f"unexpected packet {buffer[pos : pos + 4]!r}")
            pos += 4
        self.buffer = buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before CONNACK"))

    @property
    def free(self) -> int:
        return self.window - len(self.sent_at)

    def publish(self, count: int) -> None:
        assert self.transport is not None
        now_ms = int(time.time() * 1000)
        now = time.perf_counter()
        packets = []
        for _ in range(count):
            ts = self.last_ts = max(now_ms, self.last_ts + 1)
            i = self.sent
            payload = b'{"ts":%d,"metrics":{"a":%d,"b":%d}}' % (ts, i, -i)
            self.mid = self.mid % 65535 + 1
            packets.append(publish_qos1(self.topic, self.mid, payload))
            self.sent_at[self.mid] = now
            self.sent += 1
        self.transport.write(b"".join(packets))


class Responder(DeviceConnection):
    """A device that subscribes to its commands and answers each one at once: PUBACK, then
    `{"ok": true}` at QoS 1 on `.../replies/{command_id}` (once per command id)."""

    def __init__(self, device: dict[str, str]) -> None:
        super().__init__(device)
        base = device["topic"].removesuffix("/telemetry")
        self.replies = base + "/replies/"
        self.first = subscribe_packet(1, base + "/commands/#")
        self.mid = 1  # the SUBSCRIBE's
        self.received = 0
        self.answered: set[str] = set()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data
        pos = 0
        out = []
        while (frame := next_frame(buffer, pos)) is not None:
            first, start, end = frame
            pos = end
            kind = first & 0xF0
            if kind == CONNACK and buffer[start + 1] != 0 and not self.connected.done():
                self.connected.set_exception(RuntimeError(f"CONNACK {buffer[start + 1]}"))
            elif kind == SUBACK and not self.connected.done():
                if buffer[start + 2] == 0x80:
                    self.connected.set_exception(RuntimeError("SUBSCRIBE refused"))
                else:
                    self.connected.set_result(None)
            elif kind == 0x30:  # PUBLISH: a command
                size = int.from_bytes(buffer[start : start + 2], "big")
                qos = (first >> 1) & 3
                offset = start + 2 + size
                if qos:
                    out.append(puback(int.from_bytes(buffer[offset : offset + 2], "big")))
                    offset += 2
                self.received += 1
                command_id = orjson.loads(buffer[offset:end])["command_id"]
                if command_id not in self.answered:
                    self.answered.add(command_id)
                    self.mid = self.mid % 65535 + 1
                    out.append(
                        publish_qos1(encoded(self.replies + command_id), self.mid, b'{"ok":true}')
                    )
        self.buffer = buffer[pos:]
        if out:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before SUBACK"))


async def connect_all(host: str, port: int, devices: list[dict[str, str]], make: Any) -> list[Any]:
    loop = asyncio.get_running_loop()
    limiter = asyncio.Semaphore(200)  # a connect storm without tripping the listen backlog

    async def one(device: dict[str, str]) -> Any:
        async with limiter:
            _, protocol = await loop.create_connection(lambda: make(device), host, port)
            await asyncio.wait_for(protocol.connected, 60)
            return protocol

    return list(await asyncio.gather(*(one(d) for d in devices)))


async def answer(args: argparse.Namespace, devices: list[dict[str, str]]) -> dict[str, Any]:
    started = time.perf_counter()
    conns = await connect_all(args.host, args.port, devices, Responder)
    line = {"connected": len(conns), "connect_s": round(time.perf_counter() - started, 2)}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
    await asyncio.sleep(args.answer)
    for conn in conns:
        assert conn.transport is not None
        conn.transport.write(DISCONNECT)
        conn.transport.close()
    return {
        "received": sum(c.received for c in conns),
        "answered": sum(len(c.answered) for c in conns),
    }


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.devices, "rb") as file:
        devices = [orjson.loads(line) for line in file if line.strip()]
    if args.answer:
        return await answer(args, devices)
    latencies: list[float] = []
    started_connect = time.perf_counter()
    conns = await connect_all(
        args.host, args.port, devices, lambda d: Device(d, args.window, latencies)
    )
    connect_s = time.perf_counter() - started_connect
    if args.idle:
        sys.stdout.write(orjson.dumps({"connected": len(conns), "connect_s": connect_s}).decode())
        sys.stdout.write("\n")
        sys.stdout.flush()
        await asyncio.sleep(args.idle)
        return {"connected": len(conns)}
    target = int(args.rate * args.seconds)
    started = time.perf_counter()
    started_wall = time.time()
    tick = 0.005
    cursor = 0
    while True:
        sent = sum(c.sent for c in conns)
        if sent >= target:
            break
        due = min(target, int(args.rate * (time.perf_counter() - started))) - sent
        # Round-robin over the devices, each bounded by its own in-flight window.
        tries = 0
        while due > 0 and tries < len(conns):
            conn = conns[cursor % len(conns)]
            cursor += 1
            tries += 1
            if conn.free > 0:
                conn.publish(1)
                due -= 1
                tries = 0
        await asyncio.sleep(tick)
    offered_s = time.perf_counter() - started
    deadline = time.perf_counter() + 120
    while sum(c.acked for c in conns) < target and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    finished = time.perf_counter()
    for conn in conns:
        assert conn.transport is not None
        conn.transport.write(DISCONNECT)
        conn.transport.close()
    latencies.sort()
    acked = sum(c.acked for c in conns)
    return {
        "connections": len(conns),
        "connect_s": round(connect_s, 2),
        "sent": sum(c.sent for c in conns),
        "acked": acked,
        "offered_s": round(offered_s, 3),
        "acked_rate": round(acked / (finished - started), 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else float("nan"),
        "started_at": started_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", required=True)
    parser.add_argument("--rate", type=float, default=5000, help="messages per second, total")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--window", type=int, default=20, help="unacked messages per device")
    parser.add_argument("--idle", type=float, default=0, help="connect, hold this long, exit")
    parser.add_argument("--answer", type=float, default=0, help="answer commands this long")
    args = parser.parse_args()
    run_generator(run(args))


if __name__ == "__main__":
    main()
