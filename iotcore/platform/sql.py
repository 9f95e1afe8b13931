"""Named queries loaded from sql/<domain>.sql, so SQL stays SQL and out of the Python code.

A file holds blocks introduced by `-- name: query_name`; everything up to the next such line
is the query. `queries("auth", sql_dir)["find_user"]` returns the text; services get theirs
through `Platform.queries`, from the directory in the settings the process started with.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def queries(domain: str, sql_dir: Path) -> dict[str, str]:
    """Read once per directory and domain."""
    return parse_queries((sql_dir / f"{domain}.sql").read_text(encoding="utf-8"))
