"""The MQTT consumer relies on a few private parts of aiomqtt and paho (its docstring says
which and why), with both pinned to exact versions in pyproject.toml (checked by
tests/platform/test_library_internals.py). These tests fail when an upgrade changes any of
them, before anything subtler breaks in production."""

from __future__ import annotations

import inspect

import aiomqtt
import paho.mqtt.client as paho

from iotcore.mqtt.consumer import _PUBACK, ack_all


async def test_aiomqtt_keeps_the_attributes_the_consumer_uses() -> None:
    client = aiomqtt.Client("127.0.0.1", 1883)
    assert isinstance(client._client, paho.Client)  # manual acks, on_message, socket hooks
    assert client._loop is not None  # the reader is (re)registered on it
    assert not client._disconnected.done()  # a future: the consumer waits on it and sets it
    assert callable(client._client.on_socket_open)  # aiomqtt's hook, wrapped by gate_reads


def test_paho_keeps_the_socket_and_the_packet_queue_the_consumer_uses() -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    assert "_sock" in vars(client)  # replaced by the BufferedSocket
    parameters = list(inspect.signature(paho.Client._packet_queue).parameters)
    assert parameters[:5] == ["self", "command", "packet", "mid", "qos"]
    assert hasattr(client, "_out_packet")
    # paho reads a packet with several small recv calls; aiomqtt's reader asks the
    # socket's `pending()` whether to call paho again without going back to the loop.
    assert "self._sock_recv(" in inspect.getsource(paho.Client._packet_read)
    assert "client._sock.pending()" in inspect.getsource(aiomqtt.client)


def test_one_write_of_many_pubacks_is_what_paho_would_queue_one_by_one() -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.manual_ack_set(True)
    ack_all(client, [1, 2, 513])
    (queued,) = list(client._out_packet)
    assert queued["command"] == paho.PUBACK
    assert bytes(queued["packet"]) == b"@\x02\x00\x01@\x02\x00\x02@\x02\x02\x01"
    client._out_packet.clear()
    client._send_puback(513)  # what paho's own ack(513, 1) queues
    (own,) = list(client._out_packet)
    assert bytes(own["packet"]) == _PUBACK.pack(paho.PUBACK, 2, 513)
