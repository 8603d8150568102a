"""Alerts end to end: every service a real process, a real Redis, a real HTTP receiver as the apprise target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libs.common import keys
from tests.alerts.receiver import Receiver
from tests.e2e.harness import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def alert_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "ALERT_URLS": json.dumps([receiver.url]),
        "ALERT_FEED_DOWN_S": "1",
        "ALERT_REPEAT_S": "5",
        "ALERT_CHECK_INTERVAL_S": "0.2",
        "ALERT_RETRY_BASE_S": "0.2",
        "ALERT_RETRY_MAX_S": "1",
        "ALERT_CLAIM_IDLE_S": "2",
        **extra,
    }


async def settled(stack: Stack) -> bool:
    """Nothing left to decide or send: no folded change waiting, no outbox message pending."""
    conditions = await stack.redis.hgetall(keys.ALERT_CONDITIONS)
    if any(json.loads(state)["pending"] for state in conditions.values()):
        return False
    pending: Any = await stack.redis.xpending(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP)
    events: Any = await stack.redis.xpending(keys.EVENTS_STREAM, keys.ALERTS_GROUP)
    return int(pending["pending"]) == 0 and int(events["pending"]) == 0


async def test_example_2_alerts_arrive_in_order_each_once(tmp_path: Path) -> None:
    """The guide's Example 2: feed down, stale, cannot monitor (with the curl), closed by api, recovered."""
    with Receiver() as receiver:
        env = alert_env(receiver, PRICE_STALE_AFTER_S="2", PRICE_CACHE_TTL_S="5")
        async with Stack(tmp_path, **env) as stack:
            await stack.start("sim", "feed", "monitor", "api")
            await stack.set_price("BOSCHLTD", 720.0)
            await stack.open_position("BOSCHLTD", "long", 10, 735.0, stop_loss=698.25, take_profit=800.0)
            await eventually(lambda: _ltp_is(stack, "BOSCHLTD", "720.00"))
            await stack.wait_connected(True)
            await stack.start("alerts")

            await stack.fault("drop", 12)
            await eventually(lambda: any("Can't monitor BOSCHLTD" in t for t in receiver.titles()), timeout_s=20)
            resp = await stack.emergency_close("BOSCHLTD", "emergency")
            assert resp.status_code == 200, resp.text
            await stack.wait_connected(True, timeout_s=30)
            await eventually(lambda: any("Feed live again" in t for t in receiver.titles()), timeout_s=15)
            await stack.wait_log("alerts", "Feed live again")
            await eventually(lambda: settled(stack), timeout_s=10)

        titles = receiver.titles()
        assert titles == [
            titles[0],
            "[WARNING] 1 open position(s) on stale prices",
            "[CRITICAL] Can't monitor BOSCHLTD - no fresh prices",
            "[INFO] BOSCHLTD closed (emergency)",
            "[RECOVERED] Feed live again",
        ], titles
        assert titles[0].startswith("[WARNING] Feed down for ")
        messages = [r.message for r in receiver.delivered()]
        assert "BOSCHLTD ₹720.00" in messages[1]["message"] and "SL ₹698.25" in messages[1]["message"]
        curl = (
            f"curl -s -X POST http://127.0.0.1:{stack.api_port}/api/v1/monitoring/emergency-close-position "
            "-H 'Content-Type: application/json' -d '{\"symbol\": \"BOSCHLTD\", \"reason\": \"emergency\"}'"
        )
        assert f"What to do: Close it by hand: {curl}" in messages[2]["message"]
        assert "Closed by api: 10 at ₹720.00" in messages[3]["message"] and "P&L ₹-150.00" in messages[3]["message"]
        assert [m["type"] for m in messages] == ["warning", "warning", "failure", "info", "success"]


async def _ltp_is(stack: Stack, symbol: str, ltp: str) -> bool:
    return (await stack.price(symbol)).get("ltp") == ltp
