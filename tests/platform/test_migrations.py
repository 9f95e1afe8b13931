"""Migrations: empty database to head, every rollback, up again; numbering checks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from iotcore.platform.migrations import Migrator, check_directory
from tests.conftest import OWNER_URL, REPO_ROOT, RUN_ID, owner_execute, with_database

MIGRATIONS = REPO_ROOT / "migrations"


async def _user_objects(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
              AND c.relname NOT LIKE '\\_yoyo%' AND c.relname <> 'yoyo_lock'
            UNION ALL
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public'
            """
        )
    finally:
        await conn.close()
    return {r[0] for r in rows}


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"iotcore_empty_{RUN_ID}"
    asyncio.run(owner_execute(f"CREATE DATABASE {name}"))
    try:
        yield with_database(OWNER_URL, name)
    finally:
        asyncio.run(owner_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_up_down_all_and_up_again(empty_database: str) -> None:
    migrator = Migrator(empty_database, MIGRATIONS)
    files = sorted(
        p.name.removesuffix(".sql")
        for p in MIGRATIONS.glob("[0-9]*_*.sql")
        if not p.name.endswith(".rollback.sql")
    )

    assert migrator.up() == files
    assert all(s.applied for s in migrator.status())
    assert migrator.up() == [], "re-running up must be a no-op"
    at_head = asyncio.run(_user_objects(empty_database))
    assert at_head, "head creates objects"

    assert migrator.down(len(files)) == list(reversed(files))
    assert not any(s.applied for s in migrator.status())
    assert asyncio.run(_user_objects(empty_database)) == set(), "rollbacks leave nothing behind"

    assert migrator.up() == files
    assert asyncio.run(_user_objects(empty_database)) == at_head


def _copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target)
    return target


def test_check_passes_on_the_shipped_migrations() -> None:
    assert check_directory(MIGRATIONS) == []


def test_check_fails_on_a_gap(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    gap = len(list(directory.glob("*.rollback.sql"))) + 2
    (directory / f"{gap:04d}_later.sql").write_text("SELECT 1;")
    (directory / f"{gap:04d}_later.rollback.sql").write_text("SELECT 1;")
    assert any("without gaps" in p for p in check_directory(directory))


def test_check_fails_on_a_duplicate_number(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    (directory / "0001_other.sql").write_text("SELECT 1;")
    (directory / "0001_other.rollback.sql").write_text("SELECT 1;")
    assert any("0001 is used by" in p for p in check_directory(directory))


def test_check_fails_on_a_missing_rollback(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    count = len(list(directory.glob("*.rollback.sql")))
    (directory / f"{count + 1:04d}_no_rollback.sql").write_text("SELECT 1;")
    assert any("has no" in p and "rollback" in p for p in check_directory(directory))


def test_check_fails_on_a_misnamed_file(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    (directory / "3_bad.sql").write_text("SELECT 1;")
    assert any("not named" in p for p in check_directory(directory))


def test_cli_check_exits_nonzero_on_a_misnumbered_migration(tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path)
    first = sorted(directory.glob("0001_*.sql"))
    for path in first:
        path.rename(directory / path.name.replace("0001_", "0000_"))
    result = subprocess.run(
        [sys.executable, "-m", "iotcore.cli", "migrate", "--dir", str(directory), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "migration check" in result.stderr

    ok = subprocess.run(
        [sys.executable, "-m", "iotcore.cli", "migrate", "--dir", str(MIGRATIONS), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
