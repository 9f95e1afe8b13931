"""Named queries loaded from sql/<domain>.sql, so SQL stays SQL and out of the Python code.

A file holds blocks introduced by `-- name: query_name`; everything up to the next such line
is the query. `queries("auth")["find_user"]` returns the text.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from iotcore.config import get_settings

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
def queries(domain: str, sql_dir: Path | None = None) -> dict[str, str]:
    directory = sql_dir or get_settings().sql_dir
    return parse_queries((directory / f"{domain}.sql").read_text(encoding="utf-8"))
