"""The web console in a real browser: sign-up, claim, live and aggregate charts, CSV export,
roles, API keys, escaping, and the session's security properties."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, Page, expect

from iotcore.config import Settings
from iotcore.platform.context import Platform
from iotcore.tools.simulate import run_device
from tests.console.conftest import log_in, screenshot
from tests.support.broker import embedded_broker
from tests.support.devices import DeviceCredentials, claimed_device, device_call, provision
from tests.support.telemetry import post_telemetry
from tests.support.users import PASSWORD, RegisteredUser, add_user, register, unique_email

Client = TestClient  # type: ignore[type-arg]


def iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def post(client: Client, device: DeviceCredentials, body: Any) -> None:
    response = await post_telemetry(client, device, body)
    assert response.status == 202, await response.text()


@pytest.fixture(scope="module")
async def owner_device(client: Client, settings: Settings) -> tuple[RegisteredUser, Any]:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    return owner, device


async def open_device(page: Page, device_id: str) -> None:
    await page.goto(f"/#/devices/{device_id}")
    await expect(page.locator("#live-state")).to_have_text("live", timeout=10_000)


async def test_sign_up_claim_and_see_live_points_within_two_seconds(
    client: Client, settings: Settings, page: Page
) -> None:
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await screenshot(page, "login")
    await page.get_by_role("link", name="Create an account").click()
    email = unique_email("console")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Organisation").fill("Console Test Ltd")
    await screenshot(page, "signup")
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.get_by_text("No devices yet.")).to_be_visible()
    # Neither token reaches script-readable storage; the refresh token is an HttpOnly cookie.
    storage = await page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert storage == [0, 0, ""]
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        ("iotcore_console_refresh", True, "Strict", "/console/session/")
    ]

    # The factory provisions; the user claims in the page.
    (made,) = await provision(client, settings)
    await page.get_by_role("link", name="Claim a device").first.click()
    await page.get_by_label("Serial number").fill(made.serial_number)
    await page.get_by_label("Claim code").fill(made.claim_code)
    await page.get_by_label("Name (optional)").fill("Boiler room")
    await screenshot(page, "claim")
    await page.get_by_role("button", name="Claim").click()
    await expect(page.get_by_role("heading", name="Boiler room")).to_be_visible()
    await expect(page.locator("#live-state")).to_have_text("live", timeout=10_000)

    # The device fetches its secret and publishes (HTTP with its secret).
    answer = await (await device_call(client, made, "/api/v1/devices/secret")).json()
    device = DeviceCredentials(
        made.device_id, answer["tenant_id"], made.serial_number, answer["secret"],
        made.device_key, "", "",
    )  # fmt: skip
    live_chart = page.locator("#live-chart")
    for n, value in enumerate((21.5, 22.75, 23.125), start=1):
        await post(client, device, {"metrics": {"temp": value}})
        stored = time.monotonic()
        await expect(live_chart).to_have_attribute("data-points", str(n), timeout=2_000)
        assert time.monotonic() - stored < 2.0
        await expect(live_chart.locator("table.data tbody tr").first).to_contain_text(str(value))
    await expect(page.locator("#latest")).to_contain_text("23.125")

    # A dropped connection resumes with Last-Event-ID: a reading stored while it is down
    # arrives once the page reconnects with a fresh ticket.
    await page.evaluate("window.iotcoreLiveFeed.drop(1500)")
    await expect(page.locator("#live-state")).to_have_text("reconnecting")
    await post(client, device, {"metrics": {"temp": 24.0}})
    assert await page.locator("#live-state").text_content() == "reconnecting"
    await expect(live_chart).to_have_attribute("data-points", "4", timeout=5_000)
    await expect(page.locator("#live-state")).to_have_text("live")

    await screenshot(page, "device")
    await screenshot(page, "device-viewport", full_page=False)  # README's docs/console.png
    await page.get_by_role("link", name="Devices", exact=True).click()
    await expect(page.locator("#devices")).to_contain_text("Boiler room")
    await expect(page.locator("#devices")).to_contain_text("active")
    await screenshot(page, "devices")

    # Log out ends the session: the cookie is gone and a reload lands on the log-in page.
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await page.context.cookies() == []
    await page.reload()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_aggregate_chart_renders_one_point_per_bucket(
    client: Client, page: Page, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, device = owner_device
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # Six readings in five distinct minutes of the last hour, one more three hours ago.
    minutes = [50, 40, 30, 20, 10]
    points = [
        {"ts": iso(now - timedelta(minutes=m)), "metrics": {"hum": float(m)}} for m in minutes
    ]
    points.append({"ts": iso(now - timedelta(minutes=10, seconds=-30)), "metrics": {"hum": 99.0}})
    points.append({"ts": iso(now - timedelta(hours=3)), "metrics": {"hum": 1.0}})
    await post(client, device, {"points": points})

    await log_in(page, owner.email, owner.password)
    await open_device(page, device.device_id)
    await page.locator("#agg-metric").select_option("hum")
    chart = page.locator("#agg-chart")
    await page.get_by_role("button", name="1 hour").click()
    await expect(chart).to_have_attribute("data-points", "5")
    await expect(page.locator("#agg-info")).to_contain_text("5 buckets of 1m")
    await expect(chart.locator("canvas").first).to_be_visible()

    # 24 hours in 15-minute buckets: as many points as the API has buckets, including the
    # reading three hours ago.
    await page.get_by_role("button", name="24 hours").click()
    await expect(page.locator("#agg-info")).to_contain_text("of 15m")
    window = await page.evaluate("[Date.now()]")
    to = datetime.fromtimestamp(window[0] / 1000, UTC)
    response = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry/aggregate",
        params={
            "metric": "hum",
            "bucket": "15m",
            "from": iso(to - timedelta(days=1)),
            "to": iso(to),
        },
        headers=owner.headers,
    )
    buckets = (await response.json())["items"]
    quarters = {
        datetime.fromisoformat(p["ts"]).timestamp() // 900 for p in points
    }  # the origin of date_bin (2000-01-03) is on a quarter-hour
    assert len(buckets) == len(quarters) >= 4
    await expect(chart).to_have_attribute("data-points", str(len(buckets)))
    await screenshot(page, "device-history")

    for name, bucket in (("7 days", "1h"), ("30 days", "PT6H"), ("1 year", "1d")):
        await page.get_by_role("button", name=name).click()
        await expect(page.locator("#agg-info")).to_contain_text(f"of {bucket}")


async def test_csv_export_matches_the_api_raw_rows(
    client: Client, page: Page, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, device = owner_device
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    points = [
        {"ts": iso(start + timedelta(seconds=7 * i)), "metrics": {"volts": 3.0 + i / 8, "ok": True}}
        for i in range(60)
    ]
    await post(client, device, {"points": points})

    await log_in(page, owner.email, owner.password)
    await open_device(page, device.device_id)
    first, last = start - timedelta(minutes=1), start + timedelta(minutes=10)
    await page.locator("#raw-from").fill(first.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.locator("#raw-to").fill(last.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.locator("#raw-form").get_by_role("button", name="Show").click()
    await expect(page.locator("#raw-table tbody tr")).to_have_count(50)  # one page of 50
    await page.get_by_role("button", name="Older").click()
    await expect(page.locator("#raw-table tbody tr")).to_have_count(50)
    await page.get_by_role("button", name="Older").click()
    await expect(page.locator("#raw-table tbody tr")).to_have_count(20)  # 120 rows in all
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Export CSV").click()
    download = await download_info.value
    exported = list(csv.reader(io.StringIO(Path(await download.path()).read_text())))

    rows: list[list[str]] = []
    cursor = None
    while True:
        params = {"from": iso(first), "to": iso(last), "order": "asc", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(
            f"/api/v1/devices/{device.device_id}/telemetry", params=params, headers=owner.headers
        )
        page_body = await response.json()
        rows += [[r["metric"], r["ts"], repr(r["value"])] for r in page_body["items"]]
        cursor = page_body["next_cursor"]
        if not cursor:
            break
    assert exported[0] == ["metric", "ts", "value"]
    assert len(rows) == 120
    # JavaScript prints 1.0 as "1": compare the numbers, the rest as text.
    assert [(m, t, float(v)) for m, t, v in exported[1:]] == [(m, t, float(v)) for m, t, v in rows]


async def test_viewer_sees_no_admin_actions(
    client: Client, page: Page, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, device = owner_device
    viewer = await add_user(client, owner, "viewer")
    await log_in(page, viewer.email, viewer.password)
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Devices")).to_be_visible()
    for hidden in ("Claim", "Users", "API keys"):
        await expect(nav.get_by_role("link", name=hidden)).to_be_hidden()
    await expect(page.get_by_role("link", name="Claim a device")).to_have_count(0)
    await open_device(page, device.device_id)
    for admin_only in ("#rename-form", "#labels-form", "#rotate", "#reset", "#command-form"):
        await expect(page.locator(admin_only)).to_have_count(0)
    await expect(page.get_by_role("heading", name="Manage")).to_be_hidden()
    await expect(page.get_by_role("button", name="Export CSV")).to_be_visible()
    await screenshot(page, "device-viewer")
    await page.goto("/#/users")
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


async def test_names_and_labels_with_html_are_shown_as_text(
    client: Client, page: Page, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, device = owner_device
    name = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    label = "<script>window.pwned=2</script>"
    response = await client.patch(
        f"/api/v1/devices/{device.device_id}",
        json={"name": name, "labels": {"site": label}},
        headers=owner.headers,
    )
    assert response.status == 200, await response.text()
    # Metric names cannot carry markup at all: the API refuses them.
    refused = await post_telemetry(client, device, {"metrics": {"<b>x</b>": 1}})
    assert refused.status == 422

    await log_in(page, owner.email, owner.password)
    await expect(page.locator("#devices")).to_contain_text(name)
    await open_device(page, device.device_id)
    await expect(page.get_by_role("heading", level=1)).to_have_text(name)
    await expect(page.locator("#device-details")).to_contain_text(label)
    assert await page.locator("main img, main b, main script").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_rename_labels_rotate_and_reset_from_the_device_page(
    client: Client, settings: Settings, page: Page
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await log_in(page, owner.email, owner.password)
    await open_device(page, device.device_id)
    await page.locator("#rename-form").get_by_label("Name").fill("Pump 7")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Pump 7")
    await page.locator("#labels-form textarea").fill("site=north\nfloor=2")
    await page.get_by_role("button", name="Save labels").click()
    await expect(page.locator("#device-details")).to_contain_text("north")
    stored = await (
        await client.get(f"/api/v1/devices/{device.device_id}", headers=owner.headers)
    ).json()
    assert (stored["name"], stored["labels"]) == ("Pump 7", {"site": "north", "floor": "2"})

    await expect(page.locator("#command-form")).to_be_visible()

    await page.get_by_role("button", name="Rotate secret").click()
    await page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    await expect(page.locator("#device-details")).to_contain_text("rekey_pending")

    # Reset asks for the word; the keyboard alone completes it.
    await page.get_by_role("button", name="Reset device").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Type RESET to confirm").fill("reset")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_visible()  # wrong word: still asking
    await screenshot(page, "device-reset-dialog")
    await dialog.get_by_label("Type RESET to confirm").fill("RESET")
    await page.keyboard.press("Enter")
    await expect(page.locator("#flash")).to_contain_text("was reset")
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    gone = await client.get(f"/api/v1/devices/{device.device_id}", headers=owner.headers)
    assert gone.status == 404  # unclaimed: no longer the tenant's


async def test_command_sent_from_the_page_succeeds_when_the_simulated_device_replies(
    client: Client, settings: Settings, platform: Platform, page: Page
) -> None:
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    simulated = {
        "secret": device.secret,
        "mqtt": {
            "username": device.device_id,
            "client_id": device.device_id,
            "telemetry_topic": device.telemetry_topic,
            "commands_topic": device.telemetry_topic.replace("/telemetry", "/commands/#"),
        },
    }
    async with embedded_broker(platform) as broker:
        # The device `iotcore simulate` runs: subscribed to its commands, answering each.
        running = asyncio.create_task(
            run_device(f"mqtt://127.0.0.1:{broker.port}", simulated, 0, time.monotonic() + 60)
        )
        try:
            await log_in(page, owner.email, owner.password)
            await open_device(page, device.device_id)
            form = page.locator("#command-form")
            await form.get_by_label("Command").fill("set_rate")
            await form.get_by_label("Parameters (JSON object)").fill('{"rate": 5}')
            await form.get_by_role("button", name="Send command").click()
            row = page.locator("#commands-table tbody tr").first
            await expect(row).to_contain_text("set_rate")
            await expect(row.locator(".badge")).to_have_text("succeeded", timeout=10_000)
            await expect(row).to_contain_text('{"echo":{"rate":5}}')
            await screenshot(page, "device-commands")
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    listed = await (
        await client.get(f"/api/v1/devices/{device.device_id}/commands", headers=owner.headers)
    ).json()
    assert [(c["name"], c["status"]) for c in listed["items"]] == [("set_rate", "succeeded")]


async def test_users_and_api_keys_pages(client: Client, page: Page) -> None:
    owner = await register(client)
    await log_in(page, owner.email, owner.password)

    await page.get_by_role("link", name="Users").click()
    await expect(page.locator("#users-table")).to_contain_text(owner.email)
    form = page.locator("#add-user")
    viewer_email = unique_email("viewer")
    await form.get_by_label("E-mail").fill(viewer_email)
    await form.get_by_label("Initial password").fill(PASSWORD)
    await form.get_by_role("button", name="Add user").click()
    row = page.locator("#users-table tr", has_text=viewer_email)
    await expect(row).to_contain_text("viewer")
    await row.get_by_role("combobox").select_option("admin")
    await expect(page.locator("#flash")).to_contain_text("is now admin")
    await screenshot(page, "users")

    await page.get_by_role("link", name="API keys").click()
    create = page.locator("#create-key")
    await create.get_by_label("Name").fill("grafana")
    await create.get_by_role("button", name="Create key").click()
    key = await page.locator("#new-key-value").input_value()
    assert key.startswith("iotk_")
    me = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {key}"})
    assert me.status == 200
    await screenshot(page, "api-keys")
    await page.reload()
    await expect(page.locator("#keys-table")).to_contain_text("grafana")
    assert key not in await page.content()  # shown once

    await page.get_by_role("button", name="Rotate").click()
    await page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    rotated = await page.locator("#new-key-value").input_value()
    assert rotated.startswith("iotk_") and rotated != key
    await page.locator("#keys-table").get_by_role("button", name="Revoke").first.click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(page.locator("#flash")).to_contain_text("Revoked")


async def test_two_tabs_refreshing_at_once_stay_logged_in(
    context: BrowserContext, page: Page, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, _ = owner_device
    await log_in(page, owner.email, owner.password)
    other = await context.new_page()
    await other.goto("/#/devices")
    await expect(other.get_by_role("heading", name="Devices")).to_be_visible()
    # Both tabs refresh with the same cookie at once; unless refreshes are serialised, one
    # presents a spent token and reuse detection ends the session for both.
    refresh = """import('/console/assets/js/api.js')
        .then((api) => api.refresh()).then(() => 'ok', (error) => error.code)"""
    for _ in range(5):
        outcomes = await asyncio.gather(page.evaluate(refresh), other.evaluate(refresh))
        assert outcomes == ["ok", "ok"]
    await page.reload()
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()


async def test_phone_width_and_keyboard_log_in(
    browser: Browser, base_url: str, owner_device: tuple[RegisteredUser, Any]
) -> None:
    owner, device = owner_device
    phone: BrowserContext = await browser.new_context(
        base_url=base_url, viewport={"width": 375, "height": 740}, timezone_id="UTC"
    )
    try:
        page = await phone.new_page()
        await page.goto("/#/login")
        await page.get_by_label("E-mail").wait_for()
        # Keyboard only: the skip link, then the fields in order, Enter submits.
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        await page.get_by_label("E-mail").focus()
        await page.keyboard.type(owner.email)
        await page.keyboard.press("Tab")
        await page.keyboard.type(owner.password)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
        await open_device(page, device.device_id)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the device page scrolls sideways at 375 px ({width} px)"
        await screenshot(page, "device-phone")
    finally:
        await phone.close()


async def test_console_headers_and_session_endpoints(client: Client) -> None:
    index = await client.get("/")
    assert index.status == 200
    csp = index.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    sources = "".join(
        [await (await client.get(f"/console/assets/js/{name}")).text() for name in (
            "main.js", "dom.js", "api.js", "charts.js", "live.js", "pages/device.js",
            "pages/devices.js", "pages/users.js", "pages/keys.js", "pages/auth.js",
        )]
    )  # fmt: skip
    assert re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", sources) is None
    script = await client.get("/console/assets/js/main.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert (await client.get("/console/assets/../routes.py")).status == 404
    assert (await client.get("/console/assets/nope.js")).status == 404

    owner = await register(client)
    credentials = {"email": owner.email, "password": owner.password}
    # Without the console's header (a cross-site form could not add it): refused.
    refused = await client.post("/console/session/login", json=credentials)
    assert refused.status == 403
    header = {"X-Requested-With": "iotcore-console"}
    login = await client.post("/console/session/login", json=credentials, headers=header)
    body = await login.json()
    assert login.status == 200 and "refresh_token" not in body
    cookie = login.cookies["iotcore_console_refresh"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console/session/" and not cookie["secure"]  # plain HTTP here
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status == 200
    # Refresh rotates the cookie; the spent one is refused and revokes the family.
    spent = cookie.value
    refreshed = await client.post("/console/session/refresh", headers=header)
    assert refreshed.status == 200
    assert refreshed.cookies["iotcore_console_refresh"].value != spent
    client.session.cookie_jar.clear()
    reused = await client.post(
        "/console/session/refresh", headers={**header, "Cookie": f"iotcore_console_refresh={spent}"}
    )
    assert reused.status == 401 and (await reused.json())["error"]["code"] == "token_reused"
    assert (await client.post("/console/session/refresh", headers=header)).status == 401


async def test_presence_shows_live_on_the_device_page(
    client: Client, settings: Settings, page: Page
) -> None:
    """A connect and a disconnect (EMQX's events here) change the device page's Presence
    without a reload: the page listens for `presence` events on the live stream."""
    owner = await register(client)
    device = await claimed_device(client, settings, owner)
    await log_in(page, owner.email, owner.password)
    await open_device(page, device.device_id)
    shown = page.locator("#device-details dt:has-text('Presence') + dd")
    await expect(shown).to_have_text("offline")
    hook = {"Authorization": f"Bearer {settings.mqtt_hook_token.get_secret_value()}"}
    connected_at = int(time.time() * 1000)
    event = {"clientid": device.device_id, "username": device.device_id, "node": "emqx@test"}
    for body in (
        {**event, "event": "client.connected", "connected_at": connected_at},
        {
            **event,
            "event": "client.disconnected",
            "connected_at": connected_at,
            "disconnected_at": connected_at + 1000,
            "reason": "normal",
        },
    ):
        response = await client.post("/api/v1/mqtt/events", json=body, headers=hook)
        assert (await response.json()) == {"result": "applied"}
        expected = "online since" if body["event"] == "client.connected" else "offline since"
        await expect(shown).to_contain_text(expected, timeout=5_000)
