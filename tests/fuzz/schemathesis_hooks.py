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

from iotcore.devices import client as device_client

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
        headers = device_client.signed_headers(
            self.key, self.identity_header, self.identity, request.method or "GET", path, body
        )
        for name in (self.identity_header, "X-Timestamp", "X-Signature"):
            request.headers[name] = headers[name]
        return request


def _device_key(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# One entry per security scheme of the OpenAPI document: how to make a valid credential of
# that kind from the context's `credentials`. A new kind (API keys, issue 13) is one line here
# plus its value in the context; an operation offering several kinds uses each in turn.
AUTH_BY_SCHEME: dict[str, Callable[[dict[str, Any]], requests.auth.AuthBase]] = {
    "bearer": lambda c: BearerAuth(c["bearer"]),
    "api_key": lambda c: BearerAuth(c["api_key"]),
    "device_basic": lambda c: requests.auth.HTTPBasicAuth(*c["device_basic"]),
    "factory_signature": lambda c: SignedRequestAuth(
        "X-Key-Id", c["factory_signature"][0], c["factory_signature"][1].encode()
    ),
    "device_signature": lambda c: SignedRequestAuth(
        "X-Device-Id", c["device_signature"][0], _device_key(c["device_signature"][1])
    ),
    "hook_token": lambda c: BearerAuth(c["hook_token"]),
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


def _schemes(operation: Any) -> list[str]:
    """The security schemes the operation accepts that we hold a credential for."""
    held = context()["credentials"]
    offered = [name for req in operation.definition.raw.get("security", []) for name in req]
    return [name for name in offered if name in AUTH_BY_SCHEME and held.get(name)]


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    schemes = _schemes(case.operation)
    if not schemes:
        return
    key = operation_key(case.operation)
    turn = next(_turns.setdefault(key, itertools.count()))
    scheme = schemes[turn % len(schemes)]
    kwargs["auth"] = AUTH_BY_SCHEME[scheme](context()["credentials"])
    with _lock:  # for the record: after_call sees the case, not the kwargs
        _credential_of_case[id(case)] = scheme


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
