"""Settings validation, and production refusing default or short secrets."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from iotcore.config import Settings

STRONG = "x" * 40


def strong_production(**overrides: str) -> dict[str, str]:
    values = {
        "env": "production",
        "jwt_keys": f"k1:{STRONG}",
        "jwt_signing_kid": "k1",
        "manufacturing_keys": f"m1:{'y' * 40}",
        "manufacturing_signing_key_id": "m1",
        "mqtt_hook_token": "z" * 40,
        "ingest_mqtt_password": "w" * 40,
        "database_url": "postgresql://iotcore_service:s3cret-from-vault@db:5432/iotcore",
        "database_owner_url": "postgresql://iotcore_owner:0wner-from-vault@db:5432/iotcore",
    }
    values.update(overrides)
    return values


def test_production_accepts_strong_secrets() -> None:
    settings = Settings(**strong_production())  # type: ignore[arg-type]
    assert settings.jwt_key_ring == {"k1": STRONG}


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("jwt_keys", "k1:short", "IOT_JWT_KEYS"),
        ("manufacturing_keys", "m1:short", "IOT_MANUFACTURING_KEYS"),
        ("mqtt_hook_token", "short", "IOT_MQTT_HOOK_TOKEN"),
    ],
)
def test_production_refuses_short_secrets(field: str, value: str, variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings(**strong_production(**{field: value}))  # type: ignore[arg-type]


def test_production_refuses_the_development_database_password() -> None:
    url = "postgresql://iotcore_service:iotcore-dev@db:5432/iotcore"
    with pytest.raises(ValidationError, match="IOT_DATABASE_URL"):
        Settings(**strong_production(database_url=url))  # type: ignore[arg-type]


def test_signing_kid_must_be_in_the_ring() -> None:
    with pytest.raises(ValidationError, match="IOT_JWT_SIGNING_KID"):
        Settings(jwt_keys=f"a:{STRONG}", jwt_signing_kid="b")  # type: ignore[arg-type]


def test_key_ring_parses_several_keys_and_colons_in_secrets() -> None:
    settings = Settings(jwt_keys=f"old:{STRONG},new:a:b:{STRONG}", jwt_signing_kid="new")  # type: ignore[arg-type]
    assert settings.jwt_key_ring == {"old": STRONG, "new": f"a:b:{STRONG}"}


def test_process_refuses_to_start_in_production_with_default_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "IOT_ENV": "production"}
    result = subprocess.run(
        [sys.executable, "-m", "iotcore.cli", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "IOT_JWT_KEYS" in result.stderr
    assert "refusing to start in production" in result.stderr
