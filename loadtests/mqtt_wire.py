"""MQTT 3.1.1 packets as bytes, for the load generators (mqtt_load.py, mqtt_devices.py): a
Python client library spends tens of microseconds a message, which on two cores would take
the CPU the system under test needs."""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Coroutine
from typing import Any

import orjson

CONNACK = 0x20
PUBLISH_QOS1 = 0x32
PUBACK = 0x40
SUBACK = 0x90
DISCONNECT = b"\xe0\x00"


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encoded(value: str) -> bytes:
    """A UTF-8 string with its two-byte length, as MQTT writes topics and names."""
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None, keepalive: int = 0
) -> bytes:
    """Protocol level 4 (3.1.1), clean session; keepalive 0: no PINGREQ to answer."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big")
    body += encoded(client_id)
    if username is not None:
        body += encoded(username)
    if password is not None:
        body += encoded(password)
    return b"\x10" + remaining_length(len(body)) + body


def publish_qos1(topic: bytes, mid: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH; `topic` already encoded()."""
    body = topic + mid.to_bytes(2, "big") + payload
    return bytes((PUBLISH_QOS1,)) + remaining_length(len(body)) + body


def subscribe_packet(mid: int, topic_filter: str, qos: int = 1) -> bytes:
    body = mid.to_bytes(2, "big") + encoded(topic_filter) + bytes((qos,))
    return b"\x82" + remaining_length(len(body)) + body


def puback(mid: int) -> bytes:
    return struct.pack("!BBH", PUBACK, 2, mid)


def next_frame(buffer: bytes, pos: int) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at `pos`, or None if incomplete."""
    multiplier, size, i = 1, 0, pos + 1
    while True:
        if i >= len(buffer):
            return None
        byte = buffer[i]
        size += (byte & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not byte & 0x80:
            break
    if i + size > len(buffer):
        return None
    return buffer[pos], i, i + size


def run_generator(main: Coroutine[Any, Any, Any]) -> None:
    """A load generator's run, on uvloop where it is installed; its result is the last line
    on stdout, as JSON, which the benchmarks read."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.stdout.write(orjson.dumps(asyncio.run(main)).decode() + "\n")
