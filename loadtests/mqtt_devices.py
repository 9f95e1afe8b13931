"""Real devices over MQTT 3.1.1: one connection per device, authenticated with its own id and
secret (client id = user name = device id), QoS 1 to its own telemetry topic, packets built
as bytes so that 1,000 connections cost the generator little CPU.

    python loadtests/mqtt_devices.py --port P --devices FILE --rate R --seconds S
    python loadtests/mqtt_devices.py --port P --devices FILE --idle S   # connect, then hold

FILE holds one JSON object a line: {"device_id", "secret", "topic"}. Prints one JSON line:
messages sent and acknowledged, seconds, and PUBLISH-to-PUBACK latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time

import orjson

PUBLISH_QOS1 = 0x32
PUBACK = 0x40


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(device_id: str, secret: str, keepalive: int) -> bytes:
    # 3.1.1, clean session, user name and password.
    flags = 0x02 | 0x80 | 0x40
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big")
    body += _str(device_id) + _str(device_id) + _str(secret)
    return b"\x10" + remaining_length(len(body)) + body


class Device(asyncio.Protocol):
    def __init__(self, device: dict[str, str], window: int, latencies: list[float]) -> None:
        self.device = device
        self.topic = _str(device["topic"])
        self.window = window
        self.latencies = latencies
        self.sent_at: dict[int, float] = {}
        self.sent = 0
        self.acked = 0
        self.mid = 0
        self.last_ts = 0
        self.buffer = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        keepalive = 0
        self.transport.write(
            connect_packet(self.device["device_id"], self.device["secret"], keepalive)
        )

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        now = time.perf_counter()
        pos = 0
        while len(buffer) - pos >= 4:
            kind = buffer[pos]
            if kind == 0x20:
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
            body = self.topic + self.mid.to_bytes(2, "big") + payload
            packets.append(bytes((PUBLISH_QOS1,)) + remaining_length(len(body)) + body)
            self.sent_at[self.mid] = now
            self.sent += 1
        self.transport.write(b"".join(packets))


async def connect_all(
    host: str, port: int, devices: list[dict[str, str]], window: int, latencies: list[float]
) -> list[Device]:
    loop = asyncio.get_running_loop()
    limiter = asyncio.Semaphore(200)  # a connect storm without tripping the listen backlog

    async def one(device: dict[str, str]) -> Device:
        async with limiter:
            _, protocol = await loop.create_connection(
                lambda: Device(device, window, latencies), host, port
            )
            await asyncio.wait_for(protocol.connected, 60)
            return protocol

    return list(await asyncio.gather(*(one(d) for d in devices)))


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, float]:
    with open(args.devices, "rb") as file:
        devices = [orjson.loads(line) for line in file if line.strip()]
    latencies: list[float] = []
    started_connect = time.perf_counter()
    conns = await connect_all(args.host, args.port, devices, args.window, latencies)
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
        conn.transport.write(b"\xe0\x00")
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
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.stdout.write(orjson.dumps(asyncio.run(run(args))).decode() + "\n")


if __name__ == "__main__":
    main()
