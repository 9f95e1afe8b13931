"""A QoS 1 publisher process for the ingest benchmark: bounded in-flight messages (paho
stalls past 65,535 queued), one reading with two metrics per message, distinct ts.

    python loadtests/mqtt_publisher.py HOST PORT TOPICS_FILE COUNT START_MS
"""

from __future__ import annotations

import asyncio
import sys

import aiomqtt
import orjson

IN_FLIGHT = 1000


async def main(host: str, port: int, topics: list[str], count: int, start_ms: int) -> None:
    limiter = asyncio.Semaphore(IN_FLIGHT)
    async with aiomqtt.Client(host, port, max_inflight_messages=IN_FLIGHT, timeout=60) as client:

        async def one(i: int) -> None:
            async with limiter:
                payload = orjson.dumps({"ts": start_ms + i, "metrics": {"a": i, "b": -i}})
                await client.publish(topics[i % len(topics)], payload, qos=1)

        await asyncio.gather(*(one(i) for i in range(count)))


if __name__ == "__main__":
    host, port, topics_file, count, start_ms = sys.argv[1:6]
    topics = open(topics_file).read().split()  # noqa: SIM115
    asyncio.run(main(host, int(port), topics, int(count), int(start_ms)))
