"""Throttles count an attempt in the same Redis call that checks it, so concurrent attempts
cannot all slip under the limit; and they hold back the guesser, never the victim: failures
from one address do not lock the account's owner out at another, and one tenant's wrong claim
codes do not stop another tenant from claiming the device."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from iotcore.platform.context import SETTINGS_KEY
from tests.conftest import ApiFactory
from tests.support.devices import provision
from tests.support.users import register

LOGIN = "/api/v1/auth/login"
ATTACKER, VICTIM = "203.0.113.7", "198.51.100.9"


def _prefix() -> str:
    return f"iottest:{uuid.uuid4().hex}:"


async def test_concurrent_wrong_passwords_are_evaluated_at_most_the_limit(
    api_with: ApiFactory,
) -> None:
    client = await api_with(login_max_failures=5, trusted_proxies=1, redis_prefix=_prefix())
    user = await register(client)
    headers = {"X-Forwarded-For": ATTACKER}
    answers = await asyncio.gather(
        *(
            client.post(
                LOGIN, json={"email": user.email, "password": f"wrong-{i}"}, headers=headers
            )
            for i in range(40)
        )
    )
    statuses = Counter(a.status for a in answers)
    # 401 = the password was checked; 429 = refused before any check (503: Redis too slow
    # on a loaded machine, also never checked).
    assert statuses[401] <= 5, statuses
    assert statuses[429] >= 1 and statuses[401] + statuses[429] + statuses[503] == 40, statuses


async def test_an_attackers_failures_do_not_lock_the_owner_out_elsewhere(
    api_with: ApiFactory,
) -> None:
    client = await api_with(login_max_failures=5, trusted_proxies=1, redis_prefix=_prefix())
    user = await register(client)
    for i in range(8):
        await client.post(
            LOGIN,
            json={"email": user.email, "password": f"wrong-{i}"},
            headers={"X-Forwarded-For": ATTACKER},
        )
    blocked = await client.post(
        LOGIN,
        json={"email": user.email, "password": user.password},
        headers={"X-Forwarded-For": ATTACKER},
    )
    assert blocked.status == 429
    owner = await client.post(
        LOGIN,
        json={"email": user.email, "password": user.password},
        headers={"X-Forwarded-For": VICTIM},
    )
    assert owner.status == 200, await owner.text()


async def test_the_account_backstop_spares_addresses_the_owner_logged_in_from(
    api_with: ApiFactory,
) -> None:
    client = await api_with(
        login_max_failures=5,
        login_account_max_failures=10,
        trusted_proxies=1,
        redis_prefix=_prefix(),
    )
    user = await register(client)
    right = {"email": user.email, "password": user.password}
    assert (await client.post(LOGIN, json=right, headers={"X-Forwarded-For": VICTIM})).status == 200
    # Guessing spread over many addresses, two tries each: the per-account backstop fills.
    statuses: Counter[int] = Counter()
    for n in range(12):
        for _ in range(2):
            answer = await client.post(
                LOGIN,
                json={"email": user.email, "password": "wrong-password"},
                headers={"X-Forwarded-For": f"203.0.113.{n + 10}"},
            )
            statuses[answer.status] += 1
    assert statuses[401] == 10 and statuses[429] == 14, statuses
    # A new address now waits; the owner's known address does not.
    new = await client.post(LOGIN, json=right, headers={"X-Forwarded-For": "192.0.2.1"})
    assert new.status == 429
    known = await client.post(LOGIN, json=right, headers={"X-Forwarded-For": VICTIM})
    assert known.status == 200, await known.text()


async def test_wrong_claim_codes_throttle_the_guessing_tenant_not_the_serial(
    api_with: ApiFactory,
) -> None:
    client = await api_with(claim_max_failures=5, redis_prefix=_prefix())
    guesser, owner = await register(client), await register(client)
    (device,) = await provision(client, client.app[SETTINGS_KEY])
    wrong = {"serial_number": device.serial_number, "claim_code": "AAAAA-AAAAA"}
    answers = await asyncio.gather(
        *(
            client.post("/api/v1/devices/claim", json=wrong, headers=guesser.headers)
            for _ in range(20)
        )
    )
    statuses = Counter(a.status for a in answers)
    assert statuses[403] <= 5 and statuses[403] + statuses[429] == 20, statuses
    right = {"serial_number": device.serial_number, "claim_code": device.claim_code}
    claimed = await client.post("/api/v1/devices/claim", json=right, headers=owner.headers)
    assert claimed.status == 200, await claimed.text()
    assert (await claimed.json())["status"] == "claimed"


async def test_concurrent_registrations_from_one_address_stop_at_the_limit(
    api_with: ApiFactory,
) -> None:
    client = await api_with(register_max_per_ip=3, redis_prefix=_prefix())
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/v1/auth/register",
                json={
                    "email": f"reg-{uuid.uuid4().hex}@example.com",
                    "password": "correct-horse-battery-staple",
                    "tenant_name": "T",
                },
            )
            for _ in range(12)
        )
    )
    assert Counter(a.status for a in answers) == {201: 3, 429: 9}
