"""Commands fanned out to connected devices on the single node (`iotcore run`, embedded
broker), and their round trip.

N real devices (provisioned, claimed and given secrets through the API) each hold their own
authenticated connection (mqtt_devices.py --answer), subscribed to their commands, and
answer each command at once with {"ok": true}. The benchmark POSTs commands through the API
at --rate a second for --seconds, round-robin over the devices, then waits for every one
to end. Figures:

- round trip, created -> completed (the database's created_at and completed_at, what
  `iotcore_command_round_trip_seconds` observes): the POST's commit, the notification,
  delivery, the device's PUBACK and reply, the reply's commit;
- sent -> completed, for what it is worth: a device that answers at once often has its
  reply stored before its PUBACK's `sent`, and then sent_at is the reply's;
- the POST's 202 latency as the API client sees it; commands by final status; the
  machine's load average (the machine is shared).

    .venv/bin/python loadtests/bench_commands.py [--devices 1000] [--rate 100] [--seconds 60]

Needs the local services (ops/services.sh). Uses a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import OWNER, claimed_devices, devices_file, loadavg, rss_mb, start_node, tenant

HERE = Path(__file__).resolve().parent

ROUND_TRIPS = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))
           AS created_p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at))
           AS created_p99,
       max(extract(epoch FROM completed_at - created_at)) AS created_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - sent_at))
           AS sent_p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - sent_at))
           AS sent_p99
FROM commands WHERE status = 'succeeded'
"""


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds) * 1000, 1)


async def statuses(conn: Any) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) FROM commands GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


async def send_commands(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    device_ids: list[str],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """POST `rate` commands a second for `seconds`; returns counts and 202 latencies."""
    latencies: list[float] = []
    failures: list[int] = []
    limiter = asyncio.Semaphore(256)
    tasks: set[asyncio.Task[None]] = set()
    devices = itertools.cycle(device_ids)

    async def one(device_id: str, n: int) -> None:
        async with limiter:
            started = time.perf_counter()
            async with session.post(
                f"{base}/api/v1/devices/{device_id}/commands",
                json={"name": "bench", "params": {"n": n}, "ttl_s": 600},
                headers=headers,
            ) as response:
                await response.read()
                if response.status == 202:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures.append(response.status)

    target = int(rate * seconds)
    started = time.perf_counter()
    sent = 0
    while sent < target:
        due = min(target, int(rate * (time.perf_counter() - started)) + 1)
        while sent < due:
            task = asyncio.create_task(one(next(devices), sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.005)
    offered_s = time.perf_counter() - started
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "posted": sent,
        "accepted": len(latencies),
        "refused": failures[:10],
        "offered_rate": round(sent / offered_s, 1),
        "post_p50_ms": ms(latencies[len(latencies) // 2]) if latencies else None,
        "post_p99_ms": ms(latencies[int(len(latencies) * 0.99)]) if latencies else None,
    }


async def main_async(args: argparse.Namespace) -> None:
    node = await start_node(args.devices + 100)
    db, base, broker_port = node.db, node.base, node.broker_port
    report: dict[str, Any] = {
        "cores": os.cpu_count(),
        "devices": args.devices,
        "rate": args.rate,
        "seconds": args.seconds,
    }
    responders: subprocess.Popen[bytes] | None = None
    conn = await asyncpg.connect(OWNER.format(db=db.name))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with aiohttp.ClientSession() as session:
                owner = await tenant(session, base)
                devices = await claimed_devices(session, base, owner, args.devices)
                file = devices_file(devices, Path(tmp) / "devices")
                responders = subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE / "mqtt_devices.py"),
                        "--port",
                        str(broker_port),
                        "--devices",
                        str(file),
                        "--answer",
                        str(args.seconds + 120),
                    ],
                    stdout=subprocess.PIPE,
                )
                assert responders.stdout is not None
                line = await asyncio.to_thread(responders.stdout.readline)
                report["connected"] = orjson.loads(line)
                print(f"{args.devices} devices connected and subscribed: {line!r}", flush=True)

                report["load_before"] = loadavg()
                report["sending"] = await send_commands(
                    session,
                    base,
                    owner,
                    [d.device_id for d in devices],
                    args.rate,
                    args.seconds,
                )
                report["load_after_sending"] = loadavg()
                accepted = report["sending"]["accepted"]
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    done = await statuses(conn)
                    if sum(done.get(s, 0) for s in ("succeeded", "failed", "expired")) >= accepted:
                        break
                    await asyncio.sleep(0.2)
                report["statuses"] = await statuses(conn)
                row = await conn.fetchrow(ROUND_TRIPS)
                report["round_trip"] = {
                    "completed": row["n"],
                    "created_to_completed_p50_ms": ms(row["created_p50"]),
                    "created_to_completed_p99_ms": ms(row["created_p99"]),
                    "created_to_completed_max_ms": ms(row["created_max"]),
                    "sent_to_completed_p50_ms": ms(row["sent_p50"]),
                    "sent_to_completed_p99_ms": ms(row["sent_p99"]),
                }
                report["node_rss_mb"] = rss_mb(node.pid)
    finally:
        await conn.close()
        if responders is not None:
            responders.kill()
            responders.wait()
        await node.stop()
    print(orjson.dumps(report).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100, help="commands per second")
    parser.add_argument("--seconds", type=float, default=60)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
