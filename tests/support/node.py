"""The single node (`iotcore run`, as ops/run.sh starts it) in a child process on free ports."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from iotcore.config import Settings
from tests.conftest import free_port, make_settings, read_log, start_iotcore


@dataclass(frozen=True)
class Node:
    settings: Settings
    process: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    @property
    def internal(self) -> str:
        return f"http://127.0.0.1:{self.settings.metrics_port}"

    @property
    def broker(self) -> str:
        return f"mqtt://127.0.0.1:{self.settings.broker_port}"


def wait_until_ready(url: str, process: subprocess.Popen[bytes], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"iotcore exited {process.returncode}:\n{read_log(process)}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"iotcore not ready within {within_s} s:\n{read_log(process)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def single_node(database: str, **overrides: object) -> Iterator[Node]:
    broker_port = free_port()
    values: dict[str, object] = {
        "http_port": free_port(),
        "metrics_port": free_port(),
        "broker_port": broker_port,
        **overrides,
    }
    settings = make_settings(database, **values)
    process = start_iotcore(settings, "run")
    node = Node(settings, process)
    try:
        wait_until_ready(node.api, process)
        yield node
    finally:
        stop(process)
