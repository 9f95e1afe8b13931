"""The ingest benchmark's floor: `mosquitto_sub -F '%t %p'` piped into this, a minimal
batched insert. No validation, no device check, no tenant context, no acks held (mosquitto_sub
acks on receipt): whatever is in the pipe is one `unnest ... ON CONFLICT DO NOTHING`.

    mosquitto_sub -q 1 -t 'tenants/+/devices/+/telemetry' -F '%t %p' -C N \\
        | python loadtests/baseline_insert.py OWNER_DSN

Prints one JSON line when stdin closes: messages, rows, and the wall time of the last commit.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import asyncpg
import orjson

INSERT = """
INSERT INTO telemetry (tenant_id, device_id, metric, ts, value)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::float8[])
ON CONFLICT (device_id, metric, ts) DO NOTHING
"""


async def main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    messages = rows = 0
    rest = b""
    while True:
        chunk = await reader.read(1 << 22)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        columns: tuple[list[str], list[str], list[str], list[datetime], list[float]] = (
            [],
            [],
            [],
            [],
            [],
        )
        for line in lines:
            topic, _, payload = line.partition(b" ")
            parts = topic.decode().split("/")
            body = orjson.loads(payload)
            ts = datetime.fromtimestamp(body["ts"] / 1000, UTC)
            for metric, value in body["metrics"].items():
                columns[0].append(parts[1])
                columns[1].append(parts[3])
                columns[2].append(metric)
                columns[3].append(ts)
                columns[4].append(float(value))
        messages += len(lines)
        rows += len(columns[0])
        if columns[0]:
            await conn.execute(INSERT, *columns)
    finished = time.time()
    await conn.close()
    print(orjson.dumps({"messages": messages, "rows": rows, "finished_at": finished}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
