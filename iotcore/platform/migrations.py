"""Schema migrations with yoyo: up, down N, status, and a check of the files' numbering."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoyo import get_backend, read_migrations

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ROLLBACK = re.compile(r"^(\d{4})_([a-z0-9_]+)\.rollback\.sql$")


def yoyo_url(database_url: str) -> str:
    """yoyo wants a driver in the scheme; asyncpg-style URLs do not carry one."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


def check_directory(directory: Path) -> list[str]:
    """Problems with the migration files: numbering must be unique, start at 0001, have no gap,
    and every migration must have its rollback beside it. An empty list means all is well."""
    problems: list[str] = []
    forwards: dict[int, list[str]] = {}
    rollbacks: set[str] = set()
    for path in sorted(directory.iterdir()):
        name = path.name
        if _ROLLBACK.match(name):
            rollbacks.add(name.removesuffix(".rollback.sql"))
        elif match := _FILE.match(name):
            forwards.setdefault(int(match.group(1)), []).append(name.removesuffix(".sql"))
        elif path.suffix == ".sql" or path.suffix == ".py":
            problems.append(f"{name}: not named NNNN_lowercase_name.sql")
    for number, names in sorted(forwards.items()):
        if len(names) > 1:
            problems.append(f"number {number:04d} is used by {', '.join(names)}")
    expected = list(range(1, len(forwards) + 1))
    if sorted(forwards) != expected:
        missing = sorted(set(range(1, max(forwards, default=0) + 1)) - set(forwards))
        problems.append(
            f"numbers must run 0001..{len(forwards):04d} without gaps; missing: "
            + ", ".join(f"{n:04d}" for n in missing)
        )
    for names in forwards.values():
        for name in names:
            if name not in rollbacks:
                problems.append(f"{name}.sql has no {name}.rollback.sql")
    orphans = rollbacks - {n for names in forwards.values() for n in names}
    problems.extend(f"{name}.rollback.sql has no forward migration" for name in sorted(orphans))
    return problems


@dataclass(frozen=True)
class MigrationStatus:
    migration_id: str
    applied: bool


class Migrator:
    def __init__(self, owner_url: str, directory: Path) -> None:
        self._url = yoyo_url(owner_url)
        self._directory = directory

    @contextmanager
    def _session(self) -> Iterator[tuple[Any, Any]]:
        backend = get_backend(self._url)
        try:
            migrations = read_migrations(str(self._directory))
            with backend.lock():
                yield backend, migrations
        finally:
            backend.connection.close()

    def up(self) -> list[str]:
        with self._session() as (backend, migrations):
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
            return [m.id for m in pending]

    def down(self, steps: int) -> list[str]:
        with self._session() as (backend, migrations):
            # to_rollback lists applied migrations newest first.
            chosen = backend.to_rollback(migrations)[:steps]
            backend.rollback_migrations(chosen)
            return [m.id for m in chosen]

    def status(self) -> list[MigrationStatus]:
        with self._session() as (backend, migrations):
            applied = backend.get_applied_migration_hashes()
            return [MigrationStatus(m.id, m.hash in applied) for m in migrations]
