"""The dashboard in a real headless browser (the Debian `chromium`, driven by Playwright; nothing downloaded).

Every service is a real process (`harness.Stack`). The page must show the outage as it happens (connected
false, the Layer banner, prices turning stale, the close the monitor made on a cached price), close a position
by hand with the API key, show it closed without a reload, say when its own link to the api is lost and
recover by itself when the api is back, and say when the api cannot read Redis. The README's screenshot is
taken here, during the outage: `GUARD_UPDATE_SCREENSHOT=1 pytest tests/e2e/test_dashboard.py` writes it to
docs/dashboard-outage.png.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-outage.png"
KEY = "dashboard-test-key"


async def _open(stack: Stack, symbol: str, side: str, entry: float, stop_loss: float, take_profit: float) -> None:
    # The position exists at the broker first (a trade made outside the guard), then the guard guards it.
    trade = {"symbol": symbol, "side": "buy" if side == "long" else "sell", "quantity": 10}
    await stack.sim("POST", "/sim/trade", json=trade)
    body = {"symbol": symbol, "side": side, "quantity": 10, "entry_price": entry}
    body |= {"stop_loss": stop_loss, "take_profit": take_profit}
    resp = await stack.api("POST", "/api/v1/positions", json=body, headers={"X-API-Key": KEY})
    assert resp.status_code == 201, resp.text


def _row(page: Page, table: str, symbol: str) -> object:
    return page.locator(f'#{table} tbody tr[data-symbol="{symbol}"]')


async def test_the_dashboard_follows_an_outage_closes_by_hand_and_survives_an_api_restart(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM.rsplit("/", 1)[1]), "chromium is not installed (bash .ci/run installs it)"
    async with Stack(
        tmp_path,
        API_KEY=KEY,
        PRICE_STALE_AFTER_S="3",
        MONITOR_FALLBACK_LOG_INTERVAL_S="1",
        REST_POLL_INTERVAL_S="3600",  # no REST LTP poll (Layer 2b): prices age through the outage as the guide says
    ) as stack:
        stack.http.headers["X-API-Key"] = KEY  # reads are private too: the harness's own api calls send the key
        await stack.start("sim", "feed", "monitor", "api", "alerts")
        for symbol, price in (("BOSCHLTD", 720.0), ("KAYNES", 204.1), ("INFY", 1500.0)):
            await stack.set_price(symbol, price)
        await _open(stack, "BOSCHLTD", "long", 735.0, 698.25, 800.0)
        await _open(stack, "KAYNES", "long", 190.0, 180.0, 210.0)
        await _open(stack, "INFY", "short", 1520.0, 1580.0, 1420.0)
        await stack.wait_connected(True)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = await browser.new_page(viewport={"width": 1360, "height": 700})
            await page.goto(stack.api_url + "/")
            await page.evaluate("window.sameDocument = true")  # gone if the page ever reloads

            # Reads are private (API_KEY set): the page asks for the key, then goes live with it.
            await expect(page.locator("#key-banner")).to_be_visible()
            await page.locator("#key-input").fill(KEY)
            await page.locator("#key-banner button").click()

            # Live: the link is up, Layer 1, every position listed with a fresh price.
            await expect(page.locator("#api-link")).to_have_attribute("data-state", "live")
            await expect(page.locator("#ws-connected")).to_have_text("true")
            await expect(page.locator("#layer-banner")).to_have_attribute("data-layer", "1")
            for name in ("feed", "monitor", "api", "sim", "alerts"):
                await expect(page.locator(f"#service-{name}")).to_have_text("running")
            await expect(page.locator("#monitor-banner")).to_be_hidden()
            for symbol in ("BOSCHLTD", "KAYNES", "INFY"):
                await expect(_row(page, "positions", symbol).locator("td.age")).to_have_class(re.compile("fresh"))
            await expect(_row(page, "positions", "BOSCHLTD").locator("td").nth(6)).to_have_text("₹720.00")

            # The outage: connected false, the Layer 2 banner, the monitor's close on a cached price shows up
            # in the closes, and the prices of the open positions turn stale.
            await stack.fault("drop", 20)
            await expect(page.locator("#ws-connected")).to_have_text("false", timeout=10_000)
            await expect(page.locator("#layer-banner")).to_have_attribute("data-layer", "2")
            resp = await stack.api(
                "PATCH", "/api/v1/positions/KAYNES", json={"take_profit": 197.76}, headers={"X-API-Key": KEY}
            )
            assert resp.status_code == 200, resp.text
            await expect(_row(page, "closes", "KAYNES")).to_contain_text("take_profit", timeout=10_000)
            await expect(_row(page, "closes", "KAYNES")).to_contain_text("cached")
            await expect(_row(page, "positions", "KAYNES")).to_have_count(0)
            boschltd_age = _row(page, "positions", "BOSCHLTD").locator("td.age")
            await expect(boschltd_age).to_have_class(re.compile("stale"), timeout=10_000)
            await expect(page.locator("#layer-title")).to_contain_text("stale cached prices")
            await expect(page).to_have_title(re.compile(r"^⚠ Layer 2"))
            await expect(page.locator("#ws-attempts")).not_to_have_text("0")
            await expect(page.locator("#ws-down-for")).to_have_text(re.compile(r"^\d+ s$"))
            await page.screenshot(path=str(tmp_path / "dashboard-outage.png"), full_page=True)

            # By hand: without the key the api refuses and the dialog says so; with it the position closes
            # and the page shows it closed, without a reload.
            await _row(page, "positions", "BOSCHLTD").locator("button.close").click()
            await expect(page.locator("#close-dialog")).to_be_visible()
            await expect(page.locator("#api-key")).to_have_value(KEY)  # the key given for reads, reused
            await page.locator("#api-key").fill("wrong-key")
            await page.locator("#close-confirm").click()
            await expect(page.locator("#close-error")).to_contain_text("HTTP 401")
            await page.locator("#api-key").fill(KEY)
            await page.locator("#close-reason").select_option("emergency")
            await page.locator("#close-confirm").click()
            await expect(page.locator("#notice")).to_have_text("Position BOSCHLTD closed successfully")
            await expect(page.locator("#close-dialog")).to_be_hidden()
            await expect(_row(page, "positions", "BOSCHLTD")).to_have_count(0)
            await expect(_row(page, "closes", "BOSCHLTD")).to_contain_text("emergency")
            await expect(_row(page, "closes", "BOSCHLTD")).to_contain_text("api")
            closes = [o for o in await stack.orders("BOSCHLTD") if (o.get("tag") or "").startswith("guard-close-")]
            assert len(closes) == 1, closes

            # Its own link: the api stops, the page says so; the api is back, the page is live again by itself.
            stack.stop("api")
            await expect(page.locator("#api-link")).to_have_attribute("data-state", "lost", timeout=10_000)
            await expect(page.locator("#lost-banner")).to_be_visible()
            await expect(page).to_have_title(re.compile("api connection lost"))
            await stack.start("api")
            await expect(page.locator("#api-link")).to_have_attribute("data-state", "live", timeout=15_000)
            await expect(page.locator("#lost-banner")).to_be_hidden()
            await expect(_row(page, "positions", "INFY")).to_have_count(1)

            # The feed comes back: Layer 1 again.
            await expect(page.locator("#ws-connected")).to_have_text("true", timeout=30_000)
            await expect(page.locator("#layer-banner")).to_have_attribute("data-layer", "1")

            # The monitor killed: nothing fires any more, and the page says so until it is back.
            stack.kill("monitor")
            await expect(page.locator("#monitor-banner")).to_be_visible(timeout=10_000)
            await expect(page.locator("#service-monitor")).to_have_text("NOT RUNNING")
            await stack.start("monitor")
            await expect(page.locator("#monitor-banner")).to_be_hidden(timeout=10_000)

            # Redis gone: the api is there but cannot read the guard's state, and the page says so.
            stack.stop_redis()
            await expect(page.locator("#redis-banner")).to_contain_text("Redis unreachable", timeout=15_000)
            stack.start_redis()
            await expect(page.locator("#redis-banner")).to_be_hidden(timeout=15_000)
            await expect(_row(page, "positions", "INFY")).to_have_count(1)
            assert await page.evaluate("window.sameDocument") is True
            await browser.close()

    if os.environ.get("GUARD_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard-outage.png", SCREENSHOT)
