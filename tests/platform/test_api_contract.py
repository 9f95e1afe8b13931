"""docs/api.md, the written contract, and the OpenAPI document the server serves agree: the
same methods and paths both ways, and the same contract version everywhere."""

from __future__ import annotations

import re

from iotcore.app import create_app
from iotcore.config import Settings
from iotcore.platform.docs import OPENAPI_KEY
from iotcore.platform.openapi import CONTRACT_VERSION
from tests.conftest import REPO_ROOT

PLANNED = "## Planned within v1"
OPERATION = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^\s`?]+)")


def served() -> set[tuple[str, str]]:
    # Every endpoint, the internal listener's included (create_app without internal_port).
    document = create_app(Settings())[OPENAPI_KEY]
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def documented() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    current, _, planned = text.partition(PLANNED)
    return set(OPERATION.findall(current)), set(OPERATION.findall(planned))


def test_every_served_operation_is_in_the_contract() -> None:
    current, _ = documented()
    missing = served() - current
    assert missing == set(), f"document these in docs/api.md: {sorted(missing)}"


def test_every_operation_in_the_contract_is_served() -> None:
    current, planned = documented()
    assert current - served() == set(), "docs/api.md names operations the server lacks"
    # A planned operation now served belongs above the heading (and in CHANGELOG.md); the
    # planned section may still name served ones it extends (presence adds fields).
    assert (planned & served()) - current == set()


def test_contract_version_is_the_same_in_openapi_docs_and_changelog() -> None:
    document = create_app(Settings())[OPENAPI_KEY]
    assert document["info"]["version"] == CONTRACT_VERSION
    assert CONTRACT_VERSION.split(".")[0] == "1"  # the /api/v1 prefix
    assert f"Contract version **{CONTRACT_VERSION}**" in (REPO_ROOT / "docs/api.md").read_text()
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[?([\d.]+|Unreleased)\]?", changelog, re.M)
    assert newest and re.search(rf"contract {re.escape(CONTRACT_VERSION)}\b", changelog)
