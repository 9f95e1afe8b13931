"""`.env.example` documents every setting the code reads, and nothing it does not."""

from __future__ import annotations

import re

from iotcore.config import Settings
from tests.conftest import REPO_ROOT


def test_env_example_documents_every_setting() -> None:
    text = (REPO_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(IOT_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    expected = {f"IOT_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from .env.example"
    assert documented - expected == set(), ".env.example names settings that do not exist"
