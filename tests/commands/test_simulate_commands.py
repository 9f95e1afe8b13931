"""`iotcore simulate` devices answer commands on the single node: what README shows a
newcomer (send one with curl, watch it succeed)."""

from __future__ import annotations

import argparse
import asyncio

from iotcore.tools.simulate import run_simulation
from tests.conftest import free_port, make_settings
from tests.support.broker import single_node
from tests.support.commands import send_command, wait_status
from tests.support.users import _user, login


async def test_simulated_devices_answer_commands(database: str) -> None:
    settings = make_settings(database, broker_port=free_port())
    email, password = "sim-commands@example.com", "simulator-password"
    async with single_node(settings) as node:
        client = node.client
        args = argparse.Namespace(
            api=node.api,
            broker=None,
            devices=2,
            rate=0.0,  # commands only
            duration=60.0,
            email=email,
            password=password,
        )
        simulation = asyncio.create_task(run_simulation(settings, args))
        try:
            devices: list[dict[str, object]] = []
            while len(devices) < 2:
                assert not simulation.done(), simulation
                await asyncio.sleep(0.1)
                try:
                    tokens = await login(client, email, password)
                except AssertionError:
                    continue  # not registered yet
                user = _user(tokens, password, "owner")
                response = await client.get("/api/v1/devices", headers=user.headers)
                devices = (await response.json())["items"]
            device_id = str(devices[0]["device_id"])
            ok = await send_command(client, user, device_id, "set_rate", params={"rate": 3})
            failing = await send_command(client, user, device_id, "fail")
            done = await wait_status(client, user, device_id, ok["command_id"], "succeeded", 30)
            assert done["result"] == {"echo": {"rate": 3}}
            failed = await wait_status(client, user, device_id, failing["command_id"], "failed", 30)
            assert failed["result"] == {"error": "simulated failure"}
        finally:
            simulation.cancel()
            await asyncio.gather(simulation, return_exceptions=True)
