"""A QoS 1 load generator that writes MQTT 3.1.1 PUBLISH packets straight to sockets.

A Python MQTT client spends tens of microseconds per message, so on a 2-core machine the
publishers would take the CPU the system under test needs. This one builds the bytes
itself and reads PUBACKs only to count them and to bound what is in flight per connection
(paho stalls past 65,535 queued messages; so would the packet ids here), so one process
offers tens of thousands of messages a second for a few percent of a core.

Every message is one reading of two metrics whose `ts` is the wall clock at publish time
(kept strictly increasing per device), so the consumer's publish-to-commit lag is
`commit time - ts`.

    python loadtests/mqtt_load.py --port P --topics FILE (--count N | --rate R --seconds S)

Prints one JSON line: messages sent and acknowledged by the broker, seconds, rate.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from mqtt_wire import DISCONNECT, PUBACK, connect_packet, encoded, publish_qos1, run_generator


class Connection:
    def __init__(self, topics: list[str], window: int, last_ts: dict[str, int]) -> None:
        self.topics = [(t, encoded(t)) for t in topics]
        self.window = window
        self.last_ts = last_ts
        self.sent = 0
        self.acked = 0
        self.mid = 0
        self.room = asyncio.Event()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(connect_packet(f"load-{uuid.uuid4().hex[:10]}"))
        connack = await self.reader.readexactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"CONNACK refused: {connack!r}")

    async def count_acks(self) -> None:
        """The broker sends us nothing but PUBACKs (4 bytes each)."""
        assert self.reader is not None
        pending = 0
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            if data[0] != PUBACK and pending == 0:
                raise SystemExit(f"unexpected packet {data[:4]!r}")
            pending += len(data)
            self.acked += pending // 4
            pending %= 4
            self.room.set()

    @property
    def free(self) -> int:
        return self.window - (self.sent - self.acked)

    def publish(self, count: int) -> None:
        assert self.writer is not None
        now_ms = int(time.time() * 1000)
        packets = []
        for _ in range(count):
            topic, topic_bytes = self.topics[self.sent % len(self.topics)]
            ts = max(now_ms, self.last_ts.get(topic, 0) + 1)
            self.last_ts[topic] = ts
            i = self.sent
            payload = b'{"ts":%d,"metrics":{"a":%d,"b":%d}}' % (ts, i, -i)
            self.mid = self.mid % 65535 + 1
            packets.append(publish_qos1(topic_bytes, self.mid, payload))
            self.sent += 1
        self.writer.write(b"".join(packets))


async def run(args: argparse.Namespace) -> dict[str, float]:
    topics = open(args.topics).read().split()  # noqa: SIM115
    shard, shards = (int(x) for x in args.shard.split("/"))
    topics = topics[shard::shards]
    last_ts: dict[str, int] = {}
    conns = [
        Connection(topics[i :: args.connections], args.window, last_ts)
        for i in range(args.connections)
    ]
    for conn in conns:
        await conn.open(args.host, args.port)
    readers = [asyncio.create_task(conn.count_acks()) for conn in conns]
    started = time.perf_counter()
    target = args.count if args.count else int(args.rate * args.seconds)
    tick = 0.005
    while True:
        sent = sum(c.sent for c in conns)
        if sent >= target:
            break
        elapsed = time.perf_counter() - started
        due = target - sent if not args.rate else min(target, int(args.rate * elapsed)) - sent
        for conn in conns:
            share = min(conn.free, -(-due // len(conns)), target - sum(c.sent for c in conns))
            if share > 0:
                conn.publish(share)
        if args.rate:
            await asyncio.sleep(tick)
        else:
            for conn in conns:
                conn.room.clear()
            await asyncio.wait(
                [asyncio.ensure_future(c.room.wait()) for c in conns],
                timeout=0.05,
                return_when=asyncio.FIRST_COMPLETED,
            )
    offered_s = time.perf_counter() - started
    deadline = time.perf_counter() + 60
    while sum(c.acked for c in conns) < target and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for conn in conns:
        assert conn.writer is not None
        conn.writer.write(DISCONNECT)
        await conn.writer.drain()
        conn.writer.close()
    for task in readers:
        task.cancel()
    acked = sum(c.acked for c in conns)
    return {
        "sent": sum(c.sent for c in conns),
        "acked": acked,
        "seconds": round(offered_s, 3),
        "rate": round(target / offered_s, 1),
        "started_at": time.time() - (time.perf_counter() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topics", required=True, help="a file with one topic per line")
    parser.add_argument("--count", type=int, default=0, help="send this many, as fast as acked")
    parser.add_argument("--rate", type=float, default=0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--shard", default="0/1", help="i/n: publish to every n-th topic")
    parser.add_argument("--window", type=int, default=2000, help="unacked messages per conn")
    args = parser.parse_args()
    if not args.count and not args.rate:
        parser.error("give --count or --rate")
    run_generator(run(args))


if __name__ == "__main__":
    main()
