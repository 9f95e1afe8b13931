"""Schemathesis hooks for tests/fuzz/test_openapi_fuzz.py, loaded by the `schemathesis run`
child process through SCHEMATHESIS_HOOKS=tests.fuzz.schemathesis_hooks.

- Credentials: every request carries valid credentials of the kind its operation declares
  (`security` in the OpenAPI document), applied as a requests auth so that signatures are
  computed over the exact bytes sent, with a fresh timestamp (never a replay).
- Seeds: path parameters are drawn from real ids of the caller's tenant as well as the
  generated ones; a few bodies (login, refresh, claim, telemetry) and queries (a metric the
  devices report) from values that are valid.
- Record: one JSON line per call (operation, status, credential kind, phase), which the test
  reads to count operations covered and cases run.

The seeds and credentials come from the JSON file named by IOT_FUZZ_CONTEXT, written by the
test before it starts schemathesis.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
from collections.abc import Callable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from hypothesis import strategies as st

from iotcore.tools import factory_client

WRITING = {"POST", "PUT", "PATCH"}
DESTRUCTIVE_SUFFIXES = ("/reset", "/purge")


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class SignedRequestAuth(requests.auth.AuthBase):
    """API.md's request signature, over the prepared request: method, path without the query,
    SHA-256 of the body bytes as sent."""

    def __init__(self, identity_header: str, identity: str, key: bytes) -> None:
        self.identity_header, self.identity, self.key = identity_header, identity, key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):
            raise TypeError("a streamed body cannot be signed")
        path = urlsplit(request.url or "").path
        headers = factory_client.signed_headers(
            self.key, self.identity_header, self.identity, request.method or "GET", path, body
        )
        for name in (self.identity_header, "X-Timestamp", "X-Signature"):
            request.headers[name] = headers[name]
        return request


def _device_key(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Every kind of credential: the security scheme of the OpenAPI document it answers, and how to
# make it from its value in the context's `credentials`. A new kind is one line here plus its
# value in the context; an operation whose schemes several kinds answer uses each in turn
# (API keys travel as bearer tokens, like user access tokens).
CREDENTIAL_KINDS: dict[str, tuple[str, Callable[[Any], requests.auth.AuthBase]]] = {
    "user_jwt": ("bearer", BearerAuth),
    "api_key": ("bearer", BearerAuth),
    "device_basic": ("device_basic", lambda v: requests.auth.HTTPBasicAuth(*v)),
    "factory_signature": (
        "factory_signature",
        lambda v: SignedRequestAuth("X-Key-Id", v[0], v[1].encode()),
    ),
    "device_signature": (
        "device_signature",
        lambda v: SignedRequestAuth("X-Device-Id", v[0], _device_key(v[1])),
    ),
    "hook_token": ("hook_token", BearerAuth),
}


@cache
def context() -> dict[str, Any]:
    with open(os.environ["IOT_FUZZ_CONTEXT"]) as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


_turns: dict[str, itertools.count[int]] = {}
_credential_of_case: dict[int, str] = {}
_lock = threading.Lock()


def operation_key(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _kinds(operation: Any) -> list[str]:
    """The kinds of credential we hold that answer one of the operation's security schemes."""
    held = context()["credentials"]
    offered = {name for req in operation.definition.raw.get("security", []) for name in req}
    return [
        kind
        for kind, (scheme, _) in CREDENTIAL_KINDS.items()
        if scheme in offered and held.get(kind)
    ]


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    kinds = _kinds(case.operation)
    if not kinds:
        return
    key = operation_key(case.operation)
    with _lock:
        turn = next(_turns.setdefault(key, itertools.count()))
        kind = kinds[turn % len(kinds)]
        _credential_of_case[id(case)] = kind  # for the record: after_call sees no kwargs
    overrides = context().get("credentials_by_operation", {}).get(key, {})
    value = overrides.get(kind, context()["credentials"][kind])
    kwargs["auth"] = CREDENTIAL_KINDS[kind][1](value)


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    meta = getattr(case, "_meta", None)
    phase = getattr(getattr(meta, "phase", None), "name", None)
    with _lock:
        credential = _credential_of_case.pop(id(case), None)
    line = json.dumps(
        {
            "operation": operation_key(case.operation),
            "path": case.formatted_path,
            "status": response.status_code,
            "credential": credential,
            "phase": str(phase) if phase is not None else None,
        }
    )
    with _lock, open(context()["record"], "a") as f:
        f.write(line + "\n")


@schemathesis.hook
def flatmap_path_parameters(ctx: Any, path_parameters: dict[str, Any]) -> Any:
    """Each path parameter with a pool of real ids: the generated value or a real one.
    Reads, writes and destructive operations (deletions, resets) each draw from their own
    pool, so the fuzz cannot reset every device the other operations need."""
    if ctx.operation is None or not path_parameters:
        return st.just(path_parameters)
    # Ids that only make sense together (a device's command): whole sets, or the generated.
    together = context()["path_sets"].get(operation_key(ctx.operation), [])
    if together:
        return st.sampled_from([*together, path_parameters])
    pools = context()["path_pools"]
    method, path = ctx.operation.method.upper(), ctx.operation.path
    if method == "DELETE" or path.endswith(DESTRUCTIVE_SUFFIXES):
        which = "destroy"
    elif method in WRITING:
        which = "write"
    else:
        which = "read"
    choices: dict[str, Any] = {}
    for name, generated in path_parameters.items():
        pool = pools.get(name, {}).get(which, [])
        # Seeds first: hypothesis tries the early elements of sampled_from most often.
        choices[name] = st.sampled_from([*pool, generated]) if pool else st.just(generated)
    return st.fixed_dictionaries(choices)


@schemathesis.hook
def flatmap_body(ctx: Any, body: Any) -> Any:
    """Operations whose useful bodies cannot be guessed (passwords, tokens, claim codes) also
    get bodies known to be valid."""
    if ctx.operation is None:
        return st.just(body)
    seeds = context()["body_seeds"].get(operation_key(ctx.operation), [])
    return st.sampled_from([*seeds, body]) if seeds else st.just(body)


@schemathesis.hook
def flatmap_query(ctx: Any, query: dict[str, Any]) -> Any:
    """Queries that select existing data (a metric the seeded devices report)."""
    if ctx.operation is None:
        return st.just(query)
    seeds = context()["query_seeds"].get(operation_key(ctx.operation), [])
    return st.sampled_from([*seeds, query]) if seeds else st.just(query)
