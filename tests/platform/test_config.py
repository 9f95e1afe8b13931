"""Settings validation, and production refusing default or short secrets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from iotcore.config import (
    TOOLING_PREFIXES,
    Settings,
    UnknownVariables,
    check_environment,
    unknown_variables,
)

STRONG = "x" * 40


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "iotcore.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


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
    result = run_cli(env, "api")
    assert result.returncode == 2
    assert "IOT_JWT_KEYS" in result.stderr
    assert "refusing to start in production" in result.stderr


REPO = Path(__file__).resolve().parents[2]
# Settings read through a derived property rather than by name.
READ_AS = {"jwt_keys": "jwt_key_ring", "manufacturing_keys": "manufacturing_key_ring"}
# Read by the settings' own validation (production refuses weak secrets and unknown names).
READ_BY_SETTINGS = {"env"}


def test_unknown_variable_is_reported_outside_production() -> None:
    environ = {"IOT_WRITER_BATCH_ROW": "10", "IOT_TEST_STORAGE": "native", "IOT_API": "x"}
    assert check_environment(Settings(), environ) == ["IOT_WRITER_BATCH_ROW"]


def test_known_variables_are_not_reported_in_any_case() -> None:
    environ = {"iot_log_level": "DEBUG", "IOT_WRITER_BATCH_ROWS": "10", "IOT_FUZZ_SEED": "1"}
    assert check_environment(Settings(), environ) == []


def test_production_refuses_an_unknown_variable() -> None:
    settings = Settings(**strong_production())  # type: ignore[arg-type]
    with pytest.raises(UnknownVariables, match=r"IOT_JWT_KEY .*refusing to start in production"):
        check_environment(settings, {"IOT_JWT_KEY": "misspelt"})


def test_process_refuses_to_start_in_production_with_unknown_variable() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "IOT_INGEST_MQTT_PASSWRD": "typo",
        **{f"IOT_{name.upper()}": value for name, value in strong_production().items()},
    }
    result = run_cli(env, "migrate", "check")
    assert result.returncode == 2, result.stderr
    assert "IOT_INGEST_MQTT_PASSWRD" in result.stderr
    assert "refusing to start in production" in result.stderr


def test_process_warns_about_unknown_variable_in_development() -> None:
    env = {"PATH": "/usr/bin:/bin", "IOT_ENV": "development", "IOT_RETENTION_DAYS": "30"}
    result = run_cli(env, "migrate", "check")
    assert result.returncode == 0, result.stderr
    warning = json.loads(result.stderr.splitlines()[0])
    assert warning["msg"] == "unknown settings ignored"
    assert warning["variables"] == ["IOT_RETENTION_DAYS"]


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"writer_batch_rows": 2000, "writer_queue_rows": 1000}, "IOT_WRITER_BATCH_ROWS"),
        ({"telemetry_retention_days": 7, "telemetry_max_past_s": 8 * 86400}, "MAX_PAST_S"),
        (
            {"telemetry_retention_days": 30, "telemetry_compress_after_days": 30},
            "IOT_TELEMETRY_COMPRESS_AFTER_DAYS",
        ),
        ({"access_token_ttl_s": 3600, "refresh_token_ttl_s": 600}, "IOT_ACCESS_TOKEN_TTL_S"),
        ({"job_batch_pause_s": 60}, "IOT_JOB_BATCH_PAUSE_S"),
        ({"emqx_api_url": "http://emqx:18083", "emqx_api_key": "k"}, "IOT_EMQX_API_SECRET"),
        ({"mqtt_share_group": ""}, "IOT_MQTT_SHARE_GROUP"),
    ],
)
def test_contradicting_settings_are_refused(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings(**overrides)  # type: ignore[arg-type]


def test_defaults_are_consistent() -> None:
    settings = Settings(**strong_production())  # type: ignore[arg-type]
    assert settings.writer_batch_rows <= settings.writer_queue_rows


def test_every_setting_is_read_by_the_code() -> None:
    code = "\n".join(
        path.read_text()
        for path in (REPO / "iotcore").rglob("*.py")
        if path != REPO / "iotcore" / "config.py"
    )
    unread = [
        name
        for name in Settings.model_fields.keys() - READ_BY_SETTINGS
        if not re.search(rf"\.{READ_AS.get(name, name)}\b", code)
    ]
    assert unread == []


def repository_files() -> list[Path]:
    """The files git tracks or would add (not what is ignored, like .venv or caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    paths = (REPO / name for name in listed.decode().split("\0") if name)
    return [path for path in paths if path.is_file()]


def test_every_iot_variable_in_the_repository_is_known() -> None:
    """A name documented or used anywhere (docs, runbooks, compose, ops, tests) is a setting
    or a tooling variable, so the unknown-variable check never refuses a real one."""
    settings = Settings.variables()
    unknown: dict[str, str] = {}
    for path in repository_files():
        if path == Path(__file__):  # its misspelt names are the point
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in re.finditer(r"\bIOT_[A-Z0-9_]*[A-Z0-9](_\*)?", text):
            name = match.group(0)
            if f"{name}_" in TOOLING_PREFIXES:
                continue
            if name.endswith("_*"):  # a family, e.g. IOT_RATE_LIMIT_DEVICE_*
                if not any(s.startswith(name[:-1]) for s in settings):
                    unknown[name] = str(path.relative_to(REPO))
            elif unknown_variables({name: ""}):
                unknown[name] = str(path.relative_to(REPO))
    assert unknown == {}
