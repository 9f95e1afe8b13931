"""Every runbook has a "## Check" section whose shell block runs green against the single
node, so a runbook cannot rot: a renamed metric, setting, table or command fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OWNER_URL, REPO_ROOT, free_port, settings_env, with_database
from tests.support.node import Node, single_node

RUNBOOKS = sorted(p for p in (REPO_ROOT / "runbooks").glob("*.md") if p.name != "README.md")
CHECK = re.compile(r"^## Check\n(.*?)(?=^## |\Z)", re.M | re.S)
FENCE = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)


def check_commands(runbook: Path) -> str:
    section = CHECK.search(runbook.read_text())
    assert section, f"{runbook.name} has no '## Check' section"
    blocks = FENCE.findall(section.group(1))
    assert blocks, f"{runbook.name}: its Check section has no ```sh block"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def node(database: str) -> Iterator[Node]:
    with single_node(database) as running:
        yield running


@pytest.fixture(scope="module")
def environment(node: Node, database: str) -> dict[str, str]:
    """What an operator has on a host of the deployment: the settings (.env), the API, the
    internal listener and the broker, the backup role's URL, and the `iotcore` command."""
    env = settings_env(node.settings)
    env.update(
        IOT_API=node.api,
        IOT_INTERNAL=node.internal,
        IOT_BROKER=node.broker,
        IOT_BACKUP_URL=with_database(OWNER_URL, database).replace(
            "iotcore_owner", "iotcore_backup"
        ),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def run_check(commands: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_runbook_index_lists_every_runbook() -> None:
    index = (REPO_ROOT / "runbooks" / "README.md").read_text()
    assert [p.name for p in RUNBOOKS if f"({p.name})" not in index] == []


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=[p.stem for p in RUNBOOKS])
def test_runbook_check_passes_on_the_single_node(
    runbook: Path, environment: dict[str, str]
) -> None:
    result = run_check(check_commands(runbook), environment)
    assert result.returncode == 0, (
        f"{runbook.name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def test_redis_check_fails_when_redis_is_down(environment: dict[str, str]) -> None:
    commands = check_commands(REPO_ROOT / "runbooks" / "redis-down.md")
    stopped = {**environment, "IOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_check(commands, stopped)
    assert result.returncode != 0
    assert "Connection refused" in result.stdout + result.stderr


def test_broker_check_fails_when_the_broker_is_down(environment: dict[str, str]) -> None:
    commands = check_commands(REPO_ROOT / "runbooks" / "broker-down-or-full.md")
    stopped = {**environment, "IOT_BROKER_PORT": str(free_port())}
    assert run_check(commands, stopped).returncode != 0
