"""Signed requests: one spelling per signature. A signature padded with Unicode whitespace,
upper-cased, or carrying raw non-ASCII bytes is refused (401 invalid_signature, never a 500),
and the replay cache cannot be dodged by re-spelling a used signature."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from iotcore.config import Settings
from iotcore.tools import factory_client
from tests.support import rawhttp
from tests.support.devices import provision

Client = TestClient  # type: ignore[type-arg]
BOOTSTRAP = "/api/v1/devices/bootstrap"


def _request(path: str, headers: dict[str, str], body: bytes, **replace: bytes) -> bytes:
    """The signed request with some headers replaced by raw bytes."""
    raw = [(name.encode(), replace.get(name, value.encode())) for name, value in headers.items()]
    return rawhttp.build("POST", path, raw, body)


async def test_respelled_signatures_are_refused_and_cannot_dodge_the_replay_cache(
    client: Client, settings: Settings
) -> None:
    (device,) = await provision(client, settings)
    path, body, headers = factory_client.device_request(
        device.device_id, device.device_key, BOOTSTRAP
    )
    signature = headers["X-Signature"].encode()
    respelled = [
        signature + "\u00a0".encode(),  # NBSP
        "\u2003".encode() + signature,  # EM SPACE
        signature + "\u3000".encode(),  # IDEOGRAPHIC SPACE
        signature.upper(),
        signature[:-1],
        signature + b"0",
        signature + b"\xff",  # a raw byte that is not UTF-8
        b"\xe9" + signature[1:],
    ]
    for variant in respelled:
        answer = await rawhttp.send(
            client.port, _request(path, headers, body, **{"X-Signature": variant})
        )
        assert answer.status == 401, (variant, answer)
        assert answer.json()["error"]["code"] == "invalid_signature", variant  # type: ignore[index]

    # The canonical spelling works once; every re-spelling of it afterwards is still refused.
    first = await rawhttp.send(client.port, _request(path, headers, body))
    assert first.status == 200, first
    replay = await rawhttp.send(client.port, _request(path, headers, body))
    assert replay.json()["error"]["code"] == "replayed_request"  # type: ignore[index]
    for variant in respelled[:3]:
        again = await rawhttp.send(
            client.port, _request(path, headers, body, **{"X-Signature": variant})
        )
        assert again.status == 401


async def test_other_signed_headers_have_one_spelling(client: Client, settings: Settings) -> None:
    (device,) = await provision(client, settings)
    path, body, headers = factory_client.device_request(
        device.device_id, device.device_key, BOOTSTRAP
    )
    timestamp = headers["X-Timestamp"].encode()
    device_id = headers["X-Device-Id"].encode()
    cases = {
        "X-Timestamp": [
            b"+" + timestamp,
            timestamp + "\u00a0".encode(),
            timestamp[:2] + b"_" + timestamp[2:],
            "\u0661".encode() + timestamp,  # ARABIC-INDIC DIGIT ONE
            timestamp + b"\xff",
        ],
        "X-Device-Id": [
            device_id.upper(),
            b"{" + device_id + b"}",
            device_id.replace(b"-", b""),
            b"urn:uuid:" + device_id,
            device_id + b"\xff",
        ],
    }
    for name, variants in cases.items():
        for variant in variants:
            answer = await rawhttp.send(
                client.port, _request(path, headers, body, **{name: variant})
            )
            assert answer.status == 401, (name, variant, answer)
            assert answer.json()["error"]["code"] in ("invalid_signature", "unauthenticated")  # type: ignore[index]
    # Untouched, the same request is accepted: the refusals above were about the spelling.
    assert (await rawhttp.send(client.port, _request(path, headers, body))).status == 200


async def test_raw_non_ascii_bytes_in_any_credential_header_are_a_4xx(
    client: Client, settings: Settings
) -> None:
    await provision(client, settings)
    probes = [
        ("GET", "/api/v1/auth/me", [(b"Authorization", b"Bearer \xff\xfe.abc.def")]),
        ("GET", "/api/v1/auth/me", [(b"Authorization", "Bearer \u00e9t\u00e9".encode())]),
        ("POST", "/api/v1/mqtt/authn", [(b"Authorization", b"Bearer \xff")]),
        ("POST", "/api/v1/factory/devices", [(b"X-Key-Id", b"mk\xff")]),
        ("POST", "/api/v1/telemetry", [(b"Authorization", b"Basic \xff\xfe")]),
        ("GET", "/api/v1/devices", [(b"X-Request-ID", b"id\xff")]),
    ]
    for method, path, headers in probes:
        raw = rawhttp.build(method, path, [*headers, (b"Content-Type", b"application/json")], b"{}")
        answer = await rawhttp.send(client.port, raw)
        assert 400 <= answer.status < 500, (path, headers, answer)
        assert "error" in answer.json(), answer  # type: ignore[operator]
