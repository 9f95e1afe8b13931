"""A real Chromium (Debian's package, driven by Playwright) against the whole API in-process.

Screenshots of each page go to IOT_CONSOLE_ARTIFACTS (default tests/console/artifacts/).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = os.environ.get("IOT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get("IOT_CONSOLE_ARTIFACTS", Path(__file__).parent / "artifacts")
).resolve()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The pages do not depend on the storage: ops/test.sh's TimescaleDB run leaves them out.
    second_run = os.environ.get("IOT_TEST_STORAGE") == "timescaledb"
    for item in items:
        if "tests/console/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if second_run:
                item.add_marker(pytest.mark.skip(reason="browser tests run once (native run)"))


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: ops/test.sh installs Debian's chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def base_url(client: TestClient) -> str:  # type: ignore[type-arg]
    return str(client.make_url("/")).rstrip("/")


@pytest_asyncio.fixture
async def context(browser: Browser, base_url: str) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(
        base_url=base_url,
        timezone_id="UTC",
        viewport={"width": 1100, "height": 900},
        accept_downloads=True,
    )
    try:
        yield context
    finally:
        await context.close()


@pytest_asyncio.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.on("pageerror", lambda error: violations.append(f"page error: {error}"))
    yield page
    assert violations == [], "the console broke its CSP or threw"


async def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


async def log_in(page: Page, email: str, password: str) -> None:
    await page.goto("/#/login")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Devices").wait_for()
