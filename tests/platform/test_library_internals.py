"""Private parts of libraries are used only where no public API does the job, each library
pinned to an exact version, and these tests fail when an upgrade changes what is used.

- aiohttp: ApiRunner overrides `AppRunner._make_server` (iotcore/platform/http/server.py) so that
  requests its parser refuses are answered with the error envelope.
- aiomqtt, paho-mqtt: the MQTT consumer (tests/telemetry/test_consumer_internals.py).
"""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from importlib.metadata import version

from aiohttp import web

from iotcore.platform.http.server import ApiRunner
from tests.conftest import REPO_ROOT

PINNED = ("aiohttp", "aiomqtt", "paho-mqtt")
# The private names of libraries each module may touch.
ALLOWED_PRIVATE = {
    "iotcore/platform/http/server.py": {"_make_server"},
    "iotcore/mqtt/consumer.py": {"_client", "_loop", "_disconnected", "_sock", "_packet_queue"},
}


def test_the_installed_versions_are_the_pinned_ones() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    pins = {}
    for spec in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", spec)
        if match:
            pins[match[1]] = match[2]
    for name in PINNED:
        assert pins.get(name) == version(name), f"{name}: pin it exactly; private parts are used"


def test_aiohttp_app_runner_still_builds_its_server_in_make_server() -> None:
    source = inspect.getsource(web.AppRunner._make_server)
    assert "await self._app.startup()" in source  # the app starts up in the overridden step
    assert "_make_handler(" in source  # and its Server comes from there
    server = inspect.signature(web.Server.__init__).parameters
    assert {"handler", "request_factory", "loop", "kwargs"} <= server.keys()
    handler = inspect.signature(web.RequestHandler.handle_error).parameters
    assert list(handler) == ["self", "request", "status", "exc", "message"]


async def test_the_api_runner_serves_through_the_envelope_server() -> None:
    from iotcore.config import Settings

    runner = ApiRunner(web.Application(), Settings())
    await runner.setup()
    try:
        assert type(runner.server).__name__ == "_EnvelopeServer"
        assert type(runner.server()).__name__ == "_EnvelopeRequestHandler"
    finally:
        await runner.cleanup()


def test_no_other_private_name_of_a_library_is_used() -> None:
    """`x._name` or `from lib import _name` where iotcore defines no such name: only the
    uses listed above, in the modules listed above."""
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "iotcore").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("iotcore"):
                private_module = any(_is_private(p) for p in (node.module or "").split("."))
                names |= {a.name for a in node.names if a.name.startswith("_") or private_module}
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                names.add(node.attr)  # on self too: an attribute a library's base class set
        if names:
            found[str(path.relative_to(REPO_ROOT))] = names
    own = _own_private_names()
    foreign = {
        path: names - own - ALLOWED_PRIVATE.get(path, set()) for path, names in found.items()
    }
    assert {path: names for path, names in foreign.items() if names} == {}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_names() -> set[str]:
    """Private names our own modules define (functions, classes, attributes set on self)."""
    names: set[str] = set()
    for path in (REPO_ROOT / "iotcore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if _is_private(n)}
