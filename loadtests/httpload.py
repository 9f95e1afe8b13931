"""A small closed-loop HTTP load generator (aiohttp client) and helpers shared by benchmarks.

Each of `concurrency` workers sends one request, waits for the answer, sends the next, for
`duration_s` seconds. Latencies are measured per request; status counts are kept.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

RequestFactory = Callable[[int], tuple[str, str, dict[str, str], bytes | None]]


@dataclass
class LoadResult:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.rate:>9.0f} req/s  p50 {self.percentile(50):7.2f} ms  "
            f"p95 {self.percentile(95):7.2f} ms  p99 {self.percentile(99):7.2f} ms  "
            f"statuses {dict(self.statuses)}"
        )


async def run_load(
    name: str, make_request: RequestFactory, concurrency: int, duration_s: float
) -> LoadResult:
    result = LoadResult(name)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + duration_s

        async def worker(worker_id: int) -> None:
            counter = 0
            while time.perf_counter() < deadline:
                method, url, headers, body = make_request(worker_id * 1_000_000 + counter)
                counter += 1
                started = time.perf_counter()
                async with session.request(method, url, headers=headers, data=body) as response:
                    await response.read()
                    result.statuses[response.status] += 1
                result.latencies_ms.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


def spread(request_number: int, items: int) -> int:
    """For a RequestFactory: which of `items` (devices, say) a request uses. Worker w's k-th
    request takes item (w + k) mod items, so the workers start on different items instead of
    all asking for the same one at the same moment."""
    worker, counter = divmod(request_number, 1_000_000)
    return (worker + counter) % items


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used: per-request CPU holds still on a
    loaded machine, where rates and latencies do not."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


HELLO_WORLD = """
import sys
from aiohttp import web
async def hello(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/", hello)
if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
    import uvloop
    uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start_hello_world(port: int, uvloop: bool = True) -> subprocess.Popen[bytes]:
    """The baseline: an aiohttp hello-world, measured in the same run as the real thing."""
    args = [sys.executable, "-c", HELLO_WORLD, str(port)] + (["uvloop"] if uvloop else [])
    process = subprocess.Popen(args)
    wait_http(f"http://127.0.0.1:{port}/")
    return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(
    port: int, wrapper: Sequence[str] = (), timeout_s: float = 30, **env: str
) -> subprocess.Popen[bytes]:
    """One `iotcore api` process for a benchmark: quiet logs, its own Redis prefix, no
    registration or claim throttle (every benchmark client is 127.0.0.1, and claims run
    concurrently), local database defaults."""
    settings = {
        "IOT_HTTP_HOST": "127.0.0.1",
        "IOT_HTTP_PORT": str(port),
        "IOT_LOG_LEVEL": "WARNING",
        "IOT_REGISTER_MAX_PER_IP": "100000",
        "IOT_CLAIM_MAX_FAILURES": "100000",
        "IOT_REDIS_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
        # The internal listener (/metrics, broker hooks) on a free port, not the shared 9100.
        "IOT_METRICS_PORT": str(free_port()),
        **env,
    }
    full = dict(os.environ, **settings)
    full.setdefault(
        "IOT_DATABASE_URL", "postgresql://iotcore_service:iotcore-dev@127.0.0.1:5432/iotcore"
    )
    full.setdefault(
        "IOT_DATABASE_OWNER_URL", "postgresql://iotcore_owner:iotcore-dev@127.0.0.1:5432/iotcore"
    )
    command = [*wrapper, sys.executable, "-m", "iotcore.cli", "api"]
    process = subprocess.Popen(command, env=full)
    wait_http(f"http://127.0.0.1:{port}/api/v1/health/live", timeout_s)
    return process
