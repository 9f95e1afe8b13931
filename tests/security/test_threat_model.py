"""docs/threat-model.md names the test that proves each mitigation: every one must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_the_threat_model_cites_exists() -> None:
    text = (REPO_ROOT / "docs" / "threat-model.md").read_text()
    cited = CITED.findall(text)
    assert len(cited) > 50, "the threat model cites its proofs as `tests/file.py::test_name`"
    missing = []
    for path, name in sorted(set(cited)):
        source = REPO_ROOT / path
        defined = re.compile(rf"^(async )?def {name}\(", re.MULTILINE)
        if not source.exists() or not defined.search(source.read_text()):
            missing.append(f"{path}::{name}")
    assert missing == [], "update docs/threat-model.md to the tests' current names"
