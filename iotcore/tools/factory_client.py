"""A small client for factory tooling and device firmware authors: it signs requests exactly
as API.md says. The tests and the load generator use it too.

    IOTCORE_FACTORY_KEY=... iotcore factory provision --url URL --key-id mk1 \\
        --model sensor-v2 SERIAL [SERIAL ...]
    IOTCORE_DEVICE_KEY=... iotcore device bootstrap --url URL --device-id ID
    IOTCORE_DEVICE_KEY=... iotcore device secret --url URL --device-id ID
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import aiohttp
import orjson

from iotcore.devices import signing

_last_stamp: dict[tuple[str, str, str, bytes], int] = {}


def _fresh_timestamp(identity: str, method: str, path: str, body: bytes) -> int:
    """The same request signed twice in one second would carry the same signature, which the
    server refuses as a replay; step the timestamp forward instead (well within the skew)."""
    key = (identity, method, path, body)
    stamp = max(int(time.time()), _last_stamp.get(key, 0) + 1)
    _last_stamp[key] = stamp
    if len(_last_stamp) > 10_000:
        _last_stamp.clear()
    return stamp


def signed_headers(
    key: bytes,
    identity_header: str,
    identity: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: int | None = None,
) -> dict[str, str]:
    if timestamp is None:
        timestamp = _fresh_timestamp(identity, method, path, body)
    stamp = str(timestamp)
    return {
        identity_header: identity,
        "X-Timestamp": stamp,
        "X-Signature": signing.sign(key, stamp, method, path, body),
        "Content-Type": "application/json",
    }


def factory_request(
    key_id: str, secret: str, devices: list[dict[str, Any]], timestamp: int | None = None
) -> tuple[str, bytes, dict[str, str]]:
    path = "/api/v1/factory/devices"
    body = orjson.dumps({"devices": devices})
    return (
        path,
        body,
        signed_headers(secret.encode(), "X-Key-Id", key_id, "POST", path, body, timestamp),
    )


def device_request(
    device_id: str, device_key: bytes, path: str, timestamp: int | None = None
) -> tuple[str, bytes, dict[str, str]]:
    body = b"{}"
    return (
        path,
        body,
        signed_headers(device_key, "X-Device-Id", device_id, "POST", path, body, timestamp),
    )


async def _post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url.rstrip("/") + path, data=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"iotcore: set {name} (keys are never passed on the command line)")
    return value


async def run_factory(args: argparse.Namespace) -> int:
    devices = [{"serial_number": s, "model": args.model} for s in args.serials]
    path, body, headers = factory_request(args.key_id, _require_env("IOTCORE_FACTORY_KEY"), devices)
    status, answer = await _post(args.url, path, body, headers)
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if status in (200, 201) else 1


async def run_device(args: argparse.Namespace) -> int:
    key = signing.decode_device_key(_require_env("IOTCORE_DEVICE_KEY"))
    path = "/api/v1/devices/bootstrap" if args.action == "bootstrap" else "/api/v1/devices/secret"
    path, body, headers = device_request(args.device_id, key, path)
    status, answer = await _post(args.url, path, body, headers)
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if status == 200 else 1


def add_parsers(roles: Any) -> None:
    factory = roles.add_parser("factory", help="factory tooling: provision devices")
    factory_actions = factory.add_subparsers(dest="action", required=True)
    provision = factory_actions.add_parser("provision", help="provision serial numbers")
    provision.add_argument("--url", required=True)
    provision.add_argument("--key-id", required=True)
    provision.add_argument("--model", required=True)
    provision.add_argument("serials", nargs="+")
    device = roles.add_parser("device", help="device firmware helpers")
    device_actions = device.add_subparsers(dest="action", required=True)
    for action in ("bootstrap", "secret"):
        sub = device_actions.add_parser(action)
        sub.add_argument("--url", required=True)
        sub.add_argument("--device-id", required=True)
