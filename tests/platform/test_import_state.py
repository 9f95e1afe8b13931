"""Nothing happens at import time: no settings read, no SQL loaded; the settings handed to
create_app are the ones its services use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from iotcore.app import create_app
from tests.conftest import REPO_ROOT, make_settings
from tests.support.users import register

IMPORT_EVERYTHING = """
import pkgutil, sys
opened = []
sys.addaudithook(
    lambda event, args: opened.append(str(args[0]))
    if event == "open" and str(args[0]).endswith(".sql") else None
)
import iotcore
names = [m.name for m in pkgutil.walk_packages(iotcore.__path__, "iotcore.")]
for name in names:
    __import__(name)
assert len(names) > 50, names
assert not opened, opened
print("imported", len(names))
"""


def test_importing_every_module_reads_no_settings_and_no_sql() -> None:
    # Settings() would refuse these values, so a module building settings on import fails
    # the import; the audit hook sees any .sql file opened.
    env = {
        **os.environ,
        "IOT_ENV": "not-an-environment",
        "IOT_DATABASE_POOL_MAX": "not-a-number",
        "IOT_SQL_DIR": "/nonexistent/sql",
    }
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported ")


async def test_create_app_runs_the_queries_of_the_sql_dir_it_is_given(
    tmp_path: Path, database: str
) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(REPO_ROOT / "sql", sql_dir)
    auth = sql_dir / "auth.sql"
    original = auth.read_text()
    changed = original.replace("t.name AS tenant_name", "'copy: ' || t.name AS tenant_name")
    assert changed != original
    auth.write_text(changed)

    for directory, prefix in ((sql_dir, "copy: "), (REPO_ROOT / "sql", "")):
        app = create_app(make_settings(database, sql_dir=directory))
        async with TestClient(TestServer(app)) as client:
            user = await register(client, tenant_name="Acme")
            response = await client.get(
                "/api/v1/auth/me", headers={"Authorization": f"Bearer {user.access_token}"}
            )
            body = await response.json()
            assert response.status == 200, body
            assert body["tenant"]["name"] == prefix + "Acme"
